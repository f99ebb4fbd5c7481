"""Build the book: papermill executes every notebook of the toc, then Jupyter Book (v1) renders.

Jupyter Book's own execution is off (``_config.yml``): papermill runs each source notebook in
``notebooks/`` with the profile as a parameter, writing the executed copy to ``book/notebooks/``,
and stops at the first failing cell. The build then runs with warnings as errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .artifacts import repo_root

TOC = Path("book") / "_toc.yml"


def toc_notebooks(root: Path | None = None) -> list[str]:
    """Notebook stems listed in the toc as ``book/notebooks/<stem>``, in order."""
    root = root or repo_root()
    return re.findall(r"file:\s*book/notebooks/([\w\-]+)", (root / TOC).read_text())


def execute_notebooks(profile: str, root: Path | None = None, names: list[str] | None = None) -> dict[str, float]:
    import papermill

    root = root or repo_root()
    out_dir = root / "book" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for stem in names or toc_notebooks(root):
        src = root / "notebooks" / f"{stem}.ipynb"
        if not src.exists():
            raise FileNotFoundError(f"the toc lists {stem} but {src} does not exist")
        started = time.perf_counter()
        print(f"[book] executing {src.name} (profile={profile})", file=sys.stderr, flush=True)
        papermill.execute_notebook(
            str(src), str(out_dir / src.name), parameters={"PROFILE": profile},
            cwd=str(root / "notebooks"), kernel_name="python3", progress_bar=False, log_output=False)
        hide_injected_parameters(out_dir / src.name)
        seconds[stem] = round(time.perf_counter() - started, 1)
        print(f"[book] {src.name}: {seconds[stem]} s", file=sys.stderr, flush=True)
    return seconds


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected ``# Parameters`` cell ``remove-cell``: set-up, not reading."""
    import json

    from .artifacts import atomic_write_text

    nb = json.loads(Path(path).read_text())
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def build_book(profile: str = "cpu", execute: bool = True, root: Path | None = None) -> dict:
    root = root or repo_root()
    started = time.perf_counter()
    seconds = execute_notebooks(profile, root) if execute else {}
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(root), "--toc", str(root / TOC),
           "--config", str(root / "_config.yml"), "--warningiserror", "--keep-going"]
    if not (Path(sys.executable).parent / "jupyter-book").exists():
        raise FileNotFoundError("jupyter-book is not installed in this environment (make book installs it)")
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), *cmd[3:]]
    subprocess.run(cmd, check=True, cwd=root, env={**os.environ, "STREAMDISTILL_PROFILE": profile})
    html = root / "_build" / "html" / "index.html"
    return {"profile": profile, "notebook_seconds": seconds, "html": str(html),
            "total_seconds": round(time.perf_counter() - started, 1)}
