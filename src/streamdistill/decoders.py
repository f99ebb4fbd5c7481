"""Decoder backbones: the one profile -> decoder builder, loading a saved decoder, LoRA, tokenizers.

Everything that makes or unwraps a Hugging Face causal LM lives here, so the stages, the streaming
benchmark and the tests all build the same model for the same profile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' per-shard progress bars while saving/loading (noise in the book)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def decoder_stack(backbone: nn.Module) -> nn.Module:
    """The decoder stack of a Hugging Face ``*ForCausalLM`` (its ``.model``); anything else as given.

    Only true ``PreTrainedModel`` LMs are unwrapped: a PEFT wrapper must be put around the decoder
    stack itself (:func:`with_lora` does), since its forward must return hidden states.
    """
    from transformers import PreTrainedModel

    if isinstance(backbone, PreTrainedModel) and hasattr(backbone, "lm_head") and hasattr(backbone, "model"):
        return backbone.model
    return backbone


def random_causal_lm(
    architecture: str,
    vocab_size: int,
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    max_positions: int,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    **config_kwargs,
):
    """A randomly initialised ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (tied embeddings).

    The global RNG is left untouched (``fork_rng``), so building a model does not change anyone
    else's randomness. ``config_kwargs`` go to the config (e.g. ``pad_token_id``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if architecture not in classes:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of: {', '.join(classes)}")
    config_cls, model_cls = classes[architecture]
    config = config_cls(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, attn_implementation=attn_implementation, **config_kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def random_decoder(profile: Any, tokenizer=None, *, vocab_size: int | None = None, seed: int = 0,
                   max_positions: int | None = None):
    """The one profile -> decoder builder: a random causal LM of the profile's architecture and shape.

    Hidden size, layers, heads, KV heads, intermediate size and positions come from ``profile``;
    the vocabulary and the special-token ids from ``tokenizer`` (or ``vocab_size`` without one).
    """
    ids: dict[str, Any] = {}
    if tokenizer is not None:
        vocab_size = len(tokenizer)
        ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
               "bos_token_id": tokenizer.bos_token_id}
    if vocab_size is None:
        raise ValueError("random_decoder needs a tokenizer or a vocab_size")
    return random_causal_lm(profile.architecture, vocab_size, hidden=profile.hidden_size,
                            intermediate=profile.intermediate_size, layers=profile.num_layers,
                            heads=profile.num_heads, kv_heads=profile.num_kv_heads,
                            max_positions=int(max_positions or profile.max_positions), seed=seed, **ids)


def bpe_tokenizer(texts: Sequence[str], vocab_size: int, *, eos_ends_text: bool, padding_side: str = "right"):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (any text encodes).

    Special tokens: ``<pad>`` (id 0) and ``<eos>`` (id 1); with ``eos_ends_text`` the tokenizer
    appends ``<eos>`` to every text (the project's base LM reads texts that way).
    ``len(tokenizer) <= vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(texts), trainer)
    extra = {}
    if eos_ends_text:
        eos = backend.token_to_id("<eos>")
        backend.post_processor = processors.TemplateProcessing(
            single="$A <eos>", pair="$A <eos> $B <eos>", special_tokens=[("<eos>", eos)])
        extra["clean_up_tokenization_spaces"] = False
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   padding_side=padding_side, **extra)


def load_tokenizer(folder: str | Path):
    """A saved tokenizer, right padding, with a pad token (its EOS if it has none); no remote code."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class BaseModel:
    """Where a stage's starting decoder comes from: a folder (an artifact) or a Hub id.

    ``identity`` is what the stages built on it put in their configs (an artifact's hash or the
    Hub id), so a different base never shares their cache.
    """

    source: str
    identity: dict

    def load(self):
        """``(causal LM, tokenizer)``: bf16 for a Hub checkpoint on a GPU host, else as saved."""
        hub = not Path(self.source).is_dir()
        dtype = torch.bfloat16 if hub and torch.cuda.is_available() else None
        return load_decoder(self.source, dtype=dtype)

    def tokenizer(self):
        """Its tokenizer alone (no weights loaded)."""
        return load_tokenizer(self.source)


def load_decoder(name_or_folder: str | Path, *, dtype: torch.dtype | None = None):
    """``(causal LM, tokenizer)`` from a folder (or a Hub id): safetensors only, sdpa, no remote code."""
    from transformers import AutoModelForCausalLM

    with quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(name_or_folder, attn_implementation="sdpa", use_safetensors=True,
                                                  trust_remote_code=False, **({"dtype": dtype} if dtype else {}))
        tokenizer = load_tokenizer(name_or_folder)
    return lm, tokenizer


def with_lora(backbone: nn.Module, r: int, alpha: int, seed: int = 0) -> nn.Module:
    """The decoder stack of ``backbone`` wrapped in LoRA (rank ``r``, ``alpha``) on every projection.

    The adapters' random initialisation is seeded (``seed``) and leaves the global RNG alone, so
    seed ``s`` of A, B and C starts from the same weights.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(decoder_stack(backbone), config)


def merge_lora(backbone: nn.Module) -> nn.Module:
    """A LoRA-wrapped decoder with its adapters folded in (a plain decoder again); others as given."""
    return backbone.merge_and_unload() if hasattr(backbone, "merge_and_unload") else backbone
