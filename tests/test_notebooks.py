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


def test_the_first_pages_claims_table_glues_every_claim_its_notebook_glues():
    """intro.md's table, book.CLAIMS (the README's figure) and the notebooks' glue calls name the same keys."""
    import re

    from streamdistill.book import CLAIMS

    intro = (ROOT / "book" / "intro.md").read_text()
    table = re.findall(r"notebooks/(\w+)\.ipynb::(claim_\w+?)_(paper|here|basis|verdict):s", intro)
    assert {(stem, key) for stem, key, _ in table} == {(stem, key) for _, stem, key in CLAIMS}
    assert sorted(table) == sorted((stem, key, part) for _, stem, key in CLAIMS
                                   for part in ("paper", "here", "basis", "verdict"))  # every row, every column
    for _, stem, key in CLAIMS:
        code = _code(ROOT / "notebooks" / f"{stem}.ipynb")
        # each row is glued through report.claim_parts, which names every part (paper, here, verdict, basis)
        short = key.removeprefix("claim_")
        assert re.search(rf'claim_parts\(\s*"{short}"', code), f"{stem} does not glue {key} by report.claim_parts"


def _executed(path: Path, values: dict, profile: str | None = None) -> Path:
    """A notebook as papermill leaves it after ``myst_nb.glue(name, value, display=False)`` calls."""
    outputs = [{"output_type": "display_data", "metadata": {"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}},
                "data": {"application/papermill.record/text/plain": repr(value)}} for name, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"papermill": {"parameters": {"PROFILE": profile}}} if profile else {}
    path.write_text(json.dumps({"metadata": metadata, "cells": [{"cell_type": "code", "source": "", "outputs": outputs}]}))
    return path


def test_claims_are_read_from_the_executed_notebooks_and_missing_ones_say_not_run(tmp_path):
    from streamdistill.book import CLAIMS, claims, glued, write_claims

    label, stem, key = CLAIMS[0]
    _executed(tmp_path / "book" / "notebooks" / f"{stem}.ipynb",
              {f"{key}_paper": "76.6 %", f"{key}_here": "B − A = 0.3 ± 0.4", f"{key}_verdict": "not resolved",
               f"{key}_basis": "3 paired seeds, 95 % t interval", f"{key}_value": 0.3, f"{key}_low": -0.1,
               f"{key}_high": 0.7, "n": 3})
    assert glued(tmp_path / "book" / "notebooks" / f"{stem}.ipynb")["n"] == "3"
    rows = claims(tmp_path)
    assert rows[0] == {"claim": label, "paper": "76.6 %", "here": "B − A = 0.3 ± 0.4", "verdict": "not resolved",
                       "basis": "3 paired seeds, 95 % t interval", "value": 0.3, "low": -0.1, "high": 0.7, "machine": None}
    unrun = [row for row in rows if row["verdict"] == "not run"]
    assert len(unrun) == len(CLAIMS) - 1
    assert unrun[0] == {"claim": unrun[0]["claim"], "paper": "not run", "here": "not run", "verdict": "not run",
                        "basis": "not run", "value": None, "low": None, "high": None, "machine": None}
    out = write_claims("tiny", tmp_path)
    assert json.loads(out.read_text())["rows"] == rows
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_a_row_glued_without_basis_or_numbers_reads_them_as_not_run_and_none(tmp_path):
    """A notebook not yet on report.claim_parts (paper, here, verdict only) still gives its row."""
    from streamdistill.book import CLAIMS, claims

    label, stem, key = CLAIMS[0]
    _executed(tmp_path / "book" / "notebooks" / f"{stem}.ipynb",
              {f"{key}_paper": "p", f"{key}_here": "h", f"{key}_verdict": "holds"})
    assert claims(tmp_path)[0] == {"claim": label, "paper": "p", "here": "h", "verdict": "holds", "basis": "not run",
                                   "value": None, "low": None, "high": None, "machine": None}


def test_write_claims_reads_only_its_profile_and_keeps_rows_it_did_not_rerun(tmp_path):
    from streamdistill.book import CLAIMS, claims, write_claims

    (first, stem_a, key_a), (last, stem_b, key_b) = CLAIMS[0], CLAIMS[-1]
    nb = tmp_path / "book" / "notebooks"
    _executed(nb / f"{stem_a}.ipynb", {f"{key_a}_paper": "p", f"{key_a}_here": "cpu run", f"{key_a}_verdict": "holds"}, "cpu")
    _executed(nb / f"{stem_b}.ipynb", {f"{key_b}_paper": "p", f"{key_b}_here": "cpu run", f"{key_b}_verdict": "holds"}, "cpu")
    write_claims("cpu", tmp_path)
    # a later session re-runs the first notebook at cpu and the last one at tiny only
    _executed(nb / f"{stem_a}.ipynb", {f"{key_a}_paper": "p", f"{key_a}_here": "new cpu run", f"{key_a}_verdict": "not resolved"}, "cpu")
    _executed(nb / f"{stem_b}.ipynb", {f"{key_b}_paper": "p", f"{key_b}_here": "tiny run", f"{key_b}_verdict": "holds"}, "tiny")
    assert claims(tmp_path, "cpu")[-1]["verdict"] == "not run"  # a tiny execution is no cpu figure
    record = json.loads(write_claims("cpu", tmp_path).read_text())
    rows = {row["claim"]: row for row in record["rows"]}
    assert rows[first]["here"] == "new cpu run" and rows[last]["here"] == "cpu run"
    assert record["sources"][first].startswith(stem_a) and record["sources"][last].startswith(stem_b)
    assert sum(row["verdict"] == "not run" for row in record["rows"]) == len(CLAIMS) - 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_a_caption(path):
    """A cell that draws with ``plots`` carries a myst-nb figure caption saying what to see in it."""
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "fig = plots." in source:
            caption = cell["metadata"].get("mystnb", {}).get("figure", {}).get("caption", "")
            assert len(caption.split()) >= 8, f"{path.name}: a figure without a caption: {source[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_figures_cell_shows_only_the_figure(path):
    """myst-nb gives every output of a captioned cell the figure's name: a cell that also ends in an
    expression (a table, a Legend) renders it twice, and the book's build fails on the duplicate."""
    import ast

    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code" and cell["metadata"].get("mystnb", {}).get("figure"):
            last = ast.parse("".join(cell["source"])).body[-1]
            silent = isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and \
                getattr(last.value.func, "id", None) == "glue"  # glue(..., display=False) returns None
            assert silent or not isinstance(last, ast.Expr), \
                f"{path.name}: a figure's cell ends in an expression at line {last.lineno}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_glue_and_set_up_code_stays_out_of_the_readers_way(path):
    """A cell that glues values (or is set-up) is removed or folded in the rendered book."""
    hidden = {"hide-input", "remove-input", "remove-cell"}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code" and "glue(" in "".join(cell["source"]):
            assert hidden & set(cell["metadata"].get("tags", [])), f"{path.name}: glue shown as code: {''.join(cell['source'])[:60]!r}"


def test_timings_table_checks_the_cold_budget(tmp_path):
    """The Reproducing page's sum is checked against the budget, and says so when a notebook is missing."""
    from streamdistill import book

    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "_toc.yml").write_text("- file: book/notebooks/01_a\n- file: book/notebooks/06_ablations\n")
    run = {"artifacts_built": 1, "results_written": 2, "finished": "2026-12-02T04:56:26+00:00"}
    record = {"notebooks": {"01_a": {**run, "seconds": 100 * 60.0}}, "machine": {"cpus": 2}}
    book.timings_path("cpu", tmp_path).write_text(json.dumps(record))
    table = book.timings_table("cpu", tmp_path)
    assert "| 06_ablations | not run |" in table and "cannot be checked yet: 06_ablations not timed" in table
    assert "| 01_a | 100.0 | not run | 1 / 2 | not recorded | 2026-12-02 04:56 |" in table  # from before the probe
    record["notebooks"]["06_ablations"] = {**run, "seconds": 50 * 60.0, "speed": {"fp32_gflops": 123.46, "bf16_gflops": 367.3}}
    book.timings_path("cpu", tmp_path).write_text(json.dumps(record))
    table = book.timings_table("cpu", tmp_path)
    assert "**150.0**" in table and "| 123 / 367 |" in table
    assert "the whole book 150 minutes, within its 240; the ablations (06_ablations) take 50 of them" in table
    record["notebooks"]["01_a"]["seconds"] = 200 * 60.0
    book.timings_path("cpu", tmp_path).write_text(json.dumps(record))
    assert "250 minutes, over its 240; the ablations (06_ablations) take 50 of them" in book.timings_table("cpu", tmp_path)
    assert book.budget_sentence("tiny", record["notebooks"], ["01_a"]) == ""


def test_a_warm_run_never_replaces_a_cold_time():
    """Re-running a built book records warm times beside the cold ones; a notebook that builds
    nothing even cold (it reuses earlier stages) costs the same each run, so its runs count as cold."""
    from streamdistill.book import merge_run

    def run(seconds, artifacts=0, results=0):
        return {"seconds": seconds, "artifacts_built": artifacts, "results_written": results, "finished": "2026-12-04T01:00:00+00:00"}

    record = {"notebooks": {}}
    assert merge_run(record, "05", run(3000.0, 8, 69)) == "cold"
    assert merge_run(record, "07", run(300.0)) == "cold"  # nothing to build, even cold
    assert merge_run(record, "05", run(120.0)) == "warm" and record["notebooks"]["05"]["seconds"] == 3000.0
    assert merge_run(record, "07", run(290.0)) == "cold" and record["notebooks"]["07"]["seconds"] == 290.0
    assert record["warm"] == {"05": run(120.0), "07": run(290.0)}
    assert merge_run(record, "05", run(2900.0, 1, 0)) == "cold" and record["notebooks"]["05"]["seconds"] == 2900.0
    assert record["warm"]["05"]["seconds"] == 120.0  # the last warm run stays beside it


def test_the_timings_table_sums_warm_runs_once_every_notebook_has_one(tmp_path):
    from streamdistill.book import timings_path, timings_table

    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "_toc.yml").write_text("- file: book/notebooks/05\n- file: book/notebooks/07\n")
    cold = {"artifacts_built": 1, "results_written": 0, "finished": "2026-12-04T01:00:00+00:00"}
    record = {"notebooks": {"05": {**cold, "seconds": 600.0}, "07": {**cold, "seconds": 60.0}},
              "warm": {"05": {**cold, "seconds": 30.0}}}
    timings_path("cpu", tmp_path).write_text(json.dumps(record))
    assert "| **sum** | **11.0** |  | | | |" in timings_table("cpu", tmp_path)  # no warm sum while 07 has no warm run
    record["warm"]["07"] = {**cold, "seconds": 60.0}
    timings_path("cpu", tmp_path).write_text(json.dumps(record))
    assert "| **sum** | **11.0** | **1.5** | | | |" in timings_table("cpu", tmp_path)


def test_machine_speed_measures_both_precisions():
    from streamdistill.book import machine_speed

    speed = machine_speed(seconds=0.05)
    assert set(speed) == {"fp32_gflops", "bf16_gflops"} and all(v > 0 for v in speed.values())


def test_a_notebook_is_named_by_its_stem_or_a_unique_prefix():
    from streamdistill.book import resolve_notebook

    stems = ["01_benchmark_harness", "05_evaluation", "05b_more"]
    assert resolve_notebook("01", stems) == "01_benchmark_harness"
    assert resolve_notebook("05_evaluation", stems) == "05_evaluation"
    with pytest.raises(FileNotFoundError, match="'05' matches several"):
        resolve_notebook("05", stems)
    with pytest.raises(FileNotFoundError, match="'99' is not in the toc"):
        resolve_notebook("99", stems)


def test_the_book_reads_mathjax_offline(tmp_path):
    """_config.yml loads MathJax from _static/, and offline_mathjax puts that file and its fonts there."""
    import yaml

    from streamdistill.artifacts import repo_root
    from streamdistill.book import offline_mathjax

    path = yaml.safe_load((repo_root() / "_config.yml").read_text())["sphinx"]["config"]["mathjax_path"]
    assert not path.startswith(("http:", "https:", "//")), path
    dest = offline_mathjax(tmp_path)
    assert dest == tmp_path / "_static" / "mathjax" and (dest / path.removeprefix("mathjax/")).stat().st_size > 10**6
    assert list((dest / "output" / "chtml" / "fonts" / "woff-v2").glob("MathJax_Main-Regular.woff"))


def test_claims_sources_name_the_latest_run_warm_or_cold(tmp_path):
    """The executed copy is the last run's: a warm re-run's time, not the cold one before it."""
    from streamdistill.book import CLAIMS, timings_path, write_claims

    label, stem, key = CLAIMS[0]
    _executed(tmp_path / "book" / "notebooks" / f"{stem}.ipynb",
              {f"{key}_paper": "p", f"{key}_here": "h", f"{key}_verdict": "holds"}, "cpu")
    run = {"seconds": 1.0, "artifacts_built": 0, "results_written": 0}
    timings_path("cpu", tmp_path).write_text(json.dumps({
        "notebooks": {stem: {**run, "artifacts_built": 3, "finished": "2026-12-04T03:10:35+00:00"}},
        "warm": {stem: {**run, "finished": "2026-12-04T05:00:00+00:00"}}}))
    sources = json.loads(write_claims("cpu", tmp_path).read_text())["sources"]
    assert sources[label] == f"{stem} executed 2026-12-04T05:00:00+00:00"
