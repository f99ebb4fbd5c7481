"""LEAF's stage: the teacher's targets, the ridge head, the MiniLM-shaped and causal students, rotations."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from streamdistill import leaf, models
from streamdistill.artifacts import ArtifactError, read_done
from streamdistill.decoders import BaseModel
from streamdistill.models import EmbeddingModel
from streamdistill.profiles import get_profile

TINY = get_profile("tiny")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small CPU models train far faster on one thread when the suite's workers share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def _model(enc: HashEncoder, name: str = "stub", revision: str = "r1") -> EmbeddingModel:
    return EmbeddingModel(name, revision, enc.encode, embed_dim=enc.dim)


# --------------------------------------------------------------------------- the teacher's targets


def test_chunks_resume_after_an_interruption_and_refuse_other_texts(tmp_path):
    texts = [f"text number {i} about {w}" for i, w in enumerate("abcdefghij" * 2)]
    folder = tmp_path / "chunks"

    class Interrupted(RuntimeError):
        pass

    class DiesAfterOneChunk(HashEncoder):
        def encode(self, texts, prompt_type=None, **kw):
            if self.calls:
                raise Interrupted
            return super().encode(texts, prompt_type, **kw)

    with pytest.raises(Interrupted):
        leaf.encode_in_chunks(_model(DiesAfterOneChunk(16)), texts, folder, chunk_size=8, progress=False)
    state = json.loads((folder / leaf.PROGRESS).read_text())
    assert state["done"] == [0] and state["texts_sha256"] == leaf.texts_hash(texts)

    enc = HashEncoder(16)
    out = leaf.encode_in_chunks(_model(enc), texts, folder, chunk_size=8, progress=False)
    assert enc.calls == [(8, "document"), (4, "document")]  # chunk 0 was not recomputed
    assert out.dtype == np.float32 and out.shape == (20, 16)
    np.testing.assert_allclose(out, enc.encode(texts), atol=1e-6)
    with pytest.raises(ValueError, match="other texts"):
        leaf.encode_in_chunks(_model(enc), texts[:5], folder, chunk_size=8, progress=False)


def test_cached_vectors_are_a_hashed_artifact_encoded_once():
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    enc = HashEncoder(8)
    first = leaf.cached_vectors(_model(enc, revision="t-once"), texts, progress=False)
    assert isinstance(first, np.memmap) and first.shape == (3, 8)
    again = HashEncoder(8)
    np.testing.assert_array_equal(leaf.cached_vectors(_model(again, revision="t-once"), texts, progress=False), first)
    assert again.calls == []  # read from the artifact
    folder = Path(first.filename).parent
    assert read_done(folder)["files"][leaf.EMBEDDINGS]  # its SHA-256 is recorded
    other = leaf.cached_vectors(_model(HashEncoder(8), revision="t-other"), texts, progress=False)
    assert Path(other.filename).parent != folder  # another teacher, another artifact
    del first
    raw = (folder / leaf.EMBEDDINGS).read_bytes()
    (folder / leaf.EMBEDDINGS).write_bytes(raw[:-4] + b"\x00\x00\x80\x7f")  # one value changed
    with pytest.raises(ArtifactError, match="corrupt artifact file"):
        leaf.cached_vectors(_model(HashEncoder(8), revision="t-once"), texts, progress=False)


def test_texts_hash_tells_lists_apart():
    assert leaf.texts_hash(["ab", "c"]) != leaf.texts_hash(["a", "bc"]) != leaf.texts_hash(["abc"])
    assert leaf.texts_hash(["x"]) == leaf.texts_hash(["x"])


def test_leaf_texts_hold_out_the_tail_and_no_test_text():
    from streamdistill.data import evaluated_test_texts, normalized

    train, held = leaf.leaf_texts(TINY)
    assert len(train) == TINY.leaf_texts and len(held) == TINY.leaf_heldout_texts and not set(train) & set(held)
    banned = evaluated_test_texts()
    assert not any(normalized(t) in banned for t in train + held)
    with pytest.raises(ValueError, match="exceeds"):
        leaf.leaf_texts(get_profile("tiny", {"leaf_texts": "10000000"}))


# --------------------------------------------------------------------------- the head


def test_ridge_recovers_an_exact_linear_map_and_shrinks_with_alpha():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    w_true, b_true = rng.standard_normal((5, 3)), rng.standard_normal(3)
    w, b = leaf.ridge(x, x @ w_true + b_true, 0.0)
    np.testing.assert_allclose(w, w_true, atol=1e-10)
    np.testing.assert_allclose(b, b_true, atol=1e-10)
    shrunk, _ = leaf.ridge(x, x @ w_true + b_true, 10.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(w_true)


def test_mean_cosine_is_exact_on_known_vectors():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [2.0, 2.0]])
    assert leaf.mean_cosine(a, b) == pytest.approx((1.0 + 2 ** -0.5) / 2)


def test_ridge_head_fits_targets_the_features_explain():
    student = leaf.MiniLMStudent(TINY, 6)
    texts = [f"a sentence about {w} and the weather" for w in "abcdefghijklmnopqrstuvwxyz"] * 2
    texts = [f"{t} {i}" for i, t in enumerate(texts)]
    features = leaf._batches(student, texts, student.pooled)
    w = np.random.default_rng(1).standard_normal((features.shape[1], 6))
    targets = features @ w + 0.5
    fit = leaf.ridge_head(student, texts, targets)
    # 384 features, 52 texts: the held-out fit is close, the weakest ridge the best
    assert fit["ridge_alpha"] == min(leaf.RIDGE_ALPHAS) and fit["ridge_holdout_cosine"] > 0.95
    out = leaf._batches(student, texts, lambda f: student.pooled(f) @ student.head.weight.T + student.head.bias)
    assert leaf.mean_cosine(out, targets) > 0.99


# --------------------------------------------------------------------------- students


def test_minilm_student_has_plain_modules_no_dropout_and_round_trips(tmp_path):
    from sentence_transformers import SentenceTransformer

    student = leaf.MiniLMStudent(TINY, 768)
    names = [type(m).__name__ for m in student.model]
    assert names == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert student.head.in_features == 384 and student.head.out_features == 768
    assert len(student.model[0].model.encoder.layer) == TINY.leaf_student_layers
    assert all(m.p == 0.0 for m in student.model.modules() if isinstance(m, torch.nn.Dropout))
    student.save(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.0 and config["attention_probs_dropout_prob"] == 0.0
    loaded = SentenceTransformer(str(tmp_path / "s"), device="cpu")
    sample = ["a short query", "a longer document about the committee and its budget"]
    assert leaf.mean_cosine(student.model.encode(sample), loaded.encode(sample)) == pytest.approx(1.0, abs=1e-6)
    assert loaded.max_seq_length == TINY.leaf_max_length
    with pytest.raises(ValueError, match="leaf_student_layers"):
        leaf.minilm_student(7, 8, 32)


def test_the_student_trains_from_its_control_and_loads_with_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    folder = leaf.train_leaf_student(TINY, progress=False)
    control = leaf.train_leaf_student(leaf.control_profile(TINY), progress=False)
    s, c = read_done(folder)["summary"], read_done(control)["summary"]
    assert s["steps"] == TINY.leaf_steps and c["steps"] == 0 and s["n_texts"] == TINY.leaf_texts
    # the same head starts both; the control is that head alone
    assert s["heldout_cosine_start"] == pytest.approx(c["heldout_cosine"]) == pytest.approx(c["heldout_cosine_start"])
    history = json.loads((folder / "history.json").read_text())
    probes = [r["step"] for r in history if "heldout_cosine" in r]
    step = max(1, TINY.leaf_steps // leaf.PROBES)
    assert probes == sorted({0, *range(step - 1, TINY.leaf_steps, step), TINY.leaf_steps - 1})
    assert history[-1]["heldout_cosine"] == pytest.approx(s["heldout_cosine"], abs=1e-5)
    assert json.loads((control / "history.json").read_text()) == []
    assert leaf.train_leaf_student(TINY, progress=False) == folder  # cached
    student = SentenceTransformer(str(folder), device="cpu")
    out = student.encode(["a query", "a document"])
    assert out.shape == (2, 384)  # the tiny teacher's width
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_a_rotated_student_distils_the_rotated_targets():
    rotation = leaf.random_rotation(384, seed=3)
    folder = leaf.train_leaf_student(get_profile("tiny", {"leaf_steps": "0"}), rotation=rotation, progress=False)
    plain = leaf.train_leaf_student(get_profile("tiny", {"leaf_steps": "0"}), progress=False)
    np.testing.assert_array_equal(np.load(folder / "rotation.npy"), rotation)
    # the head is linear and ridge commutes with an orthogonal map of the targets: same fit, same cosine
    rotated_cosine, plain_cosine = (read_done(f)["summary"]["heldout_cosine"] for f in (folder, plain))
    assert rotated_cosine == pytest.approx(plain_cosine, abs=1e-4)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from streamdistill.testing import tiny_llama, tiny_tokenizer

    folder = tmp_path_factory.mktemp("base")
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer.vocab_size + 8).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return BaseModel(str(folder), {"base": "tiny-test"})


def test_causal_student_trains_from_the_same_targets_and_streams(tiny_base):
    from streamdistill.encoder import Encoder
    from streamdistill.streaming import StreamingEncoder

    folder = leaf.train_leaf_student(TINY, "causal", base=tiny_base, progress=False)
    summary = read_done(folder)["summary"]
    assert summary["kind"] == "causal" and summary["steps"] == TINY.leaf_causal_steps
    student = Encoder.load(folder)
    assert student.attention == "causal" and student.embed_dim == 384
    stream = StreamingEncoder(student)
    pieces = ["the committee met", " to discuss the budget", " and the old bridge"]
    for piece in pieces:
        incremental = stream.append(piece)
    full = student.encode("".join(pieces), max_length=512)
    assert 1.0 - float(incremental @ full) <= 1e-5
    with pytest.raises(ValueError, match="base decoder"):
        leaf.train_leaf_student(TINY, "causal")
    with pytest.raises(ValueError, match="kind"):
        leaf.train_leaf_student(TINY, "truncated")


def test_run_leaf_is_the_profiles_minilm_student():
    folder = leaf.run_leaf(TINY, progress=False)
    assert folder == leaf.train_leaf_student(TINY, progress=False) and (folder / "modules.json").exists()


# --------------------------------------------------------------------------- rotations


def _anisotropic(n: int = 500, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(0.1, 3.0, d) + 0.5
    axes = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))[0]  # one space for every seed
    return (x @ axes).astype(np.float32)


def test_pca_rotation_is_orthogonal_keeps_cosines_and_orders_variance():
    x = _anisotropic()
    r = leaf.pca_rotation(x)
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)
    y = x @ r
    nx, ny = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, y))
    assert np.abs(nx @ nx.T - ny @ ny.T).max() <= 1e-5
    variance = y.var(0)
    assert np.all(np.diff(variance) <= 1e-4) and variance[0] > 10 * variance[-1]
    np.testing.assert_array_equal(r, leaf.pca_rotation(x))  # deterministic signs


def test_random_rotation_is_orthogonal_seeded_and_orders_nothing():
    r = leaf.random_rotation(32, seed=1)
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)
    np.testing.assert_array_equal(r, leaf.random_rotation(32, seed=1))
    assert not np.allclose(r, leaf.random_rotation(32, seed=2))
    x = _anisotropic()
    assert (x @ r).var(0).max() < (x @ leaf.pca_rotation(x)).var(0)[0]  # PCA's first axis holds the most


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


# --------------------------------------------------------------------------- derived models


def test_int8_round_trip_error_is_small_and_binary_is_plus_minus_one():
    train = _anisotropic(n=4000, seed=1)
    test = _anisotropic(n=50, seed=2)
    q = models.int8_quantizer(train)
    codes = q.quantize(test)
    assert codes.dtype == np.int8
    back = q.dequantize(codes)
    inside = (test >= q.lo) & (test <= q.hi)
    assert np.all(np.abs(back - test)[inside] <= (q.scale / 2 + 1e-6)[None, :].repeat(len(test), 0)[inside])
    base = EmbeddingModel("m", "r", lambda texts, p=None: test[: len(texts)], embed_dim=32)
    np.testing.assert_allclose(models.quantized(base, q).encode(["a"] * 50), back)
    signs = models.binarized(base).encode(["a"] * 50)
    assert set(np.unique(signs)) <= {-1.0, 1.0} and signs.dtype == np.float32
    np.testing.assert_array_equal(signs > 0, test >= 0)


def test_memoized_encodes_each_text_once_and_exposes_its_memo():
    calls = []
    base = EmbeddingModel("m", "r", lambda texts, kind=None: calls.append(list(texts))
                          or np.ones((len(texts), 3)) * len(texts[0]))
    model = models.memoized(base)
    first = model.encode(["ab", "c", "ab"], "query")
    second = model.encode(["c", "ab"], "query")
    assert calls == [["ab", "c"]]
    assert np.array_equal(first[0], second[1]) and np.array_equal(first[1], second[0])
    model.encode(["c"], "document")  # another prompt type is another vector
    assert calls[-1] == ["c"] and set(model.extra["memo"]) == {("ab", "query"), ("c", "query"), ("c", "document")}
    model.extra["memo"][("preloaded", "document")] = np.zeros(3)
    assert model.encode(["preloaded"], "document").tolist() == [[0.0, 0.0, 0.0]] and calls[-1] == ["c"]


@pytest.fixture(scope="module")
def minilm():
    return models.load_sentence_transformer(models.minilm_path(), name="minilm")


def test_at_length_reads_at_most_that_many_tokens_and_restores_the_model(minilm):
    teacher = minilm.st_model
    long_text = " ".join(["evidence"] * 300)
    short = models.at_length(minilm, 16)
    assert (short.name, short.max_tokens) == ("minilm-len16", 16) and short.revision.endswith("-len16")
    own = teacher.max_seq_length
    teacher.max_seq_length = 16
    expected = teacher.encode([long_text])
    teacher.max_seq_length = own
    assert np.allclose(short.encode([long_text]), expected, atol=1e-6)
    assert teacher.max_seq_length == own  # the shared model keeps its own limit
    with pytest.raises(models.ModelError, match="not a SentenceTransformer"):
        models.at_length(EmbeddingModel("m", "r", lambda t, p=None: np.zeros((len(t), 2))), 16)


def test_in_precision_runs_under_bf16_autocast_and_names_it(minilm):
    assert models.in_precision(minilm, "float32") is minilm
    bf16 = models.in_precision(minilm, "bfloat16")
    assert bf16.revision == f"{minilm.revision}-bfloat16" and bf16.st_model is None
    texts = ["a sentence about rivers", "another about bridges"]
    out = bf16.encode(texts)
    assert out.dtype == np.float32
    cos = leaf.mean_cosine(out, minilm.encode(texts))
    assert 0.99 < cos < 1.0  # bf16's rounding, and only that
    with pytest.raises(ValueError, match="precision"):
        models.in_precision(minilm, "float16")


def test_loss_ends_average_the_first_and_last_tenth_of_the_steps():
    from streamdistill.train import loss_ends

    history = [{"loss": float(x)} for x in range(20)]
    assert loss_ends(history) == {"first_loss": 0.5, "last_loss": 18.5}
    assert loss_ends(history[:3]) == {"first_loss": 0.0, "last_loss": 2.0}
    assert all(np.isnan(v) for v in loss_ends([]).values())
