"""`Encoder`: a decoder LM turned into a text-embedding model.

An Encoder is a Hugging Face decoder backbone (``Qwen2Model`` or anything with its forward
signature) plus its tokenizer, an attention mode, a pooling rule, an optional linear projection
and optional L2 normalisation::

    input ids --backbone(attention_bias(mode))--> hidden (B, L, H) --pool--> (B, H)
              --projection--> (B, D) --normalize--> embedding

Attention modes (all built by :func:`attention_bias`, the one place in the project that makes a
4-D additive mask):

* ``causal``        token i sees tokens j <= i (the backbone as pretrained; KV-cache friendly).
* ``bidirectional`` token i sees every real token (the GG-SM teacher at inference).
* ``soft``          causal plus future tokens weighted by ``w[i, j]`` in (0, 1], i.e. a bias of
                    ``log w``; used while training the GG-SM teacher (pass ``future_weights``).

Pooling: ``mean`` over real tokens, ``last`` real token, or ``echo`` (Springer et al. 2024,
"Repetition improves language model embeddings": the text is written twice and only the second
copy, which has seen the whole text once already, is mean-pooled). :class:`TextTemplate` lays
out the ids (special tokens, Echo's pieces) for this class and for the streaming code.

Transformers (5.x) and custom masks: ``Qwen2Model.forward`` hands ``attention_mask`` to
``masking_utils.create_causal_mask``, whose ``_preprocess_mask_arguments`` returns a 4-D tensor
*as is* ("already prepared, or custom"). The eager kernel adds it to the logits; the sdpa kernel
passes it as ``attn_mask`` and sets ``is_causal = False`` because a mask is present. So a 4-D float
mask in the model's dtype is used unchanged and nothing re-causalises it. (The public GG-SM
reference passes no mask at inference, which silently falls back to causal attention; here the
mode is always explicit.) ``tests/test_encoder.py`` checks this for sdpa and eager. Flash and
flex kernels cannot take such a mask and are refused. On a GPU a float mask also rules out SDPA's
flash kernel (the memory-efficient kernel runs instead); the causal streaming path is no exception.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import ArtifactError, atomic_dir, atomic_write_json, load_tensors, save_tensors, verify
from .decoders import decoder_stack, quiet_transformers
from .profiles import PRECISIONS

ATTENTION_MODES = ("causal", "bidirectional")
POOLINGS = ("mean", "last", "echo")
# Springer et al. (2024), the "echo" prompt; the text x is inserted after each piece.
ECHO_PREFIX = "Rewrite the sentence: "
ECHO_MIDDLE = ", rewritten sentence: "
CONFIG_NAME = "encoder_config.json"
PROJECTION_NAME = "projection.safetensors"
FORMAT_VERSION = 1
DEVICE_ENV = "STREAMDISTILL_DEVICE"


def inference_device() -> str:
    """Where loaded models embed: ``$STREAMDISTILL_DEVICE``, else the GPU if there is one, else the CPU.

    Training picks its device through accelerate; this is for models loaded to embed: the default
    of ``Encoder.load`` and of ``evaluate.open_sentence_transformer`` (evaluation, teacher
    embeddings, LEAF's teacher and students, the stream benchmark's trained weights).
    """
    return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------
# masks and positions
# ---------------------------------------------------------------------------------------------


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... over the real tokens of each row, whatever the padding side.

    Left padding would otherwise shift every real token's rotary position by the pad count and
    change its embedding; counting only real tokens makes a padded text identical to the text
    alone. Pad positions are 0 (their outputs are never used).
    """
    mask = attention_mask.long()
    return ((mask.cumsum(-1) - 1) * mask).clamp(min=0)


def attention_bias(
    attention_mask: torch.Tensor,
    mode: str,
    *,
    future_weights: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    query_length: int | None = None,
) -> torch.Tensor:
    """The additive attention mask, shape ``(B, 1, Q, L)`` (``Q = L`` unless ``query_length``).

    ``attention_mask`` is the usual ``(B, L)`` 0/1 padding mask over the keys. Entry ``[b, 0, i, j]``
    is added to the logit of query i attending to key j:

    * ``causal``: 0 for j <= i, ``finfo(dtype).min`` for j > i;
    * ``bidirectional``: 0 everywhere;
    * ``soft``: 0 for j <= i, ``log w[pos_i, pos_j]`` for j > i, with ``future_weights`` a
      ``(max_len, max_len)`` tensor of weights in (0, 1] indexed by token *position*
      (``position_ids``, default: counted over real tokens), so left padding works; w = 1 gives
      exactly 0, i.e. all-ones weights reproduce the bidirectional mask bit for bit.

    Padding keys are always ``finfo(dtype).min`` for every real query. A padding *query* (e.g.
    position 0 of a left-padded row in causal mode) could then see no key at all; it is allowed
    to see itself as well, so every softmax row has an open key and no NaN can appear. Its output
    is ignored by pooling and, being a padding key, by every real token.

    ``query_length=q`` keeps only the last q query rows: the rows a KV-cached step computes
    (``L`` = cached + new tokens), without building the full L x L matrix.
    """
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be (batch, length), got shape {tuple(attention_mask.shape)}")
    if mode not in (*ATTENTION_MODES, "soft"):
        raise ValueError(f"unknown attention mode {mode!r}; choose causal, bidirectional or soft")
    if (mode == "soft") != (future_weights is not None):
        raise ValueError("future_weights is required by mode 'soft' and only by it")
    batch, length = attention_mask.shape
    q = length if query_length is None else int(query_length)
    if not 1 <= q <= length:
        raise ValueError(f"query_length must be in [1, {length}], got {query_length}")
    device = attention_mask.device
    neg = torch.finfo(dtype).min
    keep = attention_mask.to(device=device).bool()  # (B, L) real keys

    query_idx = torch.arange(length - q, length, device=device)  # (Q,)
    key_idx = torch.arange(length, device=device)  # (L,)
    future = key_idx[None, :] > query_idx[:, None]  # (Q, L): j > i

    bias = torch.zeros(batch, q, length, dtype=dtype, device=device)
    if mode == "causal":
        bias = bias.masked_fill(future, neg)
    elif mode == "soft":
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        position_ids = position_ids.to(device)
        max_len = future_weights.shape[-1]
        if future_weights.ndim != 2 or future_weights.shape[0] != max_len:
            raise ValueError(f"future_weights must be square (max_len, max_len), got {tuple(future_weights.shape)}")
        if int(position_ids.max()) >= max_len:
            raise ValueError(f"position {int(position_ids.max())} is beyond future_weights' {max_len} positions")
        weights = future_weights.to(device)
        w = weights[position_ids[:, -q:, None], position_ids[:, None, :]]  # (B, Q, L)
        # log taken in float32 even for a bf16 model; w = 0 would give -inf, clamped to min.
        log_w = torch.log(w.float()).clamp(min=neg).to(dtype)
        bias = torch.where(future, log_w, bias)

    bias = bias.masked_fill(~keep[:, None, :], neg)
    pad_query_sees_itself = (~keep[:, -q:, None]) & (key_idx[None, :] == query_idx[:, None])
    bias = bias.masked_fill(pad_query_sees_itself, 0.0)
    return bias[:, None]


# ---------------------------------------------------------------------------------------------
# the text template: special tokens and Echo's pieces
# ---------------------------------------------------------------------------------------------


WORD_MARGIN = 16
_WORD = re.compile(r"\S+")


def _head_words(text: str, words: int) -> str:
    """``text`` up to the end of its ``words``-th whitespace-separated word (all of it if shorter)."""
    if len(text) < 8 * words:  # a text this short costs little to tokenize whole
        return text
    for count, match in enumerate(_WORD.finditer(text), 1):
        if count == words:
            return text[: match.end()]
    return text


class TruncationWarning(UserWarning):
    """Texts were longer than ``max_length`` and were cut (filter this category, not all warnings)."""


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds before and after every text (``add_special_tokens=True``).

    Found by probing, so pieces tokenized without specials (Echo's, a stream's) get the same
    wrapping as a plain text. Qwen2 and SmolLM2 tokenizers add none; the project's BPE adds ``<eos>``.
    """
    probe = "hello world"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError("cannot locate the text inside the tokenizer's special-token template")


class TextTemplate:
    """How a text's bare token ids become the ids a model reads, and which of them are pooled.

    ``head`` and ``tail`` are the tokenizer's special tokens around every text. Plain pooling reads
    ``head + x + tail`` and pools every token; Echo (Springer et al. 2024) reads
    ``head + ECHO_PREFIX + x + ECHO_MIDDLE + x + tail`` and pools the second copy of ``x`` only.
    The one place that lays texts out: :class:`Encoder` and the streaming code both use it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.head, self.tail = special_affixes(tokenizer)
        self._echo: tuple[list[int], list[int]] | None = None

    def echo_pieces(self) -> tuple[list[int], list[int]]:
        """The ids of Echo's prompt before the first copy and between the two copies."""
        if self._echo is None:
            ids = [list(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (ECHO_PREFIX, ECHO_MIDDLE)]
            self._echo = (ids[0], ids[1])
        return self._echo

    def budget(self, max_length: int) -> int:
        """Text tokens that fit in ``max_length`` once the special tokens are added."""
        return int(max_length) - len(self.head) - len(self.tail)

    def layout(self, bare: list[int], echo: bool = False) -> tuple[list[int], tuple[int, int]]:
        """``(ids, (start, end))``: what the model reads, and the span pooling reads."""
        if not echo:
            ids = self.head + list(bare) + self.tail
            return ids, (0, len(ids))  # mean/last pool every real token, specials included (as ST)
        prefix, middle = self.echo_pieces()
        start = len(self.head) + len(prefix) + len(bare) + len(middle)
        return self.head + prefix + list(bare) + middle + list(bare) + self.tail, (start, start + len(bare))


# ---------------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------------


# Attention kernels that take a 4-D additive float mask as is (flash / flex kernels do not).
MASK_KERNELS = ("sdpa", "eager")


def check_attention_implementation(backbone: nn.Module) -> None:
    """Refuse attention kernels that would ignore or misread :func:`attention_bias`'s mask."""
    config = getattr(backbone, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl is not None and impl not in MASK_KERNELS:
        raise ValueError(
            f"attn_implementation={impl!r} cannot take a custom additive mask; use one of {MASK_KERNELS}"
        )


class Encoder(nn.Module):
    """A decoder backbone + tokenizer as a sentence encoder.

    Args:
        backbone: ``Qwen2Model`` (a ``Qwen2ForCausalLM`` is unwrapped to its ``.model``) or any
            module with the same forward signature returning ``last_hidden_state``.
        tokenizer: its Hugging Face tokenizer (left or right padding).
        attention: ``"causal"`` or ``"bidirectional"`` (inference mode; ``forward`` switches to the
            soft mask when given ``future_weights``).
        pooling: ``"mean"``, ``"last"`` or ``"echo"``.
        projection: optional ``nn.Linear`` applied after pooling (e.g. to a teacher's width).
        normalize: L2-normalise the output.
        max_length: tokens per input, special tokens included (longer texts are truncated with a
            warning), so a GG-SM mask of ``max_length`` positions covers every training batch.
            Echo repeats the same, possibly truncated, text: it processes about twice as many.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        attention: str = "causal",
        pooling: str = "mean",
        projection: nn.Linear | None = None,
        normalize: bool = True,
        max_length: int = 512,
    ):
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.backbone = decoder_stack(backbone)
        config = getattr(self.backbone, "config", None)
        if config is not None and "sliding_attention" in (getattr(config, "layer_types", None) or []):
            # A custom 4-D mask replaces the model's own masks, sliding windows included.
            raise ValueError("backbones with sliding-window layers are not supported (the custom mask would drop the window)")
        self.tokenizer = tokenizer
        self.attention = attention
        self.pooling = pooling
        self.projection = projection
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self._template: TextTemplate | None = None

    # --- properties ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def embed_dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.hidden_size

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def max_positions(self) -> int:
        """The backbone's position budget (``max_position_embeddings``)."""
        return int(getattr(self.backbone.config, "max_position_embeddings", 1 << 62))

    # --- tokenization -------------------------------------------------------------------------

    @property
    def template(self) -> TextTemplate:
        """The :class:`TextTemplate` of this encoder's tokenizer (built once)."""
        if self._template is None or self._template.tokenizer is not self.tokenizer:
            self._template = TextTemplate(self.tokenizer)
        return self._template

    def _token_ids(self, texts: Sequence[str], max_length: int | None) -> tuple[list[list[int]], list[tuple[int, int]], int]:
        """Token ids per text, the span to pool ``[start, end)`` and the number of truncated texts."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        if len(texts) == 0:
            raise ValueError("no texts given")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text at index {i} is {type(text).__name__}, expected str")
            if not text.strip():
                raise ValueError(f"empty text at index {i}: an empty or whitespace-only string has nothing to embed")
        template = self.template
        budget = template.budget(max_length or self.max_length)  # text tokens
        if budget < 1:
            raise ValueError(f"max_length={max_length or self.max_length} leaves no room for text after special tokens")
        # a long document is cut before tokenizing, at a word boundary a margin past the budget: a token
        # never spans two words, so the first `budget` tokens are those of the whole text
        bare = self.tokenizer([_head_words(t, budget + WORD_MARGIN) for t in texts], add_special_tokens=False)["input_ids"]
        n_truncated = sum(len(x) > budget for x in bare)
        laid = [template.layout(x[:budget], echo=self.pooling == "echo") for x in bare]
        return [ids for ids, _ in laid], [span for _, span in laid], n_truncated

    def _pad(self, ids: list[list[int]], spans: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Pad to a rectangle on the tokenizer's padding side; return ids, mask and pool mask."""
        length = max(len(x) for x in ids)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:  # the id is irrelevant (padding keys are masked) but must exist
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        pool_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, (x, (start, end)) in enumerate(zip(ids, spans)):
            offset = length - len(x) if left else 0
            input_ids[row, offset : offset + len(x)] = torch.tensor(x, dtype=torch.long)
            attention_mask[row, offset : offset + len(x)] = 1
            pool_mask[row, offset + start : offset + end] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pool_mask": pool_mask}

    @staticmethod
    def _warn_truncated(n_truncated: int, n_texts: int, budget: int) -> None:
        if n_truncated:
            warnings.warn(
                f"{n_truncated} of {n_texts} texts were longer than max_length={budget} tokens and were truncated",
                TruncationWarning, stacklevel=3,
            )

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Texts -> ``input_ids``, ``attention_mask`` and ``pool_mask`` (B, L), ready for ``forward``.

        ``pool_mask`` marks the tokens that mean pooling uses: every real token, or for Echo only
        the second copy of the text. Raises ``ValueError`` on empty texts; warns once per call when
        texts are truncated to ``max_length`` (default ``self.max_length``) text tokens.
        """
        ids, spans, n_truncated = self._token_ids(texts, max_length)
        self._warn_truncated(n_truncated, len(ids), int(max_length or self.max_length))
        return self._pad(ids, spans)

    def tokens_per_text(self, texts: Sequence[str], max_length: int | None = None) -> list[int]:
        """Tokens the backbone actually processes per text (Echo: about twice the text's)."""
        ids, _, _ = self._token_ids(texts, max_length)
        return [len(x) for x in ids]

    # --- forward --------------------------------------------------------------------------------

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) last hidden states -> (B, H) float32, by ``self.pooling``."""
        if self.pooling == "last":
            # The last real token, wherever the padding is: the largest index with mask 1.
            idx = torch.arange(hidden.shape[1], device=hidden.device)
            last = (attention_mask.to(hidden.device).long() * idx).argmax(-1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
        if self.pooling == "echo" and pool_mask is None:
            raise ValueError("echo pooling needs the pool_mask made by Encoder.tokenize (the second copy's tokens)")
        mask = (pool_mask if pool_mask is not None else attention_mask).to(hidden.device)
        mask = mask.unsqueeze(-1).float()
        # float32 accumulation: a bf16 sum over hundreds of tokens loses digits.
        return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled states -> embeddings: the optional projection, then optional L2 normalisation."""
        if self.projection is not None:
            pooled = self.projection(pooled.to(self.projection.weight.dtype)).float()
        if self.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        future_weights: torch.Tensor | None = None,
        pool_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Embed a tokenized batch: ``{"embedding": (B, D), "hidden": (B, L, H)}``.

        With ``future_weights`` (GG-SM training) the soft mask is used, otherwise ``self.attention``.
        ``pool_mask`` restricts mean pooling to some tokens (Echo's second copy).
        """
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"{input_ids.shape[1]} tokens exceed the model's {self.max_positions} positions; lower max_length"
            )
        check_attention_implementation(self.backbone)
        mode = "soft" if future_weights is not None else self.attention
        positions = position_ids_from_mask(attention_mask)
        bias = attention_bias(attention_mask, mode, future_weights=future_weights, position_ids=positions, dtype=self.dtype)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=bias, position_ids=positions, use_cache=False
        ).last_hidden_state
        pooled = self.pool(hidden, attention_mask, pool_mask)
        return {"embedding": self.project(pooled), "hidden": hidden}

    # --- inference --------------------------------------------------------------------------------

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        show_progress: bool = False,
        convert_to_numpy: bool = True,
        max_length: int | None = None,
        precision: str = "float32",
    ) -> np.ndarray | torch.Tensor:
        """Embeddings of ``texts`` in input order, (N, D) (or (D,) for a single string).

        Runs in eval mode without gradients (the previous mode is restored). Texts are batched
        longest first, so each batch pads to similar lengths and the first batch shows the peak
        memory at once. ``precision="bfloat16"`` runs the forward under bf16 autocast (weights stay
        float32, embeddings come back float32).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts:
            empty = torch.zeros(0, self.embed_dim)
            return empty.numpy() if convert_to_numpy else empty
        ids, spans, n_truncated = self._token_ids(texts, max_length)
        self._warn_truncated(n_truncated, len(ids), int(max_length or self.max_length))
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        starts = range(0, len(order), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")

        was_training = self.training
        self.eval()
        out = torch.empty(len(ids), self.embed_dim)
        try:
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
            with torch.no_grad(), autocast:
                for start in starts:
                    chunk = order[start : start + batch_size]
                    batch = self._pad([ids[i] for i in chunk], [spans[i] for i in chunk])
                    out[chunk] = self(**batch)["embedding"].float().cpu()
        finally:
            self.train(was_training)
        out = out[0] if single else out
        return out.numpy() if convert_to_numpy else out

    # --- persistence ------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """Everything besides weights that rebuilds this encoder (``encoder_config.json``)."""
        projection = None
        if self.projection is not None:
            projection = {
                "in_features": self.projection.in_features,
                "out_features": self.projection.out_features,
                "bias": self.projection.bias is not None,
            }
        return {
            "format": FORMAT_VERSION,
            "attention": self.attention,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "projection": projection,
            "padding_side": getattr(self.tokenizer, "padding_side", "right"),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``backbone/`` (safetensors), ``tokenizer/``, the projection and the config.

        The folder appears only when complete (built next to it and renamed into place).
        """
        path = Path(path)
        with atomic_dir(path) as tmp, quiet_transformers():
            self.backbone.save_pretrained(tmp / "backbone")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            if self.projection is not None:
                tensors = {"weight": self.projection.weight}
                if self.projection.bias is not None:
                    tensors["bias"] = self.projection.bias
                save_tensors(tmp / PROJECTION_NAME, tensors)
            atomic_write_json(tmp / CONFIG_NAME, self.config_dict())
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> Encoder:
        """Rebuild a saved encoder on ``device`` (default :func:`inference_device`). Never unpickles,
        never runs remote code.

        A missing or corrupt file raises :class:`~streamdistill.artifacts.ArtifactError` with a
        one-line message.
        """
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        config_file = path / CONFIG_NAME
        if not config_file.exists():
            raise ArtifactError(f"{path} is not a saved Encoder (no {CONFIG_NAME})")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"corrupt {config_file}: {exc}") from None
        if config.get("format") != FORMAT_VERSION:
            raise ArtifactError(f"{config_file}: unsupported format {config.get('format')!r} (expected {FORMAT_VERSION})")

        verify(path)  # inside a cached artifact: the weights are the ones its DONE.json recorded
        backbone_dir = path / "backbone"
        weight_files = sorted(backbone_dir.glob("*.safetensors"))
        if not weight_files:
            raise ArtifactError(f"no safetensors weights in {backbone_dir}")
        for file in weight_files:
            check_safetensors_file(file)
        try:
            with quiet_transformers():
                backbone, info = AutoModel.from_pretrained(
                    backbone_dir, trust_remote_code=False, use_safetensors=True, dtype="auto", output_loading_info=True
                )
            tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", trust_remote_code=False)
        except Exception as exc:  # the message is one line; the loader's traceback stays chained
            raise ArtifactError(f"cannot load encoder from {path}: {_one_line(exc)}") from exc
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ArtifactError(f"{backbone_dir}: weights missing for {len(missing)} tensors, e.g. {missing[0]}")
        tokenizer.padding_side = config.get("padding_side", tokenizer.padding_side)

        projection = None
        if config.get("projection"):
            shape = config["projection"]
            tensors = load_tensors(path / PROJECTION_NAME)
            projection = nn.Linear(shape["in_features"], shape["out_features"], bias=shape["bias"])
            try:
                projection.load_state_dict(tensors)
            except RuntimeError as exc:
                raise ArtifactError(f"{path / PROJECTION_NAME}: {_one_line(exc)}") from None

        encoder = cls(
            backbone,
            tokenizer,
            attention=config["attention"],
            pooling=config["pooling"],
            projection=projection,
            normalize=config["normalize"],
            max_length=config["max_length"],
        )
        return encoder.to(device if device is not None else inference_device()).eval()


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def check_safetensors_file(path: str | Path) -> None:
    """Raise a one-line ``ArtifactError`` if a safetensors file is truncated or its header corrupt.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then the data; the data must end exactly where the header says. This
    catches an interrupted copy before transformers tries to map the file.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n_header = int.from_bytes(fh.read(8), "little")
            if size < 8 or 8 + n_header > size:
                raise ValueError("header runs past the end of the file")
            header = json.loads(fh.read(n_header))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ArtifactError(f"corrupt weights file {path}: {_one_line(exc)}; delete it to rebuild") from None
    expected = 8 + n_header + max(ends, default=0)
    if size != expected:
        raise ArtifactError(
            f"corrupt weights file {path}: {size} bytes, header promises {expected} (truncated?); delete it to rebuild"
        )
