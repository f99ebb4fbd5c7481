"""README's Python snippet runs as written (at the tiny profile, exporting to a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_snippet_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README has no Python snippet"
    monkeypatch.chdir(tmp_path)  # the snippet writes exports/ relative to where it runs
    for block in blocks:
        code = block.replace('"cpu"', '"tiny"')
        assert code != block, "the snippet should name the book's profile"
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "exports" / "C" / "modules.json").exists()
