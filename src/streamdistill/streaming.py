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
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import ArtifactError, atomic_dir, atomic_write_json, load_tensors, save_tensors
from .encoder import Encoder, attention_bias, check_attention_implementation

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

    ``append(text)`` tokenizes each piece on its own, without special tokens: the stream *is* its
    token ids (compare with :meth:`full_embedding` of :attr:`token_ids`).
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
        self.reset()

    # --- the stream ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything appended so far."""
        self._cache = None  # DynamicCache, made by the first forward
        self._sum: torch.Tensor | None = None  # float64 (H,), sum of last-layer states
        self._last: torch.Tensor | None = None  # (H,), the last token's last-layer state
        self._ids: list[int] = []

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
        if past + new > self.max_positions:
            raise ValueError(
                f"the stream would hold {past + new} tokens but the model has {self.max_positions} positions; "
                "positions past that were never trained, so the vector would be wrong: reset() or start a new stream"
            )
        hidden = self._forward_new(ids)
        # Out-of-place updates: tensors handed out by `state` stay valid after later appends.
        step_sum = hidden.double().sum(0)
        self._sum = step_sum if self._sum is None else self._sum + step_sum
        self._last = hidden[-1]
        self._ids.extend(ids.tolist())
        return self.embedding()

    def _check_ids(self, ids: torch.Tensor) -> None:
        vocab = int(self.encoder.backbone.config.vocab_size)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab}), got min {int(ids.min())}, max {int(ids.max())}")

    def _forward_new(self, ids: torch.Tensor) -> torch.Tensor:
        """Run only the new tokens through the backbone against the cache; (new, H) states.

        The cache is rolled back if the forward fails, so a failed append leaves the stream as it was.
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
        return out.last_hidden_state[0]

    def embedding(self) -> np.ndarray:
        """The embedding of everything appended so far (float32, (D,))."""
        if self.n_tokens == 0:
            raise ValueError("the stream is empty: append text or ids first")
        if self.encoder.pooling == "mean":
            pooled = (self._sum / self.n_tokens).float()
        else:
            pooled = self._last.float()
        with torch.no_grad():
            return self.encoder.project(pooled[None])[0].cpu().numpy()

    def full_embedding(self, ids: Sequence[int] | torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Recompute the embedding of ``ids`` (default: the stream so far) from scratch, no cache."""
        ids = self._ids if ids is None else ids
        ids = _as_ids(ids)[None]
        if ids.numel() == 0:
            raise ValueError("nothing to embed: ids is empty")
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
        if len(ids) > self.max_positions:
            raise ValueError(f"stream state holds {len(ids)} tokens, more than the model's {self.max_positions} positions")
        pooled = state["sum"] if self.encoder.pooling == "mean" else state["last"]
        if pooled is None or pooled.shape != (self.encoder.hidden_size,):
            raise ValueError("stream state lacks the pooling tensor for this encoder")
        device, dtype = self.encoder.device, self.encoder.dtype
        self._cache = self._make_cache([k.to(device, dtype) for k in keys], [v.to(device, dtype) for v in values])
        self._sum = None if state["sum"] is None else state["sum"].to(device, torch.float64)
        self._last = None if state["last"] is None else state["last"].to(device)
        self._ids = ids

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
