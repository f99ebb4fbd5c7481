"""LEAF: teacher-aligned distillation, asymmetric retrieval, MRL truncation, quantization.

A student learns to reproduce a black-box teacher's embeddings with a plain L2 loss
(``losses.leaf_l2``): texts in, the teacher's vectors out; no labels, no negatives, small batches.
Because the student lives in the teacher's space, it can encode queries while the teacher encodes
documents (asymmetric mode) and it inherits what the teacher's space offers (truncation,
quantization).

The pieces, one job per function:

* :func:`teacher_embeddings` - the teacher's embeddings of the training texts, computed once,
  chunk by chunk (resumable), stored as a memory-mapped float32 ``.npy``;
* :func:`truncated_student` / :func:`causal_student` - the two students: the teacher's first
  ``k`` BERT layers as a SentenceTransformer, or the project's causal Qwen2 ``Encoder`` with a
  projection to the teacher's width (which streams, see ``streaming.StreamingEncoder``);
* :func:`train_leaf_student` - trains either with ``train.train`` (cached); :func:`run_leaf` is
  the pipeline / CLI entry (``streamdistill train leaf``);
* :func:`asymmetric_scores` - teacher, student and student-queries/teacher-documents scores;
* :func:`pca_rotation`, :func:`rotated`, :func:`truncate`, :func:`truncation_curve` - MRL-style
  truncation after an orthogonal rotation that orders dimensions by variance;
* :func:`int8_quantizer`, :func:`quantized`, :func:`binarized`, :func:`quantization_table`;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import (
    artifacts_root,
    atomic_write_bytes,
    atomic_write_json,
    cached,
    config_hash,
    read_done,
)
from .evaluate import (
    EmbeddingModel,
    asymmetric,
    evaluate_model,
    minilm_path,
    open_sentence_transformer,
    weights_revision,
)
from .profiles import Profile, as_dict, get_profile

TEACHER_CACHE = "leaf-teacher-cache"
EMBEDDINGS = "embeddings.npy"
PROGRESS = "progress.json"
STAGE = "leaf"
KINDS = ("truncated", "causal")
MRL_DIMS = (32, 64, 128, 256, 384)
CHECKPOINT_MIN_STEPS = 100  # runs shorter than this train without checkpoints
GROUP_BATCHES = 64  # batches per length-sorted pool (see _epoch_order)


# --------------------------------------------------------------------------- teacher cache


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (length-prefixed, so no two lists collide)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def model_revision(st_model) -> str:
    """A short hash of a module's weights (for models held in memory rather than in a folder)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(st_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


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


def causal_student(tokenizer, backbone, dim: int, max_length: int):
    """The project's causal ``Encoder`` (mean pooling) with ``Linear(hidden -> dim)`` and L2 norm."""
    from .encoder import Encoder

    hidden = int(getattr(backbone.config, "hidden_size"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        projection = nn.Linear(hidden, dim)
    return Encoder(backbone, tokenizer, attention="causal", pooling="mean", projection=projection,
                   normalize=True, max_length=max_length)


def _causal_backbone(profile: Profile, texts: Sequence[str], backbone_folder: str | Path | None):
    """(backbone, tokenizer): a given base LM folder, or a randomly initialised Qwen2 of the profile."""
    from .encoder import Encoder, tiny_qwen2, tiny_tokenizer

    if backbone_folder is not None:
        folder = Path(backbone_folder)
        if (folder / "encoder_config.json").exists():
            enc = Encoder.load(folder)
            return enc.backbone, enc.tokenizer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
        model_dir = folder / "backbone" if (folder / "backbone").is_dir() else folder
        return (AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True),
                AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False))
    tokenizer = tiny_tokenizer(list(texts), vocab_size=profile.vocab_size)
    backbone = tiny_qwen2(len(tokenizer), hidden=profile.hidden_size, layers=profile.num_layers,
                          heads=profile.num_heads, kv_heads=profile.num_kv_heads,
                          max_positions=profile.max_positions, seed=profile.seed)
    return backbone, tokenizer


def _epoch_order(epoch: int, n: int, batch_size: int, seed: int, lengths: np.ndarray | None) -> np.ndarray:
    """The order of epoch ``epoch``: a seeded permutation, length-grouped when ``lengths`` is given.

    Grouping: the permutation is cut into pools of ``GROUP_BATCHES`` batches, each pool is sorted by
    length and cut into batches, and the full batches are shuffled. A batch then pads to the length
    of similar texts instead of its longest: on the cpu texts (mean 27 tokens, 6 % at the 128 cap)
    random batches pad to ~4x the tokens that grouped ones do. The L2 loss is per text, so which
    texts share a batch changes no target, only the padding.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if lengths is None:
        return perm
    pool = batch_size * GROUP_BATCHES
    batches = []
    for start in range(0, n, pool):
        chunk = perm[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    # only the very last batch can be short; it stays last so every other batch is whole
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in np.random.default_rng([seed, epoch, 1]).permutation(len(batches))]
    return np.concatenate(shuffled + tail)


def _batch_indices(step: int, batch_size: int, n: int, seed: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """Indices of optimiser step ``step``: consecutive slices of the epoch orders, a pure function of step."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = _epoch_order(epoch, n, batch_size, seed, lengths)
        out.extend(order[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out)


def _tokenize_truncated(student, texts: list[str]) -> dict[str, Any]:
    return {k: v for k, v in student.preprocess(texts).items() if isinstance(v, torch.Tensor)}


def _fit(student, kind: str, texts: list[str], targets: np.ndarray, profile: Profile, checkpoint_dir: Path,
         progress: bool):
    """Train ``student`` toward ``targets`` with the one training loop and ``losses.leaf_l2``."""
    from .losses import leaf_l2
    from .train import train

    lengths = np.array([len(text) for text in texts])  # characters: a tokenizer-free proxy for tokens

    def batch_fn(step: int, micro: int) -> dict[str, Any]:
        idx = _batch_indices(step, profile.leaf_batch_size, len(texts), profile.seed, lengths)
        chunk = [texts[i] for i in idx]
        target = torch.from_numpy(np.asarray(targets[idx], dtype=np.float32))
        if kind == "truncated":
            features = _tokenize_truncated(student, chunk)
        else:
            with warnings.catch_warnings():  # truncating to leaf_max_length is intended here
                warnings.simplefilter("ignore", UserWarning)
                features = student.tokenize(chunk, max_length=profile.leaf_max_length)
        return {"features": features, "target": target, "n_tokens": int(features["attention_mask"].sum())}

    def loss_fn(model, batch, step):
        if kind == "truncated":
            embedding = model(dict(batch["features"]))["sentence_embedding"]
        else:
            embedding = model(**batch["features"])["embedding"]
        loss = leaf_l2(embedding, batch["target"])
        return loss, {"cosine": float(1.0 - loss.detach() / 2.0)}

    # Short runs (the tiny profile) are not worth a checkpoint: writing the optimiser state would
    # cost more than redoing them. Longer runs checkpoint ~10 times and resume after interruption.
    steps = profile.leaf_steps
    checkpoints = steps >= CHECKPOINT_MIN_STEPS
    return train(student, loss_fn, batch_fn, steps=steps, lr=profile.leaf_lr,
                 warmup_frac=profile.warmup_steps_frac, grad_clip=profile.grad_clip, seed=profile.seed,
                 checkpoint_dir=checkpoint_dir if checkpoints else None,
                 checkpoint_every=max(1, steps // 10), keep_last=1, progress=progress, desc=f"leaf {kind}")


def _rotation_of(pca, embeddings: np.ndarray) -> np.ndarray | None:
    if pca is None or pca is False:
        return None
    if pca is True:
        return pca_rotation(embeddings)
    return np.asarray(pca, dtype=np.float32)


def default_texts(profile: Profile) -> list[str]:
    """One epoch of training texts for the profile's LEAF run (mirror training splits only)."""
    from .data import training_texts

    return training_texts(limit=profile.leaf_steps * profile.leaf_batch_size, seed=profile.seed)


def train_leaf_student(
    kind: str = "truncated",
    teacher=None,
    profile: Profile | str | None = None,
    texts: Sequence[str] | None = None,
    pca=None,
    *,
    backbone_folder: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train (or fetch from the cache) a LEAF student; returns its folder.

    Args:
        kind: ``"truncated"`` (the teacher's first ``leaf_student_layers`` layers as a
            SentenceTransformer; load with ``SentenceTransformer(folder)``) or ``"causal"`` (the
            project's causal ``Encoder``; load with ``Encoder.load(folder)``).
        teacher: a SentenceTransformer folder or object (default: all-MiniLM-L6-v2, offline).
        texts: training texts (default: one epoch of ``data.training_texts``).
        pca: None/False = the teacher's own space; True = distil to the teacher rotated by
            :func:`pca_rotation` of the cached training embeddings; or a rotation matrix.
            The rotation is stored as ``rotation.npy`` in the folder.
        backbone_folder: causal kind only - the base LM to start from (default: random Qwen2
            of the profile's shape with a tokenizer trained on ``texts``).

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
                                                           "num_kv_heads", "max_positions")})
    config = {"kind": kind, "teacher": teacher_rev, "texts": texts_hash(texts), "profile": leaf_keys,
              "rotation": None if rotation is None else hashlib.sha256(rotation.tobytes()).hexdigest()[:12],
              "backbone": None if backbone_folder is None else weights_revision(_weights_dir(backbone_folder)),
              "order": f"length-grouped-{GROUP_BATCHES}"}
    checkpoint_dir = artifacts_root() / f"{STAGE}-checkpoints" / config_hash(config)

    def build(tmp: Path) -> dict:
        targets = embeddings if rotation is None else np.asarray(embeddings) @ rotation
        if kind == "truncated":
            student = truncated_student(teacher_st, profile.leaf_student_layers)
            inference_length = student.max_seq_length
            student.max_seq_length = profile.leaf_max_length
        else:
            backbone, tokenizer = _causal_backbone(profile, texts, backbone_folder)
            student = causal_student(tokenizer, backbone, embeddings.shape[1], profile.leaf_max_length)
        result = _fit(student, kind, texts, targets, profile, checkpoint_dir, progress)
        student.eval()
        if kind == "truncated":
            student.max_seq_length = inference_length
            student.save(str(tmp))
        else:
            student.save(tmp)  # Encoder.save replaces the (still empty) folder
        if rotation is not None:
            np.save(tmp / "rotation.npy", rotation)
        losses = [row["loss"] for row in result.history]
        atomic_write_json(tmp / "history.json", result.history)
        k = max(1, len(losses) // 10)
        return {"kind": kind, "steps": profile.leaf_steps, "first_loss": float(np.mean(losses[:k])),
                "last_loss": float(np.mean(losses[-k:])), "train_seconds": result.seconds,
                "n_parameters": sum(p.numel() for p in student.parameters()), "n_texts": len(texts)}

    folder = cached(STAGE, config, build)
    import shutil

    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return folder


def _weights_dir(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder / "backbone" if (folder / "backbone").is_dir() else folder


def load_leaf_student(folder: str | Path, name: str | None = None) -> EmbeddingModel:
    """A trained student folder as an ``EmbeddingModel`` (SentenceTransformer or Encoder)."""
    from .evaluate import from_encoder, load_sentence_transformer

    folder = Path(folder)
    name = name or f"streamdistill/leaf-{folder.name}"
    if (folder / "modules.json").exists():
        return load_sentence_transformer(folder, name=name)
    from .encoder import Encoder

    return from_encoder(Encoder.load(folder), name=name, revision=weights_revision(folder))


def run_leaf(profile: Profile | str | None = None, *, kind: str = "truncated", progress: bool = True) -> tuple[Path, dict]:
    """Pipeline / CLI entry (``streamdistill train leaf``): the profile's student; (folder, summary)."""
    profile = get_profile(profile)
    folder = train_leaf_student(kind, profile=profile, progress=progress)
    summary = dict(read_done(folder)["summary"])
    summary["folder"] = str(folder)
    return folder, summary


# --------------------------------------------------------------------------- asymmetric mode


def _mean(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def asymmetric_scores(student_model: EmbeddingModel, teacher_model: EmbeddingModel, tasks: Sequence[str] | str,
                      profile: Profile | str | None = None) -> dict[str, Any]:
    """Scores of the teacher alone, the student alone and student queries + teacher documents.

    The asymmetric pair is scored on retrieval tasks only: a symmetric task has no queries, so
    there "asymmetric" would just be the teacher again. ``retention[x] = score(x) / score(teacher)
    * 100`` per task, and for the mean over the tasks ``x`` was scored on.
    """
    from .tasks import task_list, task_type

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


def _derived(model: EmbeddingModel, suffix: str, revision: str, encode, embed_dim: int | None) -> EmbeddingModel:
    """A wrapper of ``model`` (routing by prompt type kept; never mteb's ST wrapper)."""
    return EmbeddingModel(name=f"{model.name}-{suffix}", revision=f"{model.revision}-{revision}", encode=encode,
                          embed_dim=embed_dim, n_parameters=model.n_parameters, max_tokens=model.max_tokens,
                          extra={**model.extra, "base": model})


def rotated(model: EmbeddingModel, rotation: np.ndarray) -> EmbeddingModel:
    """``model``'s embeddings times the orthogonal ``rotation`` (cosines unchanged)."""
    rotation = np.asarray(rotation, dtype=np.float32)

    def encode(texts, prompt_type=None):
        return np.asarray(model.encode(texts, prompt_type), dtype=np.float32) @ rotation

    digest = hashlib.sha256(rotation.tobytes()).hexdigest()[:8]
    return _derived(model, "pca", digest, encode, rotation.shape[1])


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def truncate(model: EmbeddingModel, dim: int) -> EmbeddingModel:
    """The first ``dim`` dimensions of ``model``'s embeddings, renormalised."""

    def encode(texts, prompt_type=None):
        return _normalize(np.asarray(model.encode(texts, prompt_type), dtype=np.float32)[:, :dim])

    return _derived(model, f"d{dim}", f"d{dim}", encode, dim)


def truncation_curve(model: EmbeddingModel, dims: Sequence[int] = MRL_DIMS, tasks: Sequence[str] | str = ("SciFact",),
                     profile: Profile | str | None = None) -> dict[str, Any]:
    """Scores of ``truncate(model, d)`` for each ``d``: ``{"scores": {d: {task: s}}, "mean": {d: m}}``."""
    scores = {int(d): evaluate_model(truncate(model, int(d)), tasks, profile)["scores"] for d in dims}
    return {"dims": [int(d) for d in dims], "scores": scores, "mean": {d: _mean(s) for d, s in scores.items()}}


# --------------------------------------------------------------------------- quantization


@dataclass
class Int8Quantizer:
    """Per-dimension affine int8 codes: ``[lo, hi]`` maps onto ``[-128, 127]``."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def scale(self) -> np.ndarray:
        return np.maximum(self.hi - self.lo, 1e-12) / 255.0

    def quantize(self, x: np.ndarray) -> np.ndarray:
        codes = np.round((np.asarray(x, dtype=np.float32) - self.lo) / self.scale) - 128.0
        return np.clip(codes, -128, 127).astype(np.int8)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        return ((codes.astype(np.float32) + 128.0) * self.scale + self.lo).astype(np.float32)

    def digest(self) -> str:
        return hashlib.sha256(self.lo.tobytes() + self.hi.tobytes()).hexdigest()[:8]


def int8_quantizer(train_embeddings: np.ndarray) -> Int8Quantizer:
    """Calibrate per-dimension min/max on training embeddings (never on test data)."""
    x = np.asarray(train_embeddings, dtype=np.float32)
    return Int8Quantizer(lo=x.min(0), hi=x.max(0))


def quantized(model: EmbeddingModel, quantizer: Int8Quantizer) -> EmbeddingModel:
    """``model`` scored through int8 codes (quantize, then dequantize for cosine scoring)."""

    def encode(texts, prompt_type=None):
        return quantizer.dequantize(quantizer.quantize(model.encode(texts, prompt_type)))

    return _derived(model, "int8", quantizer.digest(), encode, model.embed_dim)


def binarize(x: np.ndarray) -> np.ndarray:
    """Sign codes as ±1 float32 (0 maps to +1); cosine on them is 1 - 2·hamming/D."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0).astype(np.float32)


def binarized(model: EmbeddingModel) -> EmbeddingModel:
    """``model`` scored on the signs of its embeddings (±1 vectors, cosine)."""

    def encode(texts, prompt_type=None):
        return binarize(model.encode(texts, prompt_type))

    return _derived(model, "binary", "sign", encode, model.embed_dim)


def quantization_table(models: dict[str, EmbeddingModel], tasks: Sequence[str] | str,
                       profile: Profile | str | None = None, *,
                       calibration: dict[str, np.ndarray] | np.ndarray | None = None) -> dict[str, Any]:
    """Scores of each model in float32, int8 and binary: ``{"scores": {name: {precision: {task: s}}},
    "mean": {name: {precision: m}}}``.

    int8 is calibrated on ``calibration`` (an array for all models, or one per name); by default on
    the model's own embeddings of training texts (``data.training_texts``, never test splits).
    """
    from .data import training_texts

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
                calib_texts = training_texts(limit=200 if profile.name == "tiny" else 2000, seed=profile.seed)
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


# --------------------------------------------------------------------------- shared embeddings


def memoized(model: EmbeddingModel) -> EmbeddingModel:
    """The same model, remembering each text's vector (per prompt type) in memory.

    Truncated, rotated and quantized variants of one model all start from its float vectors; with
    the base memoized, a corpus is encoded once instead of once per variant.
    """
    memo: dict[tuple[str, str | None], np.ndarray] = {}

    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if (t, prompt_type) not in memo]
        if missing:
            memo.update(zip(((t, prompt_type) for t in missing), np.asarray(model.encode(missing, prompt_type))))
        return np.stack([memo[(t, prompt_type)] for t in texts])

    return EmbeddingModel(name=model.name, revision=model.revision, encode=encode, embed_dim=model.embed_dim,
                          n_parameters=model.n_parameters, max_tokens=model.max_tokens, st_model=model.st_model,
                          extra={**model.extra, "memoized": True})
