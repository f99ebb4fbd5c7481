"""Names -> stages and models: the one table, explicit dispatch, and the wiring between stages.

Every stage module (``lm``, ``contrastive``, ``leaf``, ``streaming``) builds from what it is
given; this module knows what each stage builds on and passes it in::

    pretrained ──> base ──┬──> causal (A) ─────────────────── (student_init="A") ──┐
                          ├──> teacher (B, hard, linear) ──> teacher-embeddings ──┤
                          └────────────────────────────────────────────> student (C)
                          (leaf: the LEAF student of the profile's leaf_teacher; its causal extension starts from base)

:data:`STAGES` and :data:`MODELS` are the only lists of stages and model names; the CLI's help,
the versions, the gap-closure models and the streaming models are all derived from them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import contrastive, leaf, lm
from .artifacts import config_hash, read_done
from .data import hub_available
from .decoders import BaseModel
from .encoder import POOLINGS, Encoder, inference_device
from .ggsm import VARIANTS
from .models import OFFLINE_MODELS, EmbeddingModel, ModelError, folder_kind, from_encoder, load_folder, \
    load_hub, load_public, weights_revision
from .profiles import Profile
from .streambench import random_benchmark_encoders

STREAM_WEIGHTS_ENV = "STREAMDISTILL_STREAM_WEIGHTS"  # "random" skips the pipeline (latency needs no training)


# ============================================================================ stages


def base(profile: Profile) -> BaseModel:
    """The decoder every paper-1 stage starts from: the ``base`` artifact of the profile."""
    folder = _base(profile)
    return BaseModel(str(folder / "lm"), {"base": folder.name})


def _pretrained(profile: Profile) -> Path:
    return lm.pretrained_stage(lm.pretrained_model(profile))


def _base(profile: Profile) -> Path:
    return lm.base_stage(profile, _pretrained(profile))


def _causal(profile: Profile) -> Path:
    return contrastive.causal_stage(profile, base(profile))


def _teacher(profile: Profile, variant: str = "ggsm") -> Path:
    return contrastive.teacher_stage(profile, base(profile), variant)


def _distilled_teacher(profile: Profile) -> Path:
    """The GG-SM teacher a student of ``profile`` distils: its own seed's (paired), or ``teacher_seed``."""
    seed = profile.seed if profile.teacher_seed is None else profile.teacher_seed
    return _teacher(replace(profile, seed=seed), "ggsm")


def _teacher_embeddings(profile: Profile) -> Path:
    return contrastive.teacher_embeddings_stage(profile, _distilled_teacher(profile))


def _student(profile: Profile) -> Path:
    teacher = _distilled_teacher(profile)
    embeddings = contrastive.teacher_embeddings_stage(profile, teacher)
    start = _causal(profile) if profile.student_init == "A" else None  # A of the same seed
    return contrastive.student_stage(profile, base(profile), teacher, embeddings, start)


def _leaf(profile: Profile) -> Path:
    return leaf.run_leaf(profile)


@dataclass(frozen=True)
class Stage:
    """One stage: how to build it (upstream wired in), its code version, its settings."""

    build: Callable[..., Path]
    version: int
    help: str
    settings: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    "pretrained": Stage(_pretrained, lm.VERSIONS["pretrained"], "the pretrained LM converted to safetensors once"),
    "base": Stage(_base, lm.VERSIONS["base"], "the profile's base decoder (its first base_layers layers)"),
    "causal": Stage(_causal, contrastive.VERSIONS["causal"], "A: causal + InfoNCE"),
    "teacher": Stage(_teacher, contrastive.VERSIONS["teacher"], "B: GG-SM (variant=ggsm|hard|linear|ggsm-scaled)",
                     settings=("variant",)),
    "teacher-embeddings": Stage(_teacher_embeddings, contrastive.VERSIONS["teacher-embeddings"],
                                "B's embeddings of the pairs C reads"),
    "student": Stage(_student, contrastive.VERSIONS["student"],
                     "C: causal, InfoNCE + λ·MSE to B (student_init=base|A, distill_lambda, distill_negatives)"),
    "leaf": Stage(_leaf, leaf.VERSION, "the LEAF student: all-MiniLM-L6-v2 + Dense, L2 to the profile's leaf_teacher"),
}
VERSIONS = {name: stage.version for name, stage in STAGES.items()}
STAGE_SETTINGS = tuple(sorted({s for stage in STAGES.values() for s in stage.settings}))


def stage_help() -> str:
    return "; ".join(f"{name}: {stage.help}" for name, stage in STAGES.items())


def run_stage(stage: str, profile: Profile, **settings) -> tuple[Path, dict]:
    """Train (or fetch from the cache) one stage: ``(artifact folder, summary)``.

    ``settings`` are stage settings that are not profile fields (``variant=`` for ``teacher``).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    unknown = set(settings) - set(STAGE_SETTINGS)
    if unknown:
        raise ValueError(f"unknown stage setting(s) {', '.join(sorted(unknown))}; valid: {', '.join(STAGE_SETTINGS)}")
    spec = STAGES[stage]
    misplaced = set(settings) - set(spec.settings)
    if misplaced:
        owners = [name for name, s in STAGES.items() if misplaced & set(s.settings)]
        raise ValueError(f"{', '.join(sorted(misplaced))}= applies to the {', '.join(owners)} stage only, not {stage!r}")
    folder = spec.build(profile, **settings)
    return folder, read_done(folder).get("summary", {})


def history(folder: Path) -> list[dict]:
    """The per-step training history of a stage artifact."""
    return json.loads((Path(folder) / "history.json").read_text())


# ============================================================================ models


@dataclass(frozen=True)
class ModelSpec:
    """A model name: the stage whose weights it uses, its settings, and how it reads at inference."""

    stage: str
    settings: dict = field(default_factory=dict)
    pooling: str | None = None  # inference pooling; None: the saved one
    attention: str | None = None  # inference attention; None: the saved one
    gap: bool = False  # one of the paper's central table (A, A+Echo, B, C)
    stream: str | None = None  # its role in the streaming benchmark
    profile: dict = field(default_factory=dict)  # profile settings this model fixes (a distillation arm)


MODELS: dict[str, ModelSpec] = {
    "base": ModelSpec("base", pooling="mean", attention="causal"),  # zero-shot, as pretrained
    "base-bidirectional": ModelSpec("base", pooling="mean", attention="bidirectional"),  # the future opened, untrained
    "A": ModelSpec("causal", gap=True),
    "A+Echo": ModelSpec("causal", pooling="echo", gap=True, stream="echo_model"),
    "B": ModelSpec("teacher", {"variant": "ggsm"}, gap=True, stream="teacher"),
    "B-hard": ModelSpec("teacher", {"variant": "hard"}),
    "B-linear": ModelSpec("teacher", {"variant": "linear"}),
    "B-scaled": ModelSpec("teacher", {"variant": "ggsm-scaled"}),  # not the paper's: see ggsm
    "B-causal": ModelSpec("teacher", {"variant": "ggsm"}, attention="causal"),  # B's weights, the future closed
    "C": ModelSpec("student", gap=True, stream="student"),  # the profile's recipe (chosen on validation data)
    # the distillation arms at the profile's λ: the student's start, and the control for a warm start
    "C-base": ModelSpec("student", profile={"student_init": "base"}),
    "C-fromA": ModelSpec("student", profile={"student_init": "A"}),
    "A-continued": ModelSpec("student", profile={"student_init": "A", "distill_lambda": 0.0}),
}
GAP_MODELS = tuple(name for name, spec in MODELS.items() if spec.gap)
STREAM_MODELS = {spec.stream: name for name, spec in MODELS.items() if spec.stream}
INFERENCE_SETTINGS = ("pooling", "variant")  # `--set` keys that choose how a named model reads


def split_sets(sets: dict[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """``--set`` items as ``(inference settings, profile overrides)``: the former choose how a named
    model reads (:data:`INFERENCE_SETTINGS`), the latter go to ``get_profile`` where a run starts."""
    sets = dict(sets or {})
    return {k: sets.pop(k) for k in INFERENCE_SETTINGS if k in sets}, sets


def load_stage_encoder(name: str, profile: Profile, *, pooling: str | None = None,
                       variant: str | None = None) -> tuple[Encoder, Path]:
    """The encoder of a :data:`MODELS` name, trained if missing, set up for evaluation.

    Returns ``(encoder, weights folder)``; ``max_length`` is ``profile.eval_max_length``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model stage {name!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[name]
    profile = replace(profile, **spec.profile)
    settings = spec.settings
    if variant is not None:
        if spec.stage != "teacher":
            raise ValueError(f"variant= applies to teacher models (B...), not {name!r}")
        settings = {"variant": variant}
    if spec.stage == "base":
        source = base(profile)
        lm_, tokenizer = source.load()
        encoder = Encoder(lm_, tokenizer, attention=spec.attention, pooling="mean", max_length=profile.max_length)
        encoder = encoder.to(inference_device()).eval()
        folder = Path(source.source)
    else:
        folder = run_stage(spec.stage, profile, **settings)[0] / "model"
        encoder = Encoder.load(folder)
    encoder.pooling = pooling or spec.pooling or encoder.pooling
    encoder.attention = spec.attention or encoder.attention
    encoder.max_length = profile.eval_max_length
    return encoder, folder


def _embedding_model(encoder: Encoder, folder: Path, name: str, profile: Profile) -> EmbeddingModel:
    # the revision names the weights and the inference settings that change the numbers
    settings = config_hash({"pooling": encoder.pooling, "max_length": encoder.max_length,
                            "attention": encoder.attention}, 6)
    return from_encoder(encoder, name=name, revision=f"{weights_revision(folder)}-{settings}",
                        batch_size=profile.eval_batch_size, precision=profile.eval_precision)


def student_label(profile: Profile) -> str:
    """A student's model name by its recipe, whichever alias resolved it (``C`` is one of the
    arms), so one student is scored, and its mteb results cached, once."""
    if profile.student_init == "A" and profile.distill_lambda == 0:
        return "A-continued"
    return (f"C-{'fromA' if profile.student_init == 'A' else 'base'}-lambda{profile.distill_lambda:g}"
            + ("-negatives" if profile.distill_negatives else ""))


def model_names() -> list[str]:
    return [*OFFLINE_MODELS, *MODELS]


def resolve_model(name: str, profile: Profile, *, pooling: str | None = None,
                  variant: str | None = None) -> EmbeddingModel:
    """A model by name: all-MiniLM-L6-v2 (offline), a :data:`MODELS` name, a model folder, or a Hub id.

    ``pooling=mean|last|echo`` and ``variant=`` choose how a stage model (or an encoder folder)
    reads; the profile (its seed picks the stage models' seed) is resolved by the caller.
    """
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown teacher variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if name in MODELS:
        encoder, folder = load_stage_encoder(name, profile, pooling=pooling, variant=variant)
        label = student_label(replace(profile, **MODELS[name].profile)) if MODELS[name].stage == "student" else name
        label += f"-{variant}" if variant and variant != "ggsm" else ""
        label += f"-{pooling}" if pooling and pooling != (MODELS[name].pooling or profile.pooling) else ""
        return _embedding_model(encoder, folder, f"streamdistill/{profile.name}-{label}", profile)
    if variant is not None:
        raise ValueError("variant= only applies to stage names (B, B-hard, ...)")
    public = next((full for full in OFFLINE_MODELS if name in {full, full.split("/")[-1]}), None)
    if public is not None:
        if pooling:
            raise ValueError(f"pooling= applies to stage names and streamdistill encoder folders, not {name!r}")
        return load_public(public)
    path = Path(name).expanduser()
    if path.is_dir():
        if pooling:
            if folder_kind(path) != "encoder":
                raise ValueError(f"pooling= needs a streamdistill encoder folder, not {path}")
            encoder = Encoder.load(path)
            encoder.pooling = pooling
            return _embedding_model(encoder, path, f"streamdistill/{path.name}-{pooling}", profile)
        return load_folder(path)
    if pooling:
        raise ValueError(f"--set pooling needs a stage name ({', '.join(MODELS)}) or a streamdistill encoder "
                         f"folder, not {name!r}")
    if hub_available() and "/" in name:
        return load_hub(name)
    raise ModelError(f"unknown model {name!r}; available offline: {', '.join(OFFLINE_MODELS)}, a model folder, "
                     f"or a stage name ({', '.join(MODELS)})")


def resolve_encoder(name: str, profile: Profile, *, pooling: str | None = None,
                    variant: str | None = None) -> Encoder:
    """The streamdistill :class:`Encoder` of a stage model name or an encoder folder (for export)."""
    if name in MODELS:
        return load_stage_encoder(name, profile, pooling=pooling, variant=variant)[0]
    path = Path(name).expanduser()
    if folder_kind(path) == "encoder":
        encoder = Encoder.load(path)
        encoder.pooling = pooling or encoder.pooling
        return encoder
    raise ModelError(f"{name!r} is neither a stage model ({', '.join(MODELS)}) nor a streamdistill encoder folder")


def stream_encoders(profile: Profile, *, weights: str | None = None,
                    max_positions: int | None = None) -> tuple[dict[str, Encoder], str]:
    """``({"student": C, "teacher": B, "echo_model": A+Echo}, "trained" | "random")`` for the benchmark.

    ``weights="trained"`` (the default) loads the stage models, training what is missing;
    ``"random"`` (or ``$STREAMDISTILL_STREAM_WEIGHTS=random``) builds randomly initialised ones of
    the profile's shape: latency does not depend on the weights.
    """
    weights = weights or os.environ.get(STREAM_WEIGHTS_ENV) or "trained"
    if weights == "random":
        return random_benchmark_encoders(profile, max_positions=max_positions), "random"
    if weights != "trained":
        raise ValueError(f"weights must be trained or random, got {weights!r}")
    return {role: load_stage_encoder(name, profile)[0].eval() for role, name in STREAM_MODELS.items()}, "trained"
