"""The committed notebooks: stripped, parameterised by profile, all in the book's toc."""

import json
from pathlib import Path

import pytest

from streamdistill.book import toc_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_the_toc_lists_each_one():
    assert NOTEBOOKS
    assert toc_notebooks(ROOT) == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_reads_the_profile(path):
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    source = "".join(tagged[0]["source"])
    assert 'PROFILE = os.environ.get("STREAMDISTILL_PROFILE", "cpu")' in source


def _code(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_stay_thin(path):
    """Warnings are filtered by category (the library's SYNTHETIC DATA warning must show), and sizes
    come from profile fields, not from the profile's name."""
    import re

    code = _code(path)
    assert not re.search(r"filterwarnings\(\s*[\"']ignore[\"']\s*\)", code), "a blanket warnings filter"
    assert "simplefilter(" not in code
    assert not re.search(r"profile\.name\s*[=!]=", code), "a profile-name check instead of a profile field"
