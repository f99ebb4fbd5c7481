"""The package's layering (ARCHITECTURE.md), checked by import-linter from pyproject.toml.

Each layer imports only the layers below it; siblings joined by ``|`` never import each other. Every
import statement counts, including those inside functions, so a lazy import cannot hide an upward
dependency or a cycle.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "streamdistill"
LINT = Path(sys.executable).parent / "lint-imports"


def contract_layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return [[m.strip() for m in layer.split("|")] for layer in contract["layers"]]


def lint(pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = None if pythonpath is None else {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, env=env)


def test_every_module_has_a_layer():
    listed = {m for layer in contract_layers() for m in layer}
    modules = {f"streamdistill.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert modules == listed, {"missing from the contract": modules - listed, "not a module": listed - modules}


def test_the_layering_contract_is_kept():
    proc = lint()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package whose data layer imports the registry is refused."""
    copy = tmp_path / "streamdistill"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "data.py", "a") as fh:
        fh.write("\n\ndef _upward():\n    from . import registry  # deliberately upward\n\n    return registry\n")
    proc = lint(pythonpath=tmp_path)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout
    assert "streamdistill.data -> streamdistill.registry" in proc.stdout
