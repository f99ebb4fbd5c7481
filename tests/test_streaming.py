"""StreamingEncoder: incremental embeddings equal full recomputes, and streams park and resume."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdistill.artifacts import ArtifactError
from streamdistill.encoder import Encoder
from streamdistill.testing import tiny_decoder, tiny_tokenizer
from streamdistill.streaming import StreamingEncoder

MAX_POSITIONS = 64


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny matrices: thread hand-off costs more than the maths (about 8x on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def tokenizer():
    return tiny_tokenizer()


ARCH = "qwen2"


@pytest.fixture(autouse=True, params=["qwen2", "llama"])
def architecture(request):
    """Every test runs on both decoder architectures: Qwen2 (the paper's) and Llama (SmolLM2's)."""
    global ARCH
    ARCH = request.param
    yield request.param
    ARCH = "qwen2"


def model(seed: int = 0, impl: str = "sdpa"):
    return _model(seed, impl, ARCH)


@functools.cache
def _model(seed: int, impl: str, arch: str):
    return tiny_decoder(arch, len(tokenizer()), max_positions=MAX_POSITIONS, seed=seed, attn_implementation=impl)


def encoder(pooling: str = "mean", projected: bool = True, seed: int = 0, impl: str = "sdpa") -> Encoder:
    return _encoder(pooling, projected, seed, impl, ARCH)


@functools.cache
def _encoder(pooling: str, projected: bool, seed: int, impl: str, arch: str) -> Encoder:
    projection = None
    if projected:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            projection = torch.nn.Linear(32, 16)
    return Encoder(model(seed, impl), tokenizer(), attention="causal", pooling=pooling, projection=projection)


def cosine_distance(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def random_ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(2, len(tokenizer()), (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@st.composite
def chunked_sequences(draw):
    """A random token sequence and a random split of it into consecutive non-empty chunks."""
    ids = draw(st.lists(st.integers(2, len(tokenizer()) - 1), min_size=1, max_size=48))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(ids) - 1)), max_size=6)) - {len(ids)})
    bounds = [0, *cuts, len(ids)]
    return ids, [ids[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("projected", [False, True])
@settings(max_examples=25, deadline=None)
@given(case=chunked_sequences())
def test_incremental_equals_full_recompute(pooling, projected, case):
    ids, chunks = case
    stream = StreamingEncoder(encoder(pooling, projected))
    seen: list[int] = []
    for chunk in chunks:
        incremental = stream.append_ids(chunk)
        seen += chunk
        assert incremental.dtype == np.float32
        assert cosine_distance(incremental, stream.full_embedding(seen)) <= 1e-6
    assert stream.n_tokens == len(ids) and stream.token_ids == ids


def test_incremental_equals_full_recompute_eager_and_unnormalised():
    enc = Encoder(model(0, "eager"), tokenizer(), pooling="mean", normalize=False)
    stream = StreamingEncoder(enc)
    ids = random_ids(40)
    for a, b in [(0, 1), (1, 17), (17, 18), (18, 40)]:
        vector = stream.append_ids(torch.tensor(ids[a:b]) if a % 2 else np.array(ids[a:b]))  # any container
    full = stream.full_embedding(ids)
    assert cosine_distance(vector, full) <= 1e-6
    assert np.allclose(vector, full, atol=1e-5)  # without normalisation the scale matches too


def test_full_embedding_equals_encoder_forward():
    enc = encoder("mean", True)
    text = "the cat sat on the mat"
    stream = StreamingEncoder(enc)
    stream.append(text)
    assert cosine_distance(stream.embedding(), enc.encode(text)) <= 1e-6
    assert stream.token_ids == tokenizer()(text, add_special_tokens=False)["input_ids"]


def test_reset_starts_a_new_stream():
    stream = StreamingEncoder(encoder("mean", True))
    stream.append_ids(random_ids(20, seed=1))
    stream.reset()
    assert stream.n_tokens == 0
    ids = random_ids(10, seed=2)
    assert np.array_equal(stream.append_ids(ids), StreamingEncoder(encoder("mean", True)).append_ids(ids))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_saved_state_resumes_identically(pooling, tmp_path):
    enc = encoder(pooling, True)
    ids = random_ids(30, seed=3)
    stream = StreamingEncoder(enc)
    stream.append_ids(ids[:12])
    stream.save_state(tmp_path / "parked")
    resumed = StreamingEncoder.restore(enc, tmp_path / "parked")
    assert resumed.n_tokens == 12
    assert np.array_equal(resumed.embedding(), stream.embedding())
    assert np.array_equal(resumed.append_ids(ids[12:]), stream.append_ids(ids[12:]))


def test_in_memory_state_is_a_snapshot():
    enc = encoder("mean", True)
    ids = random_ids(30, seed=4)
    stream = StreamingEncoder(enc)
    parked_vector = stream.append_ids(ids[:10])
    state = stream.state
    stream.append_ids(ids[10:])  # must not change the parked state
    other = StreamingEncoder(enc)
    other.load_state(state)
    assert np.array_equal(other.embedding(), parked_vector)
    assert cosine_distance(other.append_ids(ids[10:]), stream.embedding()) <= 1e-6


def test_state_from_another_model_or_pooling_is_refused(tmp_path):
    stream = StreamingEncoder(encoder("mean", True, seed=0))
    stream.append_ids(random_ids(8))
    stream.save_state(tmp_path / "s")
    with pytest.raises(ValueError, match="different model weights"):
        StreamingEncoder.restore(encoder("mean", True, seed=1), tmp_path / "s")
    with pytest.raises(ValueError, match="pooling"):
        StreamingEncoder.restore(encoder("last", True, seed=0), tmp_path / "s")


def test_corrupt_state_raises_artifact_error(tmp_path):
    stream = StreamingEncoder(encoder("mean", True))
    stream.append_ids(random_ids(8))
    folder = stream.save_state(tmp_path / "s")
    tensors = folder / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])
    with pytest.raises(ArtifactError):
        StreamingEncoder.restore(encoder("mean", True), folder)


def test_bidirectional_and_echo_are_refused():
    with pytest.raises(ValueError, match="stale"):
        StreamingEncoder(Encoder(model(), tokenizer(), attention="bidirectional"))
    with pytest.raises(ValueError, match="Echo"):
        StreamingEncoder(Encoder(model(), tokenizer(), pooling="echo"))


def test_streamed_text_matches_encode_with_closing_eos():
    """A tokenizer that ends every text with <eos>: the stream pools it too, without keeping it."""
    from streamdistill.decoders import bpe_tokenizer

    corpus = ["the cat sat on the mat", "a dog ran in the park", "the river crossed the old bridge"] * 20
    tok = bpe_tokenizer(corpus, 300, eos_ends_text=True)
    eos = tok.convert_tokens_to_ids("<eos>")
    lm = tiny_decoder(ARCH, len(tok), max_positions=MAX_POSITIONS, seed=3)
    for pooling in ("mean", "last"):
        enc = Encoder(lm, tok, attention="causal", pooling=pooling)
        stream = StreamingEncoder(enc)
        assert stream.prefix_ids == [] and stream.suffix_ids == [eos]
        pieces = ["the cat sat", " on the mat", " and a dog ran"]
        for i in range(1, len(pieces) + 1):
            text = "".join(pieces[:i])
            streamed = stream.append(pieces[i - 1])
            assert stream.token_ids == tok(text, add_special_tokens=False)["input_ids"]  # eos never kept
            assert cosine_distance(streamed, enc.encode(text)) <= 1e-6
            assert cosine_distance(streamed, stream.full_embedding()) <= 1e-6
        # a parked stream resumes with the same vector (the eos is re-run against the restored cache)
        resumed = StreamingEncoder(enc)
        resumed.load_state(stream.state)
        assert cosine_distance(resumed.embedding(), streamed) <= 1e-6
        # the eos changes the vector: without it the stream would not be what encode scores
        bare = enc(input_ids=torch.tensor([stream.token_ids]), attention_mask=torch.ones(1, stream.n_tokens,
                   dtype=torch.long))["embedding"][0].detach().numpy()
        assert cosine_distance(streamed, bare) > 1e-4
        # a failure after the forward commits nothing: the stream is as it was, and goes on
        real_project = enc.project
        enc.project = lambda x: (_ for _ in ()).throw(RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            stream.append(" more")
        enc.project = real_project
        assert stream.n_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
        assert cosine_distance(stream.append(" more"), enc.encode(text + " more")) <= 1e-6
    # the closing eos needs a position too: a stream must leave room for it
    lm8 = tiny_decoder(ARCH, len(tok), max_positions=8, seed=3)
    closing = StreamingEncoder(Encoder(lm8, tok))
    with pytest.raises(ValueError, match="closing special tokens"):
        closing.append_ids(list(range(2, 10)))
    closing.append_ids(list(range(2, 9)))  # 7 tokens + eos = 8 positions: fine
    bare_stream = StreamingEncoder(Encoder(lm8, tokenizer()))  # no closing token: may fill all 8
    bare_stream.append_ids(list(range(2, 10)))
    with pytest.raises(ValueError, match="closing special tokens"):
        StreamingEncoder(Encoder(lm8, tok)).load_state(bare_stream.state)


def test_overflow_raises_and_leaves_the_stream_intact():
    stream = StreamingEncoder(encoder("mean", True))
    ids = random_ids(MAX_POSITIONS + 8, seed=5)
    before = stream.append_ids(ids[: MAX_POSITIONS - 4])
    with pytest.raises(ValueError, match=f"{MAX_POSITIONS} positions"):
        stream.append_ids(ids[MAX_POSITIONS - 4 : MAX_POSITIONS + 1])
    assert stream.n_tokens == MAX_POSITIONS - 4
    assert np.array_equal(stream.embedding(), before)
    stream.append_ids(ids[MAX_POSITIONS - 4 : MAX_POSITIONS])  # exactly full is fine
    assert cosine_distance(stream.embedding(), stream.full_embedding()) <= 1e-6


def test_bad_input_is_rejected():
    stream = StreamingEncoder(encoder("last", False))
    with pytest.raises(ValueError, match="empty"):
        stream.append("  ")
    with pytest.raises(ValueError, match="empty"):
        stream.append_ids([])
    with pytest.raises(ValueError, match="token ids"):
        stream.append_ids([10**6])
    assert stream.n_tokens == 0
