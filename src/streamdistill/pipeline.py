"""The paper's pipeline end to end: a thin façade over :mod:`streamdistill.registry` plus the
experiments that train, evaluate and report in one call.

::

    from streamdistill import pipeline
    student, folder = pipeline.load_stage_encoder("C", "cpu")   # trains it first if it is not cached
    report = pipeline.gap_closure_experiment("cpu")             # A, A+Echo, B, C on the slice

Stage names, model names and the wiring between stages live in the registry; verdicts in
:mod:`streamdistill.report`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .contrastive import ggsm_overhead as _ggsm_overhead
from .evaluate import evaluate_model
from .profiles import Profile, get_profile
from .registry import (  # noqa: F401  (the façade: what notebooks and README use)
    GAP_MODELS,
    MODELS,
    STAGES,
    base,
    history,
    load_stage_encoder,
    resolve_model,
    run_stage,
    stream_encoders,
)
from .report import gap_closure_report
from .tasks import PAPER_SLICE


def gap_closure_experiment(profile: Profile | str | None = None, tasks: Sequence[str] | None = None) -> dict:
    """Train what is missing, evaluate A, A+Echo, B, C on the paper's slice, report gap closure."""
    profile = get_profile(profile)
    tasks = list(tasks or PAPER_SLICE)
    per_task, models = {}, {}
    for name in GAP_MODELS:
        result = evaluate_model(resolve_model(name, profile), tasks, profile)
        per_task[name] = result["scores"]
        models[name] = {"model": result["model"], "revision": result["revision"]}
    report = gap_closure_report(per_task)
    return {"profile": profile.name, "tasks": tasks, "models": models, "scores": report["scores"],
            "scores_by_type": report["scores_by_type"], "gap_closure": report["gap_closure"],
            "gap_closure_by_type": report["gap_closure_by_type"],
            "student_minus_echo": report.get("student_minus_echo"), "per_task": per_task}


def ggsm_overhead(profile: Profile | str | None = None, steps: int = 12, repeats: int = 3) -> dict:
    """GG-SM's per-step cost against plain bidirectional training, on a random decoder of the
    profile's shape with the base model's tokenizer (see ``contrastive.ggsm_overhead``)."""
    profile = get_profile(profile)
    return _ggsm_overhead(profile, base(profile).tokenizer(), steps=steps, repeats=repeats)
