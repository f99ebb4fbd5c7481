"""Paper 2's experiments (LEAF): every claim measured on the profile's teacher and its students, over
the students' seeds, beside the control (the student's head alone, untrained), and judged by the
book's one rule (:mod:`streamdistill.report`).

::

    from streamdistill import leaf_experiments as X
    run = X.retention_experiment(profile)       # alignment, retention, asymmetric retrieval
    rot = X.rotation_experiment(profile, run)   # truncation and quantization after two rotations
    speed = X.throughput_experiment(profile)    # texts/s of teacher and student, side by side

Every model reads ``leaf_max_length`` tokens under the profile's eval precision, the length and
precision of the teacher's targets. Each model is memoized and its SciFact vectors are a cached
artifact (``leaf.cached_vectors``): a corpus is encoded once per model, for its own scores, the
asymmetric pair's, its alignment and every rotated, truncated or quantized variant, and a later run
reads it from disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import leaf
from .artifacts import read_done
from .evaluate import evaluate_model
from .hardware import timed_rounds
from .encoder import Encoder
from .models import (
    ST_BATCH_SIZE,
    EmbeddingModel,
    asymmetric,
    at_length,
    binarized,
    folder_kind,
    from_encoder,
    in_precision,
    int8_quantizer,
    load_folder,
    memoized,
    quantized,
    rotated,
    truncate,
    weights_revision,
)
from .profiles import Profile
from .report import kept_share, slice_mean
from .stats import paired_difference
from .tasks import get_task, task_list, task_type

CONTROL = "control"


# --------------------------------------------------------------------------- models as scored


def retrieval_texts(task: str, profile: Profile) -> dict[str, list[str]]:
    """A retrieval task's test queries and corpus documents, as mteb hands them to a model."""
    loaded = get_task(task, profile)
    loaded.load_data()
    split = loaded.dataset["default"]["test"]
    documents = [(f"{t} {x}" if t else x).strip() for t, x in zip(split["corpus"]["title"], split["corpus"]["text"])]
    return {"query": list(split["queries"]["text"]), "document": documents}


def preloaded(model: EmbeddingModel, profile: Profile, progress: bool = True) -> EmbeddingModel:
    """``model`` memoized, with the queries and documents of its retrieval tasks (``leaf_tasks``) read
    from (or first written to) a cached artifact of its vectors (:func:`leaf.cached_vectors`): each
    is encoded once, for every arm that reads it and for the alignment, and a later run reads it
    from disk even where mteb's cache answers the scores."""
    view = memoized(model)
    for task in profile.leaf_tasks:
        if task_type(task) != "Retrieval":
            continue
        texts = retrieval_texts(task, profile)
        flat = texts["query"] + texts["document"]
        vectors = leaf.cached_vectors(model, flat, progress=progress)
        kinds = ["query"] * len(texts["query"]) + ["document"] * len(texts["document"])
        view.extra["memo"].update(((t, k), np.asarray(v)) for t, k, v in zip(flat, kinds, vectors))
    return view


def teacher_view(profile: Profile, progress: bool = True) -> EmbeddingModel:
    """The teacher as LEAF scores it (:func:`preloaded`)."""
    return preloaded(leaf.load_teacher(profile), profile, progress)


def student_model(folder: Path, profile: Profile, name: str) -> EmbeddingModel:
    """A trained student folder reading ``leaf_max_length`` tokens under the eval precision."""
    if folder_kind(folder) == "encoder":  # the causal student: its length and precision are set as it loads
        encoder = Encoder.load(folder)
        encoder.max_length = profile.leaf_max_length
        return from_encoder(encoder, name, weights_revision(folder), profile.eval_batch_size, profile.eval_precision)
    return in_precision(at_length(load_folder(folder, name=name), profile.leaf_max_length), profile.eval_precision)


def student_view(folder: Path, profile: Profile, label: str, progress: bool = True) -> EmbeddingModel:
    """A trained student folder as LEAF scores it (:func:`preloaded`), named ``streamdistill/leaf-<label>``."""
    return preloaded(student_model(folder, profile, f"streamdistill/leaf-{label}"), profile, progress)


def students(profile: Profile, progress: bool = True) -> dict[str, Path]:
    """``{"control": folder, "seed 0": folder, ...}``: the control and the student of each seed."""
    out = {CONTROL: leaf.train_leaf_student(leaf.control_profile(profile), progress=progress)}
    for seed in profile.leaf_seeds:
        out[f"seed {seed}"] = leaf.train_leaf_student(replace(profile, seed=int(seed)), progress=progress)
    return out


# --------------------------------------------------------------------------- alignment


def memo_alignment(student: EmbeddingModel, teacher: EmbeddingModel) -> dict[str, float]:
    """Mean cosine of two memoized models over every text both hold, per prompt type (``query`` and
    ``document``: the retrieval tasks' texts :func:`preloaded` holds)."""
    ours, theirs = student.extra["memo"], teacher.extra["memo"]
    out = {}
    for kind in ("query", "document"):
        shared = [key for key in ours if key[1] == kind and key in theirs]
        if shared:
            out[str(kind)] = leaf.mean_cosine(np.stack([ours[k] for k in shared]),
                                              np.stack([theirs[k] for k in shared]))
    return out


# --------------------------------------------------------------------------- asymmetric mode


def _short(name: str) -> str:
    """A model name without its organisation prefix (keeps derived names to one slash)."""
    return name.rsplit("/", 1)[-1]


def asymmetric_scores(student_model: EmbeddingModel, teacher_model: EmbeddingModel, tasks: Sequence[str] | str,
                      profile: Profile) -> dict[str, Any]:
    """Scores of the teacher alone, the student alone and student queries + teacher documents.

    The asymmetric pair is scored on retrieval tasks only: a symmetric task has no queries, so
    there "asymmetric" would just be the teacher again. ``retention[x] = score(x) / score(teacher)
    * 100`` per task, and for the mean over the tasks ``x`` was scored on.
    """
    tasks = task_list(tasks)
    retrieval = [t for t in tasks if task_type(t) == "Retrieval"]
    pair = asymmetric(student_model, teacher_model,
                      name=f"{_short(student_model.name)}-q_{_short(teacher_model.name)}-d")
    models = {"teacher": (teacher_model, tasks), "student": (student_model, tasks), "asymmetric": (pair, retrieval)}
    scores = {key: evaluate_model(model, names, profile)["scores"] if names else {}
              for key, (model, names) in models.items()}
    teacher = scores["teacher"]
    retention = {key: {t: 100.0 * s[t] / teacher[t] if teacher[t] else float("nan") for t in s}
                 for key, s in scores.items() if key != "teacher"}
    for key, own in retention.items():
        base = slice_mean({t: teacher[t] for t in scores[key]})
        own["mean"] = 100.0 * slice_mean(scores[key]) / base if scores[key] and base else float("nan")
    return {"scores": scores, "mean": {k: slice_mean(s) for k, s in scores.items()}, "retention": retention}


def retention_experiment(profile: Profile, progress: bool = True) -> dict[str, Any]:
    """Alignment, retention and asymmetric retrieval of the control and each seed's student.

    Returns per model (``control``, ``seed s``): its scores on ``leaf_tasks`` alone and, on the
    retrieval tasks, with the teacher's documents; its retention; and its alignment: the training
    summary's held-out cosine and the mean cosine to the teacher on every text both scored (the
    evaluated queries and documents). ``views`` keeps the memoized models for later experiments.
    """
    teacher = teacher_view(profile, progress)
    folders = students(profile, progress)
    tasks = list(profile.leaf_tasks)
    runs, views = {}, {"teacher": teacher}
    for label, folder in folders.items():
        view = student_view(folder, profile, f"{profile.name}-{label.replace(' ', '')}-{folder.name[:8]}", progress)
        views[label] = view
        result = asymmetric_scores(view, teacher, tasks, profile)
        summary = read_done(folder)["summary"]
        result["alignment"] = {"heldout": summary["heldout_cosine"], **memo_alignment(view, teacher)}
        result["summary"] = summary
        runs[label] = result
    seeds = [k for k in runs if k != CONTROL]
    return {"tasks": tasks, "runs": runs, "seeds": seeds, "folders": {k: str(v) for k, v in folders.items()},
            "views": views, "teacher_scores": runs[seeds[0]]["scores"]["teacher"]}


def seeded(run: dict[str, Any], path: Sequence[str]) -> list[float]:
    """One figure of every seed's student: ``run["runs"][seed][path[0]][path[1]]...``."""
    values = []
    for seed in run["seeds"]:
        node = run["runs"][seed]
        for key in path:
            node = node[key]
        values.append(float(node))
    return values


def of_control(run: dict[str, Any], path: Sequence[str]) -> float:
    node = run["runs"][CONTROL]
    for key in path:
        node = node[key]
    return float(node)


def asymmetric_summary(run: dict[str, Any], task: str = "SciFact") -> dict[str, Any]:
    """The three arms on ``task`` over the seeds: student queries + teacher documents minus the
    student alone, and minus the teacher alone (paired over seeds; the teacher has none)."""
    asym = seeded(run, ("scores", "asymmetric", task))
    alone = seeded(run, ("scores", "student", task))
    teacher = run["teacher_scores"][task]
    return {"task": task, "teacher": teacher, "student": float(np.mean(alone)), "asymmetric": float(np.mean(asym)),
            "control_student": of_control(run, ("scores", "student", task)),
            "control_asymmetric": of_control(run, ("scores", "asymmetric", task)),
            "asym_minus_student": paired_difference(asym, alone).as_dict(),
            "asym_minus_teacher": paired_difference(asym, [teacher] * len(asym)).as_dict()}


def scores_table(run: dict[str, Any]):
    """Per task (rows): the teacher, the control and the students' mean over seeds, alone and with
    the teacher's documents, and the retention of each."""
    import pandas as pd

    cols = {"teacher": pd.Series(run["teacher_scores"])}
    for arm in ("student", "asymmetric"):
        cols[f"control ({arm})"] = pd.Series(run["runs"][CONTROL]["scores"][arm])
        cols[f"student ({arm})"] = pd.DataFrame([run["runs"][s]["scores"][arm] for s in run["seeds"]]).mean()
    table = pd.DataFrame(cols)
    table.loc["mean"] = table.mean()
    for who in ("control", "student"):
        table[f"{who} retention %"] = 100.0 * table[f"{who} (student)"] / table["teacher"]
    return table


def causal_experiment(profile: Profile, base, teacher: EmbeddingModel, task: str = "SciFact",
                      progress: bool = True) -> dict[str, Any]:
    """The causal student (the book's extension, on the ``base`` decoder) distilled from the same
    targets: its folder, its training summary and its queries' score against the teacher's documents."""
    folder = leaf.train_leaf_student(profile, "causal", base=base, progress=progress)
    view = student_view(folder, profile, f"{profile.name}-causal-{folder.name[:8]}", progress)
    pair = asymmetric(view, teacher, name=f"leaf-{profile.name}-causal-{folder.name[:8]}-q_{_short(teacher.name)}-d")
    return {"folder": folder, "summary": read_done(folder)["summary"],
            "asymmetric": evaluate_model(pair, [task], profile)["scores"][task]}


# --------------------------------------------------------------------------- truncation and quantization


def rotation_experiment(profile: Profile, run: dict[str, Any], task: str = "SciFact",
                        progress: bool = True) -> dict[str, Any]:
    """The teacher and the students in two rotations of the teacher's space, truncated and quantized.

    A rotation keeps every cosine, so at full width each rotated model scores as itself. PCA (fitted
    on the teacher's targets of the training texts) orders the dimensions by variance; a random
    rotation orders none. The same two matrices turn the students' outputs (they live in the
    teacher's space, so no training is needed), and one more student is trained at one seed on the
    PCA-rotated targets to confirm that it truncates as the rotated main students do. Each model is
    scored on ``task`` at every ``leaf_dims`` width and, at full width, in int8 (calibrated on its own
    vectors of the training texts) and binary.
    """
    texts, held = leaf.leaf_texts(profile)
    targets = leaf.cached_vectors(leaf.load_teacher(profile), texts + held, progress=progress)
    targets = np.asarray(targets[: len(texts)])
    dim = targets.shape[1]
    rotations = {"PCA": leaf.pca_rotation(targets), "random": leaf.random_rotation(dim, seed=0)}
    dims = sorted({int(d) for d in profile.leaf_dims if d <= dim})
    calibration = texts[: min(len(texts), 2000)]
    pca_student = leaf.train_leaf_student(replace(profile, seed=int(profile.leaf_seeds[0])),
                                          rotation=rotations["PCA"], progress=progress)
    base = {name: run["views"][name] for name in ("teacher", CONTROL, *run["seeds"])}
    curves: dict[str, dict[str, dict[int, float]]] = {}
    quant: dict[str, dict[str, dict[str, float]]] = {}
    for name, model in base.items():
        own = np.asarray(model.encode(calibration, "document")) if name != "teacher" else targets[: len(calibration)]
        for label, matrix in rotations.items():
            turned = rotated(model, matrix, label.lower())
            curves.setdefault(name, {})[label] = {
                d: evaluate_model(truncate(turned, d), [task], profile)["scores"][task] for d in dims}
            variants = {"float32": turned, "int8": quantized(turned, int8_quantizer(own @ matrix)),
                        "binary": binarized(turned)}
            quant.setdefault(name, {})[label] = {p: evaluate_model(m, [task], profile)["scores"][task]
                                                 for p, m in variants.items()}
    trained = student_view(pca_student, profile, f"{profile.name}-pca-target-{pca_student.name[:8]}", progress)
    curves["PCA-target student"] = {"PCA": {d: evaluate_model(truncate(trained, d), [task], profile)["scores"][task]
                                            for d in dims}}
    return {"task": task, "dims": dims, "curves": curves, "quantization": quant,
            "pca_student": str(pca_student), "seeds": run["seeds"]}


def kept_at(rot: dict[str, Any], name: str, rotation: str, dim: int) -> float:
    """% of its full-width score ``name`` keeps at ``dim`` dimensions in ``rotation``."""
    curve = rot["curves"][name][rotation]
    return kept_share(curve, curve[max(curve)])[dim]


def ordering_gain(rot: dict[str, Any], name: str, dim: int) -> float:
    """Points of its full-width score ``name`` keeps at ``dim`` dimensions after the PCA rotation
    beyond what it keeps after the random one: what the PCA ordering buys it there."""
    return kept_at(rot, name, "PCA", dim) - kept_at(rot, name, "random", dim)


def ordering_width(rot: dict[str, Any]) -> int:
    """The width below the full one at which the teacher's PCA ordering buys it the most: where a
    student could show that it carries that ordering (read from the teacher's curves alone)."""
    return max(rot["dims"][:-1], key=lambda d: ordering_gain(rot, "teacher", d))


def binary_kept(rot: dict[str, Any], name: str, rotation: str) -> float:
    """% of its float32 score ``name`` keeps in binary in ``rotation``."""
    row = rot["quantization"][name][rotation]
    return kept_share(row, row["float32"])["binary"]


def curves_frame(rot: dict[str, Any]):
    """The truncation curves as one frame: a column per (model, rotation), a row per width; the
    students' columns are their mean over seeds."""
    import pandas as pd

    cols = {}
    for name in ("teacher", CONTROL, "PCA-target student"):
        for label, curve in rot["curves"][name].items():
            cols[f"{name} ({label})"] = pd.Series(curve)
    for label in ("PCA", "random"):
        cols[f"student ({label})"] = pd.DataFrame([rot["curves"][s][label] for s in rot["seeds"]]).mean()
    return pd.DataFrame(cols)


def quantization_frame(rot: dict[str, Any]):
    """Float32, int8 and binary per (model, rotation); the students' rows are their mean over seeds."""
    import pandas as pd

    rows = {}
    for name in ("teacher", CONTROL):
        for label, row in rot["quantization"][name].items():
            rows[f"{name} ({label})"] = row
    for label in ("PCA", "random"):
        seeds = pd.DataFrame([rot["quantization"][s][label] for s in rot["seeds"]])
        rows[f"student ({label})"] = seeds.mean().to_dict()
    return pd.DataFrame(rows).T


# --------------------------------------------------------------------------- throughput


def throughput_experiment(profile: Profile, student_folder: Path, task: str = "SciFact", n_documents: int = 256,
                          repeats: int = 3) -> dict[str, Any]:
    """Texts/s of the teacher and the student side by side in one process: the same texts (the task's
    test queries; its first ``n_documents`` documents), the same batch (``eval_batch_size``), length
    (``leaf_max_length``), precision and threads, ``repeats`` alternating rounds after a warm-up each.
    ``ratios[kind]`` holds one speed-up per round."""
    import torch

    texts = retrieval_texts(task, profile)
    kinds = {"queries": texts["query"], "documents": texts["document"][:n_documents]}
    models = {"teacher": leaf.load_teacher(profile), "student": student_model(student_folder, profile, "student")}
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "batch_size": ST_BATCH_SIZE,
                           "max_length": profile.leaf_max_length, "precision": profile.eval_precision,
                           "repeats": repeats, "texts_per_s": {}, "ratios": {}, "n_texts": {}}
    for kind, batch in kinds.items():
        seconds = timed_rounds({name: (lambda m=m: m.encode(batch, "document")) for name, m in models.items()}, repeats)
        out["n_texts"][kind] = len(batch)
        out["texts_per_s"][kind] = {name: len(batch) / min(s) for name, s in seconds.items()}
        out["ratios"][kind] = [t / s for t, s in zip(seconds["teacher"], seconds["student"])]
    out["n_parameters"] = {name: m.n_parameters for name, m in models.items()}
    return out
