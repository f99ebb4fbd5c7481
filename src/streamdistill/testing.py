"""Tiny random models and tokenizers for tests and examples (never used by a stage)."""

from __future__ import annotations

from collections.abc import Sequence

from .decoders import bpe_tokenizer, random_causal_lm

TINY_CORPUS = (
    "the cat sat on the mat",
    "a dog ran in the park with a red ball",
    "streaming embeddings reuse the key value cache",
    "bidirectional teachers see the whole sentence at once",
    "causal students read from left to right",
    "rewrite the sentence, rewritten sentence",
)


def tiny_qwen2(
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    max_positions: int = 512,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A tiny randomly initialised Qwen2 (eval mode)."""
    return tiny_decoder("qwen2", vocab_size, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                        max_positions=max_positions, seed=seed, attn_implementation=attn_implementation)


def tiny_llama(vocab_size: int, **kwargs):
    """A tiny randomly initialised Llama (eval mode): SmolLM2's architecture at test size."""
    return tiny_decoder("llama", vocab_size, **kwargs)


def tiny_decoder(architecture: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2,
                 kv_heads: int = 1, max_positions: int = 512, seed: int = 0, attn_implementation: str = "sdpa"):
    """A tiny randomly initialised decoder of ``architecture`` (eval mode)."""
    return random_causal_lm(architecture, vocab_size, hidden=hidden, intermediate=2 * hidden, layers=layers,
                            heads=heads, kv_heads=kv_heads, max_positions=max_positions, seed=seed,
                            attn_implementation=attn_implementation).eval()


def tiny_tokenizer(texts: Sequence[str] = TINY_CORPUS, vocab_size: int = 300, padding_side: str = "right"):
    """A tiny BPE tokenizer (no special token added to texts)."""
    return bpe_tokenizer(texts, vocab_size, eos_ends_text=False, padding_side=padding_side)
