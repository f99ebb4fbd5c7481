"""Stage ``leaf``: a small student distilled into a large teacher's embedding space (LEAF).

The student learns to reproduce the teacher's normalised embeddings with a plain L2 loss
(``losses.leaf_l2``): texts in, the teacher's vectors out; no labels, no negatives. Because it
lives in the teacher's space, its queries can be scored against documents the teacher embedded
(asymmetric mode). The analyses that score it are :mod:`streamdistill.leaf_experiments`.

The pieces, one job per function:

* :func:`load_teacher` - the profile's teacher (``leaf_teacher``: all-mpnet-base-v2 offline; the
  tiny profile's all-MiniLM-L6-v2) reading ``leaf_max_length`` tokens under the eval precision;
* :func:`cached_vectors` - a model's vectors of a list of texts (the teacher's targets): a cached
  artifact whose file is hashed, built chunk by chunk, so an interrupted build resumes;
* :class:`MiniLMStudent` - the paper's student: all-MiniLM-L6-v2 (its first ``leaf_student_layers``
  layers), mean pooling, ``Dense(384 -> teacher width)``, ``Normalize``: a SentenceTransformer of
  plain modules; :class:`CausalStudent` - the book's extension: the causal ``Encoder`` on the base
  decoder with a projection to the teacher's width (it streams, see ``streaming``);
* :func:`ridge_head` - the head's start: ridge least squares from the student's pooled features to
  the targets, its strength chosen on held-out training texts;
* :func:`train_leaf_student` - that head, then ``leaf_steps`` steps of the one training loop with
  dropout off, watching the held-out cosine (cached). ``leaf_steps=0`` is the control: the head alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import atomic_write_bytes, atomic_write_json, cached, checkpoint_dir
from .data import training_texts
from .decoders import BaseModel
from .encoder import Encoder, TruncationWarning
from .losses import leaf_l2
from .models import EmbeddingModel, at_length, in_precision, load_public, minilm_path
from .profiles import Profile
from .sampling import BatchPlan, EpochOrder
from .train import loss_ends, stage_checkpoints, train

STAGE = "leaf"
TARGETS_STAGE = "leaf-targets"
EMBEDDINGS = "embeddings.npy"
PROGRESS = "progress.json"
# Bump when the code changes what the stage builds (v3: the MiniLM-shaped student of a 768-d
# teacher with a ridge head, dropout off, held-out probes; the truncated-teacher student is gone).
VERSION = 3
KINDS = ("minilm", "causal")
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried, times the mean feature variance
PROBES = 8  # held-out cosine measurements per training run (and one before the first step)


# --------------------------------------------------------------------------- teacher and targets


def load_teacher(profile: Profile) -> EmbeddingModel:
    """The profile's teacher as the students see it: ``leaf_max_length`` tokens, eval precision."""
    return in_precision(at_length(load_public(profile.leaf_teacher), profile.leaf_max_length),
                        profile.eval_precision)


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (length-prefixed, so no two lists collide)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def encode_in_chunks(model: EmbeddingModel, texts: Sequence[str], folder: str | Path, *, chunk_size: int = 1024,
                     progress: bool = True) -> np.ndarray:
    """``model``'s document vectors of ``texts``, (N, D) float32, computed ``chunk_size`` texts at a time.

    Each chunk is written atomically to ``folder/chunk-XXXXXX.npy`` and then recorded in
    ``folder/progress.json`` (texts hash, chunk size, chunks done), so an interrupted run resumes at
    the first missing chunk; a folder holding other texts is refused.
    """
    from tqdm.auto import tqdm

    folder, texts = Path(folder), list(texts)
    digest = texts_hash(texts)
    progress_file = folder / PROGRESS
    state = json.loads(progress_file.read_text()) if progress_file.exists() else None
    if state is not None and (state["texts_sha256"] != digest or state["chunk_size"] != chunk_size):
        raise ValueError(f"{folder} caches other texts (or another chunk size); use another folder or delete it")
    state = state or {"texts_sha256": digest, "n_texts": len(texts), "chunk_size": chunk_size, "done": []}
    folder.mkdir(parents=True, exist_ok=True)
    done = set(state["done"])
    starts = range(0, len(texts), chunk_size)
    with tqdm(total=len(texts), desc="teacher targets", unit="text", disable=not progress, dynamic_ncols=True) as bar:
        bar.update(sum(min(chunk_size, len(texts) - i * chunk_size) for i in done))
        for i, start in enumerate(starts):
            if i in done:
                continue
            part = texts[start : start + chunk_size]
            vectors = np.asarray(model.encode(part, "document"), dtype=np.float32)
            atomic_write_bytes(folder / f"chunk-{i:06d}.npy", _npy_bytes(vectors))
            done.add(i)
            state["done"] = sorted(done)
            atomic_write_json(progress_file, state)  # a chunk counts only once it is recorded here
            bar.update(len(part))
    return np.concatenate([np.load(folder / f"chunk-{i:06d}.npy") for i in range(len(starts))])


def cached_vectors(model: EmbeddingModel, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
    """``model``'s vectors of ``texts`` as a read-only memory map, (N, D) float32: the teacher's
    targets, or any LEAF model's vectors of the texts it is scored on.

    A cached artifact (``<artifacts>/leaf-targets/<hash of the model's name and revision and the
    texts>/embeddings.npy``) whose SHA-256 ``DONE.json`` records and every later use checks; built by
    :func:`encode_in_chunks` in the stage's checkpoint folder, so an interrupted build resumes.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    config = {"teacher": model.name, "revision": model.revision, "texts": texts_hash(texts), "n_texts": len(texts)}

    def build(tmp: Path) -> dict:
        vectors = encode_in_chunks(model, texts, checkpoint_dir(TARGETS_STAGE, config), progress=progress)
        np.save(tmp / EMBEDDINGS, vectors)
        return {"n_texts": len(texts), "dim": int(vectors.shape[1])}

    return np.load(cached(TARGETS_STAGE, config, build) / EMBEDDINGS, mmap_mode="r")


def leaf_texts(profile: Profile) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts) of the profile: the first ``leaf_texts`` of the mirror's
    shuffled non-test texts (``data.training_texts``, one order for every seed) and the last
    ``leaf_heldout_texts``, which no student trains on."""
    pool = training_texts(seed=0)
    n, held = profile.leaf_texts, profile.leaf_heldout_texts
    if n + held > len(pool):
        raise ValueError(f"leaf_texts + leaf_heldout_texts = {n + held} exceeds the {len(pool)} training texts")
    return pool[:n], pool[len(pool) - held:]


# --------------------------------------------------------------------------- students


def no_dropout(module: nn.Module) -> nn.Module:
    """Every dropout of ``module`` off: a regression onto fixed targets gains nothing from the noise,
    and a least-squares head amplifies it (its largest weights sit on low-variance directions)."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
    config = getattr(module, "config", None)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout"):
        if config is not None and hasattr(config, key):
            setattr(config, key, 0.0)  # saved so, so a reloaded student trains the same way
    return module


def minilm_student(layers: int, dim: int, max_length: int):
    """A SentenceTransformer: all-MiniLM-L6-v2's first ``layers`` layers, mean pooling,
    ``Dense(384 -> dim, identity)`` and ``Normalize``, dropout off, reading ``max_length`` tokens.
    It saves with ``.save(path)`` and loads with ``SentenceTransformer(path)`` (plain modules)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    base = SentenceTransformer(str(minilm_path()), device="cpu")
    transformer = base[0]
    bert = transformer.model
    if not 1 <= layers <= len(bert.encoder.layer):
        raise ValueError(f"leaf_student_layers must be in 1..{len(bert.encoder.layer)}, got {layers}")
    bert.encoder.layer = nn.ModuleList(list(bert.encoder.layer)[:layers])
    bert.config.num_hidden_layers = layers
    no_dropout(bert)
    width = bert.config.hidden_size
    dense = Dense(width, dim, bias=True, activation_function=nn.Identity())
    student = SentenceTransformer(modules=[transformer, Pooling(width, "mean"), dense, Normalize()], device="cpu")
    student.max_seq_length = max_length
    return student


class MiniLMStudent:
    """The paper's student (:func:`minilm_student`) with the handles training needs."""

    kind = "minilm"

    def __init__(self, profile: Profile, dim: int):
        self.model = minilm_student(profile.leaf_student_layers, dim, profile.leaf_max_length)

    @property
    def head(self) -> nn.Linear:
        return self.model[2].linear

    def features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.preprocess(texts).items() if isinstance(v, torch.Tensor)}

    @staticmethod
    def embed(model, features: dict) -> torch.Tensor:
        return model(dict(features))["sentence_embedding"]

    def pooled(self, features: dict) -> torch.Tensor:
        """The features the head reads: mean-pooled hidden states (B, 384)."""
        return self.model[1](self.model[0](dict(features)))["sentence_embedding"]

    def save(self, folder: Path) -> None:
        self.model.save(str(folder))


class CausalStudent:
    """The project's causal ``Encoder`` on ``base`` (mean pooling) with ``Linear(hidden -> dim)`` and
    L2 normalisation: a student in the teacher's space that streams."""

    kind = "causal"

    def __init__(self, profile: Profile, dim: int, base: BaseModel):
        backbone, tokenizer = base.load()
        with torch.random.fork_rng(devices=[]):  # the same start in every process (ridge_head then refits it)
            torch.manual_seed(0)
            projection = nn.Linear(int(backbone.config.hidden_size), dim)
        self.model = Encoder(no_dropout(backbone), tokenizer, attention="causal", pooling="mean",
                             projection=projection, normalize=True, max_length=profile.leaf_max_length)
        self.max_length = profile.leaf_max_length

    @property
    def head(self) -> nn.Linear:
        return self.model.projection

    def features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():  # truncating to leaf_max_length is intended here
            warnings.simplefilter("ignore", TruncationWarning)
            return self.model.tokenize(texts, max_length=self.max_length)

    @staticmethod
    def embed(model, features: dict) -> torch.Tensor:
        return model(**features)["embedding"]

    def pooled(self, features: dict) -> torch.Tensor:
        return self.model.pool(self.model(**features)["hidden"], features["attention_mask"])

    def save(self, folder: Path) -> None:
        self.model.save(folder)  # Encoder.save replaces the (still empty) folder


def _batches(student, texts: Sequence[str], fn, batch_size: int = 64) -> np.ndarray:
    """``fn(student.features(batch))`` over ``texts`` in eval mode without gradients, stacked."""
    model = student.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [fn(student.features(list(texts[i : i + batch_size]))).float()
                   for i in range(0, len(texts), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def mean_cosine(vectors: np.ndarray, targets: np.ndarray) -> float:
    """Mean cosine of each row of ``vectors`` to the same row of ``targets``."""
    a = np.asarray(vectors, dtype=np.float64)
    b = np.asarray(targets, dtype=np.float64)
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return float((a * b).sum(1).mean())


def heldout_cosine(student, model, texts: Sequence[str], targets: np.ndarray) -> float:
    """The mean cosine of ``model`` (the student's module, or its prepared copy) to ``targets``."""
    return mean_cosine(_batches(student, texts, lambda f: student.embed(model, f)), targets)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` minimising ``|x W + b - y|^2 + alpha * s * |W|^2`` (``s``: the mean variance of
    ``x``'s columns, so ``alpha`` is scale-free); the bias is not penalised."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    gram = xc.T @ xc
    scale = np.trace(gram) / max(1, gram.shape[0])
    w = np.linalg.solve(gram + alpha * scale * np.eye(gram.shape[0]), xc.T @ (y - my))
    return w, my - mx @ w


# The untrained student's pooled features of the training texts, per (start, texts): every seed, the
# control and a rotated student start from the same backbone, so one process computes them once
_start_features: dict[tuple, np.ndarray] = {}


def ridge_head(student, texts: Sequence[str], targets: np.ndarray, holdout: float = 0.1,
               start: tuple | None = None) -> dict[str, float]:
    """Set ``student.head`` to the ridge least-squares map from its pooled features to ``targets``.

    The strength is the one of :data:`RIDGE_ALPHAS` with the highest mean cosine on the last
    ``holdout`` share of ``texts`` (training texts the fit did not see); the head is then refitted
    on all of them. Returns the chosen strength and its held-out cosine. ``start`` names the
    untrained backbone, so that its features are computed once per process.
    """
    key = None if start is None else (start, texts_hash(texts))
    x = _start_features.get(key) if key is not None else None
    if x is None:
        x = _batches(student, texts, student.pooled)
        if key is not None:
            _start_features[key] = x
    y = np.asarray(targets, dtype=np.float64)
    cut = len(x) - max(1, int(holdout * len(x)))
    scores = {}
    for alpha in RIDGE_ALPHAS:
        w, b = ridge(x[:cut], y[:cut], alpha)
        scores[alpha] = mean_cosine(x[cut:] @ w + b, y[cut:])
    alpha = max(scores, key=scores.get)
    w, b = ridge(x, y, alpha)
    with torch.no_grad():
        student.head.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        student.head.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    return {"ridge_alpha": alpha, "ridge_holdout_cosine": scores[alpha]}


def leaf_plan(profile: Profile, texts: Sequence[str]) -> BatchPlan:
    """The one sampler's plan for LEAF: length-grouped epochs (characters as a tokenizer-free proxy
    for tokens; the L2 loss is per text, so grouping changes no target, only the padding)."""
    order = EpochOrder(len(texts), profile.seed, lengths=[len(t) for t in texts], batch_size=profile.leaf_batch_size)
    return BatchPlan(order, profile.leaf_batch_size, profile.leaf_grad_accum)


def fit(student, texts: list[str], targets: np.ndarray, profile: Profile, *, heldout=None,
        checkpoints: Path | None = None, progress: bool = True, plan: BatchPlan | None = None):
    """Train ``student`` toward ``targets`` with the one training loop and ``losses.leaf_l2``;
    ``heldout = (texts, targets)`` is probed :data:`PROBES` times (``heldout_cosine`` in the history)."""
    plan = plan or leaf_plan(profile, texts)
    steps = profile.leaf_steps

    def batch_fn(step: int, micro: int) -> dict[str, Any]:
        idx = plan.indices(step, micro)
        features = student.features([texts[i] for i in idx])
        target = torch.from_numpy(np.asarray(targets[idx], dtype=np.float32))
        return {"features": features, "target": target, "n_tokens": int(features["attention_mask"].sum())}

    def loss_fn(model, batch, step):
        loss = leaf_l2(student.embed(model, batch["features"]), batch["target"])
        return loss, {"cosine": float(1.0 - loss.detach() / 2.0)}

    probe = None
    if heldout is not None:
        def probe(model, step):
            return {"heldout_cosine": heldout_cosine(student, model, *heldout)}

    ckpt = stage_checkpoints(checkpoints, steps) if checkpoints is not None else {}
    return train(student.model, loss_fn, batch_fn, steps=steps, lr=profile.leaf_lr,
                 warmup_frac=profile.warmup_steps_frac, grad_clip=profile.grad_clip, grad_accum=profile.leaf_grad_accum,
                 seed=profile.seed, progress=progress, desc=f"leaf {student.kind}", probe_fn=probe,
                 probe_every=max(1, steps // PROBES), **ckpt)


# --------------------------------------------------------------------------- rotations


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
    vectors = vectors[:, np.argsort(values)[::-1]]
    signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    return (vectors * np.where(signs == 0, 1.0, signs)).astype(np.float32)


def random_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal (dim, dim) matrix (QR of a seeded Gaussian): the control for PCA ordering,
    which mixes every dimension into every other and so orders none."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


# --------------------------------------------------------------------------- the stage


def train_leaf_student(profile: Profile, kind: str = "minilm", *, rotation: np.ndarray | None = None,
                       base: BaseModel | None = None, progress: bool = True) -> Path:
    """Train (or fetch from the cache) the profile's LEAF student; returns its folder.

    The teacher (:func:`load_teacher`) embeds the profile's texts once (:func:`cached_vectors`);
    the student's head starts at :func:`ridge_head` and the whole student then trains for
    ``leaf_steps`` steps (0: the control, the head alone). ``rotation`` distils the teacher's
    space turned by that orthogonal matrix (stored as ``rotation.npy``). ``kind`` is ``"minilm"``
    (loads with ``SentenceTransformer(folder)``) or ``"causal"`` (``Encoder.load(folder)``; needs
    ``base``, the decoder it starts from; it trains ``leaf_causal_steps``). The summary in ``DONE.json``
    holds the head's strength,
    the held-out cosine before and after training, the loss curve's ends and the seconds.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "causal" and base is None:
        raise ValueError("the causal student needs the base decoder it starts from (base=)")
    if kind == "causal":
        profile = replace(profile, leaf_steps=profile.leaf_causal_steps)
    teacher = load_teacher(profile)
    texts, held = leaf_texts(profile)
    targets = cached_vectors(teacher, texts + held, progress=progress)
    targets, held_targets = targets[: len(texts)], targets[len(texts):]
    if rotation is not None:
        rotation = np.asarray(rotation, dtype=np.float32)
        targets, held_targets = np.asarray(targets) @ rotation, np.asarray(held_targets) @ rotation
    keys = ("seed", "leaf_teacher", "leaf_texts", "leaf_heldout_texts", "leaf_steps", "leaf_batch_size", "leaf_lr",
            "leaf_max_length", "leaf_grad_accum", "warmup_steps_frac", "grad_clip")
    keys += ("leaf_student_layers",) if kind == "minilm" else ()
    config = {"version": VERSION, "kind": kind, "teacher": teacher.revision, "texts": texts_hash(texts + held),
              "profile": {k: getattr(profile, k) for k in keys},
              "rotation": None if rotation is None else hashlib.sha256(rotation.tobytes()).hexdigest()[:12],
              "base": base.identity if kind == "causal" else None}

    start = (kind, profile.leaf_student_layers, profile.leaf_max_length) if kind == "minilm" else None

    def build(tmp: Path) -> dict:
        dim = targets.shape[1]
        student = MiniLMStudent(profile, dim) if kind == "minilm" else CausalStudent(profile, dim, base)
        summary: dict[str, Any] = {"kind": kind, "steps": profile.leaf_steps, "n_texts": len(texts),
                                   **ridge_head(student, texts, targets, start=start)}
        summary["heldout_cosine_start"] = heldout_cosine(student, student.model, held, held_targets)
        history: list[dict] = []
        if profile.leaf_steps:
            result = fit(student, texts, targets, profile, heldout=(held, held_targets),
                         checkpoints=checkpoint_dir(STAGE, config), progress=progress)
            history = result.history
            summary |= {**loss_ends(history), "train_seconds": result.seconds}
        summary["heldout_cosine"] = heldout_cosine(student, student.model, held, held_targets)
        student.model.eval()
        student.save(tmp)
        if rotation is not None:
            np.save(tmp / "rotation.npy", rotation)
        atomic_write_json(tmp / "history.json", history)
        return summary | {"n_parameters": sum(p.numel() for p in student.model.parameters())}

    return cached(STAGE, config, build)


def control_profile(profile: Profile) -> Profile:
    """The control of the profile's student: the same head, no training step."""
    return replace(profile, leaf_steps=0, seed=0)


def run_leaf(profile: Profile, *, progress: bool = True) -> Path:
    """The stage entry (``streamdistill train leaf``): the profile's MiniLM-shaped student's folder."""
    return train_leaf_student(profile, progress=progress)
