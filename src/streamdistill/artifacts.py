"""The one place that caches artifacts.

An artifact is a folder named by the hash of the config that produced it
(``<root>/<stage>/<hash>/``). It is built in a temporary sibling folder and renamed into place
only when complete, with a ``DONE.json`` written last, so an interrupted build is never loaded.
Weights are safetensors only; nothing here unpickles.
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
    figures, stored with the config in ``DONE.json``. Under several processes (``accelerate
    launch``) every process runs ``build`` (training is collective), only the main one publishes
    the folder (``artifacts_root`` must be a filesystem every process sees), and all wait for it.
    """
    folder = (root or artifacts_root()) / stage / config_hash(config)
    state = multi_process_state()
    complete = is_complete(folder) and not rebuild
    if state is not None:
        # every process decides on the same view: none may skip a build (and its barrier) because
        # the main process published the folder in between
        state.wait_for_everyone()
    if complete:
        return folder
    with atomic_dir(folder, publish=state is None or state.is_main_process) as tmp:
        summary = build(tmp) or {}
        atomic_write_json(tmp / DONE, {"stage": stage, "config": config, "summary": summary})
    if state is not None:
        state.wait_for_everyone()
    return folder


def multi_process_state():
    """accelerate's process state when several processes run (``accelerate launch``), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # what launchers set; no accelerate import otherwise
        return None
    from accelerate.state import PartialState

    state = PartialState()
    return state if state.num_processes > 1 else None


def read_done(folder: str | Path) -> dict:
    folder = Path(folder)
    if not is_complete(folder):
        raise ArtifactError(f"{folder} is incomplete (no {DONE}); it was interrupted — rebuild it")
    return json.loads((folder / DONE).read_text())
