"""LEAF: teacher cache, truncated and causal students, asymmetric mode, PCA/MRL, quantization."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from streamdistill import leaf, models
from streamdistill.artifacts import read_done
from streamdistill.data import training_texts
from streamdistill.models import EmbeddingModel, minilm_path
from streamdistill.profiles import get_profile

TINY = get_profile("tiny")
FAST = get_profile("tiny", {"leaf_steps": "10"})  # the truncated student: half the tiny steps suffice


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small CPU models train far faster on one thread when the suite's workers share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teacher():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


@pytest.fixture(scope="module")
def texts():
    """32 short mirror training texts (short keeps the teacher cache and training quick)."""
    return [t for t in training_texts(limit=400, seed=0) if len(t) < 150][:32]


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 1.0 - (a * b).sum(-1)


class HashEncoder:
    """A cheap deterministic bag-of-words encoder standing in for a model."""

    def __init__(self, dim: int = 64, seed: int = 0):
        self.dim, self.seed, self.calls, self.memo = dim, seed, [], {}

    def vector(self, word: str) -> np.ndarray:
        word = word.lower()
        if word not in self.memo:
            self.memo[word] = np.random.default_rng([zlib.crc32(word.encode()), self.seed]).standard_normal(self.dim)
        return self.memo[word]

    def encode(self, texts, prompt_type=None, **_):
        self.calls.append((len(texts), prompt_type))
        out = np.stack([sum((self.vector(w) for w in t.split()), np.zeros(self.dim)) for t in texts])
        return (out / np.clip(np.linalg.norm(out, axis=-1, keepdims=True), 1e-9, None)).astype(np.float32)


# --------------------------------------------------------------------------- teacher cache


def test_teacher_cache_computed_once_and_resumes_after_interruption(tmp_path):
    texts = [f"text number {i} about {w}" for i, w in enumerate("abcdefghij" * 2)]
    enc = HashEncoder(dim=16)
    folder = tmp_path / "cache"

    class Interrupted(RuntimeError):
        pass

    class DiesAfterOneChunk(HashEncoder):
        def encode(self, texts, prompt_type=None, **kw):
            if self.calls:
                raise Interrupted
            return super().encode(texts, prompt_type, **kw)

    with pytest.raises(Interrupted):
        leaf.teacher_embeddings(DiesAfterOneChunk(dim=16), texts, folder, chunk_size=8, progress=False)
    state = json.loads((folder / leaf.PROGRESS).read_text())
    assert state["done"] == [0] and not state["complete"] and state["texts_sha256"] == leaf.texts_hash(texts)

    out = leaf.teacher_embeddings(enc, texts, folder, chunk_size=8, progress=False)
    assert [n for n, _ in enc.calls] == [8, 4]  # chunk 0 was not recomputed
    assert isinstance(out, np.memmap) and out.dtype == np.float32 and out.shape == (20, 16)
    np.testing.assert_allclose(out, enc.encode(texts), atol=1e-6)
    assert json.loads((folder / leaf.PROGRESS).read_text())["complete"]
    assert not list((folder / "chunks").glob("*.npy"))

    again = HashEncoder(dim=16)
    reloaded = leaf.teacher_embeddings(again, texts, folder, chunk_size=8, progress=False)
    assert again.calls == [] and isinstance(reloaded, np.memmap)
    np.testing.assert_array_equal(reloaded, out)
    with pytest.raises(ValueError, match="other texts"):
        leaf.teacher_embeddings(again, texts[:5], folder, chunk_size=8, progress=False)


def test_teacher_cache_folder_is_keyed_by_revision_and_texts():
    a = leaf.teacher_cache_folder("rev1", ["x", "y"])
    assert a == leaf.teacher_cache_folder("rev1", ["x", "y"])
    assert a != leaf.teacher_cache_folder("rev2", ["x", "y"])
    assert a != leaf.teacher_cache_folder("rev1", ["xy"])
    assert a.parent.name == leaf.TEACHER_CACHE


# --------------------------------------------------------------------------- students


def test_truncated_student_round_trips_through_sentence_transformer(teacher, tmp_path):
    from sentence_transformers import SentenceTransformer

    student = leaf.truncated_student(teacher, 1)
    assert len(student[0].model.encoder.layer) == 1 and len(teacher[0].model.encoder.layer) == 6
    student.save(str(tmp_path / "s"))
    loaded = SentenceTransformer(str(tmp_path / "s"), device="cpu")
    sample = ["a short query", "a longer document about the committee and its budget"]
    assert _cosine_distance(student.encode(sample), loaded.encode(sample)).max() <= 1e-5


def test_truncated_student_trains_and_loads(teacher, texts):
    from sentence_transformers import SentenceTransformer

    folder = leaf.train_leaf_student("truncated", teacher=minilm_path(), profile=FAST, texts=texts, progress=False)
    summary = read_done(folder)["summary"]
    assert summary["steps"] == FAST.leaf_steps and summary["n_texts"] == len(texts)
    assert leaf.train_leaf_student("truncated", teacher=minilm_path(), profile=FAST, texts=texts,
                                   progress=False) == folder  # cached
    student = SentenceTransformer(str(folder), device="cpu")
    out = student.encode(texts[:4])
    assert out.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    # training moved the student toward the teacher on its training texts
    target = teacher.encode(texts)
    before = _cosine_distance(leaf.truncated_student(teacher, TINY.leaf_student_layers).encode(texts), target)
    after = _cosine_distance(student.encode(texts), target)
    assert after.mean() < before.mean()


def test_causal_student_trains_and_streams(texts):
    from streamdistill.encoder import Encoder
    from streamdistill.streaming import StreamingEncoder

    profile = get_profile("tiny", {"leaf_lr": "3e-3"})
    folder = leaf.train_leaf_student("causal", profile=profile, texts=texts, progress=False)
    summary = read_done(folder)["summary"]
    assert summary["last_loss"] < summary["first_loss"]
    student = Encoder.load(folder)
    assert student.attention == "causal" and student.embed_dim == 384
    stream = StreamingEncoder(student)
    pieces = ["the committee met", " to discuss the budget", " and the old bridge"]
    for piece in pieces:
        incremental = stream.append(piece)
    full = student.encode("".join(pieces), max_length=512)  # trained at 32 tokens; the stream is longer
    assert _cosine_distance(incremental, full) <= 1e-5


def test_run_leaf_returns_folder_and_summary(monkeypatch, texts):
    monkeypatch.setattr(leaf, "default_texts", lambda profile: texts)
    folder = leaf.run_leaf(FAST, progress=False)  # the cached student of the test above
    summary = read_done(folder)["summary"]
    assert (folder / "modules.json").exists() and summary["kind"] == "truncated" and summary["n_texts"] == len(texts)


# --------------------------------------------------------------------------- asymmetric mode


def test_asymmetric_scores_route_queries_to_the_student():
    teacher_enc = HashEncoder(seed=0)
    garbage = HashEncoder(seed=99)  # a space unrelated to the teacher's

    def student_encode(texts, prompt_type=None):
        # aligned with the teacher for queries, useless for documents
        return teacher_enc.encode(texts) if prompt_type == "query" else garbage.encode(texts)

    teacher_model = EmbeddingModel("stub-teacher", "t1", lambda t, p=None: teacher_enc.encode(t, p), embed_dim=64)
    student_model = EmbeddingModel("stub-student", "s1", student_encode, embed_dim=64)
    out = leaf.asymmetric_scores(student_model, teacher_model, "SciFact,STSBenchmark", TINY)  # as the CLI passes it
    teacher, student, asym = (out["scores"][k]["SciFact"] for k in ("teacher", "student", "asymmetric"))
    # symmetric tasks have no queries: the asymmetric pair is not scored there (it would be the teacher)
    assert set(out["scores"]["asymmetric"]) == {"SciFact"}
    assert set(out["scores"]["student"]) == {"SciFact", "STSBenchmark"}
    assert teacher > 5.0
    assert asym == pytest.approx(teacher)  # documents came from the teacher, queries from the student
    assert student < teacher / 2  # the student's own documents were garbage
    assert out["retention"]["asymmetric"]["SciFact"] == pytest.approx(100.0)
    sts = {k: out["scores"][k]["STSBenchmark"] for k in ("teacher", "student")}
    assert out["retention"]["student"]["mean"] == pytest.approx(100.0 * (student + sts["student"]) / (teacher + sts["teacher"]))
    assert out["retention"]["asymmetric"]["mean"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- MRL


def _anisotropic(n: int = 500, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(0.1, 3.0, d) + 0.5
    axes = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))[0]  # one space for every seed
    return (x @ axes).astype(np.float32)


def test_pca_rotation_is_orthogonal_keeps_cosines_and_orders_variance():
    x = _anisotropic()
    r = leaf.pca_rotation(x)
    assert r.shape == (32, 32)
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)
    y = x @ r
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    sims_x = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    sims_y = (y / np.linalg.norm(y, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
    assert np.abs(sims_x - sims_y).max() <= 1e-5
    variance = y.var(0)
    assert np.all(np.diff(variance) <= 1e-4) and variance[0] > 10 * variance[-1]
    np.testing.assert_array_equal(r, leaf.pca_rotation(x))  # deterministic signs


def test_rotated_and_truncated_wrappers():
    x = _anisotropic(n=8)
    r = leaf.pca_rotation(_anisotropic())
    base = EmbeddingModel("m", "r", lambda texts, p=None: x[: len(texts)], embed_dim=32, n_parameters=7)
    rot = models.rotated(base, r)
    np.testing.assert_allclose(rot.encode(["a"] * 8), x @ r, atol=1e-6)
    cut = models.truncate(rot, 4)
    out = cut.encode(["a"] * 8)
    assert out.shape == (8, 4) and cut.embed_dim == 4 and cut.n_parameters == 7
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert cut.name == "m-pca-d4" and cut.revision != base.revision and cut.st_model is None


# --------------------------------------------------------------------------- quantization


def test_int8_round_trip_error_is_small_and_binary_is_plus_minus_one():
    train = _anisotropic(n=4000, seed=1)
    test = _anisotropic(n=50, seed=2)
    q = models.int8_quantizer(train)
    codes = q.quantize(test)
    assert codes.dtype == np.int8
    back = q.dequantize(codes)
    inside = (test >= q.lo) & (test <= q.hi)
    assert np.all(np.abs(back - test)[inside] <= (q.scale / 2 + 1e-6)[None, :].repeat(len(test), 0)[inside])
    rows_inside = inside.all(1)
    assert rows_inside.sum() > 40 and _cosine_distance(test, back)[rows_inside].max() < 1e-3

    base = EmbeddingModel("m", "r", lambda texts, p=None: test[: len(texts)], embed_dim=32)
    np.testing.assert_allclose(models.quantized(base, q).encode(["a"] * 50), back)
    signs = models.binarized(base).encode(["a"] * 50)
    assert set(np.unique(signs)) <= {-1.0, 1.0} and signs.dtype == np.float32
    np.testing.assert_array_equal(signs > 0, test >= 0)


# --------------------------------------------------------------------------- throughput


def test_throughput_returns_positive_figures(teacher):
    pair = {"teacher": models.from_sentence_transformer(teacher, "t", "r"),
            "stub": EmbeddingModel("s", "r", HashEncoder().encode, n_parameters=0)}
    out = leaf.throughput(pair, ["a short text", "another short text"] * 4, batch_size=4, repeats=2)
    assert set(out) == {"teacher", "stub"}
    assert all(row["texts_per_s"] > 0 and row["texts"] == 8 for row in out.values())
    assert out["teacher"]["n_parameters"] > 20_000_000


def test_truncation_curve_and_quantization_table_on_scifact_tiny():
    enc = HashEncoder(dim=64)
    model = EmbeddingModel("stub-hash", "h1", lambda t, p=None: enc.encode(t, p), embed_dim=64)
    calibration = enc.encode(training_texts(limit=100, seed=0))
    table = leaf.quantization_table({"hash": model}, ["SciFact"], TINY, calibration=calibration)
    means = table["mean"]["hash"]
    assert set(means) == {"float32", "int8", "binary"}
    assert means["int8"] == pytest.approx(means["float32"], abs=2.0) and means["binary"] > 0
    curve = leaf.truncation_curve(model, dims=(8,), tasks=["SciFact"], profile=TINY)
    assert curve["dims"] == [8] and 0 < curve["mean"][8] < means["float32"]


def test_memoized_encodes_each_text_once():
    calls = []
    base = EmbeddingModel("m", "r", lambda texts, kind=None: calls.append(list(texts)) or np.ones((len(texts), 3)) * len(texts[0]))
    model = models.memoized(base)
    first = model.encode(["ab", "c", "ab"], "query")
    second = model.encode(["c", "ab"], "query")
    assert calls == [["ab", "c"]]
    assert np.array_equal(first[0], second[1]) and np.array_equal(first[1], second[0])
    model.encode(["c"], "document")  # another prompt type is another vector
    assert calls[-1] == ["c"]


def test_at_length_reads_at_most_that_many_tokens_and_restores_the_model(teacher):
    base = models.from_sentence_transformer(teacher, "minilm", "r0")
    long_text = " ".join(["evidence"] * 300)
    short = models.at_length(base, 16)
    assert (short.name, short.revision, short.max_tokens) == ("minilm-len16", "r0-len16", 16)
    own = teacher.max_seq_length
    teacher.max_seq_length = 16
    expected = teacher.encode([long_text])
    teacher.max_seq_length = own
    assert np.allclose(short.encode([long_text]), expected, atol=1e-6)
    assert teacher.max_seq_length == own  # the shared model keeps its own limit
    assert not np.allclose(base.encode([long_text]), expected, atol=1e-3)  # the limit did change what was read
    with pytest.raises(models.ModelError, match="not a SentenceTransformer"):
        models.at_length(EmbeddingModel("m", "r", lambda t, p=None: np.zeros((len(t), 2))), 16)


def test_evaluation_model_reads_the_students_training_length(teacher):
    model = leaf.evaluation_model(models.from_sentence_transformer(teacher, "minilm", "r0"), TINY)
    assert model.max_tokens == TINY.leaf_max_length and model.st_model is None  # scored through the memo
    assert model.extra["memoized"]


def test_memoized_sentence_transformer_is_scored_through_the_memo(teacher):
    """mteb would score a model with an ``st_model`` through its own ST wrapper, encoding past the memo."""
    model = models.memoized(models.from_sentence_transformer(teacher, "minilm", "r0"))
    assert model.st_model is None
    from streamdistill.evaluate import mteb_model
    assert type(mteb_model(model)).__name__ == "StreamdistillEncoder"
