"""The stages of the reproduction, each a cached function of its config.

::

    tokenizer ──> base-lm ──┬──> causal   (A: causal attention + InfoNCE)
                            ├──> teacher  (B: GG-SM soft mask -> bidirectional; variants hard, linear)
                            │       └──> teacher-embeddings (B's embeddings of the training pairs, once)
                            └──> student  (C: causal, InfoNCE + λ·MSE to the cached teacher embeddings)

Every stage is ``artifacts.cached(stage, config, build)``: ``config`` holds the profile fields the
stage reads plus the folder names (= config hashes) of the artifacts it builds on, so an unchanged
config is a cache hit and any change (a setting, an upstream artifact, the data mirror, the stage's
code version) trains again. Every training run goes through :func:`streamdistill.train.train`.

A, B and C see the same pairs in the same order for the same number of steps with the same seed
(``profile.seed``); the tokenizer and the base LM use a fixed seed, so ``--set seed=1`` retrains the
contrastive stages only. The ``paper`` profile swaps the two first stages for a Hub checkpoint
(``profile.base_model``) wrapped in LoRA; everything after that is the same code.

The evaluation harness resolves the names of :data:`MODEL_STAGES` ("A", "A+Echo", "B", "C", ...)
through a resolver registered in ``evaluate.RESOLVERS`` when this module is imported.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import evaluate
from .artifacts import (
    artifacts_root,
    atomic_write_json,
    cached,
    config_hash,
    load_tensors,
    read_done,
    save_tensors,
)
from .data import data_fingerprint
from .encoder import (
    Encoder,
    _quiet_transformers,
    bpe_tokenizer,
    inference_device,
    position_ids_from_mask,
    random_qwen2,
)
from .ggsm import VARIANTS, SoftMask
from .losses import info_nce, student_loss
from .profiles import Profile, get_profile
from .train import TrainResult, data_parallel_world, train

# Bump a stage's version when its code changes what it builds: old artifacts are then not reused
# (v2 of the contrastive stages: SciFact title->abstract pairs leave out documents test claims cite;
# v2 of the teacher also: the GG-SM EMA decays every future cell, not only those a batch reached).
# (v3 of teacher-embeddings and student: held-out probe texts, the student's cosine to B over training).
VERSIONS = {"tokenizer": 1, "base-lm": 1, "causal": 2, "teacher": 2, "teacher-embeddings": 3, "student": 3}
STAGES = ("tokenizer", "base-lm", "causal", "teacher", "student", "leaf")
# Settings that choose *which* artifact a stage builds without being profile fields.
STAGE_SETTINGS = ("variant",)
# Inference-time settings accepted by resolve_with_settings (besides profile overrides).
INFERENCE_SETTINGS = ("pooling", "variant")

DATA_SEED = 0  # order of the mirror's texts/pairs before the per-seed epoch permutations
LM_SEED = 0  # tokenizer and base LM: one pretrained base shared by every seed of A, B, C
TOKENIZER_TEXTS_PER_VOCAB = 4  # BPE trains on min(all, 4·vocab_size) training texts
HELDOUT_FRAC = 0.02  # texts held out of base-LM training for perplexity
HELDOUT_MAX_CHUNKS = 64  # perplexity on at most this many lm_seq_len windows
CHECKPOINT_EVERY = 100  # optimiser steps between resumable checkpoints (long runs only)
PROBE_TEXTS = (
    "The committee approved the budget after a long debate.",
    "Streaming reuses the cache.",
    "A red kite circled over the old bridge at dawn.",
)


# ============================================================================ helpers


def _summary(folder: Path) -> dict:
    return read_done(folder).get("summary", {})


def _checkpoint_dir(stage: str, config: dict) -> Path:
    """Resumable checkpoints live beside the artifacts (the build folder is temporary)."""
    return artifacts_root() / ".checkpoints" / stage / config_hash(config)


class _Order:
    """Item ``g`` of an endless stream over ``n`` items: a fresh permutation per epoch (seeded)."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("no training items")
        self.n, self.seed, self._perms = n, seed, {}

    def __getitem__(self, g: int) -> int:
        epoch, pos = divmod(int(g), self.n)
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(1_000_003 * self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=gen).tolist()
        return self._perms[epoch][pos]


def _micro_size(batch_size: int, grad_accum: int) -> int:
    parts = grad_accum * data_parallel_world()
    if batch_size % parts:
        raise ValueError(f"batch_size={batch_size} must be divisible by grad_accum × processes = {parts}")
    return batch_size // parts


def _write_history(folder: Path, result: TrainResult) -> None:
    atomic_write_json(folder / "history.json", result.history)


def _loss_tail(history: list[dict], frac: float = 0.1) -> float:
    tail = history[-max(1, int(len(history) * frac)) :]
    return float(sum(r["loss"] for r in tail) / len(tail)) if tail else float("nan")


# ============================================================================ 1. tokenizer


def tokenizer_config(profile: Profile) -> dict:
    return {"version": VERSIONS["tokenizer"], "vocab_size": profile.vocab_size,
            "texts": TOKENIZER_TEXTS_PER_VOCAB * profile.vocab_size, "seed": DATA_SEED, "data": data_fingerprint()}


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<pad>`` (0), ``<eos>`` (1); eos ends every text."""
    return bpe_tokenizer(texts, vocab_size, eos_ends_text=True)


def tokenizer_stage(profile: Profile) -> Path:
    """Folder with ``tokenizer/``: BPE trained on training texts only (never test splits)."""
    from .data import training_texts

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


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(folder) / "tokenizer", trust_remote_code=False)


# ============================================================================ 2. base LM


def base_lm_config(profile: Profile) -> dict:
    keys = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_positions",
            "lm_steps", "lm_batch_size", "lm_seq_len", "lm_lr", "warmup_steps_frac", "grad_clip")
    return {"version": VERSIONS["base-lm"], "tokenizer": tokenizer_stage(profile).name,
            **{k: getattr(profile, k) for k in keys}, "seed": LM_SEED, "data": data_fingerprint()}


def new_qwen2(profile: Profile, tokenizer, seed: int = LM_SEED):
    """A randomly initialised ``Qwen2ForCausalLM`` of the profile's size (tied embeddings)."""
    return random_qwen2(len(tokenizer), hidden=profile.hidden_size, intermediate=profile.intermediate_size,
                        layers=profile.num_layers, heads=profile.num_heads, kv_heads=profile.num_kv_heads,
                        max_positions=profile.max_positions, seed=seed, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=None)


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


def pretrain_lm(lm, windows: torch.Tensor, profile: Profile, *, checkpoint_dir: Path | None = None,
                progress: bool = True) -> TrainResult:
    """Next-token prediction on packed windows through the one training loop."""
    order = _Order(len(windows), LM_SEED)
    mb, world = _micro_size(profile.lm_batch_size, 1), data_parallel_world()

    def batch_fn(step: int, micro: int) -> dict:
        base = (step * world + micro) * mb
        x = windows[[order[base + k] for k in range(mb)]]
        return {"input_ids": x, "n_tokens": x.numel()}

    def loss_fn(model, batch, step):
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss, {}

    return train(lm, loss_fn, batch_fn, steps=profile.lm_steps, lr=profile.lm_lr,
                 warmup_frac=profile.warmup_steps_frac, grad_clip=profile.grad_clip, grad_accum=1,
                 seed=LM_SEED, checkpoint_dir=checkpoint_dir, checkpoint_every=CHECKPOINT_EVERY,
                 keep_last=1, progress=progress, desc="base-lm")


def base_lm_stage(profile: Profile) -> Path:
    """Folder with ``lm/`` (Qwen2ForCausalLM + tokenizer) and ``history.json``."""
    from transformers import Qwen2ForCausalLM  # noqa: F401  (fail early without transformers)

    from .data import training_texts

    if profile.base_model:
        raise ValueError(f"profile {profile.name!r} uses the Hub model {profile.base_model}; no base LM is trained")
    config = base_lm_config(profile)
    tok_folder = tokenizer_stage(profile)

    def build(tmp: Path) -> dict:
        tokenizer = load_tokenizer(tok_folder)
        texts = training_texts(seed=DATA_SEED)
        n_hold = max(1, int(len(texts) * HELDOUT_FRAC))
        train_texts, held = texts[:-n_hold], texts[-n_hold:]
        need = profile.lm_steps * profile.lm_batch_size * profile.lm_seq_len
        windows = pack(tokenizer, train_texts, profile.lm_seq_len, max_tokens=need)
        held_w = pack(tokenizer, held, profile.lm_seq_len, max_tokens=HELDOUT_MAX_CHUNKS * profile.lm_seq_len)
        held_w = held_w[:HELDOUT_MAX_CHUNKS]
        lm = new_qwen2(profile, tokenizer)
        before = lm_loss(lm, held_w)
        ckpt = _checkpoint_dir("base-lm", config)
        result = pretrain_lm(lm, windows, profile, checkpoint_dir=ckpt)
        after = lm_loss(lm, held_w)
        with _quiet_transformers():
            lm.save_pretrained(tmp / "lm")
            tokenizer.save_pretrained(tmp / "lm")
        _write_history(tmp, result)
        shutil.rmtree(ckpt, ignore_errors=True)
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


# ============================================================================ base model -> encoder


def base_identity(profile: Profile) -> dict:
    """What the contrastive stages start from: the Hub model (+LoRA) or the base-LM artifact."""
    if profile.base_model:
        return {"base_model": profile.base_model, "lora_r": profile.lora_r, "lora_alpha": profile.lora_alpha}
    return {"base_lm": base_lm_stage(profile).name}


def load_base(profile: Profile):
    """``(Qwen2ForCausalLM, tokenizer)``: ``profile.base_model`` from the Hub, else the base-LM artifact."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        if profile.base_model:  # pragma: no cover - needs the Hub (the paper profile on a GPU host)
            dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
            lm = AutoModelForCausalLM.from_pretrained(profile.base_model, dtype=dtype, attn_implementation="sdpa",
                                                      use_safetensors=True, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(profile.base_model, trust_remote_code=False)
        else:
            folder = base_lm_stage(profile) / "lm"
            lm = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", trust_remote_code=False,
                                                      use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_encoder(lm, tokenizer, profile: Profile, *, attention: str = "causal") -> Encoder:
    """An :class:`Encoder` on ``lm``'s decoder stack; LoRA (r, alpha) around it when ``profile.lora_r``."""
    backbone = lm.model if hasattr(lm, "lm_head") and hasattr(lm, "model") else lm
    if profile.lora_r:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=profile.lora_r, lora_alpha=profile.lora_alpha, lora_dropout=0.0,
                            target_modules=list(LORA_TARGETS))
        backbone = get_peft_model(backbone, config)
    return Encoder(backbone, tokenizer, attention=attention, pooling=profile.pooling,
                   normalize=True, max_length=profile.max_length)


def merge_lora(encoder: Encoder) -> Encoder:
    """Fold LoRA weights into the backbone (a plain ``Qwen2Model`` again), so ``Encoder.save`` works."""
    if hasattr(encoder.backbone, "merge_and_unload"):
        encoder.backbone = encoder.backbone.merge_and_unload()
    return encoder


# ============================================================================ 3. contrastive stages


@dataclass
class PairData:
    """The training pairs and the order every contrastive stage reads them in."""

    pairs: list[tuple[str, str]]
    seed: int
    batch_size: int
    grad_accum: int

    def __post_init__(self):
        self.order = _Order(len(self.pairs), self.seed)
        self.micro = _micro_size(self.batch_size, self.grad_accum)
        self.world = data_parallel_world()  # under `accelerate launch` too: no Accelerator needed yet

    def indices(self, step: int, micro: int) -> list[int]:
        base = (step * self.grad_accum * self.world + micro) * self.micro
        return [self.order[base + k] for k in range(self.micro)]

    def used(self, steps: int) -> list[int]:
        """Every pair index a run of ``steps`` optimiser steps reads (sorted)."""
        return sorted({self.order[g] for g in range(steps * self.batch_size)})


def pair_data(profile: Profile) -> PairData:
    from .data import training_pairs

    return PairData(training_pairs(seed=DATA_SEED), profile.seed, profile.batch_size, profile.grad_accum)


HELDOUT_PROBES = 128  # held-out texts the student is compared with its teacher on, during training


def heldout_probe_texts(n: int = HELDOUT_PROBES) -> list[str]:
    """STSBenchmark *validation* sentences: no stage trains on a validation split (or synthetic ones)."""
    from .data import data_dir, read_jsonl, synthetic_texts

    if data_dir() is None:
        return synthetic_texts(n, seed=DATA_SEED + 1)
    return [r["sentence1"] for r in read_jsonl("sts/STSBenchmark/validation.jsonl")][:n]


def _tokenize(encoder: Encoder, texts: list[str], max_length: int) -> dict:
    with warnings.catch_warnings():  # long documents are truncated by design; no warning per batch
        warnings.simplefilter("ignore")
        return encoder.tokenize(texts, max_length=max_length)


def train_contrastive(
    encoder: Encoder,
    profile: Profile,
    data: PairData,
    *,
    kind: str,
    variant: str = "ggsm",
    teacher: dict[str, torch.Tensor] | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> tuple[TrainResult, SoftMask | None]:
    """Train ``encoder`` on ``data`` for ``profile.train_steps`` steps; ``kind`` picks the objective.

    * ``causal``:  InfoNCE with in-batch negatives, causal attention (A).
    * ``teacher``: InfoNCE under the GG-SM soft mask of ``variant`` (B and its ablations); the
      returned :class:`SoftMask` holds the learnt importance.
    * ``student``: InfoNCE + λ·MSE to ``teacher`` = ``{"index", "queries", "docs", "heldout"}``, the
      cached teacher embeddings of the pairs (C); the teacher model itself is never needed. Its
      history records ``heldout_cos``, the mean cosine to the teacher on :func:`heldout_probe_texts`.
    """
    if kind not in ("causal", "teacher", "student"):
        raise ValueError(f"unknown kind {kind!r}")
    soft = SoftMask.from_profile(profile, max_len=profile.max_length, variant=variant) if kind == "teacher" else None
    row_of = None
    if kind == "student":
        if teacher is None:
            raise ValueError("the student needs the cached teacher embeddings")
        row_of = {int(i): r for r, i in enumerate(teacher["index"].tolist())}
        probes = _tokenize(encoder, heldout_probe_texts(), profile.max_length)
        probe_target = torch.nn.functional.normalize(teacher["heldout"].float(), dim=-1)

    def heldout_cosine(model, step: int) -> dict:
        device = next(model.parameters()).device
        out = model(**{k: v.to(device) for k, v in probes.items()})["embedding"].float()
        cos = (torch.nn.functional.normalize(out, dim=-1) * probe_target.to(device)).sum(-1)
        return {"heldout_cos": cos.mean()}

    def batch_fn(step: int, micro: int) -> dict:
        idx = data.indices(step, micro)
        q = _tokenize(encoder, [data.pairs[i][0] for i in idx], profile.max_length)
        d = _tokenize(encoder, [data.pairs[i][1] for i in idx], profile.max_length)
        batch = {"q": q, "d": d, "n_tokens": int(q["attention_mask"].sum() + d["attention_mask"].sum())}
        if row_of is not None:
            rows = torch.tensor([row_of[i] for i in idx])
            batch["q_t"], batch["d_t"] = teacher["queries"][rows], teacher["docs"][rows]
        return batch

    def embed(model, tokens: dict, step: int) -> torch.Tensor:
        if soft is None:
            return model(**tokens)["embedding"]
        w = soft.future_weights(step).to(tokens["input_ids"].device)
        out = model(**tokens, future_weights=w)
        if soft.is_warm(step):
            mask = tokens["attention_mask"]
            soft.watch(out["hidden"], mask, position_ids_from_mask(mask))
        return out["embedding"]

    def loss_fn(model, batch, step):
        q, d = embed(model, batch["q"], step), embed(model, batch["d"], step)
        if kind == "student":
            return student_loss(q, d, batch["q_t"], batch["d_t"], profile.temperature,
                                profile.distill_lambda, profile.false_negative_margin)
        loss = info_nce(q, d, profile.temperature, profile.false_negative_margin)
        logs = {"future_weight": soft.mean_future_weight(step, profile.max_length)} if soft is not None else {}
        return loss, logs

    desc = kind if kind != "teacher" else f"teacher-{variant}"
    result = train(encoder, loss_fn, batch_fn, steps=profile.train_steps, lr=profile.lr,
                   warmup_frac=profile.warmup_steps_frac, grad_clip=profile.grad_clip,
                   grad_accum=profile.grad_accum, seed=profile.seed, checkpoint_dir=checkpoint_dir,
                   checkpoint_every=CHECKPOINT_EVERY, keep_last=1,
                   after_backward=soft.update if soft is not None else None,
                   probe_fn=heldout_cosine if kind == "student" else None,
                   probe_every=max(1, profile.train_steps // 20),
                   extra_state=soft, progress=progress, desc=desc)
    return result, soft


CONTRASTIVE_KEYS = ("train_steps", "batch_size", "max_length", "lr", "warmup_steps_frac", "grad_clip",
                    "grad_accum", "temperature", "false_negative_margin", "pooling", "seed")


def contrastive_config(stage: str, profile: Profile, **extra) -> dict:
    return {"version": VERSIONS[stage], **base_identity(profile),
            **{k: getattr(profile, k) for k in CONTRASTIVE_KEYS}, "data": data_fingerprint(), **extra}


def _variant_config(profile: Profile, variant: str) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown teacher variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    out: dict[str, Any] = {"variant": variant}
    if variant != "hard":
        out["ggsm_warm_frac"] = profile.ggsm_warm_frac
    if variant == "ggsm":
        out["ggsm_ema_decay"] = profile.ggsm_ema_decay
    if variant == "linear":
        out["linear_warm_weight"] = profile.linear_warm_weight
    return out


def _save_encoder(tmp: Path, encoder: Encoder, result: TrainResult) -> dict:
    """Save the trained encoder and history; embed fixed probe texts so a reload can be checked."""
    merge_lora(encoder)
    encoder.eval()
    encoder.save(tmp / "model")
    _write_history(tmp, result)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = encoder.encode(list(PROBE_TEXTS), convert_to_numpy=False)
    save_tensors(tmp / "probe.safetensors", {"embeddings": probe})
    return {"attention": encoder.attention, "parameters": encoder.n_parameters,
            "final_loss": _loss_tail(result.history), "loss_history": [r["loss"] for r in result.history],
            "seconds": result.seconds, "seconds_per_step": result.seconds / max(1, len(result.history))}


def _contrastive_stage(stage: str, profile: Profile, config: dict, kind: str, *, variant: str = "ggsm",
                       teacher_folder: Path | None = None) -> Path:
    def build(tmp: Path) -> dict:
        lm, tokenizer = load_base(profile)
        encoder = make_encoder(lm, tokenizer, profile, attention="causal")
        data = pair_data(profile)
        teacher = load_tensors(teacher_folder / "embeddings.safetensors") if teacher_folder is not None else None
        ckpt = _checkpoint_dir(stage, config)
        result, soft = train_contrastive(encoder, profile, data, kind=kind, variant=variant, teacher=teacher,
                                         checkpoint_dir=ckpt)
        summary = {"pairs": len(data.pairs), "pairs_seen": profile.train_steps * profile.batch_size}
        if soft is not None:
            encoder.attention = "bidirectional"  # inference: the fully open mask (w = 1 at t_total)
            state = {"importance": soft.importance}
            if soft.frozen is not None:
                state["frozen"] = soft.frozen
            save_tensors(tmp / "softmask.safetensors", state)
            summary.update(variant=variant, t_warm=soft.t_warm, t_total=soft.t_total,
                           frozen_mean_future_weight=soft.mean_future_weight(soft.t_warm, profile.max_length))
        if teacher_folder is not None:
            summary["teacher_embeddings"] = str(teacher_folder / "embeddings.safetensors")
        summary.update(_save_encoder(tmp, encoder, result))
        shutil.rmtree(ckpt, ignore_errors=True)
        return summary

    return cached(stage, config, build)


def causal_stage(profile: Profile) -> Path:
    """A: the base LM fine-tuned contrastively with causal attention."""
    return _contrastive_stage("causal", profile, contrastive_config("causal", profile), "causal")


def teacher_stage(profile: Profile, variant: str = "ggsm") -> Path:
    """B (``ggsm``) or an ablation (``hard``, ``linear``); saved with bidirectional attention."""
    config = contrastive_config("teacher", profile, **_variant_config(profile, variant))
    return _contrastive_stage("teacher", profile, config, "teacher", variant=variant)


def teacher_embeddings_stage(profile: Profile, variant: str = "ggsm") -> Path:
    """The teacher's embeddings of every pair the student will read, computed once.

    ``embeddings.safetensors``: ``index`` (pair indices), ``queries`` and ``docs`` (N, D), keyed by
    the teacher artifact's hash (its folder name) and the pairs read.
    """
    teacher = teacher_stage(replace(profile, seed=profile.teacher_seed), variant)
    data = pair_data(profile)  # the student's order: the pairs this student will read
    used = data.used(profile.train_steps)
    config = {"version": VERSIONS["teacher-embeddings"], "teacher": teacher.name, "teacher_stage": "teacher",
              "n_pairs": len(used), "pairs_hash": config_hash(used), "max_length": profile.max_length,
              "heldout": HELDOUT_PROBES, "data": data_fingerprint()}

    def build(tmp: Path) -> dict:
        started = time.perf_counter()
        encoder = Encoder.load(teacher / "model")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            queries = encoder.encode([data.pairs[i][0] for i in used], batch_size=64, convert_to_numpy=False,
                                     max_length=profile.max_length)
            docs = encoder.encode([data.pairs[i][1] for i in used], batch_size=64, convert_to_numpy=False,
                                  max_length=profile.max_length)
            heldout = encoder.encode(heldout_probe_texts(), batch_size=64, convert_to_numpy=False,
                                     max_length=profile.max_length)
        save_tensors(tmp / "embeddings.safetensors",
                     {"index": torch.tensor(used, dtype=torch.long), "queries": queries, "docs": docs,
                      "heldout": heldout},
                     metadata={"teacher": teacher.name})
        return {"pairs": len(used), "dim": int(queries.shape[1]), "seconds": time.perf_counter() - started}

    return cached("teacher-embeddings", config, build)


def student_stage(profile: Profile) -> Path:
    """C: causal, from the base LM, InfoNCE + λ·MSE to B's cached embeddings (B never in memory)."""
    teacher = teacher_stage(replace(profile, seed=profile.teacher_seed), "ggsm")
    embeddings = teacher_embeddings_stage(profile, "ggsm")
    config = contrastive_config("student", profile, teacher=teacher.name, teacher_embeddings=embeddings.name,
                                distill_lambda=profile.distill_lambda)
    return _contrastive_stage("student", profile, config, "student", teacher_folder=embeddings)


# ============================================================================ entry points


def run_stage(stage: str, profile: Profile | str | None = None, **settings) -> tuple[Path, dict]:
    """Train (or fetch from the cache) one stage: ``(artifact folder, summary)``.

    ``stage`` is one of :data:`STAGES`; ``settings`` holds stage settings that are not profile
    fields (``variant=`` for ``teacher``).
    """
    profile = get_profile(profile)
    unknown = set(settings) - set(STAGE_SETTINGS)
    if unknown:
        raise ValueError(f"unknown stage setting(s) {', '.join(sorted(unknown))}; valid: {', '.join(STAGE_SETTINGS)}")
    variant = settings.get("variant")
    if variant is not None and stage != "teacher":
        raise ValueError(f"variant= applies to the teacher stage only, not {stage!r}")
    if stage == "tokenizer":
        folder = tokenizer_stage(profile)
    elif stage == "base-lm":
        folder = base_lm_stage(profile)
    elif stage == "causal":
        folder = causal_stage(profile)
    elif stage == "teacher":
        folder = teacher_stage(profile, variant or "ggsm")
    elif stage == "student":
        folder = student_stage(profile)
    elif stage == "leaf":
        return _run_leaf(profile)
    else:
        raise ValueError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    return folder, _summary(folder)


def _run_leaf(profile: Profile) -> tuple[Path, dict]:
    try:
        from . import leaf
    except ImportError as exc:
        raise ValueError(f"the leaf stage lives in src/streamdistill/leaf.py, which cannot be imported ({exc})") from None
    return leaf.run_leaf(profile)


# name -> (stage, stage settings, pooling at inference or None for the saved one)
MODEL_STAGES: dict[str, tuple[str, dict, str | None]] = {
    "base": ("base-lm", {}, "mean"),
    "A": ("causal", {}, None),
    "A+Echo": ("causal", {}, "echo"),
    "B": ("teacher", {"variant": "ggsm"}, None),
    "B-hard": ("teacher", {"variant": "hard"}, None),
    "B-linear": ("teacher", {"variant": "linear"}, None),
    "C": ("student", {}, None),
}


def load_stage_encoder(name: str, profile: Profile | str | None = None, *, pooling: str | None = None,
                       variant: str | None = None) -> tuple[Encoder, Path]:
    """The encoder of a :data:`MODEL_STAGES` name, trained if missing, set up for evaluation.

    Returns ``(encoder, weights folder)``; ``max_length`` is ``profile.eval_max_length``.
    """
    profile = get_profile(profile)
    if name not in MODEL_STAGES:
        raise ValueError(f"unknown model stage {name!r}; choose one of: {', '.join(MODEL_STAGES)}")
    stage, settings, default_pooling = MODEL_STAGES[name]
    if variant is not None:
        if stage != "teacher":
            raise ValueError(f"variant= applies to teacher models (B...), not {name!r}")
        settings = {"variant": variant}
    if stage == "base-lm":
        lm, tokenizer = load_base(profile)
        encoder = Encoder(lm, tokenizer, attention="causal", pooling="mean", max_length=profile.max_length)
        encoder = encoder.to(inference_device()).eval()
        folder = base_lm_stage(profile) / "lm"
    else:
        folder, _ = run_stage(stage, profile, **settings)
        folder = folder / "model"
        encoder = Encoder.load(folder)
    encoder.pooling = pooling or default_pooling or encoder.pooling
    encoder.max_length = profile.eval_max_length
    return encoder, folder


def _model_name(profile: Profile, name: str) -> str:
    return f"streamdistill/{profile.name}-{name}"


def _embedding_model(encoder: Encoder, folder: Path, name: str) -> evaluate.EmbeddingModel:
    # the revision names the weights and the inference settings that change the numbers
    settings = config_hash({"pooling": encoder.pooling, "max_length": encoder.max_length}, 6)
    return evaluate.from_encoder(encoder, name=name, revision=f"{evaluate.weights_revision(folder)}-{settings}")


def resolve_stage(name: str, profile: Profile) -> evaluate.EmbeddingModel | None:
    """The resolver registered in ``evaluate.RESOLVERS``: stage names -> models; None otherwise."""
    if name not in MODEL_STAGES:
        return None
    encoder, folder = load_stage_encoder(name, profile)
    return _embedding_model(encoder, folder, _model_name(profile, name))


def resolve_with_settings(name: str, profile: Profile | str | None, sets: dict[str, str]) -> evaluate.EmbeddingModel:
    """A model with ``--set`` settings: ``pooling=mean|last|echo`` and ``variant=`` at inference,
    any other key a profile override (e.g. ``seed=1`` picks that seed's stage models)."""
    from .encoder import POOLINGS

    sets = dict(sets)
    inference = {k: sets.pop(k) for k in INFERENCE_SETTINGS if k in sets}
    profile = get_profile(profile, sets)
    pooling, variant = inference.get("pooling"), inference.get("variant")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown teacher variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if name in MODEL_STAGES:
        encoder, folder = load_stage_encoder(name, profile, pooling=pooling, variant=variant)
        label = name + (f"-{variant}" if variant and variant != "ggsm" else "")
        label += f"-{pooling}" if pooling and pooling != (MODEL_STAGES[name][2] or profile.pooling) else ""
        return _embedding_model(encoder, folder, _model_name(profile, label))
    path = Path(name).expanduser()
    if path.is_dir() and (path / "encoder_config.json").exists():
        if variant is not None:
            raise ValueError("variant= only applies to stage names (B, B-hard, ...)")
        encoder = Encoder.load(path)
        if pooling:
            encoder.pooling = pooling
        return _embedding_model(encoder, path, f"streamdistill/{path.name}-{encoder.pooling}")
    if inference:
        raise ValueError(f"--set {', '.join(inference)} needs a stage name ({', '.join(MODEL_STAGES)}) "
                         f"or a streamdistill encoder folder, not {name!r}")
    return evaluate.resolve_model(name, profile)


GAP_MODELS = ("A", "A+Echo", "B", "C")


def gap_closure_experiment(profile: Profile | str | None = None, tasks: Sequence[str] | None = None) -> dict:
    """Train what is missing, evaluate A, A+Echo, B, C on the paper's slice, report gap closure."""
    from .tasks import PAPER_SLICE

    profile = get_profile(profile)
    tasks = list(tasks or PAPER_SLICE)
    per_task, models = {}, {}
    for name in GAP_MODELS:
        result = evaluate.evaluate_model(resolve_stage(name, profile), tasks, profile)
        per_task[name] = result["scores"]
        models[name] = {"model": result["model"], "revision": result["revision"]}
    report = evaluate.gap_closure_report(per_task)
    return {"profile": profile.name, "tasks": tasks, "models": models, "scores": report["scores"],
            "scores_by_type": report["scores_by_type"], "gap_closure": report["gap_closure"],
            "gap_closure_by_type": report["gap_closure_by_type"],
            "student_minus_echo": report.get("student_minus_echo"), "per_task": per_task}


def history(folder: Path) -> list[dict]:
    """The per-step training history of a stage artifact."""
    return json.loads((Path(folder) / "history.json").read_text())


if resolve_stage not in evaluate.RESOLVERS:
    evaluate.RESOLVERS.append(resolve_stage)


def ggsm_overhead(profile: Profile | str | None = None, steps: int = 12, repeats: int = 3) -> dict:
    """Per-step cost of GG-SM training against plain bidirectional training (no soft mask).

    Same model size (randomly initialised: cost does not depend on weights), same pairs and batch
    size. GG-SM is measured in both phases: warm-up (gradient hook + importance EMA + soft bias)
    and the schedule (soft bias only). Runs alternate and each keeps its best median step time, so
    a busy moment on the machine does not decide the ratio. Also reports training tokens/s.
    """
    import statistics

    profile = get_profile(profile)
    tokenizer = load_tokenizer(tokenizer_stage(profile))
    data = pair_data(profile)
    # name -> (attention, kind, GG-SM warm-up fraction); "bidirectional" is plain: no soft mask at all
    runs = {"bidirectional": ("bidirectional", "causal", 0.1), "ggsm (warm-up)": ("causal", "teacher", 1.0),
            "ggsm (schedule)": ("causal", "teacher", 0.0)}
    best = {name: float("inf") for name in runs}
    tokens_per_s = {name: 0.0 for name in runs}
    for _ in range(repeats):
        for name, (attention, kind, warm_frac) in runs.items():
            p = replace(profile, train_steps=steps, ggsm_warm_frac=warm_frac)
            encoder = make_encoder(new_qwen2(p, tokenizer), tokenizer, p, attention=attention)
            result, _ = train_contrastive(encoder, p, data, kind=kind, variant="ggsm", progress=False)
            rows = result.history[1:]  # the first step pays one-off allocation costs
            median = statistics.median(r["seconds"] for r in rows)
            if median < best[name]:
                best[name] = median
                tokens_per_s[name] = sum(r.get("tokens", 0) for r in rows) / sum(r["seconds"] for r in rows)
    return {"profile": profile.name, "steps": steps, "repeats": repeats, "batch_size": profile.batch_size,
            "max_length": profile.max_length, "seconds_per_step": best, "tokens_per_s": tokens_per_s,
            "overhead_vs_bidirectional": {name: best[name] / best["bidirectional"] - 1.0
                                          for name in runs if name != "bidirectional"}}
