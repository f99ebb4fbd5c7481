"""Shared fixtures: the mirror beside the checkout, offline Hub, isolated caches per test session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("STREAMDISTILL_DATA_DIR", str((ROOT.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
MIRROR = Path(os.environ["STREAMDISTILL_DATA_DIR"])


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """Artifacts and mteb results of the test session go to a temporary folder, or to
    ``$STREAMDISTILL_TEST_CACHE`` where `make test` names one that its xdist workers and the
    notebooks under nbval share (each tiny stage is then built once: ``artifacts.cached`` locks)."""
    shared = os.environ.get("STREAMDISTILL_TEST_CACHE")
    base = Path(shared) if shared else tmp_path_factory.mktemp("caches")
    old = {k: os.environ.get(k) for k in ("STREAMDISTILL_ARTIFACTS", "STREAMDISTILL_RESULTS")}
    os.environ["STREAMDISTILL_ARTIFACTS"] = str(base / "artifacts")
    os.environ["STREAMDISTILL_RESULTS"] = str(base / "results")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def mirror_copy(tmp_path, monkeypatch):
    """A mirror whose files are symlinks to the real one; tests may replace a file to corrupt it."""
    dest = tmp_path / "mirror"
    for src in MIRROR.rglob("*"):
        if src.is_file():
            target = dest / src.relative_to(MIRROR)
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.name == "MANIFEST.json":
                shutil.copy(src, target)
            else:
                target.symlink_to(src)
    monkeypatch.setenv("STREAMDISTILL_DATA_DIR", str(dest))
    from streamdistill import data

    data._verified.clear()
    yield dest
    data._verified.clear()


def replace_file(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


def manifest(root: Path) -> dict:
    return json.loads((root / "MANIFEST.json").read_text())


def manifest_rows(rel: str, root: Path = MIRROR) -> int:
    """Rows the mirror's MANIFEST lists for one file: tests count from it, never from a literal."""
    rows = {f["path"]: f["rows"] for entry in manifest(root).values() for f in entry.get("files", [])}
    return rows[rel]
