"""The one place that caches artifacts.

An artifact is a folder named by the hash of the config that produced it
(``<root>/<stage>/<hash>/``). It is built in a temporary sibling folder and renamed into place
only when complete, with a ``DONE.json`` written last, so an interrupted build is never loaded.
``DONE.json`` records the SHA-256 of every weight file (``*.safetensors``, ``*.npy``), and a
cache hit checks them: a file changed on disk (a bad copy, a flipped block) is named in one line
instead of loading silently. Weights are safetensors (or plain ``.npy`` arrays) only; nothing here
unpickles. Resumable training checkpoints of a build live in :func:`checkpoint_dir` and are
removed once the artifact is published.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ARTIFACTS_ENV = "STREAMDISTILL_ARTIFACTS"
DONE = "DONE.json"
WEIGHT_SUFFIXES = (".safetensors", ".npy")


class ArtifactError(RuntimeError):
    """A missing, incomplete or corrupt artifact."""


def repo_root() -> Path:
    """The checkout this package runs from (falls back to the working directory when installed)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "src" / "streamdistill").exists():
            return parent
    return Path.cwd()


def artifacts_root() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV) or repo_root() / "artifacts")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:length]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path, publish: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final`` only if the block finishes without error
    (and ``publish``: otherwise it is discarded, e.g. on a non-main process)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if not publish:
            return
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write torch tensors as safetensors, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path: str | Path) -> dict:
    """Read a safetensors file; a truncated or corrupt file raises ArtifactError in one line."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise ArtifactError(f"corrupt weights file {path}: {exc}; delete it to rebuild") from None


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / DONE).exists()


def weight_files(folder: str | Path) -> list[Path]:
    """Every weight file under ``folder`` (safetensors and npy), sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def file_hashes(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the weight files under ``folder``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in weight_files(folder)}


# (path, size, mtime) of files whose hash was checked in this process: a folder loaded ten times
# in one notebook is hashed once
_verified: set[tuple[str, int, int]] = set()


def verify(folder: str | Path, done: dict | None = None) -> None:
    """Check the weight files of an artifact against the hashes its ``DONE.json`` records.

    A missing or changed file raises :class:`ArtifactError` in one line naming it and how to
    rebuild. ``folder`` may be the artifact or any folder inside one (e.g. its ``model/``).
    """
    folder = Path(folder).resolve()
    root = next((p for p in (folder, *folder.parents) if (p / DONE).exists()), None)
    if root is None:
        return  # not an artifact (a folder made by hand): nothing recorded to check against
    done = done if done is not None and root == folder else json.loads((root / DONE).read_text())
    recorded = done.get("files")
    if recorded is None:
        return
    for rel, digest in recorded.items():
        path = root / rel
        if path != folder and folder not in path.parents:
            continue
        if not path.exists():
            raise ArtifactError(f"missing artifact file {path}; delete {root} to rebuild it")
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key in _verified:
            continue
        if sha256_file(path) != digest:
            raise ArtifactError(f"corrupt artifact file {path} (its SHA-256 differs from {root / DONE}); "
                                f"delete {root} to rebuild it")
        _verified.add(key)


def checkpoint_dir(stage: str, config: dict, root: Path | None = None) -> Path:
    """Where the build of ``(stage, config)`` keeps resumable training checkpoints.

    Beside the artifacts (the build's own folder is temporary), so an interrupted build resumes;
    :func:`cached` removes it once the artifact is published.
    """
    return (root or artifacts_root()) / ".checkpoints" / stage / config_hash(config)


def cached(
    stage: str,
    config: dict,
    build: Callable[[Path], dict | None],
    *,
    root: Path | None = None,
    rebuild: bool = False,
) -> Path:
    """Return ``<root>/<stage>/<hash(config)>``, building it with ``build(tmp_dir)`` if needed.

    ``build`` writes its files into the folder it is given and may return a dict of summary
    figures, stored with the config and the weight files' hashes in ``DONE.json``. A cached folder
    whose ``DONE.json`` records no hashes (an older build) is rebuilt; one whose files changed on
    disk raises :class:`ArtifactError`. Under several processes (``accelerate launch``) every
    process runs ``build`` (training is collective), only the main one publishes the folder
    (``artifacts_root`` must be a filesystem every process sees), and all wait for it.
    Independent processes sharing a cache (notebooks and tests run side by side) build an artifact
    once: the first holds its lock while it builds, the others wait and then read it.
    """
    base = root or artifacts_root()
    folder = base / stage / config_hash(config)
    state = multi_process_state()
    with contextlib.nullcontext() if state is not None else build_lock(base / ".locks" / stage / folder.name):
        done = read_done(folder) if is_complete(folder) and not rebuild else None
        complete = done is not None and "files" in done
        if state is not None:
            # every process decides on the same view: none may skip a build (and its barrier) because
            # the main process published the folder in between
            state.wait_for_everyone()
        if complete:
            verify(folder, done)
            return folder
        main = state is None or state.is_main_process
        with atomic_dir(folder, publish=main) as tmp:
            summary = build(tmp) or {}
            atomic_write_json(tmp / DONE, {"stage": stage, "config": config, "summary": summary,
                                           "files": file_hashes(tmp)})
        if state is not None:
            state.wait_for_everyone()
        if main:
            shutil.rmtree(checkpoint_dir(stage, config, base), ignore_errors=True)
        return folder


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` (an exclusive ``flock``; beside the artifacts, under ``.locks/``) while one
    process checks and builds an artifact: another process wanting it waits, then finds it built. The
    processes of one ``accelerate launch`` build collectively and take no lock. Locks of different
    artifacts nest in the order of the stage graph (a stage locks its upstream while holding its
    own), so they cannot deadlock."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def multi_process_state():
    """accelerate's process state when several processes run (``accelerate launch``), else None.

    On a host without CUDA the processes are CPU processes (gloo): accelerate's ``PartialState``
    only counts them when asked for the CPU, so it is.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # what launchers set; no accelerate import otherwise
        return None
    import torch
    from accelerate.state import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state if state.num_processes > 1 else None


def data_parallel_world() -> int:
    """Processes training data-parallel, as accelerate counts them.

    Valid before any ``Accelerator`` exists (``PartialState`` reads the launcher's environment),
    so a stage can size its micro-batches before training starts.
    """
    state = multi_process_state()
    return 1 if state is None else state.num_processes


def read_done(folder: str | Path) -> dict:
    folder = Path(folder)
    if not is_complete(folder):
        raise ArtifactError(f"{folder} is incomplete (no {DONE}); it was interrupted — rebuild it")
    return json.loads((folder / DONE).read_text())
