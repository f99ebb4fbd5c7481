"""Encoder: the attention bias, padding invariance, pooling, tokenization and persistence.

Everything runs on tiny randomly initialised decoders, Qwen2 and Llama, and a byte-level BPE
trained on a few sentences; no network.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from streamdistill.artifacts import ArtifactError
from streamdistill.encoder import (
    ECHO_MIDDLE,
    ECHO_PREFIX,
    Encoder,
    attention_bias,
    check_attention_implementation,
    position_ids_from_mask,
)
from streamdistill.testing import tiny_decoder, tiny_qwen2, tiny_tokenizer

NEG = torch.finfo(torch.float32).min
TEXTS = [
    "the cat sat on the mat",
    "a dog",
    "bidirectional teachers see the whole sentence at once, causal students do not",
    "streaming",
]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny matrices: thread hand-off costs more than the maths (about 8x on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizers():
    return {side: tiny_tokenizer(padding_side=side) for side in ("left", "right")}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def models(tokenizers, request):
    """Every invariant holds for both decoder architectures: Qwen2 (the paper's) and Llama (SmolLM2's)."""
    vocab = len(tokenizers["right"])
    return {impl: tiny_decoder(request.param, vocab, attn_implementation=impl) for impl in ("sdpa", "eager")}


def cosine_distance(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 1.0 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --- the attention bias -------------------------------------------------------------------------

# row 0: right padded (3 real tokens), row 1: left padded (3 real tokens)
MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])


def test_causal_bias_values():
    bias = attention_bias(MASK, "causal")
    assert bias.shape == (2, 1, 4, 4) and bias.dtype == torch.float32
    expected_row0 = torch.tensor(
        [[0, NEG, NEG, NEG], [0, 0, NEG, NEG], [0, 0, 0, NEG], [0, 0, 0, 0]]  # last: pad query also sees itself
    )
    expected_row1 = torch.tensor(
        [[0, NEG, NEG, NEG], [NEG, 0, NEG, NEG], [NEG, 0, 0, NEG], [NEG, 0, 0, 0]]  # first: pad query sees itself
    )
    assert torch.equal(bias[0, 0], expected_row0)
    assert torch.equal(bias[1, 0], expected_row1)


def test_bidirectional_bias_values():
    bias = attention_bias(MASK, "bidirectional")
    expected_row0 = torch.tensor([[0, 0, 0, NEG]] * 3 + [[0, 0, 0, 0]])  # pad query: real keys + itself
    expected_row1 = torch.tensor([[0, 0, 0, 0]] + [[NEG, 0, 0, 0]] * 3)
    assert torch.equal(bias[0, 0], expected_row0)
    assert torch.equal(bias[1, 0], expected_row1)


def test_soft_bias_is_log_weight_by_position():
    weights = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    bias = attention_bias(MASK, "soft", future_weights=weights)
    pos = position_ids_from_mask(MASK)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                value = float(bias[b, 0, i, j])
                if i == j:
                    assert value == 0.0  # every query, padding included, sees itself
                elif not MASK[b, j]:
                    assert value == NEG  # padding keys are always masked
                elif j <= i:
                    assert value == 0.0
                else:
                    expected = float(torch.log(weights[pos[b, i], pos[b, j]]))
                    assert value == pytest.approx(expected, abs=1e-7)
    # Left and right padding of the same 3 tokens give the same bias over the real tokens.
    assert torch.equal(bias[0, 0, :3, :3], bias[1, 0, 1:, 1:])


def test_soft_bias_with_all_ones_is_exactly_bidirectional():
    ones = torch.ones(6, 6)
    for dtype in (torch.float32, torch.bfloat16):
        soft = attention_bias(MASK, "soft", future_weights=ones, dtype=dtype)
        assert torch.equal(soft, attention_bias(MASK, "bidirectional", dtype=dtype))


def test_soft_zero_weight_is_finite_and_rejects_bad_inputs():
    bias = attention_bias(MASK, "soft", future_weights=torch.zeros(4, 4))
    assert torch.isfinite(bias).all()
    with pytest.raises(ValueError, match="future_weights"):
        attention_bias(MASK, "soft")
    with pytest.raises(ValueError, match="beyond"):
        attention_bias(torch.ones(1, 5), "soft", future_weights=torch.ones(3, 3))
    with pytest.raises(ValueError, match="mode"):
        attention_bias(MASK, "sideways")


def test_bias_query_rows_match_full_matrix():
    mask = torch.ones(1, 7, dtype=torch.long)
    full = attention_bias(mask, "causal")
    assert torch.equal(attention_bias(mask, "causal", query_length=3), full[:, :, -3:])


@pytest.mark.parametrize("mode", ["causal", "bidirectional", "soft"])
def test_no_nan_even_for_fully_padded_queries(models, mode):
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    weights = torch.full((8, 8), 0.5) if mode == "soft" else None
    bias = attention_bias(mask, mode, future_weights=weights)
    assert not torch.isnan(torch.softmax(bias, dim=-1)).any()
    hidden = models["sdpa"].model(
        input_ids=torch.randint(2, 200, (2, 5)), attention_mask=bias, position_ids=position_ids_from_mask(mask)
    ).last_hidden_state
    assert torch.isfinite(hidden).all()


def test_position_ids_ignore_padding():
    assert position_ids_from_mask(MASK).tolist() == [[0, 1, 2, 0], [0, 0, 1, 2]]


# --- transformers uses the 4-D mask as given ----------------------------------------------------


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_custom_mask_is_not_recausalised(models, impl):
    """Token 0 depends on a later token in bidirectional mode, and not in causal mode."""
    backbone = models[impl].model
    ids = torch.randint(2, 200, (1, 8), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 7) % 200 + 2
    mask = torch.ones_like(ids)

    def hidden(x, mode):
        with torch.no_grad():
            return backbone(input_ids=x, attention_mask=attention_bias(mask, mode)).last_hidden_state

    assert (hidden(ids, "bidirectional")[0, 0] - hidden(changed, "bidirectional")[0, 0]).abs().max() > 1e-4
    assert torch.equal(hidden(ids, "causal")[0, :6], hidden(changed, "causal")[0, :6])
    # Our causal bias reproduces the model's own causal attention.
    with torch.no_grad():
        native = backbone(input_ids=ids).last_hidden_state
    assert torch.allclose(hidden(ids, "causal"), native, atol=1e-6)


def test_kernels_that_ignore_custom_masks_are_refused(models, tokenizers):
    from types import SimpleNamespace

    check_attention_implementation(models["eager"].model)
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="custom additive mask"):
        check_attention_implementation(flash)


# --- encoder forward and pooling ----------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["mean", "last", "echo"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_padding_invariance(models, tokenizers, side, pooling, attention):
    encoder = Encoder(models["sdpa"], tokenizers[side], attention=attention, pooling=pooling)
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS))
    alone = np.stack([encoder.encode([text]) for text in TEXTS])[:, 0]
    assert cosine_distance(batched, alone).max() <= 1e-6
    # ... and the other padding side gives the same vectors.
    other = Encoder(models["sdpa"], tokenizers["right" if side == "left" else "left"], attention=attention, pooling=pooling)
    assert cosine_distance(batched, other.encode(TEXTS, batch_size=len(TEXTS))).max() <= 1e-6


def test_padding_invariance_eager(models, tokenizers):
    encoder = Encoder(models["eager"], tokenizers["left"], attention="bidirectional", pooling="mean")
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS))
    alone = np.stack([encoder.encode(text) for text in TEXTS])
    assert cosine_distance(batched, alone).max() <= 1e-6


def test_pooling_matches_manual_computation(models, tokenizers):
    for side in ("left", "right"):
        mean = Encoder(models["sdpa"], tokenizers[side], pooling="mean", normalize=False)
        last = Encoder(models["sdpa"], tokenizers[side], pooling="last", normalize=False)
        batch = mean.tokenize(TEXTS[:2])
        with torch.no_grad():
            out = mean(**batch)
            last_out = last(**batch)
        for row in range(2):
            real = batch["attention_mask"][row].bool()
            states = out["hidden"][row][real]
            assert torch.allclose(out["embedding"][row], states.mean(0), atol=1e-6)
            assert torch.allclose(last_out["embedding"][row], states[-1], atol=1e-6)


def test_echo_pools_exactly_the_second_copy(models, tokenizers):
    tok = tokenizers["left"]
    encoder = Encoder(models["sdpa"], tok, pooling="echo", normalize=False)
    batch = encoder.tokenize(TEXTS)
    prefix = tok(ECHO_PREFIX, add_special_tokens=False)["input_ids"]
    middle = tok(ECHO_MIDDLE, add_special_tokens=False)["input_ids"]
    for row, text in enumerate(TEXTS):
        x = tok(text, add_special_tokens=False)["input_ids"]
        real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert real == prefix + x + middle + x
        assert batch["input_ids"][row][batch["pool_mask"][row].bool()].tolist() == x
        # the pooled copy is the *second* one: it ends at the last real token
        assert batch["pool_mask"][row][-1] == 1
    with torch.no_grad():
        out = encoder(**batch)
    for row in range(len(TEXTS)):
        pooled = out["hidden"][row][batch["pool_mask"][row].bool()].mean(0)
        assert torch.allclose(out["embedding"][row], pooled, atol=1e-6)
    # Echo processes the text twice plus the prompt.
    plain = Encoder(models["sdpa"], tok, pooling="mean").tokens_per_text(TEXTS)
    echo = encoder.tokens_per_text(TEXTS)
    assert echo == [2 * n + len(prefix) + len(middle) for n in plain]


def test_special_tokens_are_kept_and_counted_in_max_length(models):
    """A tokenizer that appends EOS: plain inputs keep it (last pooling reads it), Echo wraps once."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer(padding_side="left")
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    text = TEXTS[0]
    x = tok(text, add_special_tokens=False)["input_ids"]
    plain = Encoder(models["sdpa"], tok, pooling="last", max_length=5)
    with pytest.warns(UserWarning, match="truncated"):
        batch = plain.tokenize([text, "a dog"])
    assert batch["input_ids"][0].tolist() == x[:4] + [1]  # 5 tokens, EOS included
    echo = Encoder(models["sdpa"], tok, pooling="echo")
    batch = echo.tokenize([text])
    assert batch["input_ids"][0].tolist()[-1] == 1 and batch["input_ids"][0].tolist().count(1) == 1
    assert batch["input_ids"][0][batch["pool_mask"][0].bool()].tolist() == x
    for pooling in ("last", "echo"):
        encoder = Encoder(models["sdpa"], tok, pooling=pooling)
        alone = np.stack([encoder.encode(t) for t in TEXTS])
        assert cosine_distance(encoder.encode(TEXTS, batch_size=4), alone).max() <= 1e-6


def test_soft_mode_trains_through_hidden_states(models, tokenizers):
    encoder = Encoder(models["sdpa"], tokenizers["right"], attention="causal")
    batch = encoder.tokenize(TEXTS[:2])
    out_soft = encoder(**batch, future_weights=torch.full((64, 64), 0.5))
    out_causal = encoder(**batch)
    out_soft["hidden"].retain_grad()
    out_soft["embedding"].sum().backward()
    assert out_soft["hidden"].grad is not None
    assert not torch.allclose(out_soft["embedding"], out_causal["embedding"])
    all_ones = encoder(**batch, future_weights=torch.ones(64, 64))["embedding"]
    bidir = Encoder(models["sdpa"], tokenizers["right"], attention="bidirectional")(**batch)["embedding"]
    assert torch.equal(all_ones, bidir)


def test_projection_shapes_and_properties(models, tokenizers):
    projection = torch.nn.Linear(32, 12)
    encoder = Encoder(models["sdpa"], tokenizers["right"], projection=projection)
    assert encoder.backbone is models["sdpa"].model  # the LM head is dropped
    assert encoder.embed_dim == 12
    assert encoder.n_parameters == sum(p.numel() for p in models["sdpa"].model.parameters()) + 32 * 12 + 12
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 12) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert encoder.encode(TEXTS[0]).shape == (12,)
    assert isinstance(encoder.encode(TEXTS, convert_to_numpy=False), torch.Tensor)


def test_encode_keeps_input_order_and_restores_mode(models, tokenizers):
    encoder = Encoder(models["sdpa"], tokenizers["right"]).train()
    small_batches = encoder.encode(TEXTS, batch_size=1)
    one_batch = encoder.encode(TEXTS, batch_size=3)
    assert cosine_distance(small_batches, one_batch).max() <= 1e-6
    assert encoder.training  # restored


@pytest.mark.parametrize("pooling", ["mean", "echo"])
def test_bf16_encode_is_float32_output_close_to_float32(models, tokenizers, pooling):
    encoder = Encoder(models["sdpa"], tokenizers["right"], pooling=pooling, attention="bidirectional")
    full = encoder.encode(TEXTS)
    half = encoder.encode(TEXTS, precision="bfloat16")
    assert half.dtype == np.float32 and half.shape == full.shape
    assert not np.array_equal(half, full)  # the autocast really ran in bf16
    assert cosine_distance(half, full).max() <= 1e-3
    assert all(p.dtype == torch.float32 for p in encoder.parameters())  # weights untouched
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        encoder.encode(TEXTS, precision="fp8")


def test_embedding_model_revision_names_the_precision():
    from streamdistill.models import from_encoder

    class Fake:
        def __init__(self):
            self.calls = []

        def encode(self, texts, batch_size, **options):
            self.calls.append(options)
            return np.zeros((len(texts), 2))

    fake = Fake()
    full = from_encoder(fake, "m", "r", precision="float32")
    half = from_encoder(fake, "m", "r", precision="bfloat16")
    assert full.revision == "r" and half.revision == "r-bfloat16"  # mteb's cache keeps them apart
    full.encode(["a"]), half.encode(["a"])
    assert fake.calls == [{}, {"precision": "bfloat16"}]


def test_empty_text_raises(models, tokenizers):
    encoder = Encoder(models["sdpa"], tokenizers["right"])
    for bad in ("", "   \n"):
        with pytest.raises(ValueError, match="empty text at index 1"):
            encoder.tokenize(["fine", bad])
    with pytest.raises(ValueError, match="empty text at index 0"):
        encoder.encode([""])
    with pytest.raises(ValueError, match="no texts"):
        encoder.tokenize([])


def test_truncation_warns_once_per_call(models, tokenizers):
    encoder = Encoder(models["sdpa"], tokenizers["right"], max_length=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = encoder.tokenize(TEXTS)
        encoder.encode(TEXTS, batch_size=1)
    assert len(caught) == 2  # one per call, not one per text or per batch
    assert "3 of 4 texts" in str(caught[0].message)
    assert batch["attention_mask"].sum(1).max() == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.tokenize(["a dog"])  # short texts: no warning


def test_too_long_for_the_model_raises(tokenizers):
    short = tiny_qwen2(len(tokenizers["right"]), max_positions=8)
    encoder = Encoder(short, tokenizers["right"], pooling="echo", max_length=8)
    with pytest.raises(ValueError, match="positions"), pytest.warns(UserWarning, match="truncated"):
        encoder.encode([TEXTS[2]])


def test_tiny_qwen2_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = tiny_qwen2(300, seed=5), tiny_qwen2(300, seed=5)
    assert torch.equal(torch.rand(1), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# --- persistence --------------------------------------------------------------------------------


def saved_encoder(models, tokenizers, tmp_path):
    projection = torch.nn.Linear(32, 16)
    encoder = Encoder(
        models["sdpa"], tokenizers["left"], attention="bidirectional", pooling="echo",
        projection=projection, normalize=True, max_length=64,
    )
    return encoder, encoder.save(tmp_path / "encoder")


def test_save_load_round_trip(models, tokenizers, tmp_path):
    encoder, folder = saved_encoder(models, tokenizers, tmp_path)
    config = json.loads((folder / "encoder_config.json").read_text())
    assert config["attention"] == "bidirectional" and config["pooling"] == "echo"
    assert config["projection"] == {"in_features": 32, "out_features": 16, "bias": True}
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))  # no pickles
    loaded = Encoder.load(folder, device=encoder.device)  # bit-exact needs the same device (default: the GPU if any)
    assert loaded.tokenizer.padding_side == "left" and loaded.max_length == 64
    assert np.array_equal(loaded.encode(TEXTS), encoder.encode(TEXTS))


def test_truncated_weights_raise_one_line_error(models, tokenizers, tmp_path):
    _, folder = saved_encoder(models, tokenizers, tmp_path)
    weights = folder / "backbone" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtifactError) as info:
        Encoder.load(folder)
    assert "\n" not in str(info.value) and "truncated" in str(info.value)


def test_garbage_weights_and_projection_raise_one_line_error(models, tokenizers, tmp_path):
    _, folder = saved_encoder(models, tokenizers, tmp_path)
    projection = folder / "projection.safetensors"
    projection.write_bytes(projection.read_bytes()[:50])
    with pytest.raises(ArtifactError) as info:
        Encoder.load(folder)
    assert "\n" not in str(info.value)
    (folder / "backbone" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ArtifactError) as info:
        Encoder.load(folder)
    assert "\n" not in str(info.value) and "corrupt" in str(info.value)
    with pytest.raises(ArtifactError, match="not a saved Encoder"):
        Encoder.load(tmp_path / "nowhere")


def test_inference_device_reads_the_environment_then_the_gpu(monkeypatch):
    from streamdistill import encoder as enc

    monkeypatch.delenv(enc.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert enc.inference_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert enc.inference_device() == "cuda"
    monkeypatch.setenv(enc.DEVICE_ENV, "cpu")
    assert enc.inference_device() == "cpu"


def test_long_texts_are_cut_at_a_word_boundary_without_changing_the_tokens(tokenizers):
    """Cutting a long document a margin past the budget before tokenizing keeps its first tokens."""
    import random

    from streamdistill.encoder import _head_words

    tok = tokenizers["right"]
    rng = random.Random(0)
    words = ["the", "cat,", "sat", "on", "the", "mat.", "Streaming", "embeddings", "reuse", "the", "cache!", "42",
             "naïve", "café", "x" * 40]
    for _ in range(20):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(50, 400))).replace(" x", "\n\nx")
        for budget in (3, 10, 40, 120):
            full = tok(text, add_special_tokens=False)["input_ids"][:budget]
            cut = tok(_head_words(text, budget + 16), add_special_tokens=False)["input_ids"][:budget]
            assert full == cut
    assert _head_words("short text", 5) == "short text"
