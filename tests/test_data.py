import json

import pytest

from streamdistill import data, mirror_export
from streamdistill.data import MirrorError

from .conftest import MIRROR, manifest, replace_file


def test_the_mirror_matches_its_manifest():
    # the mirror grows: count what its MANIFEST lists, never a literal
    listed = {f["path"] for entry in manifest(MIRROR).values() for f in entry.get("files", [])}
    results = data.check_mirror(MIRROR)
    assert listed and {r.path for r in results} == listed
    assert all(r.ok for r in results), [r.problem for r in results if not r.ok]


def test_missing_mirror_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.delenv("STREAMDISTILL_DATA_DIR")
    with pytest.raises(MirrorError, match="set STREAMDISTILL_DATA_DIR"):
        data.data_dir(required=True)
    monkeypatch.setenv("STREAMDISTILL_DATA_DIR", str(tmp_path))
    with pytest.raises(MirrorError, match="no MANIFEST.json"):
        data.data_dir()


def test_corrupt_file_is_named(mirror_copy):
    target = mirror_copy / "sts/STSBenchmark/test.jsonl"
    replace_file(target, target.read_text()[:-200])
    problems = [r.problem for r in data.check_mirror(mirror_copy) if not r.ok]
    assert len(problems) == 1 and "corrupt file" in problems[0] and "STSBenchmark/test.jsonl" in problems[0]
    with pytest.raises(MirrorError, match="corrupt file .*STSBenchmark/test.jsonl"):
        data.read_jsonl("sts/STSBenchmark/test.jsonl")


def test_missing_file_is_named(mirror_copy):
    (mirror_copy / "pairs/MRPC/test.jsonl").unlink()
    with pytest.raises(MirrorError, match="missing file .*MRPC/test.jsonl"):
        data.read_jsonl("pairs/MRPC/test.jsonl")


def test_training_material_is_drawn_from_training_splits_only(monkeypatch):
    """Test splits are read for one thing only: the texts to leave out (and SciFact's test-relevant documents)."""
    data._evaluated_test_texts.cache_clear()
    data.evaluated_test_texts()  # the exclusion list, read first (and cached)
    read = []
    real_jsonl, real_qrels = data.read_jsonl, data.read_qrels
    monkeypatch.setattr(data, "read_jsonl", lambda rel, root=None: read.append(rel) or real_jsonl(rel, root))
    monkeypatch.setattr(data, "read_qrels", lambda rel, root=None: read.append(rel) or real_qrels(rel, root))
    data._sourced_texts.cache_clear()
    texts = data.training_texts()
    # non-test splits only (SNLI's validation and test are training material here: no task evaluates
    # SNLI; STSB's validation sentences stay only where no STS test set holds them), never the SciFact corpus
    assert sorted({r for r in read if "/test" in r or "validation" in r}) == [
        "pairs/SNLI/test.jsonl", "pairs/SNLI/validation.jsonl", "sts/STSBenchmark/validation.jsonl"]
    assert "retrieval/SciFact/corpus.jsonl" not in read
    read.clear()
    pairs = data.training_pairs(sources=data.PAIR_SOURCES)
    assert len(texts) > 50_000 and len(pairs) > 5_000
    # SNLI's dev and test are training material here; of SciFact's test split only the qrels are read,
    # to leave the test-relevant documents out
    assert sorted({r for r in read if "/test" in r or "validation" in r}) == [
        "pairs/SNLI/test.jsonl", "pairs/SNLI/validation.jsonl", "retrieval/SciFact/qrels/test.tsv"]
    corpus = {d["_id"]: d for d in real_jsonl("retrieval/SciFact/corpus.jsonl")}
    relevant = {d for docs in real_qrels("retrieval/SciFact/qrels/test.tsv").values() for d in docs}
    assert relevant and not {(corpus[d]["title"], corpus[d]["text"], None) for d in relevant if d in corpus} & set(pairs)


def test_training_texts_count_their_sources_and_leave_the_scifact_corpus_out():
    texts = data.training_texts()
    mix = data.text_mix(texts)
    assert list(mix) == list(data.TEXT_SOURCES) and sum(mix.values()) == len(texts) == len(set(texts))
    assert all(n > 0 for n in mix.values())
    documents = {data.document_text(d) for d in data.read_jsonl("retrieval/SciFact/corpus.jsonl")}
    assert not documents & set(texts)
    assert data.training_texts(limit=5, seed=1) == data.training_texts(seed=1)[:5] != data.training_texts(limit=5, seed=2)


def test_no_evaluated_test_sentence_is_in_the_training_material():
    banned = data.evaluated_test_texts()
    stsb = data.read_jsonl("sts/STSBenchmark/test.jsonl")
    assert data.normalized(stsb[0]["sentence1"]) in banned and len(banned) > 20_000
    items = data.training_pairs(sources=data.PAIR_SOURCES)
    texts = data.training_texts()
    leaked = [t for item in items for t in item if t is not None and data.normalized(t) in banned]
    leaked += [t for t in texts if data.normalized(t) in banned]
    assert not leaked, leaked[:3]


def test_snli_gives_triplets_without_the_rows_that_share_a_sentence_with_evaluation_sets():
    triplets = data.snli_triplets()
    premises = {}
    for split in ("validation", "test"):
        for r in data.read_jsonl(f"pairs/SNLI/{split}.jsonl"):
            premises.setdefault(r["sentence1"], set()).add(r["label"])
    complete = sum({"entailment", "contradiction"} <= labels for labels in premises.values())
    banned = data.evaluated_test_texts()
    assert 0 < complete - len(triplets) < complete // 10  # some rows share a sentence with STS/SICK test sets
    assert all(pos and neg and data.normalized(p) not in banned for p, pos, neg in triplets)
    mix = data.pair_mix(data.PAIR_SOURCES)
    assert set(mix) == set(data.PAIR_SOURCES) and mix["snli"] == len(triplets)


def test_training_pairs_are_deterministic_and_nonempty():
    a = data.training_pairs(limit=50, seed=3)
    assert a == data.training_pairs(limit=50, seed=3) and len(a) == 50
    assert all(q.strip() and d.strip() and (n is None or n.strip()) for q, d, n in a)
    with pytest.raises(MirrorError, match="unknown pair source 'nope'"):
        data.training_pairs(sources=("nope",))


def test_synthetic_fallback_says_so(monkeypatch):
    monkeypatch.delenv("STREAMDISTILL_DATA_DIR")
    with pytest.warns(UserWarning, match="SYNTHETIC DATA"):
        texts = data.training_texts(limit=10)
    assert len(texts) == 10


def test_export_writes_a_mirror_that_checks_and_loads(tmp_path, monkeypatch):
    def stub(name):
        assert name in {"STSBenchmark", "MRPC"}
        if name == "MRPC":
            return {f"pairs/MRPC/{s}.jsonl": [{"sentence1": "a b", "sentence2": "b a", "label": 1, "id1": "1", "id2": "2"}] * 3
                    for s in ("train", "test")}
        return {f"sts/STSBenchmark/{s}.jsonl": [{"sentence1": "x", "sentence2": "y", "score": 2.5}] * 4 for s in ("train", "test")}

    dest = mirror_export.export_mirror(tmp_path / "m", load=stub, datasets=["STSBenchmark", "MRPC"])
    listing = json.loads((dest / "MANIFEST.json").read_text())
    assert set(listing) == {"STSBenchmark", "MRPC"}
    assert all(r.ok for r in data.check_mirror(dest))
    monkeypatch.setenv("STREAMDISTILL_DATA_DIR", str(dest))
    from streamdistill.profiles import get_profile
    from streamdistill.tasks import get_task

    task = get_task("STSBenchmark", get_profile("cpu"))
    task.load_data()
    assert task.dataset["test"]["score"] == [2.5] * 4
    with pytest.raises(MirrorError, match="unknown dataset"):
        mirror_export.export_mirror(tmp_path / "n", load=stub, datasets=["Nope"])


def test_hub_rows_export_scifact_with_train_qrels_for_training(tmp_path):
    """The Hub export keeps what training reads: all queries and the train qrels, not only test."""
    calls = []
    hub = {
        "corpus": {"corpus": [{"_id": "d1", "title": " Cells ", "text": "Cells divide."},
                              {"_id": "d2", "title": "Stars", "text": "Stars shine. "}]},
        "queries": {"queries": [{"_id": "1", "text": "do cells divide?"}, {"_id": "2", "text": "do stars shine?"}]},
        "default": {"train": [{"query-id": "1", "corpus-id": "d1", "score": 1.0}],
                    "test": [{"query-id": "2", "corpus-id": "d2", "score": 1.0}]},
    }

    def load_dataset(path, config, revision=None):
        calls.append((path, config, revision))
        return hub[config]

    dest = mirror_export.export_mirror(tmp_path / "m", load=lambda name: mirror_export.hub_rows(name, load_dataset), datasets=["SciFact"])
    assert {c[0] for c in calls} == {"mteb/scifact"} and all(c[2] for c in calls)  # mteb's pinned revision
    assert all(r.ok for r in data.check_mirror(dest))
    assert data.read_qrels("retrieval/SciFact/qrels/train.tsv", dest) == {"1": {"d1": 1}}
    assert data.read_qrels("retrieval/SciFact/qrels/test.tsv", dest) == {"2": {"d2": 1}}
    corpus = data.read_jsonl("retrieval/SciFact/corpus.jsonl", dest)
    assert corpus[0] == {"_id": "d1", "title": "Cells", "text": "Cells divide."}
    assert len(data.read_jsonl("retrieval/SciFact/queries.jsonl", dest)) == 2


def test_mirror_table_lists_every_dataset():
    table = data.mirror_table(MIRROR)
    assert {"SciFact", "STSBenchmark", "MRPC", "Banking77Classification"} <= set(table.index)
    assert table.loc["SciFact", "rows"] == 5183 + 1109 + 339 + 919
