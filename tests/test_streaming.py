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


# --------------------------------------------------------------------------- the attention path

from streamdistill import streambench, streaming  # noqa: E402
from streamdistill.streaming import KVCache, StaticBatch, append_batch, recompute, run_backbone  # noqa: E402


def gqa_encoder(attention: str = "causal", pooling: str = "mean") -> Encoder:
    """4 query heads over 2 KV heads: the grouped-query case the cpu student has (9 over 3)."""
    return _gqa_encoder(attention, pooling, ARCH)


@functools.cache
def _gqa_encoder(attention: str, pooling: str, arch: str) -> Encoder:
    lm = tiny_decoder(arch, len(tokenizer()), max_positions=MAX_POSITIONS, heads=4, kv_heads=2, seed=7)
    return Encoder(lm, tokenizer(), attention=attention, pooling=pooling)


@pytest.mark.parametrize("past, new", [(0, 5), (9, 1), (9, 6), (30, 17)])
def test_split_attention_equals_masked_sdpa(past, new):
    generator = torch.Generator().manual_seed(past + new)
    q = torch.randn(1, 6, new, 8, generator=generator)
    keys, values = (torch.randn(1, 2, past + new, 8, generator=generator) for _ in range(2))
    visible = torch.arange(past + new)[None] <= torch.arange(past, past + new)[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, keys.repeat_interleave(3, 1), values.repeat_interleave(3, 1), attn_mask=visible, scale=0.3)
    assert torch.allclose(streaming.attend(q, keys, values, True, 0.3), expected, atol=1e-6)
    if past:
        assert torch.allclose(streaming._attend_split(q, keys, values, 0.3), expected, atol=1e-6)


@pytest.mark.parametrize("attention, pooling", [("causal", "mean"), ("bidirectional", "mean"), ("causal", "last")])
def test_direct_recompute_equals_transformers_forward(attention, pooling):
    enc = gqa_encoder(attention, pooling)
    ids = torch.tensor(random_ids(45, seed=8))
    oracle = enc(input_ids=ids[None], attention_mask=torch.ones(1, 45, dtype=torch.long))
    assert cosine_distance(recompute(enc, ids), oracle["embedding"][0].detach().numpy()) <= 1e-6
    with torch.no_grad():
        hidden = run_backbone(enc.backbone, [(ids, None)], causal=attention == "causal")[0]
    assert torch.allclose(hidden, oracle["hidden"][0], atol=1e-5)


def test_echo_recompute_pools_the_second_copy():
    enc = gqa_encoder("causal", "echo")
    ids = random_ids(12, seed=9)
    echo_in, pool = streambench._echo_ids(enc, torch.tensor(ids))
    text = tokenizer().decode(ids)
    batch = enc.tokenize([text])
    if batch["input_ids"][0].tolist() == echo_in.tolist():  # the text re-tokenizes to the same ids
        expected = enc(**batch)["embedding"][0].detach().numpy()
        assert cosine_distance(recompute(enc, echo_in, pool), expected) <= 1e-6
    full = enc(input_ids=echo_in[None], attention_mask=torch.ones(1, len(echo_in), dtype=torch.long),
               pool_mask=pool[None])["embedding"][0].detach().numpy()
    assert cosine_distance(recompute(enc, echo_in, pool), full) <= 1e-6


@settings(max_examples=15, deadline=None)
@given(case=chunked_sequences())
def test_direct_and_transformers_paths_agree(case):
    _, chunks = case
    direct = StreamingEncoder(gqa_encoder(), attention_path="direct")
    oracle = StreamingEncoder(gqa_encoder(), attention_path="transformers")
    for chunk in chunks:
        assert cosine_distance(direct.append_ids(chunk), oracle.append_ids(chunk)) <= 1e-6
    (keys, values), (oracle_keys, oracle_values) = direct._cache.views(), oracle._cache.views()
    for ours, theirs in zip(keys + values, oracle_keys + oracle_values):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_cache_is_preallocated_written_in_place_and_grows_by_doubling():
    stream = StreamingEncoder(gqa_encoder())
    stream.append_ids(random_ids(10, seed=10))
    assert stream._cache.capacity == 256  # the first allocation: room ahead of the stream
    buffer = stream._cache.keys[0]
    stream.append_ids(random_ids(5, seed=11))
    assert stream._cache.keys[0] is buffer and stream._cache.length == 15  # written in place
    cache = KVCache(1)
    cache.reserve(3)
    cache.write(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    cache.commit(3)
    assert cache.capacity == 256
    cache.reserve(300)
    assert cache.capacity == 512 and cache.length == 3 and torch.equal(cache.views()[0][0], torch.ones(1, 2, 3, 4))
    with pytest.raises(RuntimeError, match="capacity"):
        cache.write(0, torch.ones(1, 2, 600, 4), torch.ones(1, 2, 600, 4))


def test_a_state_taken_before_later_appends_restores_exactly():
    """The benchmark's rollback: a snapshot, then appends (in place and past the capacity, which
    doubles), then loads of the snapshot into the same stream, again and again."""
    enc = gqa_encoder()
    ids = random_ids(MAX_POSITIONS, seed=12)
    stream = StreamingEncoder(enc)
    stream._cache = KVCache(2, capacity=24)  # small, so the appends below cross a doubling
    at_snapshot = stream.append_ids(ids[:20])
    state = stream.state
    frozen = [t.clone() for t in state["keys"] + state["values"]]
    for round_ in range(3):
        stream.append_ids(ids[20:27])
        stream.append_ids(ids[27:40 + round_])
        assert all(torch.equal(t, f) for t, f in zip(state["keys"] + state["values"], frozen))
        stream.load_state(state)
        assert np.array_equal(stream.embedding(), at_snapshot)
    assert cosine_distance(stream.append_ids(ids[20:40]), stream.full_embedding(ids[:40])) <= 1e-6


# --------------------------------------------------------------------------- bounded memory


def test_rotating_a_cached_key_back_equals_rotating_it_at_the_lower_position():
    enc = gqa_encoder()
    stream = StreamingEncoder(enc, window=8, sink=2)
    rotary = enc.backbone.rotary_emb
    raw = torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(13))
    positions = torch.arange(20, 25)[None]
    apply = streaming._rotary(enc.backbone.layers[0].self_attn)

    def at(p):
        cos, sin = rotary(raw, p)
        return apply(raw, raw, cos, sin)[1]

    assert torch.allclose(stream._rotate(at(positions), 13), at(positions - 13), atol=1e-5)


def test_a_window_larger_than_the_stream_is_exact():
    ids = random_ids(40, seed=14)
    exact, bounded = StreamingEncoder(gqa_encoder()), StreamingEncoder(gqa_encoder(), window=60, sink=4)
    for a, b in [(0, 13), (13, 29), (29, 40)]:
        assert np.array_equal(exact.append_ids(ids[a:b]), bounded.append_ids(ids[a:b]))


def test_a_bounded_stream_keeps_its_memory_flat_and_outgrows_the_positions():
    stream = StreamingEncoder(gqa_encoder(), window=16, sink=4)
    generator = torch.Generator().manual_seed(15)
    sizes = []
    for _ in range(30):  # 30 x 7 = 210 tokens through a 64-position model
        vector = stream.append_ids(torch.randint(2, len(tokenizer()), (7,), generator=generator))
        assert stream.cache_tokens <= 4 + 16
        sizes.append(stream.cache_bytes)
    assert stream.n_tokens == 210 and len(set(sizes[5:])) == 1  # flat once the window is full
    assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 1e-5
    # the running mean covers the whole stream: its count is every token, not the cache's
    assert stream.state["sum"] is not None and len(stream.state["token_ids"]) == 210
    # before any eviction the window changes nothing; after, the sink is kept: the first 4 rows are the first tokens'
    fresh = StreamingEncoder(gqa_encoder())
    fresh.append_ids(stream.token_ids[:4])
    assert torch.allclose(stream._cache.views()[1][0][:, :, :4], fresh._cache.views()[1][0], atol=1e-6)


def test_a_bounded_state_round_trips_and_refuses_another_window(tmp_path):
    stream = StreamingEncoder(gqa_encoder(), window=12, sink=2)
    ids = random_ids(MAX_POSITIONS + 20, seed=16)
    for a in range(0, 70, 10):
        stream.append_ids(ids[a:a + 10])
    stream.save_state(tmp_path / "bounded")
    resumed = StreamingEncoder.restore(gqa_encoder(), tmp_path / "bounded")
    assert resumed.window == 12 and resumed.sink == 2 and resumed.n_tokens == 70
    assert np.array_equal(resumed.embedding(), stream.embedding())
    assert np.array_equal(resumed.append_ids(ids[70:80]), stream.append_ids(ids[70:80]))
    with pytest.raises(ValueError, match="window"):
        StreamingEncoder(gqa_encoder()).load_state(stream.state)
    with pytest.raises(ValueError, match="window must be"):
        StreamingEncoder(gqa_encoder(), window=0)
    with pytest.raises(ValueError, match="positions"):
        StreamingEncoder(gqa_encoder(), window=MAX_POSITIONS)


# --------------------------------------------------------------------------- many streams


def test_a_batch_of_streams_of_different_lengths_equals_one_at_a_time():
    enc = gqa_encoder()
    prefixes, pieces = [random_ids(n, seed=n) for n in (3, 17, 40)], [random_ids(n, seed=50 + n) for n in (5, 1, 9)]
    alone, together = [], []
    for prefix, piece in zip(prefixes, pieces):
        stream = StreamingEncoder(enc)
        stream.append_ids(prefix)
        alone.append(stream.append_ids(piece))
        batched = StreamingEncoder(enc)
        batched.append_ids(prefix)
        together.append(batched)
    vectors = append_batch(together, pieces)
    for single, batched, stream, prefix, piece in zip(alone, vectors, together, prefixes, pieces):
        assert cosine_distance(single, batched) <= 1e-6
        assert cosine_distance(batched, stream.full_embedding(prefix + piece)) <= 1e-6
        assert stream.n_tokens == len(prefix) + len(piece)


def test_a_failed_batch_changes_no_stream():
    streams = [StreamingEncoder(gqa_encoder()) for _ in range(2)]
    before = [s.append_ids(random_ids(6, seed=i)) for i, s in enumerate(streams)]
    with pytest.raises(ValueError, match="token ids"):
        append_batch(streams, [random_ids(3), [10**6]])
    with pytest.raises(ValueError, match="positions"):
        append_batch(streams, [random_ids(3), random_ids(MAX_POSITIONS)])
    with pytest.raises(ValueError, match="twice"):
        append_batch([streams[0], streams[0]], [random_ids(3), random_ids(3)])
    assert [s.n_tokens for s in streams] == [6, 6]
    assert all(np.array_equal(s.embedding(), b) for s, b in zip(streams, before))


def test_save_evict_restore_round_trips_to_the_same_embedding(tmp_path):
    enc = gqa_encoder()
    ids = random_ids(50, seed=17)
    kept, parked = StreamingEncoder(enc), StreamingEncoder(enc)
    kept.append_ids(ids[:30])
    parked.append_ids(ids[:30])
    parked.save_state(tmp_path / "user-1")
    del parked  # evicted from memory
    restored = StreamingEncoder.restore(enc, tmp_path / "user-1")
    assert np.array_equal(restored.embedding(), kept.embedding())
    assert np.array_equal(append_batch([restored], [ids[30:]])[0], kept.append_ids(ids[30:]))


# --------------------------------------------------------------------------- the GPU path, on a CPU


def test_the_static_path_equals_the_dynamic_one_and_graphs_stay_off_a_cpu():
    enc = gqa_encoder()
    ids = random_ids(60, seed=18)
    streams = [StreamingEncoder(enc) for _ in range(2)]
    streams[0].append_ids(ids[:11])
    streams[1].append_ids(ids[:30])
    static = StaticBatch(enc, batch=2, delta=6, capacity=MAX_POSITIONS)
    assert not static.graphs  # chosen only on CUDA
    for slot, stream in enumerate(streams):
        static.load(slot, stream)
    for step in range(3):
        new = torch.tensor([ids[11 + 6 * step: 17 + 6 * step], ids[30 + 6 * step: 36 + 6 * step]])
        fixed = static.append(new)
        dynamic = append_batch(streams, list(new))
        assert all(cosine_distance(a, b) <= 1e-6 for a, b in zip(fixed, dynamic))
    with pytest.raises(ValueError, match="CUDA"):
        StaticBatch(enc, batch=1, delta=4, capacity=32, graphs=True)
    with pytest.raises(ValueError, match="shape"):
        static.append(torch.tensor([ids[:5]]))


# --------------------------------------------------------------------------- conversations


def test_turn_chunks_keep_whole_turns_and_cut_at_the_limit():
    tok = tokenizer()
    text = "a: the cat\nb: sat on the mat\n\nc: dog ran\n"
    turns = [tok(t, add_special_tokens=False)["input_ids"] for t in ("a: the cat\n", "b: sat on the mat\n", "c: dog ran\n")]
    assert streambench.turn_chunks(tok, text, min_tokens=1) == turns
    assert streambench.turn_chunks(tok, text, min_tokens=len(turns[0]) + 1) == [turns[0] + turns[1], turns[2]]
    assert streambench.turn_chunks(tok, text, min_tokens=1, limit=len(turns[0]) + 2) == [turns[0], turns[1][:2]]
    assert streambench._cut_at([[1, 2, 3], [4, 5, 6, 7]], [2, 5, 99]) == [([1, 2], 2), ([3], None), ([4, 5], 5),
                                                                        ([6, 7], None)]


def test_stream_corpus_gives_each_checkpoint_from_one_pass():
    enc = gqa_encoder()
    texts = ["a: the cat sat on the mat\nb: a dog ran in the park\n" * 3, "c: causal students read\n"]
    out = streambench.stream_corpus(enc, texts, [8, 20], min_tokens=5, batch=2)
    for i, text in enumerate(texts):
        ids = [t for chunk in streambench.turn_chunks(tokenizer(), text, 5) for t in chunk]
        stream = StreamingEncoder(enc)
        for c in (8, 20):
            expected = stream.full_embedding(ids[:c])
            assert cosine_distance(out[c][i], expected) <= 1e-6
    windowed = streambench.stream_corpus(enc, texts, [20], min_tokens=5, batch=2, window=6, sink=2)
    assert cosine_distance(windowed[20][0], out[20][0]) > 1e-6  # evicted: an approximation
    assert cosine_distance(windowed[20][1], out[20][1]) <= 1e-6  # shorter than the window: exact


def test_conversation_replay_times_recomputes_and_measures_drift():
    enc = gqa_encoder()
    teacher, echo = gqa_encoder("bidirectional"), gqa_encoder("causal", "echo")
    text = "".join(f"speaker {i % 3}: the cat sat\n" for i in range(40))
    rows = streambench.conversation_replay(enc, teacher, echo, text, min_tokens=6, points=3, windows=(8,), sink=2)
    exact = [r for r in rows if "append_ms" in r]
    timed = [r for r in exact if "teacher_recompute_ms" in r]
    assert len(timed) == 3 and exact[-1]["tokens"] <= MAX_POSITIONS
    checked = [r for r in timed if "student_recompute_ms" in r]
    assert len(checked) == 1 and checked[0] is timed[-1] and checked[0]["cosine_distance_recompute"] <= 1e-6
    assert all(r["new_tokens"] >= 6 for r in timed) and sum(r["new_tokens"] for r in exact) == exact[-1]["tokens"]
    assert exact[-1]["drift_final"] <= 1e-12 and all(r["drift_final"] >= 0 for r in exact)
    assert rows[-1]["window_tokens"] > MAX_POSITIONS  # the bounded stream goes on past the positions
    assert len({r["cache_mb_window_8"] for r in rows[3:]}) == 1
