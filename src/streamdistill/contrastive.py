"""Stages ``causal`` (A), ``teacher`` (B and its ablations), ``teacher-embeddings`` and ``student`` (C).

::

    base ──┬──> causal   (A: causal attention + InfoNCE) ──────────────┐ (student_init="A")
           ├──> teacher  (B: GG-SM soft mask -> bidirectional; variants hard, linear)
           │       └──> teacher-embeddings (B's embeddings of the pairs C reads, once)
           └──> student  (C: causal, InfoNCE + λ·MSE to the cached teacher embeddings)

All four read the same pairs in the same order (:func:`pair_data`) through the one training loop
(a student started from A reads the next ``train_steps`` steps of that order: new pairs);
what differs is the *objective*: :class:`Contrastive` (A), :class:`SoftMasked` (B, hard, linear)
and :class:`Distilled` (C). Each stage is ``artifacts.cached(stage, config, build)``; ``config``
holds the profile fields the stage reads and the identity of what it builds on, which the
registry passes in (a :class:`~streamdistill.decoders.BaseModel`, the teacher's folder), so an
unchanged config is a cache hit and any change trains again.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .artifacts import atomic_write_json, cached, checkpoint_dir, config_hash, load_tensors, save_tensors
from .data import data_dir, data_fingerprint, read_jsonl, synthetic_texts, training_pairs
from .decoders import BaseModel, merge_lora, random_decoder, with_lora
from .encoder import Encoder, TruncationWarning, position_ids_from_mask
from .ggsm import VARIANTS, SoftMask
from .losses import info_nce, student_loss
from .profiles import Profile
from .sampling import BatchPlan, EpochOrder
from .train import TrainResult, stage_checkpoints, train

# Bump a stage's version when its code changes what it builds: old artifacts are then not reused
# (v2 of the contrastive stages: SciFact title->abstract pairs leave out documents test claims cite;
# v2 of the teacher also: the GG-SM EMA decays every future cell, not only those a batch reached;
# v3 of teacher-embeddings and student: held-out probe texts, the student's cosine to B over training;
# v3/v3/v4/v4: items with hard negatives, the soft mask saved with its reach and configuration;
# v5/v5: the student's start (base or A), the pairs after A's steps, teacher targets for negatives).
VERSIONS = {"causal": 3, "teacher": 3, "teacher-embeddings": 5, "student": 5}
DATA_SEED = 0  # order of the mirror's pairs before the per-seed epoch permutations
HELDOUT_PROBES = 128  # held-out texts the student is compared with its teacher on, during training
PROBE_TEXTS = (
    "The committee approved the budget after a long debate.",
    "Streaming reuses the cache.",
    "A red kite circled over the old bridge at dawn.",
)
CONTRASTIVE_KEYS = ("train_steps", "batch_size", "max_length", "pair_sources", "lr", "warmup_steps_frac",
                    "grad_clip", "grad_accum", "temperature", "false_negative_margin", "pooling", "seed")


# ============================================================================ data


@dataclass
class PairData:
    """The training items ``(query, positive, hard negative or None)`` and the plan every
    contrastive stage reads them by."""

    pairs: list[tuple[str, str, str | None]]
    plan: BatchPlan
    offset: int = 0  # optimiser steps of the order already read (by the run this one continues)

    def indices(self, step: int, micro: int) -> list[int]:
        return self.plan.indices(self.offset + step, micro)

    def used(self, steps: int) -> list[int]:
        """Every pair index a run of ``steps`` optimiser steps reads (sorted)."""
        return self.plan.used(steps, self.offset)


def pair_data(profile: Profile, pairs: list[tuple] | None = None, offset: int = 0) -> PairData:
    """The mirror's training items from ``profile.pair_sources`` (or ``pairs``: 2- or 3-tuples) in
    the order of ``profile.seed``, from optimiser step ``offset`` of that order on."""
    pairs = training_pairs(sources=tuple(profile.pair_sources), seed=DATA_SEED) if pairs is None else \
        [tuple(p) + (None,) * (3 - len(p)) for p in pairs]
    order = EpochOrder(len(pairs), profile.seed)
    return PairData(pairs, BatchPlan(order, profile.batch_size, profile.grad_accum), offset)


def student_pair_data(profile: Profile) -> PairData:
    """The pairs the student C reads: A's steps when it starts from the base, the next
    ``train_steps`` steps when it starts from A's trained weights (pairs A never saw)."""
    return pair_data(profile, offset=profile.train_steps if profile.student_init == "A" else 0)


def heldout_probe_texts(n: int = HELDOUT_PROBES) -> list[str]:
    """STSBenchmark *validation* sentences: no stage trains on a validation split (or synthetic ones)."""
    if data_dir() is None:
        return synthetic_texts(n, seed=DATA_SEED + 1)
    return [r["sentence1"] for r in read_jsonl("sts/STSBenchmark/validation.jsonl")][:n]


def _tokenize(encoder: Encoder, texts: list[str], max_length: int) -> dict:
    with warnings.catch_warnings():  # long documents are truncated by design; no warning per batch
        warnings.simplefilter("ignore", TruncationWarning)
        return encoder.tokenize(texts, max_length=max_length)


# ============================================================================ objectives


class Contrastive:
    """A's objective: InfoNCE with in-batch negatives under the encoder's own (causal) attention."""

    desc = "causal"
    soft: SoftMask | None = None  # the teacher's soft mask (SoftMasked only)

    def __init__(self, profile: Profile):
        self.profile = profile

    def batch_extras(self, indices: list[int]) -> dict:
        """Extra tensors a batch carries besides the tokenized pairs."""
        return {}

    def embed(self, model, tokens: dict, step: int) -> torch.Tensor:
        return model(**tokens)["embedding"]

    def loss(self, q: torch.Tensor, d: torch.Tensor, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        p = self.profile
        return info_nce(q, d, p.temperature, p.false_negative_margin), {}

    def probe(self, encoder: Encoder):
        """A held-out measurement for the training history, or None."""
        return None


class SoftMasked(Contrastive):
    """B's objective: InfoNCE under the GG-SM soft mask of ``variant`` (``ggsm``, ``hard``, ``linear``).

    The mask's importance is observed through a read-only gradient hook during warm-up and folded
    into the EMA after each backward; the mask is saved with every checkpoint.
    """

    def __init__(self, profile: Profile, variant: str = "ggsm"):
        super().__init__(profile)
        self.soft = SoftMask.from_profile(profile, max_len=profile.max_length, variant=variant)
        self.desc = f"teacher-{variant}"

    def embed(self, model, tokens: dict, step: int) -> torch.Tensor:
        w = self.soft.future_weights(step).to(tokens["input_ids"].device)
        out = model(**tokens, future_weights=w)
        if self.soft.is_warm(step):
            mask = tokens["attention_mask"]
            self.soft.watch(out["hidden"], mask, position_ids_from_mask(mask))
        return out["embedding"]

    def loss(self, q, d, batch, step):
        loss, _ = super().loss(q, d, batch, step)
        return loss, {"future_weight": self.soft.mean_future_weight(step, self.profile.max_length)}


class Distilled(Contrastive):
    """C's objective: ``InfoNCE + λ·MSE`` to the teacher's cached embeddings (the teacher is never loaded).

    ``teacher`` = ``{"index", "queries", "docs", "neg_index", "negatives", "heldout"}`` from the
    ``teacher-embeddings`` stage; with ``profile.distill_negatives`` the hard negatives get their
    teacher targets too. The history records ``heldout_cos``, the mean cosine to the teacher on
    :func:`heldout_probe_texts`.
    """

    desc = "student"

    def __init__(self, profile: Profile, teacher: dict[str, torch.Tensor]):
        super().__init__(profile)
        self.teacher = teacher
        self.row_of = {int(i): r for r, i in enumerate(teacher["index"].tolist())}
        self.neg_row_of = {int(i): r for r, i in enumerate(teacher["neg_index"].tolist())}

    def batch_extras(self, indices):
        rows = torch.tensor([self.row_of[i] for i in indices])
        extras = {"q_t": self.teacher["queries"][rows], "d_t": self.teacher["docs"][rows]}
        if self.profile.distill_negatives:  # in the batch's order of negatives (train_contrastive's)
            negs = torch.tensor([self.neg_row_of[i] for i in indices if i in self.neg_row_of], dtype=torch.long)
            extras["n_t"] = self.teacher["negatives"][negs]
        return extras

    def loss(self, q, d, batch, step):
        p = self.profile
        return student_loss(q, d, batch["q_t"], batch["d_t"], p.temperature, p.distill_lambda,
                            p.false_negative_margin, n_t=batch.get("n_t"))

    def probe(self, encoder: Encoder):
        probes = _tokenize(encoder, heldout_probe_texts(), self.profile.max_length)
        target = F.normalize(self.teacher["heldout"].float(), dim=-1)

        def heldout_cosine(model, step: int) -> dict:
            device = next(model.parameters()).device
            out = model(**{k: v.to(device) for k, v in probes.items()})["embedding"].float()
            return {"heldout_cos": (F.normalize(out, dim=-1) * target.to(device)).sum(-1).mean()}

        return heldout_cosine


def train_contrastive(encoder: Encoder, profile: Profile, data: PairData, objective: Contrastive, *,
                      checkpoints: Path | None = None, progress: bool = True) -> TrainResult:
    """Train ``encoder`` on ``data`` for ``profile.train_steps`` steps under ``objective``."""

    def batch_fn(step: int, micro: int) -> dict:
        idx = data.indices(step, micro)
        items = [data.pairs[i] for i in idx]
        q = _tokenize(encoder, [item[0] for item in items], profile.max_length)
        # the positives, then the hard negatives: extra rows every query is contrasted with
        d = _tokenize(encoder, [item[1] for item in items] + [item[2] for item in items if item[2] is not None],
                      profile.max_length)
        n_tokens = int(q["attention_mask"].sum() + d["attention_mask"].sum())
        return {"q": q, "d": d, "n_tokens": n_tokens, **objective.batch_extras(idx)}

    def loss_fn(model, batch, step):
        q, d = objective.embed(model, batch["q"], step), objective.embed(model, batch["d"], step)
        return objective.loss(q, d, batch, step)

    soft = objective.soft
    ckpt = stage_checkpoints(checkpoints, profile.train_steps) if checkpoints is not None else {}
    return train(encoder, loss_fn, batch_fn, steps=profile.train_steps, lr=profile.lr,
                 warmup_frac=profile.warmup_steps_frac, grad_clip=profile.grad_clip,
                 grad_accum=profile.grad_accum, seed=profile.seed,
                 after_backward=soft.update if soft is not None else None,
                 probe_fn=objective.probe(encoder), probe_every=max(1, profile.train_steps // 20),
                 extra_state=soft, progress=progress, desc=objective.desc, **ckpt)


# ============================================================================ the encoder to train


def make_encoder(lm, tokenizer, profile: Profile, *, attention: str = "causal") -> Encoder:
    """An :class:`Encoder` on ``lm``'s decoder stack; LoRA (r, alpha) around it when ``profile.lora_r``."""
    backbone = with_lora(lm, profile.lora_r, profile.lora_alpha, seed=profile.seed) if profile.lora_r else lm
    return Encoder(backbone, tokenizer, attention=attention, pooling=profile.pooling, normalize=True,
                   max_length=profile.max_length)


def _save_encoder(tmp: Path, encoder: Encoder, result: TrainResult) -> dict:
    """Save the trained encoder (LoRA merged) and history; embed fixed probe texts so a reload can be checked."""
    encoder.backbone = merge_lora(encoder.backbone)
    encoder.eval()
    encoder.save(tmp / "model")
    atomic_write_json(tmp / "history.json", result.history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        probe = encoder.encode(list(PROBE_TEXTS), convert_to_numpy=False)
    save_tensors(tmp / "probe.safetensors", {"embeddings": probe})
    tail = result.history[-max(1, len(result.history) // 10):]
    return {"attention": encoder.attention, "parameters": encoder.n_parameters,
            "final_loss": float(sum(r["loss"] for r in tail) / len(tail)) if tail else float("nan"),
            "loss_history": [r["loss"] for r in result.history],
            "seconds": result.seconds, "seconds_per_step": result.seconds / max(1, len(result.history))}


# ============================================================================ stages


def contrastive_config(stage: str, profile: Profile, base: BaseModel, **extra) -> dict:
    lora = {"lora_r": profile.lora_r, "lora_alpha": profile.lora_alpha} if profile.lora_r else {}
    return {"version": VERSIONS[stage], **base.identity, **lora,
            **{k: getattr(profile, k) for k in CONTRASTIVE_KEYS}, "data": data_fingerprint(), **extra}


def _variant_config(profile: Profile, variant: str) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown teacher variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    out: dict[str, Any] = {"variant": variant}
    if variant != "hard":
        out["ggsm_warm_frac"] = profile.ggsm_warm_frac
    if variant in ("ggsm", "ggsm-scaled"):
        out["ggsm_ema_decay"] = profile.ggsm_ema_decay
    if variant == "ggsm-scaled":
        out["ggsm_scaled_beta"] = profile.ggsm_scaled_beta
    if variant == "linear":
        out["linear_warm_weight"] = profile.linear_warm_weight
    return out


def _contrastive_stage(stage: str, profile: Profile, start, config: dict, make_objective, *,
                       data: PairData | None = None, **summary_extra) -> Path:
    """Train from ``start`` (what ``.load()`` gives ``(decoder, tokenizer)``: the base, or a
    trained stage's weights) on ``data`` (default: :func:`pair_data`) under ``make_objective()``."""
    def build(tmp: Path) -> dict:
        lm, tokenizer = start.load()
        encoder = make_encoder(lm, tokenizer, profile, attention="causal")
        data_ = data or pair_data(profile)
        objective = make_objective()
        result = train_contrastive(encoder, profile, data_, objective, checkpoints=checkpoint_dir(stage, config))
        summary: dict[str, Any] = {"pairs": len(data_.pairs), "pairs_seen": profile.train_steps * profile.batch_size,
                                   "first_step": data_.offset, **summary_extra}
        soft = objective.soft
        if soft is not None:
            encoder.attention = "bidirectional"  # inference: the fully open mask (w = 1 at t_total)
            soft.save(tmp / "softmask.safetensors")
            summary.update(variant=soft.variant, t_warm=soft.t_warm, t_total=soft.t_total,
                           frozen_mean_future_weight=soft.mean_future_weight(soft.t_warm, profile.max_length),
                           frozen=soft.frozen_summary())
        summary.update(_save_encoder(tmp, encoder, result))
        return summary

    return cached(stage, config, build)


def causal_stage(profile: Profile, base: BaseModel) -> Path:
    """A: the base LM fine-tuned contrastively with causal attention."""
    return _contrastive_stage("causal", profile, base, contrastive_config("causal", profile, base),
                              lambda: Contrastive(profile))


def teacher_stage(profile: Profile, base: BaseModel, variant: str = "ggsm") -> Path:
    """B (``ggsm``) or an ablation (``hard``, ``linear``); saved with bidirectional attention."""
    config = contrastive_config("teacher", profile, base, **_variant_config(profile, variant))
    return _contrastive_stage("teacher", profile, base, config, lambda: SoftMasked(profile, variant))


def teacher_embeddings_stage(profile: Profile, teacher: Path) -> Path:
    """The teacher's embeddings of every pair the student of ``profile`` will read, computed once.

    ``embeddings.safetensors``: ``index`` (pair indices), ``queries`` and ``docs`` (N, D) and
    ``heldout`` (the probe texts), keyed by the teacher artifact's hash (its folder name) and the
    pairs read.
    """
    data = student_pair_data(profile)  # the pairs this student will read
    used = data.used(profile.train_steps)
    negatives = [i for i in used if data.pairs[i][2] is not None]
    config = {"version": VERSIONS["teacher-embeddings"], "teacher": Path(teacher).name, "teacher_stage": "teacher",
              "n_pairs": len(used), "pairs_hash": config_hash(used), "max_length": profile.max_length,
              "heldout": HELDOUT_PROBES, "data": data_fingerprint()}

    def build(tmp: Path) -> dict:
        started = time.perf_counter()
        encoder = Encoder.load(Path(teacher) / "model")

        def embed(texts: list[str]) -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TruncationWarning)
                return encoder.encode(texts, batch_size=64, convert_to_numpy=False, max_length=profile.max_length)

        queries = embed([data.pairs[i][0] for i in used])
        docs = embed([data.pairs[i][1] for i in used])
        negs = embed([data.pairs[i][2] for i in negatives]) if negatives else torch.zeros(0, queries.shape[1])
        save_tensors(tmp / "embeddings.safetensors",
                     {"index": torch.tensor(used, dtype=torch.long), "queries": queries, "docs": docs,
                      "neg_index": torch.tensor(negatives, dtype=torch.long), "negatives": negs,
                      "heldout": embed(heldout_probe_texts())},
                     metadata={"teacher": Path(teacher).name})
        return {"pairs": len(used), "negatives": len(negatives), "dim": int(queries.shape[1]),
                "seconds": time.perf_counter() - started}

    return cached("teacher-embeddings", config, build)


@dataclass(frozen=True)
class TrainedStart:
    """A trained stage's weights as a starting point (``.load()`` like a :class:`BaseModel`)."""

    folder: Path  # the stage artifact (its ``model/`` is a saved Encoder, LoRA merged)

    def load(self):
        encoder = Encoder.load(Path(self.folder) / "model", device="cpu")
        return encoder.backbone, encoder.tokenizer


def student_stage(profile: Profile, base: BaseModel, teacher: Path, embeddings: Path,
                  start: Path | None = None) -> Path:
    """C: causal, InfoNCE + λ·MSE to the teacher's cached ``embeddings`` (B never in memory).

    ``profile.student_init == "base"``: from the base with A's LoRA initialisation, on A's pairs;
    ``"A"``: from ``start`` (A's artifact), fresh LoRA adapters on its merged weights, on the next
    ``train_steps`` steps of pairs. At ``distill_lambda = 0`` the latter is A trained on, the
    control that tells a gain of distillation from a gain of more training.
    """
    if (profile.student_init == "A") != (start is not None):
        raise ValueError(f"student_init={profile.student_init!r} needs start={'A' if start is None else 'None'}")
    origin = TrainedStart(Path(start)) if start is not None else base
    config = contrastive_config("student", profile, base, teacher=Path(teacher).name,
                                teacher_embeddings=Path(embeddings).name, distill_lambda=profile.distill_lambda,
                                student_init=profile.student_init, distill_negatives=profile.distill_negatives,
                                **({"start": Path(start).name} if start is not None else {}))

    def objective() -> Distilled:
        return Distilled(profile, load_tensors(Path(embeddings) / "embeddings.safetensors"))

    return _contrastive_stage("student", profile, origin, config, objective, data=student_pair_data(profile),
                              teacher_embeddings=str(Path(embeddings) / "embeddings.safetensors"),
                              student_init=profile.student_init, distill_lambda=profile.distill_lambda,
                              distill_negatives=profile.distill_negatives)


# ============================================================================ GG-SM's cost


def ggsm_overhead(profile: Profile, tokenizer, steps: int = 12, repeats: int = 3) -> dict:
    """Per-step cost of GG-SM training against plain bidirectional training (no soft mask).

    Same model size (randomly initialised: cost does not depend on weights), same pairs and batch
    size. GG-SM is measured in both phases: warm-up (gradient hook + importance EMA + soft bias)
    and the schedule (soft bias only). Runs alternate and each keeps its best median step time, so
    a busy moment on the machine does not decide the ratio. Also reports training tokens/s.
    """
    data = pair_data(profile)
    # name -> (attention, soft-masked?, GG-SM warm-up fraction); "bidirectional" is plain: no soft mask
    runs = {"bidirectional": ("bidirectional", False, 0.1), "ggsm (warm-up)": ("causal", True, 1.0),
            "ggsm (schedule)": ("causal", True, 0.0)}
    best = {name: float("inf") for name in runs}
    tokens_per_s = {name: 0.0 for name in runs}
    for _ in range(repeats):
        for name, (attention, masked, warm_frac) in runs.items():
            p = replace(profile, train_steps=steps, ggsm_warm_frac=warm_frac)
            encoder = make_encoder(random_decoder(p, tokenizer), tokenizer, p, attention=attention)
            objective = SoftMasked(p, "ggsm") if masked else Contrastive(p)
            result = train_contrastive(encoder, p, data, objective, progress=False)
            rows = result.history[1:]  # the first step pays one-off allocation costs
            median = statistics.median(r["seconds"] for r in rows)
            if median < best[name]:
                best[name] = median
                tokens_per_s[name] = sum(r.get("tokens", 0) for r in rows) / sum(r["seconds"] for r in rows)
    return {"profile": profile.name, "steps": steps, "repeats": repeats, "batch_size": profile.batch_size,
            "max_length": profile.max_length, "seconds_per_step": best, "tokens_per_s": tokens_per_s,
            "overhead_vs_bidirectional": {name: best[name] / best["bidirectional"] - 1.0
                                          for name in runs if name != "bidirectional"}}
