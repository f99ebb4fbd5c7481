"""`StreamingEncoder`: re-embed a growing text at the cost of the new tokens only.

A causal encoder's token states never change when tokens are appended: token i attends to
tokens <= i only. So a stream (a chat, a user's event log) can keep

* the backbone's KV cache (``transformers.DynamicCache``), so new tokens attend to the old ones
  without recomputing them;
* a running sum of last-layer token states and their count (mean pooling), or the last token's
  state (last pooling);

and return ``normalize(projection(sum / count))`` after each append: exactly what a full
recompute of the whole text gives (tests: cosine distance <= 1e-6), for the price of the appended
tokens. A bidirectional encoder cannot do this (every old state changes when a token arrives),
nor can Echo pooling (the pooled copy must come after the whole text).

The running sum is kept in float64. A float32 running sum adds one rounding per append, so its
error bound grows with the number of appends (up to ~n·eps relative, ~5e-4 after 4096 one-token
appends), while the full recompute sums each vector once in a blocked reduction. In float64 the
running sum stays at least as accurate as that one-shot float32 sum however long the stream
lives, for the cost of H doubles; the mean is cast back to float32, the full path's precision.

A stream can be parked and resumed (``state`` / ``load_state``, ``save_state`` / ``restore``):
tensors in safetensors, scalars in JSON. A stream never grows past the model's
``max_position_embeddings``: positions beyond it were never trained, so ``append`` raises
``ValueError`` instead of returning a wrong vector.

Special tokens follow ``Encoder.encode``: a token the tokenizer puts before every text (a BOS)
opens the stream, and the tokens it puts after every text (the project's tokenizer ends each text
with ``<eos>``, and the student was trained on such texts) ride along in each append's forward
and are then cropped from the cache, never kept. So the streamed vector of a text is the vector
``encode`` gives that text (tests: cosine distance <= 1e-6), for one extra token per append.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import ArtifactError, atomic_dir, atomic_write_json, load_tensors, save_tensors
from .decoders import random_decoder
from .encoder import Encoder, attention_bias, check_attention_implementation
from .profiles import get_profile
from .testing import tiny_tokenizer

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
STATE_FORMAT = 1


def _as_ids(ids: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
    """Token ids of any common container as a flat CPU ``long`` tensor."""
    if isinstance(ids, torch.Tensor):
        return ids.detach().to("cpu", torch.long).reshape(-1)
    return torch.as_tensor(np.asarray(ids, dtype=np.int64)).reshape(-1)


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
    """

    def __init__(self, encoder: Encoder):
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
        self.encoder = encoder.eval()
        self._checksum: list[float] | None = None
        template = encoder.template  # the special tokens encode() puts around a text
        self.prefix_ids, self.suffix_ids = list(template.head), list(template.tail)
        self.reset()

    # --- the stream ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything appended so far."""
        self._cache = None  # DynamicCache, made by the first forward
        self._sum: torch.Tensor | None = None  # float64 (H,), sum of last-layer states
        self._last: torch.Tensor | None = None  # (H,), the last token's last-layer state
        self._ids: list[int] = []
        self._pooled: np.ndarray | None = None  # embedding() of the current stream, once computed

    @property
    def n_tokens(self) -> int:
        return len(self._ids)

    @property
    def token_ids(self) -> list[int]:
        """Every token id appended so far (a copy)."""
        return list(self._ids)

    @property
    def max_positions(self) -> int:
        return self.encoder.max_positions

    def append(self, text: str) -> np.ndarray:
        """Append a piece of text; return the embedding of the whole stream so far."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty text: an empty or whitespace-only piece has nothing to append")
        ids = self.encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.n_tokens == 0:
            ids = self.prefix_ids + list(ids)
        return self.append_ids(ids)

    def append_ids(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
        """Append token ids; return the embedding of the whole stream so far.

        Raises ``ValueError`` if the stream would exceed the model's positions (the stream is
        left unchanged) or an id is outside the vocabulary.
        """
        ids = _as_ids(ids)
        if ids.numel() == 0:
            return self.embedding()
        self._check_ids(ids)
        past, new = self.n_tokens, ids.numel()
        if past + new + len(self.suffix_ids) > self.max_positions:
            raise ValueError(
                f"the stream would hold {past + new} tokens (+{len(self.suffix_ids)} closing special tokens) but the "
                f"model has {self.max_positions} positions; positions past that were never trained, so the vector "
                "would be wrong: reset() or start a new stream"
            )
        # One forward for the new tokens and the closing special tokens; the latter are cropped off.
        suffix = torch.tensor(self.suffix_ids, dtype=torch.long)
        hidden = self._forward_new(torch.cat([ids, suffix]), drop=len(suffix))
        own, closing = hidden[:new], hidden[new:]
        try:
            # Out-of-place updates: tensors handed out by `state` stay valid after later appends.
            step_sum = own.double().sum(0)
            total = step_sum if self._sum is None else self._sum + step_sum
            pooled = self._pool(total, own[-1], past + new, closing)
        except BaseException:
            self._cache.crop(-new)  # nothing is committed: the stream stays as it was
            raise
        self._sum, self._last, self._pooled = total, own[-1], pooled
        self._ids.extend(ids.tolist())
        return pooled.copy()

    def _check_ids(self, ids: torch.Tensor) -> None:
        vocab = int(self.encoder.backbone.config.vocab_size)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab}), got min {int(ids.min())}, max {int(ids.max())}")

    def _forward_new(self, ids: torch.Tensor, drop: int = 0) -> torch.Tensor:
        """Run only the new tokens through the backbone against the cache; (new, H) states.

        The cache is rolled back if the forward fails, so a failed append leaves the stream as it
        was; the last ``drop`` tokens are cropped from the cache afterwards (closing special tokens).
        """
        from transformers import DynamicCache

        backbone, device = self.encoder.backbone, self.encoder.device
        check_attention_implementation(backbone)
        past, new = self.n_tokens, ids.numel()
        if self._cache is None:
            self._cache = DynamicCache(config=backbone.config)
        snapshot = self._cache_tensors()
        # Rows of the causal mask for the new queries only, over cached + new keys.
        bias = attention_bias(
            torch.ones(1, past + new, dtype=torch.long, device=device), "causal",
            dtype=self.encoder.dtype, query_length=new,
        )
        positions = torch.arange(past, past + new, device=device)[None]
        try:
            with torch.no_grad():
                out = backbone(
                    input_ids=ids[None].to(device),
                    attention_mask=bias,
                    position_ids=positions,
                    past_key_values=self._cache,
                    use_cache=True,
                )
        except BaseException:
            self._cache = self._make_cache(*snapshot) if snapshot[0] else None
            raise
        self._cache = out.past_key_values
        if drop:
            self._cache.crop(-drop)  # negative: how many of the newest tokens to remove
        return out.last_hidden_state[0]

    def embedding(self) -> np.ndarray:
        """The embedding of everything appended so far (float32, (D,))."""
        if self.n_tokens == 0:
            raise ValueError("the stream is empty: append text or ids first")
        if self._pooled is None:  # after load_state: run the closing special tokens against the cache
            closing = self._forward_new(torch.tensor(self.suffix_ids, dtype=torch.long), drop=len(self.suffix_ids)) \
                if self.suffix_ids else None
            self._pooled = self._pool(self._sum, self._last, self.n_tokens, closing)
        return self._pooled.copy()

    def _pool(self, total: torch.Tensor, last: torch.Tensor, count: int, closing: torch.Tensor | None) -> np.ndarray:
        """Mean or last pooling over the stream plus its closing tokens' states, then the head."""
        if closing is not None and len(closing):
            total, last, count = total + closing.double().sum(0), closing[-1], count + len(closing)
        pooled = (total / count).float() if self.encoder.pooling == "mean" else last.float()
        with torch.no_grad():
            return self.encoder.project(pooled[None])[0].cpu().numpy()

    def full_embedding(self, ids: Sequence[int] | torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Recompute the embedding of ``ids`` (default: the stream so far) + :attr:`suffix_ids` from scratch."""
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

    def _cache_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._cache is None or self.n_tokens == 0:
            return [], []
        layers = self._cache.layers
        return [layer.keys for layer in layers], [layer.values for layer in layers]

    def _make_cache(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=list(zip(keys, values)), config=self.encoder.backbone.config)

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
        """A snapshot to resume from: ``{"token_ids", "keys", "values", "sum", "last", "signature"}``.

        Tensors are shared, not copied (appends never modify them in place).
        """
        keys, values = self._cache_tensors()
        return {
            "format": STATE_FORMAT,
            "token_ids": list(self._ids),
            "keys": keys,
            "values": values,
            "sum": self._sum,
            "last": self._last,
            "signature": self._signature(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from a :attr:`state` snapshot of a stream over the same encoder.

        Raises ``ValueError`` if the state belongs to another model or pooling, or is inconsistent.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported stream state format {state.get('format')!r} (expected {STATE_FORMAT})")
        self._check_signature(state["signature"])
        ids = [int(i) for i in state["token_ids"]]
        if not ids:
            self.reset()
            return
        keys, values = list(state["keys"]), list(state["values"])
        n_layers = int(self.encoder.backbone.config.num_hidden_layers)
        if len(keys) != n_layers or len(values) != n_layers:
            raise ValueError(f"stream state has {len(keys)} cached layers, the model has {n_layers}")
        if any(t.shape[-2] != len(ids) for t in keys + values):
            raise ValueError(f"stream state is inconsistent: cached lengths differ from its {len(ids)} token ids")
        if len(ids) + len(self.suffix_ids) > self.max_positions:
            raise ValueError(f"stream state holds {len(ids)} tokens (+{len(self.suffix_ids)} closing special tokens), "
                             f"more than the model's {self.max_positions} positions")
        pooled = state["sum"] if self.encoder.pooling == "mean" else state["last"]
        if pooled is None or pooled.shape != (self.encoder.hidden_size,):
            raise ValueError("stream state lacks the pooling tensor for this encoder")
        device, dtype = self.encoder.device, self.encoder.dtype
        self._cache = self._make_cache([k.to(device, dtype) for k in keys], [v.to(device, dtype) for v in values])
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
        meta = {k: state[k] for k in ("format", "token_ids", "signature")}
        meta["n_layers"] = len(state["keys"])
        path = Path(path)
        with atomic_dir(path) as tmp:
            save_tensors(tmp / STATE_TENSORS, tensors)
            atomic_write_json(tmp / STATE_JSON, meta)
        return path

    @classmethod
    def restore(cls, encoder: Encoder, path: str | Path) -> StreamingEncoder:
        """A stream over ``encoder`` resumed from :meth:`save_state`'s folder."""
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
        stream = cls(encoder)
        stream.load_state(state)
        return stream


def chat_replay(encoder: Encoder, turns: Sequence[str]) -> list[dict[str, Any]]:
    """A conversation appended turn by turn: per turn, its new tokens, the stream's length, the
    append's and a full ``encode``'s milliseconds, and the cosine distance between the two vectors."""
    stream = StreamingEncoder(encoder)
    rows = []
    with torch.inference_mode():
        for k, turn in enumerate(turns, 1):
            start = time.perf_counter()
            cached = stream.append(turn)
            append_ms = 1e3 * (time.perf_counter() - start)
            start = time.perf_counter()
            full = encoder.encode("".join(turns[:k]), max_length=stream.max_positions)
            recompute_ms = 1e3 * (time.perf_counter() - start)
            rows.append({"turn": turn.strip()[:48] + "...",
                         "new tokens": len(encoder.tokenizer(turn, add_special_tokens=False)["input_ids"]),
                         "tokens so far": stream.n_tokens, "append (ms)": append_ms, "recompute (ms)": recompute_ms,
                         "cosine distance": _cosine_distance(cached, full)})
    return rows


# =============================================================================================
# the streaming benchmark of the paper
# =============================================================================================
#
# A stream holds an L-token prefix; each update appends D tokens. The student (causal, KV cache)
# pays for the D new tokens against L cached ones; every other method re-embeds the whole L + D
# tokens from scratch: the student itself without its cache, the bidirectional teacher B, and
# Echo on A (which embeds the text twice). The speed-up's physical limit is the token ratio
# (L + D) / D (about 33 at L = 4096, D = 128): attention makes a recompute cost a little more than
# linear in L, the per-call overhead of a small update a little more than its tokens.

METHODS = ("student_kv", "student_recompute", "teacher_recompute", "echo_recompute")


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return max(0.0, float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))


def random_benchmark_encoders(profile, *, max_positions: int | None = None, seed: int = 0) -> dict[str, Encoder]:
    """Randomly initialised student / teacher / Echo encoders of the profile's decoder shape.

    One backbone (:func:`~streamdistill.decoders.random_decoder` of the profile) shared by the
    three: causal + mean (C), bidirectional + mean (B), causal + echo (A+Echo). Latency does not
    depend on the weights, only on the architecture and the token counts. ``max_positions``
    defaults to the profile's; pass more to let Echo's doubled text fit.
    """
    tokenizer = tiny_tokenizer(vocab_size=min(300, profile.vocab_size))
    lm = random_decoder(profile, vocab_size=profile.vocab_size, max_positions=max_positions, seed=seed).eval()
    return {
        "student": Encoder(lm, tokenizer, attention="causal", pooling="mean").eval(),
        "teacher": Encoder(lm, tokenizer, attention="bidirectional", pooling="mean").eval(),
        "echo_model": Encoder(lm, tokenizer, attention="causal", pooling="echo").eval(),
    }


def _embed_ids(encoder: Encoder, ids: torch.Tensor, pool_mask: torch.Tensor | None = None) -> np.ndarray:
    """Embed one sequence of ids from scratch (no cache), as ``Encoder.forward`` does."""
    ids = ids[None].to(encoder.device)
    mask = torch.ones_like(ids)
    pool_mask = None if pool_mask is None else pool_mask[None].to(encoder.device)
    if ids.shape[1] <= encoder.max_positions:
        out = encoder(input_ids=ids, attention_mask=mask, pool_mask=pool_mask)["embedding"]
    else:
        # Echo writes the text twice and can run past the trained positions: the same
        # computation (for its latency; rotary positions extrapolate), without the guard.
        bias = attention_bias(mask, encoder.attention, dtype=encoder.dtype)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        hidden = encoder.backbone(input_ids=ids, attention_mask=bias, position_ids=positions,
                                  use_cache=False).last_hidden_state
        out = encoder.project(encoder.pool(hidden, mask, pool_mask))
    return out[0].float().cpu().numpy()


def _echo_ids(encoder: Encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Echo's input for bare token ids, laid out as ``encode`` does (the text's template), and the
    mask of the second copy it pools."""
    full, (start, end) = encoder.template.layout(ids.tolist(), echo=True)
    pool = torch.zeros(len(full), dtype=torch.long)
    pool[start:end] = 1
    return torch.tensor(full, dtype=torch.long), pool


def _token_stream(n: int, vocab: int, seed: int) -> torch.Tensor:
    """``n`` seeded random token ids in [2, vocab) (0 and 1 are often pad / eos)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(min(2, vocab - 1), vocab, (n,), generator=generator)


def _cache_mb(stream: StreamingEncoder) -> float:
    keys, values = stream._cache_tensors()
    return sum(t.numel() * t.element_size() for t in keys + values) / 2**20


def stream_benchmark(profile=None, prefix: int | None = None, delta: int | None = None, updates: int | None = None,
                     *, student: Encoder, teacher: Encoder, echo_model: Encoder, seed: int = 0,
                     growing: bool = False, weights: str = "given", verbose: bool = False,
                     progress: bool = False) -> dict[str, Any]:
    """Latency of re-embedding a growing stream: the student's KV cache against recomputation.

    A seeded stream of ``prefix + updates * delta`` random token ids. The student appends the
    prefix once (not timed); then, for each update, ``delta`` new tokens go through the KV cache
    (timed: the whole ``append_ids`` call, embedding included), while the student without cache,
    the teacher B and Echo on A embed the whole current sequence from scratch (timed). By default
    every update starts from the same L-token prefix (the cache is rolled back between updates,
    untimed), so each update is exactly L -> L + D and the token ratio (L + D) / D is the
    speed-up's limit; ``growing=True`` lets the stream grow instead (it must fit the positions).

    Same process, same thread count, methods interleaved within each update; one warm-up update
    (the first delta, rolled back) is excluded; latencies are medians over ``updates``.
    ``max_cosine_distance`` is the largest cosine distance between the KV-cache embedding and the
    full recompute of the same ids. ``weights`` labels the encoders in the result ("trained",
    "random"); the registry's ``stream_encoders`` loads the book's. ``progress`` shows a bar of the
    updates on stderr; ``verbose`` prints each update's latencies.
    """
    from tqdm.auto import tqdm

    profile = get_profile(profile)
    L = int(prefix if prefix is not None else profile.stream_prefix)
    D = int(delta if delta is not None else profile.stream_delta)
    U = int(updates if updates is not None else profile.stream_updates)
    if L < 1 or D < 1 or U < 1:
        raise ValueError(f"prefix, delta and updates must be >= 1, got {L}, {D}, {U}")
    longest = L + (U * D if growing else D)
    if teacher.attention != "bidirectional":
        warnings.warn(f"the teacher has attention={teacher.attention!r}, not bidirectional", stacklevel=2)
    if echo_model.pooling != "echo":
        warnings.warn(f"the Echo model has pooling={echo_model.pooling!r}, not echo", stacklevel=2)
    stream = StreamingEncoder(student)
    closing = torch.tensor(stream.suffix_ids, dtype=torch.long)
    longest += len(closing)  # the closing special tokens ride along
    if longest > student.max_positions:
        raise ValueError(f"the stream needs {longest} positions, the student has {student.max_positions}: "
                         "lower prefix/delta/updates (or growing=False)")
    vocab = min(int(m.backbone.config.vocab_size) for m in (student, teacher, echo_model))
    ids = _token_stream(L + U * D, vocab, seed)
    deltas = [ids[L + u * D: L + (u + 1) * D] for u in range(U)]

    times: dict[str, list[float]] = {m: [] for m in METHODS}
    distances: list[float] = []
    echo_beyond = False
    clock = time.perf_counter
    with torch.inference_mode():
        stream.append_ids(ids[:L])
        at_prefix = stream.state
        for u in tqdm(range(-1, U), desc="stream updates", unit="update", disable=not progress):
            # u = -1: warm-up on the first delta, rolled back, not recorded
            new = deltas[max(u, 0)]
            if not growing or u == 0:
                stream.load_state(at_prefix)
            bare = torch.cat([ids[:stream.n_tokens], new])
            current = torch.cat([bare, closing])  # what encode() sees: text + closing tokens
            echo_in, echo_pool = _echo_ids(echo_model, bare)
            echo_beyond |= len(echo_in) > echo_model.max_positions

            t0 = clock()
            incremental = stream.append_ids(new)
            t1 = clock()
            full = _embed_ids(student, current)
            t2 = clock()
            _embed_ids(teacher, current)
            t3 = clock()
            _embed_ids(echo_model, echo_in, echo_pool)
            t4 = clock()
            if u < 0:
                continue
            for method, seconds in zip(METHODS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[method].append(seconds * 1e3)
            distances.append(_cosine_distance(incremental, full))
            if verbose:
                print(f"update {u + 1}/{U}: " + ", ".join(f"{m} {times[m][-1]:.1f} ms" for m in METHODS), flush=True)
        cache_mb = _cache_mb(stream)

    latency = {m: float(np.median(v)) for m, v in times.items()}
    kv = latency["student_kv"]
    return {
        "profile": profile.name,
        "prefix": L,
        "delta": D,
        "updates": U,
        "growing": bool(growing),
        "weights": weights,
        "speedup_vs_teacher": latency["teacher_recompute"] / kv,
        # per update, side by side in the same update: the figures a rule over updates reads
        "speedups_vs_teacher": [t / k for t, k in zip(times["teacher_recompute"], times["student_kv"])],
        "speedup_vs_echo": latency["echo_recompute"] / kv,
        "speedup_vs_recompute": latency["student_recompute"] / kv,
        "token_ratio_limit": (L + D) / D,
        "max_cosine_distance": max(distances),
        "cosine_distances": distances,
        "latency_ms": latency,
        "latency_ms_all": times,
        "cache_mb": cache_mb,
        "echo_tokens": int(len(echo_in)),
        "echo_beyond_positions": bool(echo_beyond),
        "threads": torch.get_num_threads(),
    }


def stream_sweep(profile=None, prefixes: Sequence[int] = (256, 512, 1024, 2048, 4096), delta: int = 128,
                 updates: int | None = None, *, student: Encoder, teacher: Encoder, echo_model: Encoder,
                 seed: int = 0, weights: str = "given") -> list[dict[str, Any]]:
    """:func:`stream_benchmark` at each prefix length (the same encoders): latency against L."""
    profile = get_profile(profile)
    updates = int(updates if updates is not None else min(profile.stream_updates, 5))
    return [stream_benchmark(profile, prefix=int(p), delta=delta, updates=updates, seed=seed, weights=weights,
                             student=student, teacher=teacher, echo_model=echo_model) for p in prefixes]


# the profiler's operator names, grouped by what an update spends its time on
UPDATE_PARTS = {
    "attention (scaled dot product)": ("scaled_dot_product", "sdpa", "_efficient_attention", "flash", "bmm", "softmax"),
    "linear layers (matmul)": ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul"),
    "KV cache (concatenate, copy)": ("aten::cat", "aten::copy_", "aten::index", "aten::slice"),
    "attention mask and positions": ("aten::masked_fill", "aten::where", "aten::arange", "aten::full", "aten::zeros",
                                     "aten::gt", "aten::eq"),
    "norms and activations": ("aten::rsqrt", "aten::pow", "aten::mean", "aten::silu", "aten::mul", "aten::add",
                              "aten::neg", "aten::cos", "aten::sin"),
}


def profile_update(encoder: Encoder, prefix: int = 4096, delta: int = 128, repeats: int = 3,
                   seed: int = 0) -> dict[str, float]:
    """Where one KV-cache update's time goes: milliseconds per group of operators (:data:`UPDATE_PARTS`,
    the rest as ``other``), self CPU time under PyTorch's profiler, mean over ``repeats`` updates from
    the same ``prefix``-token state."""
    from torch.profiler import ProfilerActivity, profile

    stream = StreamingEncoder(encoder)
    ids = _token_stream(prefix + delta, int(encoder.backbone.config.vocab_size), seed)
    with torch.inference_mode():
        stream.append_ids(ids[:prefix])
        state = stream.state
        stream.append_ids(ids[prefix:])  # warm-up
        totals: dict[str, float] = {}
        for _ in range(repeats):
            stream.load_state(state)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                stream.append_ids(ids[prefix:])
            for event in prof.key_averages():
                name = event.key.lower()
                part = next((p for p, keys in UPDATE_PARTS.items() if any(k in name for k in keys)), "other")
                totals[part] = totals.get(part, 0.0) + event.self_cpu_time_total / 1e3 / repeats
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
