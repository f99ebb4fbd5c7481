"""Stage ``leaf`` and its analyses: teacher-aligned distillation, asymmetric retrieval, MRL
truncation, quantization, throughput.

A student learns to reproduce a black-box teacher's embeddings with a plain L2 loss
(``losses.leaf_l2``): texts in, the teacher's vectors out; no labels, no negatives, small batches.
Because the student lives in the teacher's space, it can encode queries while the teacher encodes
documents (asymmetric mode) and it inherits what the teacher's space offers (truncation,
quantization).

The pieces, one job per function:

* :func:`teacher_embeddings` - the teacher's embeddings of the training texts, computed once,
  chunk by chunk (resumable), stored as a memory-mapped float32 ``.npy``;
* :class:`TruncatedStudent` / :class:`CausalStudent` - the two students: the teacher's first
  ``k`` BERT layers as a SentenceTransformer, or the project's causal ``Encoder`` with a
  projection to the teacher's width (which streams, see ``streaming.StreamingEncoder``);
* :func:`train_leaf_student` - trains either with ``train.train`` (cached); :func:`run_leaf` is
  the stage entry (``streamdistill train leaf``);
* :func:`asymmetric_scores` - teacher, student and student-queries/teacher-documents scores;
* :func:`pca_rotation`, :func:`truncation_curve` - MRL-style truncation after an orthogonal
  rotation that orders dimensions by variance (the wrappers live in :mod:`streamdistill.models`);
* :func:`quantization_table` - float32, int8 and binary scores;
* :func:`throughput` - texts/s of several models measured side by side.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import artifacts_root, atomic_write_bytes, atomic_write_json, cached, checkpoint_dir, config_hash, read_done
from .data import data_fingerprint, training_texts
from .decoders import BaseModel, bpe_tokenizer, random_decoder
from .encoder import Encoder, TruncationWarning
from .evaluate import evaluate_model
from .losses import leaf_l2
from .models import (
    EmbeddingModel,
    asymmetric,
    at_length,
    binarized,
    int8_quantizer,
    load_folder,
    memoized,
    minilm_path,
    model_revision,
    open_sentence_transformer,
    quantized,
    truncate,
    weights_revision,
)
from .profiles import Profile, as_dict, get_profile
from .sampling import BatchPlan, EpochOrder
from .tasks import task_list, task_type
from .train import stage_checkpoints, train

TEACHER_CACHE = "leaf-teacher-cache"
EMBEDDINGS = "embeddings.npy"
PROGRESS = "progress.json"
STAGE = "leaf"
# Bump when the code changes what the stage builds (v2: the one sampler's length-grouped order,
# micro-batches sliced per process, the profile's decoder shape for the causal student).
VERSION = 2
KINDS = ("truncated", "causal")
MRL_DIMS = (32, 64, 128, 256, 384)


# --------------------------------------------------------------------------- teacher cache


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (length-prefixed, so no two lists collide)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def teacher_cache_folder(teacher_revision: str, texts: Sequence[str], max_length: int | None = None) -> Path:
    """``<artifacts>/leaf-teacher-cache/<hash>``, keyed by the teacher's revision and the texts."""
    key = {"teacher": teacher_revision, "texts": texts_hash(texts), "max_length": max_length}
    return artifacts_root() / TEACHER_CACHE / config_hash(key)


def _encode_teacher(teacher, texts: list[str], batch_size: int) -> np.ndarray:
    """Teacher vectors of ``texts``: a SentenceTransformer or an ``EmbeddingModel`` (documents)."""
    if isinstance(teacher, EmbeddingModel):
        return np.asarray(teacher.encode(texts, "document"), dtype=np.float32)
    out = teacher.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def teacher_embeddings(
    teacher,
    texts: Sequence[str],
    folder: str | Path,
    *,
    chunk_size: int = 1024,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """The teacher's embeddings of ``texts`` as a read-only memory map, (N, D) float32.

    Computed once, ``chunk_size`` texts at a time. Each chunk is written atomically to
    ``folder/chunks/chunk-XXXXXX.npy`` and then recorded in ``folder/progress.json`` (texts hash,
    chunk size, chunks done), so an interrupted run resumes at the first missing chunk. When all
    chunks are there they are joined into ``folder/embeddings.npy`` (atomically), the chunks are
    removed and ``progress.json`` says ``complete``. Later calls only ``np.load(mmap_mode="r")``.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    texts = list(texts)
    digest = texts_hash(texts)
    progress_file, final = folder / PROGRESS, folder / EMBEDDINGS
    state = json.loads(progress_file.read_text()) if progress_file.exists() else None
    if state is not None and (state["texts_sha256"] != digest or state["chunk_size"] != chunk_size):
        raise ValueError(f"{folder} caches other texts (or another chunk size); use another folder or delete it")
    if state is not None and state.get("complete") and final.exists():
        return np.load(final, mmap_mode="r")
    state = state or {"texts_sha256": digest, "n_texts": len(texts), "chunk_size": chunk_size, "done": [],
                      "complete": False}
    n_chunks = (len(texts) + chunk_size - 1) // chunk_size
    chunks = folder / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    done = set(state["done"])
    bar = tqdm(total=len(texts), desc="teacher cache", unit="text", disable=not progress, dynamic_ncols=True)
    bar.update(sum(min(chunk_size, len(texts) - i * chunk_size) for i in done))
    try:
        for i in range(n_chunks):
            if i in done:
                continue
            part = texts[i * chunk_size : (i + 1) * chunk_size]
            atomic_write_bytes(chunks / f"chunk-{i:06d}.npy", _npy_bytes(_encode_teacher(teacher, part, batch_size)))
            done.add(i)
            state["done"] = sorted(done)
            atomic_write_json(progress_file, state)  # the chunk counts only once it is recorded here
            bar.update(len(part))
    finally:
        bar.close()

    parts = [np.load(chunks / f"chunk-{i:06d}.npy", mmap_mode="r") for i in range(n_chunks)]
    dim = parts[0].shape[1] if parts else 0
    tmp = final.with_name(f".{final.name}.tmp")
    joined = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
    start = 0
    for part in parts:
        joined[start : start + len(part)] = part
        start += len(part)
    joined.flush()
    del joined
    os.replace(tmp, final)
    state.update(complete=True, dim=int(dim))
    atomic_write_json(progress_file, state)
    for i in range(n_chunks):
        (chunks / f"chunk-{i:06d}.npy").unlink(missing_ok=True)
    return np.load(final, mmap_mode="r")


def load_teacher(teacher=None):
    """(SentenceTransformer, revision, folder or None): default all-MiniLM-L6-v2, offline."""
    if teacher is None:
        teacher = minilm_path()
    if isinstance(teacher, (str, Path)):
        folder = Path(teacher)
        return open_sentence_transformer(folder), weights_revision(folder), folder
    return teacher, model_revision(teacher), None


def cached_teacher_embeddings(teacher_st, revision: str, texts: Sequence[str], progress: bool = True) -> np.ndarray:
    """:func:`teacher_embeddings` in its own folder under ``<artifacts>/leaf-teacher-cache/``."""
    folder = teacher_cache_folder(revision, texts, getattr(teacher_st, "max_seq_length", None))
    return teacher_embeddings(teacher_st, texts, folder, progress=progress)


# --------------------------------------------------------------------------- students


def truncated_student(teacher_st, layers: int):
    """A SentenceTransformer: the teacher's embeddings + first ``layers`` BERT layers, mean
    pooling, ``Dense(d -> d, identity)`` initialised to the identity, ``Normalize``.

    It saves with ``.save(path)`` and loads with ``SentenceTransformer(path)``.
    """
    import copy

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    transformer = copy.deepcopy(teacher_st[0])
    bert = transformer.model
    if not 1 <= layers <= len(bert.encoder.layer):
        raise ValueError(f"layers must be in 1..{len(bert.encoder.layer)}, got {layers}")
    bert.encoder.layer = nn.ModuleList(list(bert.encoder.layer)[:layers])
    bert.config.num_hidden_layers = layers
    width = bert.config.hidden_size
    dim = teacher_st.get_embedding_dimension()
    dense = Dense(width, dim, bias=True, activation_function=nn.Identity(),
                  init_weight=torch.eye(dim, width), init_bias=torch.zeros(dim))
    return SentenceTransformer(modules=[transformer, Pooling(width, "mean"), dense, Normalize()], device="cpu")


def causal_student(tokenizer, backbone, dim: int, max_length: int) -> Encoder:
    """The project's causal ``Encoder`` (mean pooling) with ``Linear(hidden -> dim)`` and L2 norm."""
    hidden = int(getattr(backbone.config, "hidden_size"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        projection = nn.Linear(hidden, dim)
    return Encoder(backbone, tokenizer, attention="causal", pooling="mean", projection=projection,
                   normalize=True, max_length=max_length)


class TruncatedStudent:
    """The teacher's first ``leaf_student_layers`` layers (a SentenceTransformer)."""

    kind = "truncated"

    def __init__(self, teacher_st, profile: Profile):
        self.model = truncated_student(teacher_st, profile.leaf_student_layers)
        self.inference_length = self.model.max_seq_length
        self.model.max_seq_length = profile.leaf_max_length  # train on the profile's length

    def features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.preprocess(texts).items() if isinstance(v, torch.Tensor)}

    @staticmethod
    def embed(model, features: dict) -> torch.Tensor:
        return model(dict(features))["sentence_embedding"]

    def save(self, folder: Path) -> None:
        self.model.max_seq_length = self.inference_length  # the teacher's own limit at inference
        self.model.save(str(folder))


class CausalStudent:
    """The project's causal ``Encoder`` on ``base`` (or a random decoder of the profile's shape),
    with a projection to the teacher's width."""

    kind = "causal"

    def __init__(self, profile: Profile, dim: int, texts: Sequence[str], base: BaseModel | None = None):
        if base is not None:
            backbone, tokenizer = base.load()
        else:  # a random decoder of the profile's shape, with a tokenizer trained on the texts
            tokenizer = bpe_tokenizer(list(texts), profile.vocab_size, eos_ends_text=False)
            backbone = random_decoder(profile, tokenizer, seed=profile.seed)
        self.model = causal_student(tokenizer, backbone, dim, profile.leaf_max_length)
        self.max_length = profile.leaf_max_length

    def features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():  # truncating to leaf_max_length is intended here
            warnings.simplefilter("ignore", TruncationWarning)
            return self.model.tokenize(texts, max_length=self.max_length)

    @staticmethod
    def embed(model, features: dict) -> torch.Tensor:
        return model(**features)["embedding"]

    def save(self, folder: Path) -> None:
        self.model.save(folder)  # Encoder.save replaces the (still empty) folder


def leaf_plan(profile: Profile, texts: Sequence[str]) -> BatchPlan:
    """The one sampler's plan for LEAF: length-grouped epochs (characters as a tokenizer-free proxy
    for tokens; the L2 loss is per text, so grouping changes no target, only the padding)."""
    order = EpochOrder(len(texts), profile.seed, lengths=[len(t) for t in texts], batch_size=profile.leaf_batch_size)
    return BatchPlan(order, profile.leaf_batch_size, profile.leaf_grad_accum)


def fit(student, texts: list[str], targets: np.ndarray, profile: Profile, *, checkpoints: Path | None = None,
        progress: bool = True, plan: BatchPlan | None = None):
    """Train ``student`` toward ``targets`` with the one training loop and ``losses.leaf_l2``."""
    plan = plan or leaf_plan(profile, texts)

    def batch_fn(step: int, micro: int) -> dict[str, Any]:
        idx = plan.indices(step, micro)
        features = student.features([texts[i] for i in idx])
        target = torch.from_numpy(np.asarray(targets[idx], dtype=np.float32))
        return {"features": features, "target": target, "n_tokens": int(features["attention_mask"].sum())}

    def loss_fn(model, batch, step):
        loss = leaf_l2(student.embed(model, batch["features"]), batch["target"])
        return loss, {"cosine": float(1.0 - loss.detach() / 2.0)}

    steps = profile.leaf_steps
    ckpt = stage_checkpoints(checkpoints, steps) if checkpoints is not None else {}
    return train(student.model, loss_fn, batch_fn, steps=steps, lr=profile.leaf_lr,
                 warmup_frac=profile.warmup_steps_frac, grad_clip=profile.grad_clip, grad_accum=profile.leaf_grad_accum,
                 seed=profile.seed, progress=progress, desc=f"leaf {student.kind}", **ckpt)


def _rotation_of(pca, embeddings: np.ndarray) -> np.ndarray | None:
    if pca is None or pca is False:
        return None
    if pca is True:
        return pca_rotation(embeddings)
    return np.asarray(pca, dtype=np.float32)


def default_texts(profile: Profile) -> list[str]:
    """One epoch of training texts for the profile's LEAF run (mirror training splits only)."""
    return training_texts(limit=profile.leaf_steps * profile.leaf_batch_size, seed=profile.seed)


def train_leaf_student(
    kind: str = "truncated",
    teacher=None,
    profile: Profile | str | None = None,
    texts: Sequence[str] | None = None,
    pca=None,
    *,
    base: BaseModel | None = None,
    progress: bool = True,
) -> Path:
    """Train (or fetch from the cache) a LEAF student; returns its folder.

    Args:
        kind: ``"truncated"`` (:class:`TruncatedStudent`; loads with ``SentenceTransformer(folder)``)
            or ``"causal"`` (:class:`CausalStudent`; loads with ``Encoder.load(folder)``).
        teacher: a SentenceTransformer folder or object (default: all-MiniLM-L6-v2, offline).
        texts: training texts (default: one epoch of ``data.training_texts``).
        pca: None/False = the teacher's own space; True = distil to the teacher rotated by
            :func:`pca_rotation` of the cached training embeddings; or a rotation matrix.
            The rotation is stored as ``rotation.npy`` in the folder.
        base: causal kind only - the base decoder to start from (default: a random decoder of
            the profile's shape with a tokenizer trained on ``texts``).

    The folder's ``DONE.json`` summary has the loss curve's ends, cosine to the teacher, seconds.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    profile = get_profile(profile)
    teacher_st, teacher_rev, _ = load_teacher(teacher)
    texts = list(texts) if texts is not None else default_texts(profile)
    if not texts:
        raise ValueError("no training texts")
    embeddings = cached_teacher_embeddings(teacher_st, teacher_rev, texts, progress=progress)
    rotation = _rotation_of(pca, embeddings)
    leaf_keys = {k: v for k, v in as_dict(profile).items() if k.startswith("leaf_") or k in
                 ("seed", "warmup_steps_frac", "grad_clip")}
    if kind == "causal":
        leaf_keys.update({k: getattr(profile, k) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                                                           "num_kv_heads", "intermediate_size", "max_positions")})
    config = {"version": VERSION, "kind": kind, "teacher": teacher_rev, "texts": texts_hash(texts),
              "profile": leaf_keys,
              "rotation": None if rotation is None else hashlib.sha256(rotation.tobytes()).hexdigest()[:12],
              "base": None if base is None or kind != "causal" else base.identity}

    def build(tmp: Path) -> dict:
        targets = embeddings if rotation is None else np.asarray(embeddings) @ rotation
        student = (TruncatedStudent(teacher_st, profile) if kind == "truncated"
                   else CausalStudent(profile, embeddings.shape[1], texts, base))
        result = fit(student, texts, targets, profile, checkpoints=checkpoint_dir(STAGE, config), progress=progress)
        student.model.eval()
        student.save(tmp)
        if rotation is not None:
            np.save(tmp / "rotation.npy", rotation)
        losses = [row["loss"] for row in result.history]
        atomic_write_json(tmp / "history.json", result.history)
        k = max(1, len(losses) // 10)
        return {"kind": kind, "steps": profile.leaf_steps, "first_loss": float(np.mean(losses[:k])),
                "last_loss": float(np.mean(losses[-k:])), "train_seconds": result.seconds,
                "n_parameters": sum(p.numel() for p in student.model.parameters()), "n_texts": len(texts)}

    return cached(STAGE, config, build)


# --------------------------------------------------------------------------- fine-tuned teachers (MRL)

FINETUNE_STAGE = "teacher-finetune"
FINETUNE_VERSION = 1


def finetune_teacher(profile: Profile | str | None = None, *, matryoshka: bool, teacher=None,
                     progress: bool = True) -> Path:
    """all-MiniLM-L6-v2 (or ``teacher``) fine-tuned on the mirror's training pairs; a SentenceTransformer folder.

    The loss is sentence-transformers' in-batch ``MultipleNegativesRankingLoss`` (scale 20, i.e.
    temperature 0.05), wrapped in ``MatryoshkaLoss`` over ``profile.mrl_dims`` when ``matryoshka``:
    the MRL teacher. The plain teacher of the comparison is fine-tuned the same way without the
    wrapper, so fine-tuning is not confounded with MRL. Trained through the one training loop
    (``finetune_steps`` steps of ``finetune_batch_size`` pairs, ``finetune_lr``), seeded.
    """
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    from .data import training_pairs

    profile = get_profile(profile)
    teacher_st, teacher_rev, _ = load_teacher(teacher)
    dims = sorted({int(d) for d in profile.mrl_dims if d <= teacher_st.get_embedding_dimension()}, reverse=True)
    sources = tuple(profile.finetune_sources)
    config = {"version": FINETUNE_VERSION, "teacher": teacher_rev, "matryoshka": dims if matryoshka else None,
              "steps": profile.finetune_steps, "batch_size": profile.finetune_batch_size, "lr": profile.finetune_lr,
              "sources": sources, "seed": profile.seed, "max_length": profile.leaf_max_length,
              "data": data_fingerprint()}

    def build(tmp: Path) -> dict:
        import copy

        model = copy.deepcopy(teacher_st).to("cpu")
        max_length = model.max_seq_length
        model.max_seq_length = profile.leaf_max_length
        pairs = [(q, d) for q, d, _ in training_pairs(sources=sources, seed=0)]
        plan = BatchPlan(EpochOrder(len(pairs), profile.seed), profile.finetune_batch_size)
        base_loss = MultipleNegativesRankingLoss(model)
        loss_module = MatryoshkaLoss(model, base_loss, matryoshka_dims=dims) if matryoshka else base_loss

        def batch_fn(step: int, micro: int) -> dict:
            idx = plan.indices(step, micro)
            feats = [{k: v for k, v in model.preprocess([pairs[i][col] for i in idx]).items()
                      if isinstance(v, torch.Tensor)} for col in (0, 1)]
            return {"features": feats, "n_tokens": int(sum(f["attention_mask"].sum() for f in feats))}

        def loss_fn(module, batch, step):
            return loss_module(batch["features"], torch.zeros(0)), {}

        result = train(model, loss_fn, batch_fn, steps=profile.finetune_steps, lr=profile.finetune_lr,
                       warmup_frac=0.1, grad_clip=profile.grad_clip, seed=profile.seed, progress=progress,
                       desc="mrl teacher" if matryoshka else "plain teacher",
                       **stage_checkpoints(checkpoint_dir(FINETUNE_STAGE, config), profile.finetune_steps))
        model.max_seq_length = max_length
        model.eval()
        model.save(str(tmp))
        atomic_write_json(tmp / "history.json", result.history)
        losses = [row["loss"] for row in result.history]
        k = max(1, len(losses) // 10)
        return {"matryoshka_dims": dims if matryoshka else None, "pairs": len(pairs), "steps": profile.finetune_steps,
                "first_loss": float(np.mean(losses[:k])), "last_loss": float(np.mean(losses[-k:])),
                "seconds": result.seconds}

    return cached(FINETUNE_STAGE, config, build)


def random_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal (dim, dim) matrix (QR of a seeded Gaussian): the control for PCA ordering,
    which mixes every dimension into every other and so orders none."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def load_leaf_student(folder: str | Path, name: str | None = None) -> EmbeddingModel:
    """A trained student folder as an ``EmbeddingModel`` (SentenceTransformer or Encoder)."""
    folder = Path(folder)
    return load_folder(folder, name=name or f"streamdistill/leaf-{folder.name}")


def run_leaf(profile: Profile | str | None = None, *, kind: str = "truncated", base: BaseModel | None = None,
             progress: bool = True) -> Path:
    """The stage entry (``streamdistill train leaf``): the profile's student's folder."""
    return train_leaf_student(kind, profile=get_profile(profile), base=base, progress=progress)


# --------------------------------------------------------------------------- asymmetric mode


def _mean(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def evaluation_model(model: EmbeddingModel, profile: Profile | str | None = None) -> EmbeddingModel:
    """A teacher or truncated student as LEAF's claims score it: reading ``leaf_max_length`` tokens,
    the length the students were trained at (every model of the comparison sees the same truncation,
    and no student is scored at positions it never trained at), and memoized, so that the teacher's
    documents are encoded once for the teacher's own scores and the asymmetric pair's."""
    return memoized(at_length(model, get_profile(profile).leaf_max_length))


def asymmetric_scores(student_model: EmbeddingModel, teacher_model: EmbeddingModel, tasks: Sequence[str] | str,
                      profile: Profile | str | None = None) -> dict[str, Any]:
    """Scores of the teacher alone, the student alone and student queries + teacher documents.

    The asymmetric pair is scored on retrieval tasks only: a symmetric task has no queries, so
    there "asymmetric" would just be the teacher again. ``retention[x] = score(x) / score(teacher)
    * 100`` per task, and for the mean over the tasks ``x`` was scored on.
    """
    profile = get_profile(profile)
    tasks = task_list(tasks)
    retrieval = [t for t in tasks if task_type(t) == "Retrieval"]
    models = {
        "teacher": (teacher_model, tasks),
        "student": (student_model, tasks),
        "asymmetric": (asymmetric(student_model, teacher_model,
                                  name=f"{_short(student_model.name)}-q_{_short(teacher_model.name)}-d"), retrieval),
    }
    scores = {key: evaluate_model(model, names, profile)["scores"] if names else {}
              for key, (model, names) in models.items()}
    teacher = scores["teacher"]
    retention = {key: {t: 100.0 * s[t] / teacher[t] if teacher[t] else float("nan") for t in s}
                 for key, s in scores.items() if key != "teacher"}
    for key, own in retention.items():
        base = _mean({t: teacher[t] for t in scores[key]})
        own["mean"] = 100.0 * _mean(scores[key]) / base if scores[key] and base else float("nan")
    return {"scores": scores, "mean": {k: _mean(s) for k, s in scores.items()}, "retention": retention}


def retention_summary(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Over a student's seeds (``runs[seed]`` = :func:`asymmetric_scores`): retention of the teacher's
    mean score (mean and sd), SciFact means, the asymmetric pair minus the student alone on the
    retrieval tasks (paired over seeds), and a table of mean scores."""
    import pandas as pd

    from .stats import paired_difference

    seeds = sorted(runs)
    retention = [runs[s]["retention"]["student"]["mean"] for s in seeds]
    retrieval = sorted(runs[seeds[0]]["scores"]["asymmetric"])
    asym = [_mean({t: runs[s]["scores"]["asymmetric"][t] for t in retrieval}) for s in seeds]
    alone = [_mean({t: runs[s]["scores"]["student"][t] for t in retrieval}) for s in seeds]
    table = pd.DataFrame({key: pd.DataFrame([runs[s]["scores"][key] for s in seeds]).mean() for key in
                          ("teacher", "student", "asymmetric")})
    table.loc["mean"] = [_mean(table[c].dropna().to_dict()) for c in table.columns]
    sci = {key: float(np.mean([runs[s]["scores"][key]["SciFact"] for s in seeds])) for key in
           ("teacher", "student", "asymmetric")} if "SciFact" in retrieval else {}
    return {"seeds": seeds, "retention": {"mean": float(np.mean(retention)), "sd": float(np.std(retention, ddof=1))
                                          if len(seeds) > 1 else float("nan"), "per_seed": retention},
            "asymmetric_minus_student": paired_difference(asym, alone).as_dict(), "retrieval_tasks": retrieval,
            "scifact": sci, "table": table}


def mrl_experiment(profile: Profile | str | None = None) -> dict[str, Any]:
    """The MRL comparison: all-MiniLM-L6-v2 fine-tuned with and without MatryoshkaLoss, a truncated
    LEAF student distilled from each, and two rotations of the plain teacher (PCA-ordered, random).

    Returns truncation curves (mean over ``mrl_tasks`` per dimension) of the six models, the share
    of the full-width score each keeps at the smallest dimension, quantization means of the four
    models of the comparison, and ``spread``: the seed standard deviation of the kept share of the
    main truncated student over ``leaf_seeds`` (the noise single-seed comparisons are judged by).
    """
    from dataclasses import replace

    from .models import rotated

    profile = get_profile(profile)
    tasks = list(profile.mrl_tasks)
    dims = sorted(int(d) for d in profile.mrl_dims)
    teachers = {kind: finetune_teacher(profile, matryoshka=kind == "MRL") for kind in ("MRL", "plain")}
    models: dict[str, EmbeddingModel] = {}
    for kind, folder in teachers.items():
        models[f"teacher ({kind})"] = memoized(load_folder(folder, name=f"streamdistill/minilm-{kind.lower()}-ft"))
        student = train_leaf_student("truncated", teacher=folder, profile=profile)
        models[f"student ({kind} teacher)"] = memoized(load_leaf_student(student))
    plain = models["teacher (plain)"]
    calibration = np.asarray(plain.encode(training_texts(limit=profile.calibration_texts, seed=profile.seed), "document"))
    models["teacher (plain, PCA-rotated)"] = rotated(plain, pca_rotation(calibration), "pca")
    models["teacher (plain, randomly rotated)"] = rotated(plain, random_rotation(calibration.shape[1], profile.seed), "random")
    curves = {name: truncation_curve(m, dims, tasks, profile)["mean"] for name, m in models.items()}
    smallest = dims[0]
    kept = {name: 100.0 * c[smallest] / c[dims[-1]] for name, c in curves.items()}
    four = {k: models[k] for k in ("teacher (MRL)", "student (MRL teacher)", "teacher (plain)", "student (plain teacher)")}
    quant = quantization_table(four, tasks, profile)["mean"]
    spread_runs = []
    for seed in profile.leaf_seeds:
        folder = train_leaf_student("truncated", profile=replace(profile, seed=seed))
        curve = truncation_curve(memoized(load_leaf_student(folder)), (smallest, dims[-1]), tasks, profile)["mean"]
        spread_runs.append(100.0 * curve[smallest] / curve[dims[-1]])
    return {"dims": dims, "tasks": tasks, "curves": curves, "kept": kept, "smallest": smallest,
            "quantization": quant, "spread": float(np.std(spread_runs, ddof=1)), "spread_runs": spread_runs,
            "teachers": {k: str(v) for k, v in teachers.items()}}


def _short(name: str) -> str:
    """A model name without its organisation prefix (keeps derived names to one slash)."""
    return name.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- MRL: rotation + truncation


def pca_rotation(embeddings: np.ndarray) -> np.ndarray:
    """An orthogonal (D, D) matrix whose columns are the principal axes, by decreasing variance.

    Fitted on training embeddings only. The covariance is centred to find the axes, but the
    rotation is applied to raw vectors (``x @ R``, no centring), so dot products, norms and cosine
    similarities are exactly those of the original space (up to float rounding). Each axis' sign
    is fixed (largest component positive), so the result is deterministic.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    values, vectors = np.linalg.eigh(x.T @ x / max(1, len(x) - 1))
    order = np.argsort(values)[::-1]
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    return (vectors * np.where(signs == 0, 1.0, signs)).astype(np.float32)


def truncation_curve(model: EmbeddingModel, dims: Sequence[int] = MRL_DIMS, tasks: Sequence[str] | str = ("SciFact",),
                     profile: Profile | str | None = None) -> dict[str, Any]:
    """Scores of ``truncate(model, d)`` for each ``d``: ``{"scores": {d: {task: s}}, "mean": {d: m}}``."""
    scores = {int(d): evaluate_model(truncate(model, int(d)), tasks, profile)["scores"] for d in dims}
    return {"dims": [int(d) for d in dims], "scores": scores, "mean": {d: _mean(s) for d, s in scores.items()}}


# --------------------------------------------------------------------------- quantization


def quantization_table(models: dict[str, EmbeddingModel], tasks: Sequence[str] | str,
                       profile: Profile | str | None = None, *,
                       calibration: dict[str, np.ndarray] | np.ndarray | None = None) -> dict[str, Any]:
    """Scores of each model in float32, int8 and binary: ``{"scores": {name: {precision: {task: s}}},
    "mean": {name: {precision: m}}}``.

    int8 is calibrated on ``calibration`` (an array for all models, or one per name); by default on
    the model's own embeddings of training texts (``data.training_texts``, never test splits).
    """
    profile = get_profile(profile)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    calib_texts = None
    for name, model in models.items():
        if isinstance(calibration, dict):
            calib = calibration[name]
        elif calibration is not None:
            calib = calibration
        else:
            if calib_texts is None:
                calib_texts = training_texts(limit=profile.calibration_texts, seed=profile.seed)
            calib = model.encode(calib_texts, "document")
        variants = {"float32": model, "int8": quantized(model, int8_quantizer(calib)), "binary": binarized(model)}
        scores[name] = {p: evaluate_model(m, tasks, profile)["scores"] for p, m in variants.items()}
    return {"scores": scores, "mean": {n: {p: _mean(s) for p, s in v.items()} for n, v in scores.items()}}


# --------------------------------------------------------------------------- throughput


def throughput(models: dict[str, EmbeddingModel], texts: Sequence[str], batch_size: int = 32,
               repeats: int = 3) -> dict[str, dict[str, float]]:
    """Texts/s and parameters of each model, measured side by side in one run.

    Models run in turn, ``repeats`` rounds, after one warm-up batch each; each keeps its best
    round, so a slow moment does not decide a ratio. SentenceTransformers run with ``batch_size``.
    """
    texts = list(texts)

    def runner(model: EmbeddingModel):
        if model.st_model is not None:
            return lambda xs: model.st_model.encode(xs, batch_size=batch_size, show_progress_bar=False)
        return lambda xs: model.encode(xs, "document")

    runs = {name: runner(m) for name, m in models.items()}
    for run in runs.values():
        run(texts[:batch_size])
    best = {name: float("inf") for name in models}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(texts)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: {"texts_per_s": len(texts) / max(best[name], 1e-9), "seconds": best[name],
                   "n_parameters": models[name].n_parameters or 0, "texts": len(texts), "batch_size": batch_size}
            for name in models}
