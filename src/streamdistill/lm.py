"""Stages ``tokenizer`` and ``base-lm``: a byte-level BPE and a small Qwen2 pretrained here.

The ``tiny`` and ``cpu`` profiles pretrain their base causal LM on the mirror's *training* texts
only (train splits and the SciFact corpus; never a test split). A profile with ``base_model`` set
(``paper``) starts from that Hub checkpoint instead and skips both stages.

Each stage is ``artifacts.cached(stage, config, build)``; the registry passes ``base_lm_stage``
the tokenizer folder it builds on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .artifacts import atomic_write_json, cached, checkpoint_dir
from .data import data_fingerprint, training_texts
from .decoders import bpe_tokenizer, load_tokenizer, quiet_transformers, random_decoder
from .profiles import Profile
from .sampling import BatchPlan, EpochOrder
from .train import TrainResult, stage_checkpoints, train

# Bump a stage's version when its code changes what it builds: old artifacts are then not reused.
VERSIONS = {"tokenizer": 1, "base-lm": 1}
DATA_SEED = 0  # order of the mirror's texts before any per-seed permutation
LM_SEED = 0  # tokenizer and base LM: one pretrained base shared by every seed of A, B, C
TOKENIZER_TEXTS_PER_VOCAB = 4  # BPE trains on min(all, 4·vocab_size) training texts
HELDOUT_FRAC = 0.02  # texts held out of base-LM training for perplexity
HELDOUT_MAX_CHUNKS = 64  # perplexity on at most this many lm_seq_len windows


# ============================================================================ tokenizer


def tokenizer_config(profile: Profile) -> dict:
    return {"version": VERSIONS["tokenizer"], "vocab_size": profile.vocab_size,
            "texts": TOKENIZER_TEXTS_PER_VOCAB * profile.vocab_size, "seed": DATA_SEED, "data": data_fingerprint()}


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<pad>`` (0), ``<eos>`` (1); eos ends every text."""
    return bpe_tokenizer(texts, vocab_size, eos_ends_text=True)


def tokenizer_stage(profile: Profile) -> Path:
    """Folder with ``tokenizer/``: BPE trained on training texts only (never test splits)."""
    config = tokenizer_config(profile)

    def build(tmp: Path) -> dict:
        texts = training_texts(seed=DATA_SEED, limit=config["texts"])
        tok = train_tokenizer(texts, profile.vocab_size)
        tok.save_pretrained(tmp / "tokenizer")
        sample = texts[:200]
        ids = tok(sample)["input_ids"]
        return {"vocab": len(tok), "texts": len(texts),
                "tokens_per_text": sum(map(len, ids)) / len(ids),
                "round_trip": all(tok.decode(x, skip_special_tokens=True) == t for x, t in zip(ids, sample))}

    return cached("tokenizer", config, build)


def tokenizer_of(folder: Path):
    """The tokenizer of a ``tokenizer`` artifact."""
    return load_tokenizer(Path(folder) / "tokenizer")


# ============================================================================ base LM


def base_lm_config(profile: Profile, tokenizer: Path) -> dict:
    keys = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_positions",
            "lm_steps", "lm_batch_size", "lm_seq_len", "lm_lr", "warmup_steps_frac", "grad_clip")
    return {"version": VERSIONS["base-lm"], "tokenizer": Path(tokenizer).name,
            **{k: getattr(profile, k) for k in keys}, "seed": LM_SEED, "data": data_fingerprint()}


def pack(tokenizer, texts: Sequence[str], seq_len: int, max_tokens: int | None = None, chunk: int = 1000) -> torch.Tensor:
    """Texts (each ending in eos) concatenated and cut into ``(n, seq_len)`` windows.

    Tokenizes ``chunk`` texts at a time and stops once ``max_tokens`` are reached, so a small
    profile does not pay for the whole corpus.
    """
    ids: list[int] = []
    for start in range(0, len(texts), chunk):
        for row in tokenizer(list(texts[start : start + chunk]))["input_ids"]:
            ids += row
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"{len(ids)} tokens are fewer than one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def lm_loss(lm, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss (nats/token) of ``lm`` on packed windows."""
    was = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        x = windows[start : start + batch_size].to(device)
        out = lm(input_ids=x, labels=x)
        n = x.numel() - x.shape[0]  # predicted tokens
        total += float(out.loss) * n
        count += n
    lm.train(was)
    return total / max(1, count)


def pretrain_lm(lm, windows: torch.Tensor, profile: Profile, *, checkpoints: Path | None = None,
                progress: bool = True) -> TrainResult:
    """Next-token prediction on packed windows through the one training loop."""
    plan = BatchPlan(EpochOrder(len(windows), LM_SEED), profile.lm_batch_size)

    def batch_fn(step: int, micro: int) -> dict:
        x = windows[plan.indices(step, micro)]
        return {"input_ids": x, "n_tokens": x.numel()}

    def loss_fn(model, batch, step):
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss, {}

    ckpt = stage_checkpoints(checkpoints, profile.lm_steps) if checkpoints is not None else {}
    return train(lm, loss_fn, batch_fn, steps=profile.lm_steps, lr=profile.lm_lr,
                 warmup_frac=profile.warmup_steps_frac, grad_clip=profile.grad_clip, grad_accum=1,
                 seed=LM_SEED, progress=progress, desc="base-lm", **ckpt)


def base_lm_stage(profile: Profile, tokenizer: Path) -> Path:
    """Folder with ``lm/`` (Qwen2ForCausalLM + tokenizer) and ``history.json``, from the
    ``tokenizer`` artifact ``tokenizer``."""
    if profile.base_model:
        raise ValueError(f"profile {profile.name!r} uses the Hub model {profile.base_model}; no base LM is trained")
    config = base_lm_config(profile, tokenizer)

    def build(tmp: Path) -> dict:
        tok = tokenizer_of(tokenizer)
        texts = training_texts(seed=DATA_SEED)
        n_hold = max(1, int(len(texts) * HELDOUT_FRAC))
        train_texts, held = texts[:-n_hold], texts[-n_hold:]
        need = profile.lm_steps * profile.lm_batch_size * profile.lm_seq_len
        windows = pack(tok, train_texts, profile.lm_seq_len, max_tokens=need)
        held_w = pack(tok, held, profile.lm_seq_len, max_tokens=HELDOUT_MAX_CHUNKS * profile.lm_seq_len)
        held_w = held_w[:HELDOUT_MAX_CHUNKS]
        lm = random_decoder(profile, tok, seed=LM_SEED)
        before = lm_loss(lm, held_w)
        result = pretrain_lm(lm, windows, profile, checkpoints=checkpoint_dir("base-lm", config))
        after = lm_loss(lm, held_w)
        with quiet_transformers():
            lm.save_pretrained(tmp / "lm")
            tok.save_pretrained(tmp / "lm")
        atomic_write_json(tmp / "history.json", result.history)
        return {
            "parameters": sum(p.numel() for p in lm.parameters()),
            "train_windows": len(windows), "epochs": need / max(1, windows.numel()),
            "heldout_texts": n_hold, "heldout_tokens": held_w.numel(),
            "heldout_loss_before": before, "heldout_loss_after": after,
            "heldout_ppl_before": math.exp(before), "heldout_ppl_after": math.exp(after),
            "loss_history": [r["loss"] for r in result.history],
            "seconds": result.seconds, "seconds_per_step": result.seconds / max(1, profile.lm_steps),
        }

    return cached("base-lm", config, build)
