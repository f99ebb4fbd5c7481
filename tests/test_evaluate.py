import zlib

import numpy as np
import pytest

from streamdistill import evaluate as E
from streamdistill import models as M
from streamdistill.profiles import get_profile
from streamdistill.registry import resolve_model


TINY = get_profile("tiny")

@pytest.fixture(scope="module")
def minilm():
    return resolve_model(M.MINILM, TINY)


def test_minilm_resolves_offline_to_the_packaged_copy(minilm):
    assert minilm.name == M.MINILM and minilm.embed_dim == 384 and minilm.max_tokens == 256
    assert len(minilm.revision) == 12 and minilm.revision == M.weights_revision(M.minilm_path())


def test_unknown_model_is_one_line_with_options():
    with pytest.raises(M.ModelError, match="unknown model 'nope'; available offline: sentence-transformers/all-MiniLM-L6-v2"):
        resolve_model("nope", TINY)


def test_evaluation_takes_model_objects_only():
    with pytest.raises(TypeError, match="resolve names with streamdistill.registry.resolve_model"):
        E.evaluate_model("C", ["STSBenchmark"], TINY)


def test_tiny_evaluation_is_real_and_cached(minilm, monkeypatch):
    calls = []
    real_encode = minilm.st_model.encode
    monkeypatch.setattr(minilm.st_model, "encode", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    first = E.evaluate_model(minilm, ["STSBenchmark", "MRPC"], TINY)
    encoded = len(calls)
    second = E.evaluate_model(minilm, ["STSBenchmark", "MRPC"], TINY)
    assert first == second
    assert 60 < first["scores"]["STSBenchmark"] < 95  # a trained model on real STS pairs
    assert 50 < first["scores"]["MRPC"] <= 100
    assert len(calls) == encoded  # the second call is served from the result cache: nothing encoded


def test_models_never_collide_in_the_cache(minilm):
    def noise(texts, kind=None):  # a random vector per text, no meaning
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts])

    noisy = M.EmbeddingModel(name="noise", revision="r1", embed_dim=8, encode=noise)
    score_noise = E.evaluate_model(noisy, ["STSBenchmark"], TINY)["scores"]["STSBenchmark"]
    score_minilm = E.evaluate_model(minilm, ["STSBenchmark"], TINY)["scores"]["STSBenchmark"]
    assert abs(score_noise) < 30 < score_minilm
    folders = {p.parent.name for p in (E.results_root()).rglob("STSBenchmark.json")}
    assert {"r1", minilm.revision} <= folders


def test_asymmetric_routes_queries_and_documents():
    seen = []
    q = M.EmbeddingModel("q", "1", lambda t, k=None: seen.append(("q", k)) or np.ones((len(t), 2)))
    d = M.EmbeddingModel("d", "2", lambda t, k=None: seen.append(("d", k)) or np.ones((len(t), 2)))
    both = M.asymmetric(q, d)
    both.encode(["a"], "query"), both.encode(["b"], "document"), both.encode(["c"], None)
    assert seen == [("q", "query"), ("d", "document"), ("d", None)] and both.revision == "1-2"


def test_sampling_key_separates_subsamples_and_seeds():
    from streamdistill.profiles import get_profile

    assert E.sampling_key(get_profile("cpu")) == "full"
    assert E.sampling_key(get_profile("cpu", {"seed": "1"})) == "full-seed1"  # synthetic tasks follow the seed
    tiny, tiny1 = E.sampling_key(get_profile("tiny")), E.sampling_key(get_profile("tiny", {"seed": "1"}))
    assert tiny.startswith("sampled-") and tiny != tiny1


def test_empty_text_is_passed_to_sentence_transformers_as_documented(minilm):
    # documented behaviour: SentenceTransformers embed "" from the special tokens alone;
    # streamdistill's own encoders refuse it (tests/test_encoder.py)
    vectors = minilm.encode(["", "a sentence"])
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()


def test_revision_follows_weights_and_configuration_not_training_records(tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(M.minilm_path(), folder)
    base = M.weights_revision(folder)
    (folder / "DONE.json").write_text('{"seconds": 1.0}')
    (folder / "history.json").write_text("[]")
    assert M.weights_revision(folder) == base  # how it was trained does not change what it computes
    pooling = next(folder.rglob("1_Pooling/config.json"))
    pooling.write_text(pooling.read_text().replace('"pooling_mode_mean_tokens": true', '"pooling_mode_mean_tokens": false'))
    assert M.weights_revision(folder) != base  # a different pooling is a different model


def test_a_regenerated_synthetic_task_is_scored_anew_not_read_from_the_old_cache(minilm, tmp_path, monkeypatch):
    """mteb keeps a cached result whose dataset revision changed, so each generation has its own folder."""
    import json

    from streamdistill.profiles import get_profile
    from streamdistill.tasks import get_task

    monkeypatch.setenv(E.RESULTS_ENV, str(tmp_path))
    few, more = get_profile("tiny", {"long_context_docs": "4"}), get_profile("tiny", {"long_context_docs": "6"})
    task = "SyntheticPasskeyRetrieval"
    assert E.results_dir(few, get_task(task, few)) != E.results_dir(more, get_task(task, more))
    assert E.results_dir(few, get_task("STSBenchmark", few)) == E.results_dir(more, get_task("STSBenchmark", more))
    for profile, docs in ((few, 4), (more, 6)):
        E.evaluate_model(minilm, [task], profile)
        written = list(E.results_dir(profile, get_task(task, profile)).rglob(f"{task}.json"))
        assert len(written) == 1
        assert f"docs{docs}-" in json.loads(written[0].read_text())["dataset_revision"]
