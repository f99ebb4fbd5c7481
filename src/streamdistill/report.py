"""The paper's constants, gap closure, and every claim verdict, as pure functions of the numbers.

Notebooks glue what these functions return; nothing here trains or evaluates, so every verdict is
tested for each way it can come out (``tests/test_report.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .tasks import task_type

# --- the streaming-students paper (labelled as the paper's wherever the book shows them) ---
PAPER_GAP_CLOSURE = 0.681
PAPER_GAP_CLOSURE_BY_TYPE = {"Classification": 1.03, "Clustering": 0.80, "STS": 0.76, "Retrieval": 0.60,
                             "PairClassification": 0.30}
PAPER_STUDENT_MINUS_ECHO = 2.0  # points
PAPER_STREAM_SPEEDUP = 4.1  # x, 4,096-token prefix, 128 tokens per update
PAPER_STREAM_FIDELITY = 1.19e-6  # cosine distance, incremental vs full recompute
# --- all-MiniLM-L6-v2's public MTEB leaderboard scores: what the harness must reproduce ---
PUBLIC_MINILM = {"STSBenchmark": 82.03, "Banking77Classification": 80.04, "SciFact": 64.51}
# --- LEAF ---
PAPER_LEAF_THROUGHPUT = (6.5, 24.0)  # x, its released students against their teachers


def type_means(scores: dict[str, float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for name, value in scores.items():
        groups.setdefault(task_type(name), []).append(value)
    return {kind: float(np.mean(vals)) for kind, vals in sorted(groups.items())}


def gap_closure(a: float, b: float, c: float) -> float:
    """(C − A)/(B − A): the share of the teacher's lead over the causal baseline the student recovers.

    NaN when the teacher does not lead (B == A), where the ratio means nothing.
    """
    return float("nan") if b == a else (c - a) / (b - a)


def gap_closure_report(scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """From per-task scores of A, A+Echo, B and C: means, closure overall and per task type."""
    means = {m: float(np.mean(list(s.values()))) for m, s in scores.items()}
    types = {m: type_means(s) for m, s in scores.items()}
    by_type = {k: gap_closure(types["A"][k], types["B"][k], types["C"][k]) for k in types["A"]}
    out = {"scores": means, "scores_by_type": types,
           "gap_closure": gap_closure(means["A"], means["B"], means["C"]),
           "gap_closure_by_type": by_type}
    if "A+Echo" in means:
        out["student_minus_echo"] = means["C"] - means["A+Echo"]
    return out


def gap_closure_verdict(report: dict[str, Any]) -> str:
    """One plain sentence on whether the paper's two headline claims hold in ``report``.

    Claims: the student closes most of the A -> B gap (paper: 68.1 %) and beats A+Echo (paper:
    +2.0 points). Written from the numbers, whichever way they come out.
    """
    s = report["scores"]
    gap, gained = s["B"] - s["A"], s["C"] - s["A"]
    if gap <= 0:
        first = (f"The teacher B does not beat the causal baseline A here (B - A = {gap:+.2f} points), "
                 "so there is no gap to close and the closure ratio means nothing.")
    elif report["gap_closure"] >= PAPER_GAP_CLOSURE:
        first = (f"The student closes {100 * report['gap_closure']:.0f} % of the A -> B gap of {gap:.2f} points, "
                 f"as much as the paper's {100 * PAPER_GAP_CLOSURE:.1f} % or more.")
    elif gained > 0:
        first = (f"The student closes only {100 * report['gap_closure']:.0f} % of the A -> B gap of {gap:.2f} points "
                 f"(paper: {100 * PAPER_GAP_CLOSURE:.1f} %).")
    else:
        first = (f"The paper's gap-closure claim does not hold at this scale: the student C scores {gained:+.2f} "
                 f"points against A while the teacher B is {gap:+.2f} points above A.")
    echo = report.get("student_minus_echo")
    if echo is None:
        return first
    if echo > 0:
        second = (f"C beats A+Echo by {echo:.2f} points (paper: +{PAPER_STUDENT_MINUS_ECHO:.1f}) "
                  "while reading each text once (Echo reads it twice).")
    else:
        second = (f"C does not beat A+Echo here ({echo:+.2f} points; paper: +{PAPER_STUDENT_MINUS_ECHO:.1f}), "
                  "though it reads each text once where Echo reads it twice.")
    return f"{first} {second}"


def harness_table(scores: dict[str, float], public: dict[str, float]):
    """The harness's scores of a public model beside its published ones, with the difference."""
    import pandas as pd

    table = pd.DataFrame({"here": pd.Series(scores), "public leaderboard": pd.Series(public)})
    table.insert(0, "type", [task_type(t) for t in table.index])
    table["difference"] = table["here"] - table["public leaderboard"]
    return table


def scores_table(results: dict[str, dict[str, float]]):
    """A DataFrame: one row per task (with its type), one column per model, plus the mean."""
    import pandas as pd

    frame = pd.DataFrame(results)
    frame.insert(0, "type", [task_type(t) for t in frame.index])
    frame.loc["mean"] = ["", *frame.drop(columns="type").mean().tolist()]
    return frame


def best_teacher_verdict(means: dict[str, float], ours: str = "B") -> str:
    """Whether GG-SM (``ours``) is the best of the teachers in ``means`` (mean slice scores)."""
    best = max(means, key=means.get)
    if best == ours:
        return f"GG-SM ({ours}) is the best of the three teachers here"
    return f"GG-SM ({ours}) is not the best teacher here: {best} is, by {means[best] - means[ours]:.2f} points"


def long_context_verdict(means: dict[str, float], student: str = "C") -> str:
    """The long-context claim: the causal student beats every baseline (mean over lengths and tasks)."""
    if student not in means:
        return "The stage models are not available here, so the claim is not tested."
    others = {k: v for k, v in means.items() if k != student}
    ahead = {k: v for k, v in others.items() if v >= means[student]}
    if not ahead:
        runner = max(others, key=others.get)
        return (f"The claim holds here: {student} ({means[student]:.1f}) beats every other model "
                f"(next: {runner}, {others[runner]:.1f}).")
    listed = ", ".join(f"{k} ({v:.1f})" for k, v in sorted(ahead.items(), key=lambda kv: -kv[1]))
    return f"The claim does not hold here: {student} scores {means[student]:.1f}, below {listed}."


def mrl_verdict(teacher_gain: float, student_gain: float, dims: int = 32) -> str:
    """MRL inheritance: the rotation helps the teacher at ``dims`` and, through it, its student.

    Gains are points of the full-width score kept at ``dims`` dimensions, ordered minus plain.
    """
    if teacher_gain > 0 and student_gain > 0:
        return (f"Inherited: PCA ordering lets the teacher keep {teacher_gain:+.1f} points more of its score at {dims} "
                f"dimensions, and the student distilled from it keeps {student_gain:+.1f} points more than its sibling.")
    if teacher_gain > 0:
        return (f"Not inherited here: PCA ordering helps the teacher at {dims} dimensions ({teacher_gain:+.1f} points of "
                f"its score kept) but not its student ({student_gain:+.1f}).")
    return (f"PCA ordering does not help the teacher at {dims} dimensions here ({teacher_gain:+.1f} points kept), "
            "so there is nothing to inherit.")
