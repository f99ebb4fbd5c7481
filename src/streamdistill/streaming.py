"""`StreamingEncoder`: re-embed a growing text at the cost of the new tokens only.

A causal encoder's token states never change when tokens are appended: token i attends to
tokens <= i only. So a stream (a chat, a user's event log) can keep

* the backbone's keys and values (a :class:`KVCache`), so new tokens attend to the old ones
  without recomputing them;
* a running sum of last-layer token states and their count (mean pooling), or the last token's
  state (last pooling);

and return ``normalize(projection(sum / count))`` after each append: exactly what a full
recompute of the whole text gives (tests: cosine distance <= 1e-6), for the price of the appended
tokens. A bidirectional encoder cannot do this (every old state changes when a token arrives),
nor can Echo pooling (the pooled copy must come after the whole text).

The attention path (:func:`run_backbone`). An append runs the backbone's own modules (norms,
projections, rotary embedding, MLP) directly, not through transformers' ``forward``, because two
things there cost an update more than its arithmetic: ``DynamicCache`` concatenates (reallocates
and copies) the whole cache in every layer, and a custom 4-D mask turns off SDPA's causal and
grouped-query paths, so K and V are copied once per query head. Here

* the cache is allocated ahead (doubling when full) and new keys and values are written in place;
* no mask is built: the new block's queries attend to the cached keys unmasked, with the query
  heads of each KV head folded into its query rows (K and V are never copied per head), and to
  their own block causally (a square, where SDPA's ``is_causal`` is exact); the two halves are
  merged by their log-sum-exps (on a CPU; elsewhere SDPA with a small boolean mask and
  ``enable_gqa``);
* every recompute that the benchmark times, the teacher's bidirectional one (SDPA without a mask)
  and the student's own (``is_causal``), runs the same path, so a speed-up measures the cache and
  not two implementations of attention. A figure above the token ratio would mean the recompute
  is slower per FLOP than the append, a bug to explain.

Transformers' path stays as the oracle (``attention_path="transformers"``, and
:meth:`StreamingEncoder.full_embedding` runs ``Encoder.forward``): the tests compare both paths
with it. Backbones other than Llama / Qwen2 decoders take that path.

The running sum is kept in float64. A float32 running sum adds one rounding per append, so its
error bound grows with the number of appends (up to ~n·eps relative, ~5e-4 after 4096 one-token
appends), while the full recompute sums each vector once in a blocked reduction. In float64 the
running sum stays at least as accurate as that one-shot float32 sum however long the stream
lives, for the cost of H doubles; the mean is cast back to float32, the full path's precision.

Bounded memory (an option, never the default): ``StreamingEncoder(encoder, window=W, sink=S)``
keeps the first S tokens' keys and values (the attention sink of StreamingLLM, Xiao et al. 2024)
and the W most recent ones; older ones are evicted, the kept keys re-rotated to their new cache
positions, so positions never pass S + W + the append and the stream may outgrow the model's
positions. The running sum and count stay outside the cache and cover the whole stream; the states
of tokens computed after an eviction are approximate (the book measures how much).

A stream can be parked and resumed (``state`` / ``load_state``, ``save_state`` / ``restore``):
tensors in safetensors, scalars in JSON. A state is a snapshot: later appends never write the
rows it holds (they go after them, or into new buffers). An exact stream never grows past the
model's ``max_position_embeddings``: positions beyond it were never trained, so ``append`` raises
``ValueError`` instead of returning a wrong vector. :func:`append_batch` appends to several
streams in one forward.

Special tokens follow ``Encoder.encode``: a token the tokenizer puts before every text (a BOS)
opens the stream, and the tokens it puts after every text (the project's tokenizer ends each text
with ``<eos>``, and the student was trained on such texts) ride along in each append's forward
and are then dropped from the cache, never kept. So the streamed vector of a text is the vector
``encode`` gives that text (tests: cosine distance <= 1e-6), for one extra token per append.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import ArtifactError, atomic_dir, atomic_write_json, load_tensors, save_tensors
from .encoder import Encoder, attention_bias, check_attention_implementation

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
STATE_FORMAT = 1
ATTENTION_PATHS = ("auto", "direct", "transformers")
DIRECT_MODEL_TYPES = ("llama", "qwen2")  # decoders whose layers run_backbone reproduces (tested on both)


def _as_ids(ids: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
    """Token ids of any common container as a flat CPU ``long`` tensor."""
    if isinstance(ids, torch.Tensor):
        return ids.detach().to("cpu", torch.long).reshape(-1)
    return torch.as_tensor(np.asarray(ids, dtype=np.int64)).reshape(-1)


# =============================================================================================
# the attention path: the backbone's own modules over a KV cache written in place
# =============================================================================================


class KVCache:
    """One stream's keys and values per layer, in buffers allocated ahead and written in place.

    Each buffer is ``(1, kv_heads, capacity, head_dim)``; its first ``length`` rows hold the stream.
    An append writes its rows after ``length`` (:meth:`write`, which also returns the keys and
    values attention reads) and keeps some of them (:meth:`commit`); rows it does not commit (the
    closing special tokens, a failed append) are simply overwritten later. Rows below ``length``
    are never written again: growing copies into new buffers twice the size, and evicting (a
    bounded stream) builds new ones too. So :meth:`views` handed out in a snapshot stay valid.
    """

    def __init__(self, n_layers: int, *, capacity: int = 256):
        self.n_layers = int(n_layers)
        self.keys: list[torch.Tensor] = []  # allocated by the first write (its dtype and device)
        self.values: list[torch.Tensor] = []
        self.length = 0
        self._capacity = int(capacity)

    @classmethod
    def of(cls, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], *, headroom: int = 256,
           device=None, dtype=None) -> KVCache:
        """A cache holding copies of ``keys`` / ``values`` ((1, kv_heads, n, head_dim) per layer)."""
        cache = cls(len(keys))
        n = int(keys[0].shape[2]) if len(keys) else 0
        cache._allocate(n + headroom, [k.to(device, dtype) for k in keys], [v.to(device, dtype) for v in values], n)
        return cache

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else self._capacity

    @property
    def nbytes(self) -> int:
        """Bytes allocated (all of the buffers, used or not)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def used_bytes(self) -> int:
        """Bytes of the rows that hold the stream."""
        return sum(t[:, :, : self.length].numel() * t.element_size() for t in self.keys + self.values)

    def _allocate(self, capacity: int, keys: list[torch.Tensor], values: list[torch.Tensor], keep: int) -> None:
        """New buffers of ``capacity`` rows, the first ``keep`` rows copied from ``keys`` / ``values``."""
        def grown(t: torch.Tensor) -> torch.Tensor:
            buffer = t.new_empty(*t.shape[:2], capacity, t.shape[3])
            buffer[:, :, :keep] = t[:, :, :keep]
            return buffer

        self.keys, self.values = [grown(k) for k in keys], [grown(v) for v in values]
        self.length = keep

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more rows (doubling the buffers when they are full)."""
        if self.keys and self.length + n > self.capacity:
            self._allocate(max(2 * self.capacity, self.length + n), self.keys, self.values, self.length)
        elif not self.keys:
            self._capacity = max(self._capacity, n)

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new rows of ``layer`` after the stream; return its keys and values so far."""
        n = keys.shape[2]
        if not self.keys:  # the first write: buffers in the dtype and device of the model
            self.keys = [keys.new_empty(*keys.shape[:2], self._capacity, keys.shape[3]) for _ in range(self.n_layers)]
            self.values = [values.new_empty(*values.shape[:2], self._capacity, values.shape[3])
                           for _ in range(self.n_layers)]
        end = self.length + n
        if end > self.capacity:
            raise RuntimeError(f"KVCache.write past its capacity ({end} > {self.capacity}): reserve() first")
        self.keys[layer][:, :, self.length:end] = keys
        self.values[layer][:, :, self.length:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def commit(self, n: int) -> None:
        """Keep ``n`` of the rows written after the stream."""
        self.length += int(n)

    def views(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stream's keys and values per layer, shared (no copy): rows that are never written again."""
        return [k[:, :, : self.length] for k in self.keys], [v[:, :, : self.length] for v in self.values]

    def evicted(self, sink: int, drop: int, room: int, rotate) -> KVCache:
        """A new cache without the ``drop`` rows after the first ``sink``, with ``room`` rows free; the
        kept later keys go through ``rotate(keys, shift)`` (to positions ``drop`` lower). This cache
        is untouched (a snapshot may hold it)."""
        if not 0 < drop <= self.length - sink:
            raise ValueError(f"cannot evict {drop} of {self.length} rows after a {sink}-row sink")
        out = KVCache(self.n_layers)
        keep = self.length - drop
        out.length = keep
        for k, v in zip(self.keys, self.values):
            shape = (*k.shape[:2], keep + room, k.shape[3])
            nk, nv = k.new_empty(shape), v.new_empty(shape)
            nk[:, :, :sink], nv[:, :, :sink] = k[:, :, :sink], v[:, :, :sink]
            nk[:, :, sink:keep] = rotate(k[:, :, sink + drop: self.length], drop)
            nv[:, :, sink:keep] = v[:, :, sink + drop: self.length]
            out.keys.append(nk)
            out.values.append(nv)
        return out


def direct_path_supported(backbone: torch.nn.Module) -> bool:
    """Whether :func:`run_backbone` reproduces this backbone: a Llama or Qwen2 decoder stack."""
    config = getattr(backbone, "config", None)
    if getattr(config, "model_type", None) not in DIRECT_MODEL_TYPES:
        return False
    if not all(hasattr(backbone, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    attn = backbone.layers[0].self_attn
    return all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))


# the CPU flash kernel, which also returns each query row's log-sum-exp (what merging two halves needs)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """Attention of ``n`` new queries ``q`` (1, H, n, d) over ``keys`` / ``values`` (1, KVH, T, d),
    whose last ``n`` rows are the new tokens' own; no mask is materialised where causality allows one
    to be skipped, and K / V are never copied per query head."""
    # one dtype for the three: autocast's, as SDPA has under autocast (rotary embeddings promote q and
    # k to float32 there, v stays bf16), else the queries' (a state loaded in another precision)
    kind = q.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else q.dtype
    q, keys, values = q.to(dtype), keys.to(dtype), values.to(dtype)
    n, total = q.shape[2], keys.shape[2]
    past = total - n
    if not causal or n == 1:  # every query sees every key
        return F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=True)
    if past == 0:  # square: is_causal is exact
        return F.scaled_dot_product_attention(q, keys, values, scale=scale, is_causal=True, enable_gqa=True)
    if q.device.type == "cpu" and _FLASH_CPU is not None:
        return _attend_split(q, keys, values, scale)
    future = torch.arange(total, device=q.device)[None] <= torch.arange(past, total, device=q.device)[:, None]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=future, scale=scale, enable_gqa=True)


def _attend_split(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`attend` on a CPU: the cached keys unmasked (the query heads of each KV head folded into
    its rows), the new block causally (a square), merged by their log-sum-exps."""
    b, heads, n, d = q.shape
    kv_heads, past = keys.shape[1], keys.shape[2] - n
    group = heads // kv_heads
    folded = q.reshape(b, kv_heads, group * n, d)
    out_past, lse_past = _FLASH_CPU(folded, keys[:, :, :past], values[:, :, :past], 0.0, False, scale=scale)
    own_k = keys[:, :, past:].repeat_interleave(group, 1)  # n rows only
    own_v = values[:, :, past:].repeat_interleave(group, 1)
    out_new, lse_new = _FLASH_CPU(q, own_k, own_v, 0.0, True, scale=scale)
    lse_past, out_past = lse_past.reshape(b, heads, n, 1), out_past.reshape(b, heads, n, d)
    lse_new = lse_new.reshape(b, heads, n, 1)
    top = torch.maximum(lse_past, lse_new)
    w_past, w_new = (lse_past - top).exp_(), (lse_new - top).exp_()
    total = w_past + w_new
    return (out_past * (w_past / total) + out_new * (w_new / total)).to(q.dtype)


def _rotary(layer_attn: torch.nn.Module):
    """The model's own ``apply_rotary_pos_emb`` (the one its attention uses)."""
    return sys.modules[type(layer_attn).__module__].apply_rotary_pos_emb


def run_backbone(backbone: torch.nn.Module, pieces: Sequence[tuple[torch.Tensor, KVCache | None]], *,
                 causal: bool = True) -> list[torch.Tensor]:
    """Last-layer states of each piece of token ids, ``[(n_i, H)]``, each run against its own cache
    (``None``: from scratch), in one forward.

    The pieces are packed into one row for every linear layer (streams of different lengths batch
    without padding); attention is per piece (:func:`attend`). A piece's positions continue its
    cache (``cache.length`` onwards); its keys and values are written into the cache after the
    stream and not committed (the caller commits what it keeps).
    """
    device = backbone.embed_tokens.weight.device
    sizes = [int(ids.numel()) for ids, _ in pieces]
    starts = [cache.length if cache is not None else 0 for _, cache in pieces]
    for (_, cache), n in zip(pieces, sizes):
        if cache is not None:
            cache.reserve(n)
    ids = torch.cat([ids.reshape(-1) for ids, _ in pieces]).to(device)[None]
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, sizes)]).to(device)[None]
    x = backbone.embed_tokens(ids)
    cos, sin = backbone.rotary_emb(x, positions)
    rotate = _rotary(backbone.layers[0].self_attn)
    total = x.shape[1]
    for index, layer in enumerate(backbone.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, total, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, total, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(1, total, -1, attn.head_dim).transpose(1, 2)
        q, k = rotate(q, k, cos, sin)
        outs, at = [], 0
        for (_, cache), n in zip(pieces, sizes):
            qs, ks, vs = q[:, :, at:at + n], k[:, :, at:at + n], v[:, :, at:at + n]
            if cache is not None:
                ks, vs = cache.write(index, ks, vs)
            outs.append(attend(qs, ks, vs, causal, attn.scaling))
            at += n
        o = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(1, total, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return list(backbone.norm(x)[0].split(sizes))


def recompute(encoder: Encoder, ids: torch.Tensor, pool_mask: torch.Tensor | None = None) -> np.ndarray:
    """The embedding of one sequence of ids from scratch, on the append's attention path (causal:
    SDPA's ``is_causal``; bidirectional: no mask at all), without a position guard (Echo's doubled
    text may run past the trained positions: timed for its latency, rotary positions extrapolate).
    Backbones without the direct path run ``Encoder``'s own forward."""
    ids = _as_ids(ids)
    mask = torch.ones(1, ids.numel(), dtype=torch.long)
    pool = None if pool_mask is None else pool_mask.reshape(1, -1)
    with torch.no_grad():
        if direct_path_supported(encoder.backbone):
            hidden = run_backbone(encoder.backbone, [(ids, None)], causal=encoder.attention == "causal")[0][None]
        else:
            bias = attention_bias(mask, encoder.attention, dtype=encoder.dtype).to(encoder.device)
            hidden = encoder.backbone(input_ids=ids[None].to(encoder.device), attention_mask=bias,
                                      position_ids=torch.arange(ids.numel(), device=encoder.device)[None],
                                      use_cache=False).last_hidden_state
        device = hidden.device
        out = encoder.project(encoder.pool(hidden, mask.to(device), None if pool is None else pool.to(device)))
    return out[0].float().cpu().numpy()


# =============================================================================================
# the stream
# =============================================================================================


class StreamingEncoder:
    """Incremental embeddings of one growing token stream over a causal ``Encoder``.

    >>> stream = StreamingEncoder(encoder)        # doctest: +SKIP
    >>> stream.append("first turn")               # doctest: +SKIP  -> embedding of the stream so far
    >>> stream.append(" second turn")             # doctest: +SKIP  -> costs only the new tokens

    ``append(text)`` tokenizes each piece on its own, without special tokens (the tokenizer's
    leading special tokens, if any, open the stream): the stream *is* its token ids. The
    tokenizer's trailing special tokens (:attr:`suffix_ids`) are added at pooling time only, as
    ``encode`` adds them; :meth:`full_embedding` of :attr:`token_ids` is the same vector recomputed.
    The encoder is put in eval mode.

    ``window`` (default ``None``: exact, every token kept) bounds the cache to the first ``sink``
    tokens and the ``window`` most recent ones (see the module's docstring). ``attention_path``:
    ``"direct"`` (:func:`run_backbone`), ``"transformers"`` (the oracle), or ``"auto"``: direct
    where the backbone supports it.
    """

    def __init__(self, encoder: Encoder, *, window: int | None = None, sink: int = 4, attention_path: str = "auto"):
        if encoder.attention != "causal":
            raise ValueError(
                f"StreamingEncoder needs a causal encoder, got attention={encoder.attention!r}: with bidirectional "
                "attention every earlier token state changes when a token is appended, so a cache would be stale"
            )
        if encoder.pooling not in ("mean", "last"):
            raise ValueError(
                f"StreamingEncoder supports mean and last pooling, got pooling={encoder.pooling!r}: Echo pools a copy "
                "of the text placed after the whole text, so appending changes everything the pooled copy sees"
            )
        if attention_path not in ATTENTION_PATHS:
            raise ValueError(f"attention_path must be one of {ATTENTION_PATHS}, got {attention_path!r}")
        direct = direct_path_supported(encoder.backbone)
        if attention_path == "direct" and not direct:
            raise ValueError(f"the direct attention path supports {', '.join(DIRECT_MODEL_TYPES)} decoders, not "
                             f"{type(encoder.backbone).__name__}; use attention_path='transformers'")
        self.encoder = encoder.eval()
        self.attention_path = "direct" if attention_path == "auto" and direct else \
            "transformers" if attention_path == "auto" else attention_path
        self._checksum: list[float] | None = None
        template = encoder.template  # the special tokens encode() puts around a text
        self.prefix_ids, self.suffix_ids = list(template.head), list(template.tail)
        self.window, self.sink = (None, 0) if window is None else (int(window), int(sink))
        if window is not None:
            if self.window < 1 or self.sink < 0:
                raise ValueError(f"window must be >= 1 and sink >= 0, got window={window}, sink={sink}")
            if self.sink + self.window + len(self.suffix_ids) > self.max_positions:
                raise ValueError(f"sink + window = {self.sink + self.window} (+{len(self.suffix_ids)} closing tokens) "
                                 f"exceeds the model's {self.max_positions} positions")
            if float(getattr(encoder.backbone.rotary_emb, "attention_scaling", 1.0)) != 1.0:
                raise ValueError("a bounded window re-rotates cached keys, which needs a rotary embedding without "
                                 "attention scaling")
        self.reset()

    # --- the stream ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything appended so far."""
        self._cache = KVCache(int(self.encoder.backbone.config.num_hidden_layers))
        self._sum: torch.Tensor | None = None  # float64 (H,), sum of last-layer states
        self._last: torch.Tensor | None = None  # (H,), the last token's last-layer state
        self._ids: list[int] = []
        self._pooled: np.ndarray | None = None  # embedding() of the current stream, once computed

    @property
    def n_tokens(self) -> int:
        """Tokens appended so far (a bounded stream's cache holds fewer: :attr:`cache_tokens`)."""
        return len(self._ids)

    @property
    def cache_tokens(self) -> int:
        return self._cache.length

    @property
    def cache_bytes(self) -> int:
        """Bytes of memory the stream's cache holds (its allocated buffers)."""
        return self._cache.nbytes

    @property
    def token_ids(self) -> list[int]:
        """Every token id appended so far (a copy)."""
        return list(self._ids)

    @property
    def max_positions(self) -> int:
        return self.encoder.max_positions

    def append(self, text: str) -> np.ndarray:
        """Append a piece of text; return the embedding of the whole stream so far."""
        return self.append_ids(self._text_ids(text))

    def _text_ids(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty text: an empty or whitespace-only piece has nothing to append")
        ids = self.encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.prefix_ids + list(ids) if self.n_tokens == 0 else list(ids)

    def append_ids(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
        """Append token ids; return the embedding of the whole stream so far.

        Raises ``ValueError`` if an exact stream would exceed the model's positions (the stream is
        left unchanged) or an id is outside the vocabulary.
        """
        ids = _as_ids(ids)
        if ids.numel() == 0:
            return self.embedding()
        return append_batch([self], [ids])[0]

    def _check_ids(self, ids: torch.Tensor) -> None:
        vocab = int(self.encoder.backbone.config.vocab_size)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab}), got min {int(ids.min())}, max {int(ids.max())}")

    def _plan(self, ids: torch.Tensor) -> KVCache:
        """Check an append of ``ids``; return the cache it runs against (a bounded stream's, with the
        oldest tokens after the sink evicted to make room). Changes nothing."""
        self._check_ids(ids)
        new, closing = ids.numel(), len(self.suffix_ids)
        if self.window is None:
            if self.n_tokens + new + closing > self.max_positions:
                raise ValueError(
                    f"the stream would hold {self.n_tokens + new} tokens (+{closing} closing special tokens) but "
                    f"the model has {self.max_positions} positions; positions past that were never trained, so the "
                    "vector would be wrong: reset(), start a new stream, or bound it with window="
                )
            return self._cache
        budget = self.sink + self.window
        if self.sink + new + closing > self.max_positions:
            raise ValueError(f"an append of {new} tokens (+{closing} closing) does not fit the model's "
                             f"{self.max_positions} positions after the {self.sink}-token sink")
        cache = self._cache
        drop = min(cache.length + new + closing - budget, cache.length - min(self.sink, cache.length))
        return cache.evicted(self.sink, drop, new + closing, self._rotate) if drop > 0 else cache

    def _rotate(self, keys: torch.Tensor, shift: int) -> torch.Tensor:
        """Keys rotated by ``shift`` positions back (rotary: R(p - s) = R(-s) R(p))."""
        backbone = self.encoder.backbone
        probe = keys.new_zeros(1, 1, keys.shape[-1])
        cos, sin = backbone.rotary_emb(probe, torch.tensor([[shift]], device=keys.device))
        half = keys.shape[-1] // 2
        turned = torch.cat((-keys[..., half:], keys[..., :half]), -1)  # rotate_half
        return keys * cos[:, None] - turned * sin[:, None]

    def _forward(self, pieces: list[tuple[torch.Tensor, KVCache]]) -> list[torch.Tensor]:
        """Last-layer states of each piece against its cache (written, not committed)."""
        backbone = self.encoder.backbone
        with torch.no_grad():
            if self.attention_path == "direct":
                return run_backbone(backbone, pieces, causal=True)
            return [_forward_transformers(backbone, ids, cache, self.encoder.dtype) for ids, cache in pieces]

    def embedding(self) -> np.ndarray:
        """The embedding of everything appended so far (float32, (D,))."""
        if self.n_tokens == 0:
            raise ValueError("the stream is empty: append text or ids first")
        if self._pooled is None:  # after load_state: run the closing special tokens against the cache
            closing = None
            if self.suffix_ids:
                suffix = torch.tensor(self.suffix_ids, dtype=torch.long)
                closing = self._forward([(suffix, self._cache)])[0]  # written after the stream, never committed
            self._pooled = self._pool(self._sum, self._last, self.n_tokens, closing)
        return self._pooled.copy()

    def _pool(self, total: torch.Tensor, last: torch.Tensor, count: int, closing: torch.Tensor | None) -> np.ndarray:
        """Mean or last pooling over the stream plus its closing tokens' states, then the head."""
        if closing is not None and len(closing):
            total, last, count = total + closing.double().sum(0), closing[-1], count + len(closing)
        pooled = (total / count).float() if self.encoder.pooling == "mean" else last.float()
        with torch.no_grad():
            return self.encoder.project(pooled[None].to(self.encoder.device))[0].cpu().numpy()

    def full_embedding(self, ids: Sequence[int] | torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Recompute the embedding of ``ids`` (default: the stream so far) + :attr:`suffix_ids` from
        scratch through ``Encoder.forward`` (transformers' path: the oracle)."""
        ids = self._ids if ids is None else ids
        ids = _as_ids(ids)
        if ids.numel() == 0:
            raise ValueError("nothing to embed: ids is empty")
        ids = torch.cat([ids, torch.tensor(self.suffix_ids, dtype=torch.long)])[None]
        self._check_ids(ids)
        with torch.no_grad():
            out = self.encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
        return out["embedding"][0].float().cpu().numpy()

    # --- parking and resuming -----------------------------------------------------------------

    def _signature(self) -> dict[str, Any]:
        """What a parked state must match: architecture, pooling head and a weights checksum.

        The checksum (float64 sum and sum of squares over all parameters) is computed once per
        StreamingEncoder: the weights of an inference model do not change under a live stream.
        It is compared with a relative tolerance so a state moves between devices.
        """
        if self._checksum is None:
            with torch.no_grad():
                params = list(self.encoder.parameters())
                total = sum(float(p.double().sum()) for p in params)
                squares = sum(float(p.double().square().sum()) for p in params)
            self._checksum = [total, squares]
        config = self.encoder.backbone.config
        return {
            "model_type": getattr(config, "model_type", type(self.encoder.backbone).__name__),
            "hidden_size": int(config.hidden_size),
            "num_hidden_layers": int(config.num_hidden_layers),
            "vocab_size": int(config.vocab_size),
            "max_positions": self.max_positions,
            "pooling": self.encoder.pooling,
            "normalize": self.encoder.normalize,
            "embed_dim": self.encoder.embed_dim,
            "weights_checksum": self._checksum,
        }

    @property
    def state(self) -> dict[str, Any]:
        """A snapshot to resume from: ``{"token_ids", "keys", "values", "sum", "last", "window", "sink",
        "signature"}``. Tensors are shared, not copied: appends never write the rows they hold."""
        keys, values = self._cache.views()
        return {
            "format": STATE_FORMAT,
            "token_ids": list(self._ids),
            "keys": keys,
            "values": values,
            "sum": self._sum,
            "last": self._last,
            "window": self.window,
            "sink": self.sink,
            "signature": self._signature(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from a :attr:`state` snapshot of a stream over the same encoder (copied, so the
        snapshot stays as it was whatever this stream does next).

        Raises ``ValueError`` if the state belongs to another model, pooling or window, or is inconsistent.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported stream state format {state.get('format')!r} (expected {STATE_FORMAT})")
        self._check_signature(state["signature"])
        window, sink = state.get("window"), int(state.get("sink") or 0)
        if (window, sink if window is not None else 0) != (self.window, self.sink):
            raise ValueError(f"stream state was made with window={window}, sink={sink}; this stream has "
                             f"window={self.window}, sink={self.sink}")
        ids = [int(i) for i in state["token_ids"]]
        if not ids:
            self.reset()
            return
        keys, values = list(state["keys"]), list(state["values"])
        n_layers = int(self.encoder.backbone.config.num_hidden_layers)
        if len(keys) != n_layers or len(values) != n_layers:
            raise ValueError(f"stream state has {len(keys)} cached layers, the model has {n_layers}")
        cached = {int(t.shape[-2]) for t in keys + values}
        if len(cached) != 1 or (self.window is None and cached != {len(ids)}) or max(cached) > len(ids):
            raise ValueError(f"stream state is inconsistent: cached lengths {sorted(cached)} for {len(ids)} token ids")
        if max(cached) + len(self.suffix_ids) > self.max_positions:
            raise ValueError(f"stream state holds {max(cached)} tokens (+{len(self.suffix_ids)} closing special "
                             f"tokens), more than the model's {self.max_positions} positions")
        pooled = state["sum"] if self.encoder.pooling == "mean" else state["last"]
        if pooled is None or pooled.shape != (self.encoder.hidden_size,):
            raise ValueError("stream state lacks the pooling tensor for this encoder")
        device, dtype = self.encoder.device, self.encoder.dtype
        self._cache = KVCache.of(keys, values, device=device, dtype=dtype)
        self._sum = None if state["sum"] is None else state["sum"].to(device, torch.float64)
        self._last = None if state["last"] is None else state["last"].to(device)
        self._ids = ids
        self._pooled = None

    def _check_signature(self, theirs: dict[str, Any]) -> None:
        ours = self._signature()
        for key, value in ours.items():
            if key == "weights_checksum":
                close = len(theirs.get(key) or []) == 2 and all(
                    math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(value, theirs[key])
                )
                if not close:
                    raise ValueError("stream state was made with different model weights; it cannot resume here")
            elif theirs.get(key) != value:
                raise ValueError(f"stream state was made with {key}={theirs.get(key)!r}, this encoder has {value!r}")

    def save_state(self, path: str | Path) -> Path:
        """Park the stream in a folder: ``state.safetensors`` (cache, sum, last) + ``state.json``."""
        state = self.state
        tensors = {f"key.{i}": k for i, k in enumerate(state["keys"])}
        tensors.update({f"value.{i}": v for i, v in enumerate(state["values"])})
        for name in ("sum", "last"):
            if state[name] is not None:
                tensors[name] = state[name]
        meta = {k: state[k] for k in ("format", "token_ids", "window", "sink", "signature")}
        meta["n_layers"] = len(state["keys"])
        path = Path(path)
        with atomic_dir(path) as tmp:
            save_tensors(tmp / STATE_TENSORS, {k: t.contiguous() for k, t in tensors.items()})
            atomic_write_json(tmp / STATE_JSON, meta)
        return path

    @classmethod
    def restore(cls, encoder: Encoder, path: str | Path, **options) -> StreamingEncoder:
        """A stream over ``encoder`` resumed from :meth:`save_state`'s folder (``options``: the
        stream's ``attention_path``; its window comes from the folder)."""
        path = Path(path)
        if not (path / STATE_JSON).exists():
            raise ArtifactError(f"{path} is not a saved stream (no {STATE_JSON})")
        try:
            meta = json.loads((path / STATE_JSON).read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"corrupt {path / STATE_JSON}: {exc}") from None
        tensors = load_tensors(path / STATE_TENSORS) if meta.get("token_ids") else {}
        n_layers = int(meta.get("n_layers", 0))
        try:
            state = {
                **meta,
                "keys": [tensors[f"key.{i}"] for i in range(n_layers)],
                "values": [tensors[f"value.{i}"] for i in range(n_layers)],
                "sum": tensors.get("sum"),
                "last": tensors.get("last"),
            }
        except KeyError as exc:
            raise ArtifactError(f"{path / STATE_TENSORS} lacks tensor {exc}") from None
        window = meta.get("window")
        stream = cls(encoder, window=window, sink=int(meta.get("sink") or 4) if window else 4, **options)
        stream.load_state(state)
        return stream


def _forward_transformers(backbone: torch.nn.Module, ids: torch.Tensor, cache: KVCache, dtype) -> torch.Tensor:
    """The oracle: transformers' forward with a ``DynamicCache`` of the cached rows and the causal
    rows of :func:`attention_bias`; the new keys and values are then written into ``cache``."""
    from transformers import DynamicCache

    check_attention_implementation(backbone)
    device = backbone.embed_tokens.weight.device if hasattr(backbone, "embed_tokens") else \
        next(backbone.parameters()).device
    past, new = cache.length, ids.numel()
    keys, values = cache.views()
    dynamic = DynamicCache(ddp_cache_data=list(zip(keys, values)), config=backbone.config) if past else \
        DynamicCache(config=backbone.config)
    bias = attention_bias(torch.ones(1, past + new, dtype=torch.long, device=device), "causal", dtype=dtype,
                          query_length=new)
    out = backbone(input_ids=ids[None].to(device), attention_mask=bias,
                   position_ids=torch.arange(past, past + new, device=device)[None],
                   past_key_values=dynamic, use_cache=True)
    cache.reserve(new)
    for index, layer in enumerate(out.past_key_values.layers):
        cache.write(index, layer.keys[:, :, past:], layer.values[:, :, past:])
    return out.last_hidden_state[0]


def append_batch(streams: Sequence[StreamingEncoder], pieces: Sequence[Sequence[int] | torch.Tensor | np.ndarray]
                 ) -> list[np.ndarray]:
    """Append ``pieces[i]`` (token ids) to ``streams[i]`` for every stream in one forward; return each
    stream's embedding. The streams share one encoder and may hold any lengths: the new tokens of all
    of them are packed into one row for the linear layers, and each attends to its own cache.

    Every append is checked before anything runs, and none is committed unless all succeed, so a
    failure leaves every stream as it was.
    """
    if len(streams) != len(pieces):
        raise ValueError(f"{len(streams)} streams but {len(pieces)} pieces")
    if not streams:
        return []
    if len({id(s) for s in streams}) != len(streams):
        raise ValueError("a stream appears twice in one batch; append its pieces as one")
    first = streams[0]
    if any(s.encoder is not first.encoder or s.attention_path != first.attention_path for s in streams):
        raise ValueError("streams in one batch must share one encoder and attention path")
    ids = [_as_ids(p) for p in pieces]
    if any(i.numel() == 0 for i in ids):
        raise ValueError("an empty piece: every stream in a batch needs tokens to append")
    suffix = torch.tensor(first.suffix_ids, dtype=torch.long)
    caches = [s._plan(i) for s, i in zip(streams, ids)]  # raises before anything changes
    hidden = first._forward([(torch.cat([i, suffix]), c) for i, c in zip(ids, caches)])
    updates = []
    for stream, new, cache, states in zip(streams, ids, caches, hidden):
        n = new.numel()
        own, closing = states[:n], states[n:]
        # out-of-place: tensors handed out by `state` stay valid after later appends
        step_sum = own.double().sum(0)
        total = step_sum if stream._sum is None else stream._sum + step_sum
        updates.append((total, own[-1], stream._pool(total, own[-1], stream.n_tokens + n, closing)))
    for stream, new, cache, (total, last, pooled) in zip(streams, ids, caches, updates):
        cache.commit(new.numel())
        stream._cache, stream._sum, stream._last, stream._pooled = cache, total, last, pooled
        stream._ids.extend(new.tolist())
    return [u[2].copy() for u in updates]


# =============================================================================================
# the GPU path: a static cache, one CUDA graph per append shape
# =============================================================================================
#
# On a GPU a 128-token append is launch-bound: a few hundred small kernels, each waiting on the
# host. A CUDA graph records them once and replays them as one launch, but it needs fixed shapes
# and addresses: the cache is one buffer of fixed capacity per layer for a batch of streams, the
# stream lengths live in a device tensor, new rows are scattered at those lengths, and attention
# reads the whole buffer under a boolean mask (key j is visible to new token i of stream b when
# j <= lengths[b] + i). Nothing then depends on the lengths but the data. The same code runs
# eagerly on a CPU (the tests compare it with the dynamic path); graphs are taken only on CUDA.


class StaticBatch:
    """Appends of ``delta`` tokens to each of ``batch`` streams over one encoder, on a fixed-shape cache.

    ``load(slot, stream)`` copies a stream's cache and sums into a slot; ``append(ids)`` ((batch,
    delta) ids) runs one forward, the closing special tokens riding along as in a stream, and
    returns each slot's embedding of its stream so far. ``graphs`` (default: on CUDA) captures the
    forward as a CUDA graph on the first append and replays it after; it is refused elsewhere.
    """

    def __init__(self, encoder: Encoder, batch: int, delta: int, capacity: int, *, graphs: bool | None = None):
        if not direct_path_supported(encoder.backbone):
            raise ValueError("the static path needs a decoder the direct attention path supports")
        if encoder.attention != "causal" or encoder.pooling not in ("mean", "last"):
            raise ValueError("the static path streams causal encoders with mean or last pooling")
        device = encoder.device
        graphs = device.type == "cuda" if graphs is None else bool(graphs)
        if graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the encoder is on {device}")
        self.encoder, self.batch, self.graphs = encoder.eval(), int(batch), graphs
        self.suffix_ids = list(encoder.template.tail)
        self.delta, self.step = int(delta), int(delta) + len(self.suffix_ids)
        if capacity > encoder.max_positions:
            raise ValueError(f"capacity {capacity} exceeds the model's {encoder.max_positions} positions")
        self.capacity = int(capacity)
        config = encoder.backbone.config
        attn = encoder.backbone.layers[0].self_attn
        shape = (self.batch, int(config.num_key_value_heads), self.capacity, int(attn.head_dim))
        # zeros, not empty: masked rows still enter the products, and garbage could be NaN
        self.keys = [torch.zeros(shape, device=device, dtype=encoder.dtype) for _ in encoder.backbone.layers]
        self.values = [torch.zeros(shape, device=device, dtype=encoder.dtype) for _ in encoder.backbone.layers]
        self.lengths = torch.zeros(self.batch, dtype=torch.long, device=device)
        self.sums = torch.zeros(self.batch, encoder.hidden_size, dtype=torch.float64, device=device)
        self.counts = torch.zeros(self.batch, dtype=torch.long, device=device)
        self._ids = torch.zeros(self.batch, self.step, dtype=torch.long, device=device)
        self._graph = None
        self._hidden: torch.Tensor | None = None

    def load(self, slot: int, stream: StreamingEncoder) -> None:
        """Put a stream's cache and running sums into ``slot`` (the stream itself is left as it is)."""
        if stream.encoder is not self.encoder or stream.window is not None:
            raise ValueError("load a stream over the same encoder, without a window")
        n = stream.cache_tokens
        if n + self.step > self.capacity:
            raise ValueError(f"the stream holds {n} tokens; with an append of {self.step} it passes the capacity "
                             f"{self.capacity}")
        keys, values = stream._cache.views()
        for buffer, rows in zip(self.keys + self.values, keys + values):
            buffer[slot, :, :n] = rows[0]
        self.lengths[slot] = n
        self.sums[slot] = stream._sum if stream._sum is not None else 0.0
        self.counts[slot] = stream.n_tokens

    def _forward(self) -> torch.Tensor:
        """(batch, step, H) states of the new tokens, their keys and values scattered into the cache."""
        backbone = self.encoder.backbone
        b, n = self._ids.shape
        positions = self.lengths[:, None] + torch.arange(n, device=self._ids.device)[None]  # (b, n)
        visible = torch.arange(self.capacity, device=self._ids.device)[None, None] <= positions[:, :, None]
        x = backbone.embed_tokens(self._ids)
        cos, sin = backbone.rotary_emb(x, positions)
        rotate = _rotary(backbone.layers[0].self_attn)
        for index, layer in enumerate(backbone.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
            q, k = rotate(q, k, cos, sin)
            rows = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            self.keys[index].scatter_(2, rows, k)
            self.values[index].scatter_(2, rows, v)
            o = F.scaled_dot_product_attention(q, self.keys[index], self.values[index], attn_mask=visible[:, None],
                                               scale=attn.scaling, enable_gqa=True)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return backbone.norm(x)

    def _run(self) -> torch.Tensor:
        if not self.graphs:
            return self._forward()
        if self._graph is None:  # warm up on a side stream (as torch.cuda.graphs asks), then capture;
            # both write rows past the lengths, which the next append overwrites
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward()
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._hidden = self._forward()
        self._graph.replay()
        return self._hidden

    def append(self, ids: torch.Tensor) -> np.ndarray:
        """Append ``ids`` ((batch, delta)) to every slot; return the (batch, D) embeddings."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if tuple(ids.shape) != (self.batch, self.delta):
            raise ValueError(f"expected ids of shape {(self.batch, self.delta)}, got {tuple(ids.shape)}")
        if int(self.lengths.max()) + self.step > self.capacity:
            raise ValueError(f"an append of {self.step} tokens passes the static capacity {self.capacity}")
        suffix = torch.tensor(self.suffix_ids, dtype=torch.long).expand(self.batch, -1)
        with torch.no_grad():
            self._ids.copy_(torch.cat([ids, suffix], 1))
            hidden = self._run()
            own = hidden[:, : self.delta].double()
            self.sums += own.sum(1)
            self.counts += self.delta
            total, count = self.sums + hidden[:, self.delta:].double().sum(1), self.counts + len(self.suffix_ids)
            if self.encoder.pooling == "mean":
                pooled = (total / count[:, None]).float()
            else:
                pooled = hidden[:, -1].float()
            self.lengths += self.delta
            return self.encoder.project(pooled).cpu().numpy()
