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
from dataclasses import replace

import numpy as np

from .contrastive import ggsm_overhead as _ggsm_overhead
from .evaluate import evaluate_model
from .profiles import STUDENT_INITS, Profile
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
from .report import PAPER_STUDENT_MINUS_ECHO, closure_verdict, difference_claim, gap_closure_seeded, paired_closure, \
    slice_mean
from .stats import paired_difference, pooled_sd, single_seed_difference
from .tasks import PAPER_SLICE, PAPER_SUBSLICE, VALIDATION_TASKS

# the distillation arms of the central table, each over the same paired seeds as A, B and C
ARMS = ("C-base", "C-fromA", "A-continued", "B-causal")
RECIPE = ("student_init", "distill_lambda", "distill_negatives")  # what the selection chooses


def seeded_scores(profile: Profile, models: Sequence[str], tasks: Sequence[str],
                  seeds: Sequence[int] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """``{model: {seed: {task: score}}}``: each stage model trained (if missing) and evaluated per seed."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name in models:
        for seed in seeds if seeds is not None else profile.seeds:
            seeded = replace(profile, seed=int(seed))
            out.setdefault(name, {})[int(seed)] = evaluate_model(resolve_model(name, seeded), tasks, seeded)["scores"]
    return out


def _slice_means(per: dict[str, dict[int, dict[str, float]]], tasks: Sequence[str]) -> dict[str, dict[int, float]]:
    return {m: {s: slice_mean({t: scores[t] for t in tasks}) for s, scores in runs.items()} for m, runs in per.items()}


def recipe(profile: Profile) -> dict:
    """The distillation recipe of a profile: the student's start, λ and teacher targets for negatives."""
    return {key: getattr(profile, key) for key in RECIPE}


def distillation_selection(profile: Profile) -> dict:
    """The student's recipe chosen on validation data, never on the test slice.

    At the profile's first seed, a student for each start (``STUDENT_INITS``) and each λ of
    ``profile.distill_lambdas`` is trained and scored on the validation splits of STSBenchmark and
    MRPC (``VALIDATION_TASKS``); the best mean main score wins, and giving the hard negatives teacher
    targets too is kept only if it scores higher still. A, B and A continued at λ = 0 (the control
    of the warm start) are scored alongside. The student's cosine to the teacher is no criterion:
    it rises with λ whatever the task scores do.
    """
    first = replace(profile, seed=profile.seeds[0])
    tasks = list(VALIDATION_TASKS)

    def scored(model: str, settings: dict) -> dict:
        run = replace(first, **settings)
        scores = evaluate_model(resolve_model(model, run), tasks, run)["scores"]
        return {**settings, "scores": scores, "mean": slice_mean(scores)}

    grid = [scored("C", {"student_init": init, "distill_lambda": float(lam), "distill_negatives": False})
            for init in STUDENT_INITS for lam in profile.distill_lambdas]
    best = max(grid, key=lambda row: row["mean"])
    negatives = scored("C", {**{k: best[k] for k in RECIPE}, "distill_negatives": True})
    chosen = negatives if negatives["mean"] > best["mean"] else best
    reference = {name: scored(name, {}) for name in ("A", "B")}
    reference["A-continued"] = scored("A-continued", {"distill_lambda": 0.0, "student_init": "A"})
    picked = {k: chosen[k] for k in RECIPE}
    return {"profile": profile.name, "seed": first.seed, "tasks": tasks, "rows": grid + [negatives],
            "reference": reference, "chosen": picked, "profile_recipe": recipe(profile),
            "matches_profile": picked == recipe(profile)}


def gap_closure_experiment(profile: Profile, tasks: Sequence[str] | None = None) -> dict:
    """The paper's central table over the profile's paired seeds: A, A+Echo, B and C on the slice,
    and the distillation arms (:data:`ARMS`): C from the base, C from A, A continued at λ = 0, and
    B's weights run causally.

    Seed s of every model shares data order and initialisation, and C of seed s distils the B of
    seed s. Returns :func:`report.gap_closure_seeded` with the verdicts of the closure and Echo
    claims, plus ``arms``: each arm's slice mean and closure ``(arm − A)/(B − A)`` with Fieller's
    interval, overall and without SciFact, and ``warm_start``: ``(C_fromA − A_continued)/(B − A)``,
    the warm start's closure read against more training alone.
    """
    tasks = list(tasks or PAPER_SLICE)
    # A+Echo reads every text twice: it is scored on the slice without SciFact (its corpus would double
    # the most expensive evaluation), and C is compared with it on those same tasks
    echo_tasks = [t for t in tasks if t in PAPER_SUBSLICE] or tasks
    per_seed = seeded_scores(profile, [m for m in GAP_MODELS if m != "A+Echo"] + list(ARMS), tasks)
    echo = seeded_scores(profile, ["A+Echo"], echo_tasks)["A+Echo"]
    out = gap_closure_seeded({m: per_seed[m] for m in ("A", "B", "C")})
    seeds = out["seeds"]
    c_sub = _slice_means({"C": per_seed["C"]}, echo_tasks)["C"]
    out["per_seed_tasks"]["A+Echo"] = {str(s): echo[s] for s in seeds}
    out["echo_tasks"] = echo_tasks
    out["c_minus_echo"] = paired_difference([c_sub[s] for s in seeds],
                                            [slice_mean(echo[s]) for s in seeds]).as_dict()
    out["closure_verdict"] = closure_verdict(out)
    out["echo_verdict"] = difference_claim(out["c_minus_echo"], "C against A+Echo", paper=PAPER_STUDENT_MINUS_ECHO)
    views = {"slice": tasks, "without SciFact": [t for t in tasks if t != "SciFact"] or tasks}
    means = {view: _slice_means(per_seed, over) for view, over in views.items()}
    out["arms"] = {arm: {"per_seed_tasks": {str(s): per_seed[arm][s] for s in seeds},
                         **{view: {"mean": float(np.mean([means[view][arm][s] for s in seeds])),
                                   **paired_closure(means[view], seeds, (arm, "A"))} for view in views}}
                   for arm in ("A", "B", "C", *ARMS)}
    out["warm_start"] = {view: paired_closure(means[view], seeds, ("C-fromA", "A-continued")) for view in views}
    out["recipe"] = recipe(profile)
    return {"profile": profile.name, "tasks": tasks, **out}


def teacher_variants_experiment(profile: Profile) -> dict:
    """GG-SM (B) beside ggsm-scaled (not the paper's), hard and linear, and A.

    Every model on the sub-slice without SciFact (each model's sub-slice mean): hard over the
    profile's seeds (the sizing gate: does a pretrained causal LM need a gradual switch at all?),
    linear and ggsm-scaled at one seed. Comparisons are paired over seeds where both have
    them, else one seed against the pooled seed spread of A, B and C. SciFact is left out because no
    comparison here reads it and its corpus is most of a model's evaluation time.
    """
    seeds = list(profile.seeds)
    runs = (seeded_scores(profile, ["A", "B", "C", "B-hard"], PAPER_SUBSLICE)
            | seeded_scores(profile, ["B-scaled", "B-linear"], PAPER_SUBSLICE, seeds[:1]))
    means = {m: {s: slice_mean(v) for s, v in per.items()} for m, per in runs.items()}
    spread = pooled_sd({m: list(means[m].values()) for m in ("A", "B", "C")})
    comparisons = {}
    for name in ["B-scaled", "B-hard", "B-linear", "A"]:
        if len(means[name]) > 1:
            diff = paired_difference([means[name][s] for s in seeds], [means["B"][s] for s in seeds])
        else:
            seed = next(iter(means[name]))
            diff = single_seed_difference(means[name][seed], means["B"][seed], spread)
        comparisons[name] = diff.as_dict()
    return {"profile": profile.name, "tasks": PAPER_SUBSLICE, "per_seed_tasks": _jsonable(runs),
            "subslice_means": _jsonable(means), "pooled_sd": spread,
            "minus_B": comparisons,
            "hard_minus_A_stsb": paired_difference([runs["B-hard"][s]["STSBenchmark"] for s in seeds],
                                                   [runs["A"][s]["STSBenchmark"] for s in seeds]).as_dict()}


# The ablations the paper lists, one seed each: (label, stage model, profile overrides); λ is not
# among them: notebook 4 chooses it on validation data (distillation_selection)
ABLATIONS = [
    ("warm-up 0.05", "B", {"ggsm_warm_frac": 0.05}), ("warm-up 0.25", "B", {"ggsm_warm_frac": 0.25}),
    ("last-token pooling (B)", "B", {"pooling": "last"}), ("last-token pooling (C)", "C", {"pooling": "last"}),
]


def ablation_experiment(profile: Profile, spread: float | None = None) -> dict:
    """Each ablation at seed 0 on the sub-slice, against the same model with the profile's setting
    (warm-up 0.1, mean pooling; C's recipe as chosen on validation data), judged against the pooled seed spread of A, B and C
    (``spread``; by default measured from their seeds on the sub-slice) times sqrt(2)."""
    seed = profile.seeds[0]
    if spread is None:
        per = seeded_scores(profile, ["A", "B", "C"], PAPER_SUBSLICE)
        spread = pooled_sd({m: [slice_mean(v) for v in runs.values()] for m, runs in per.items()})
    reference = {m: evaluate_model(resolve_model(m, replace(profile, seed=seed)), PAPER_SUBSLICE, profile)["scores"]
                 for m in ("B", "C")}
    rows = []
    for label, model, sets in ABLATIONS:
        varied = replace(profile, seed=seed, **sets)
        scores = evaluate_model(resolve_model(model, varied), PAPER_SUBSLICE, varied)["scores"]
        diff = single_seed_difference(slice_mean(scores), slice_mean(reference[model]), spread)
        rows.append({"ablation": label, "model": model, "settings": sets, "scores": scores,
                     "mean": slice_mean(scores), "minus_reference": diff.as_dict()})
    return {"profile": profile.name, "seed": seed, "tasks": PAPER_SUBSLICE, "pooled_sd": spread,
            "reference": reference, "rows": rows}


def long_context_experiment(profile: Profile, models: Sequence[str] = ("A", "A+Echo", "B", "C"),
                            task: str = "QMSumRetrieval") -> dict:
    """QMSum (real meetings) for the stage models over the profile's seeds, each reading the first N
    tokens of every meeting for N in ``profile.qmsum_lengths`` (Echo reads them twice), and
    all-MiniLM-L6-v2 at its own limit. ``c_minus[m]``: C minus m, paired over seeds, on the mean
    over the lengths. Scores are nDCG@10 × 100."""
    from .models import MINILM

    scores: dict[str, dict[str, dict[str, float]]] = {}
    for name in models:
        for n in profile.qmsum_lengths:
            for seed in profile.seeds:
                read = replace(profile, seed=int(seed), eval_max_length=int(n), eval_batch_size=8)
                score = evaluate_model(resolve_model(name, read), [task], read)["scores"][task]
                scores.setdefault(name, {}).setdefault(str(n), {})[str(seed)] = score
    reference = resolve_model(MINILM, profile)
    minilm = evaluate_model(reference, [task], profile)["scores"][task]
    mean_over_lengths = {m: [float(np.mean([scores[m][str(n)][str(s)] for n in profile.qmsum_lengths]))
                             for s in profile.seeds] for m in models}
    c_minus = {m: paired_difference(mean_over_lengths["C"], mean_over_lengths[m]).as_dict() for m in models if m != "C"}
    from .tasks import get_task

    queries = get_task(task, profile)
    queries.load_data()
    return {"task": task, "lengths": list(profile.qmsum_lengths), "scores": scores, "all-MiniLM-L6-v2": minilm,
            "mean_over_lengths": mean_over_lengths, "c_minus": c_minus,
            "queries": len(queries.dataset["default"]["test"]["queries"]),
            "documents": len(corpus := queries.dataset["default"]["test"]["corpus"]),
            "median_words": int(np.median([len(text.split()) for text in corpus["text"]])),
            "minilm_max_tokens": reference.max_tokens}


def synthetic_long_context(profile: Profile, models: Sequence[str] = ("A", "A+Echo", "B", "C"),
                           read_tokens: int = 4096) -> dict:
    """The synthetic passkey and needle tasks at the profile's first seed: per model, per task, per
    length split, nDCG@10 × 100; the stage models read up to ``read_tokens`` tokens (Echo half as many
    of the text, which it reads twice), all-MiniLM-L6-v2 its own 256 word pieces."""
    from .longcontext import SYNTHETIC_TASKS
    from .models import MINILM

    budget = min(read_tokens, profile.max_positions - 64)
    out = {}
    for name in (*models, MINILM):
        tokens = budget // 2 if name == "A+Echo" else budget
        read = replace(profile, eval_max_length=tokens, eval_batch_size=8) if name != MINILM else profile
        result = evaluate_model(resolve_model(name, read), SYNTHETIC_TASKS, read, per_split=True)
        out["all-MiniLM-L6-v2" if name == MINILM else name] = result["splits"]
    return out


def _jsonable(per: dict) -> dict:
    return {m: {str(s): v for s, v in runs.items()} for m, runs in per.items()}


def ggsm_overhead(profile: Profile, steps: int = 12, repeats: int = 3) -> dict:
    """GG-SM's per-step cost against plain bidirectional training, on a random decoder of the
    profile's shape with the base model's tokenizer (see ``contrastive.ggsm_overhead``)."""
    return _ggsm_overhead(profile, base(profile).tokenizer(), steps=steps, repeats=repeats)
