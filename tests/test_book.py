"""The executed copies: where each came from, the stale warning, and what a rebuild reproduced."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from streamdistill import book
from streamdistill.profiles import get_profile
from streamdistill.report import hardware_basis

SPEED = {"fp32_gflops": 126.6, "bf16_gflops": 379.6}
MACHINE = {**SPEED, "precision": "bfloat16", "cpus": 2, "platform": "Linux", "python": "3.11.7"}
CODE = {"src": "a" * 40, "notebooks": "b" * 40, "requirements.lock": "c" * 40, "notebook": "d" * 40, "dirty": False}
RECORD = {"profile": "cpu", "executed": "2026-12-04T02:10:33+00:00", "seconds": 669.6, "source": CODE, "machine": MACHINE}
SOURCE = {"src": "a" * 40, "notebooks": "b" * 40, "requirements.lock": "c" * 40, "notebook_files": {"05_evaluation": "d" * 40},
          "dirty": False}


def _nb(values: dict | None = None, record: dict | None = None, profile: str = "cpu") -> dict:
    """An executed notebook as papermill and ``book.stamp`` leave it, gluing ``values``."""
    outputs = [{"output_type": "display_data",
                "metadata": {"scrapbook": {"name": k, "mime_prefix": "application/papermill.record/"}},
                "data": {"application/papermill.record/text/plain": repr(v)}} for k, v in (values or {}).items()]
    metadata = {"papermill": {"parameters": {"PROFILE": profile}}}
    if record is not None:
        metadata["streamdistill"] = record
    return {"metadata": metadata, "nbformat": 4, "nbformat_minor": 5,
            "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Title"},
                      {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "PROFILE = 'cpu'",
                       "outputs": [], "execution_count": 1},
                      {"cell_type": "code", "metadata": {}, "source": "", "outputs": outputs, "execution_count": 2}]}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A checkout with a library, one source notebook (05_evaluation), pins and a toc, committed."""
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "lib.py").write_text("X = 1\n")
    (root / "notebooks").mkdir()
    source = {"cells": [{"cell_type": "markdown", "id": "title", "metadata": {}, "source": "# Evaluation"},
                        {"cell_type": "code", "id": "parameters", "metadata": {"tags": ["parameters"]}, "execution_count": None,
                         "outputs": [], "source": "PROFILE = 'cpu'"},
                        {"cell_type": "code", "id": "glue", "metadata": {}, "execution_count": None, "outputs": [],
                         "source": "from myst_nb import glue\nfor k, v in PARTS.items():\n    glue(k, v, display=False)"}],
              "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
              "nbformat": 4, "nbformat_minor": 5}
    (root / "notebooks" / "05_evaluation.ipynb").write_text(json.dumps(source))
    (root / "requirements.lock").write_text("torch==2.13.0\n")
    (root / "book").mkdir()
    (root / "book" / "_toc.yml").write_text("- file: book/notebooks/05_evaluation\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "start")
    return root


def test_a_copy_says_where_it_came_from_under_its_title(tmp_path):
    path = tmp_path / "05_evaluation.ipynb"
    path.write_text(json.dumps(_nb()))
    book.stamp(path, RECORD)
    book.stamp(path, RECORD)  # re-stamping replaces the line, never adds a second one
    nb = json.loads(path.read_text())
    assert nb["metadata"]["streamdistill"] == RECORD
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "markdown", "code", "code"]
    assert nb["cells"][1]["metadata"]["tags"] == [book.PROVENANCE_TAG]
    assert nb["cells"][1]["source"] == (
        "> **Executed copy.** Profile `cpu`, executed 2026-12-04 02:10:33 UTC in 11.2 min on 2 CPUs "
        "(127 / 380 GFLOP/s fp32 / bf16, bfloat16). Code: `src/` tree `aaaaaaaaaa`, `notebooks/` tree `bbbbbbbbbb`, "
        "`requirements.lock` `cccccccccc`, as committed. `streamdistill book` warns when these differ from the code "
        "beside the copy.\n")
    assert nb["cells"][2]["metadata"]["tags"] == ["injected-parameters", "remove-cell"]
    dirty = {**RECORD, "source": {**CODE, "dirty": True}}
    assert ", with uncommitted changes." in book.provenance_text(dirty)
    assert book.provenance_text({**RECORD, "source": None}).endswith(
        "Not executed from a git checkout: the code it ran is not recorded.\n")


def test_source_ids_are_the_ids_a_commit_of_the_code_on_disk_will_have(repo):
    clean = book.source_ids(repo)
    assert clean["dirty"] is False
    assert clean["src"] == _git(repo, "rev-parse", "HEAD:src")
    assert clean["notebooks"] == _git(repo, "rev-parse", "HEAD:notebooks")
    assert clean["requirements.lock"] == _git(repo, "rev-parse", "HEAD:requirements.lock")
    assert clean["notebook_files"] == {"05_evaluation": _git(repo, "rev-parse", "HEAD:notebooks/05_evaluation.ipynb")}
    (repo / "src" / "lib.py").write_text("X = 2\n")
    edited = book.source_ids(repo)
    assert edited["dirty"] is True and edited["src"] != clean["src"]
    assert {k: edited[k] for k in ("notebooks", "requirements.lock", "notebook_files")} == \
        {k: clean[k] for k in ("notebooks", "requirements.lock", "notebook_files")}
    assert _git(repo, "status", "--porcelain") == "M src/lib.py"  # the real index is left alone
    _git(repo, "commit", "-qam", "edit")
    assert book.source_ids(repo) == {**edited, "dirty": False}
    (repo / "notebooks" / "new.txt").write_text("untracked")
    added = book.source_ids(repo)
    assert added["dirty"] is True and added["notebooks"] != edited["notebooks"]
    assert added["notebook_files"] == edited["notebook_files"]
    assert book.source_ids(repo.parent) is None  # not a git checkout


def test_a_copy_is_current_missing_or_stale_against_the_code_beside_it():
    copy = _nb(record=RECORD)
    assert book.copy_state(copy, "05_evaluation", "cpu", SOURCE) == ("current", "made from the code beside it")
    assert book.copy_state(None, "05_evaluation", "cpu", SOURCE) == ("missing", "no executed copy")
    assert book.copy_state(_nb(record={**RECORD, "profile": "tiny"}), "05_evaluation", "cpu", SOURCE) == \
        ("missing", "the copy was executed at profile tiny")
    assert book.copy_state(_nb(profile="tiny"), "05_evaluation", "cpu", SOURCE) == \
        ("missing", "the copy was executed at profile tiny")
    assert book.copy_state(_nb(), "05_evaluation", "cpu", SOURCE) == \
        ("stale", "the copy records no provenance (executed before copies were stamped)")
    moved = {**SOURCE, "src": "e" * 40, "notebook_files": {"05_evaluation": "f" * 40}}
    assert book.copy_state(copy, "05_evaluation", "cpu", moved) == (
        "stale", "src/ (aaaaaaa → eeeeeee), notebooks/05_evaluation.ipynb (ddddddd → fffffff) changed since the copy was executed")
    assert book.copy_state(copy, "05_evaluation", "cpu", {**SOURCE, "requirements.lock": "9" * 40}) == (
        "stale", "requirements.lock (ccccccc → 9999999) changed since the copy was executed")
    # another notebook's edit changes the notebooks/ tree but not this copy's own notebook: still current
    assert book.copy_state(copy, "05_evaluation", "cpu", {**SOURCE, "notebooks": "0" * 40})[0] == "current"
    assert book.copy_state(copy, "05_evaluation", "cpu", None) == \
        ("current", "not a git checkout: the copy cannot be checked against the code")
    assert book.copy_state(_nb(record={**RECORD, "source": None}), "05_evaluation", "cpu", SOURCE) == \
        ("stale", "the copy was not executed from a git checkout")


def test_a_build_executes_the_missing_copies_by_default_and_more_only_when_asked():
    states = {"01": ("current", ""), "02": ("missing", ""), "03": ("stale", ""), "04": ("current", "")}
    assert book.to_execute(states, "none") == []
    assert book.to_execute(states, "missing") == ["02"]
    assert book.to_execute(states, "stale") == ["02", "03"]
    assert book.to_execute(states, "all") == ["01", "02", "03", "04"]
    assert book.to_execute(states, "missing", names=["04", "01"]) == ["01", "04"]


def test_the_build_warns_once_per_stale_copy_and_refuses_to_render_a_missing_one(repo, capsys):
    copy = repo / "book" / "notebooks" / "05_evaluation.ipynb"
    copy.parent.mkdir(parents=True)
    ids = book.source_ids(repo)
    copy.write_text(json.dumps(_nb(record={**RECORD, "source": {**CODE, "src": ids["src"], "requirements.lock": ids["requirements.lock"],
                                                                    "notebook": ids["notebook_files"]["05_evaluation"]}})))
    out = book.build_book(get_profile("cpu"), execute="none", root=repo, render=False)
    assert out["copies"] == {"05_evaluation": "current"} and out["notebooks"] == {}
    assert "warning" not in capsys.readouterr().err
    (repo / "src" / "lib.py").write_text("X = 3\n")
    book.build_book(get_profile("cpu"), execute="none", root=repo, render=False)
    now = book.source_ids(repo)["src"]
    assert capsys.readouterr().err.splitlines() == [
        f"[book] warning: 05_evaluation: the executed copy does not match the code beside it: src/ ({ids['src'][:7]} → "
        f"{now[:7]}) changed since the copy was executed (streamdistill book --stale re-executes it)"]
    with pytest.raises(FileNotFoundError, match="no executed copy at profile tiny of 05_evaluation: "
                                                "`streamdistill book --profile tiny` executes the missing ones"):
        book.build_book(get_profile("tiny"), execute="none", root=repo)


def _row(**parts) -> dict:
    row = {"claim": "Gap closure", "paper": "68.1 %", "here": "37 %", "verdict": "does not hold",
           "basis": "3 paired seeds, 95 % Fieller interval", "value": 0.375, "low": 0.25, "high": 0.5, "machine": None}
    return {**row, **parts}


def test_a_row_that_moved_within_its_noise():
    moved = book.compare_claim(_row(), _row(here="44 %", value=0.4375, low=0.3125, high=0.5625))
    assert moved == {"claim": "Gap closure",
                     "then": {"here": "37 %", "verdict": "does not hold", "value": 0.375, "low": 0.25, "high": 0.5},
                     "now": {"here": "44 %", "verdict": "does not hold", "value": 0.4375, "low": 0.3125, "high": 0.5625},
                     "change": 0.0625, "noise": 0.125, "change_over_noise": 0.5, "verdict_changed": False,
                     "hardware": False, "moved": "within its noise"}
    assert book.compare_claim(_row(), _row())["moved"] == "unchanged"


def test_a_row_that_moved_beyond_its_noise_and_one_whose_verdict_flipped():
    beyond = book.compare_claim(_row(), _row(value=0.625, low=0.5, high=0.75))
    assert (beyond["moved"], beyond["change"], beyond["change_over_noise"], beyond["verdict_changed"]) == \
        ("beyond its noise", 0.25, 2.0, False)
    flipped = book.compare_claim(_row(), _row(value=0.5, low=0.375, high=0.75, verdict="not resolved"))
    assert (flipped["moved"], flipped["change"], flipped["verdict_changed"]) == ("within its noise", 0.125, True)
    assert (flipped["then"]["verdict"], flipped["now"]["verdict"]) == ("does not hold", "not resolved")


def test_a_hardware_row_carries_the_machine_then_and_now():
    then = _row(basis=hardware_basis(SPEED, "bfloat16"), value=22.0, low=15.0, high=28.0, machine=MACHINE)
    now = _row(basis=hardware_basis({"fp32_gflops": 62.0, "bf16_gflops": 1.1}, "float32"), value=9.0, low=7.0,
               high=11.0, verdict="holds", machine={"fp32_gflops": 62.0, "bf16_gflops": 1.1, "precision": "float32"})
    row = book.compare_claim(then, now)
    assert book.HARDWARE_MARK in hardware_basis(SPEED, "bfloat16")
    assert (row["hardware"], row["moved"], row["change"], row["noise"], row["change_over_noise"]) == \
        (True, "beyond its noise", -13.0, 6.5, -2.0)
    assert row["machine_then"] == "127 / 380 GFLOP/s fp32 / bf16, bfloat16"
    assert row["machine_now"] == "62 / 1 GFLOP/s fp32 / bf16, float32"
    assert row["verdict_changed"] is True


def test_rows_without_numbers_new_rows_and_unbounded_intervals():
    text = book.compare_claim(_row(value=None, low=None, high=None), _row(here="41 %", value=None))
    assert (text["moved"], text["change"], text["noise"]) == ("changed", None, None)
    new = book.compare_claim(_row(verdict="not run", here="not run"), _row())
    assert (new["moved"], new["verdict_changed"]) == ("new", False)
    assert book.compare_claim(_row(), _row(verdict="not run"))["moved"] == "not run"
    unbounded = book.compare_claim(_row(low=float("-inf"), high=float("inf")), _row(value=-1.0))
    assert (unbounded["moved"], unbounded["noise"], unbounded["change_over_noise"]) == ("within its noise", float("inf"), None)


def test_glued_figures_are_compared_one_by_one():
    out = book.compare_glued({"n": "3", "mean": "0.5", "name": "C", "gone": "x"}, {"n": "3", "mean": "0.75", "name": "D", "new": "y"})
    assert out == {"figures": 5, "identical": 1, "changed": [
        {"name": "gone", "then": "x", "now": None}, {"name": "mean", "then": "0.5", "now": "0.75", "change": 0.25},
        {"name": "name", "then": "C", "now": "D"}, {"name": "new", "then": None, "now": "y"}]}


def _parts(key: str, here: str, verdict: str, value: float, low: float, high: float) -> dict:
    return {f"{key}_paper": "68.1 %", f"{key}_here": here, f"{key}_verdict": verdict, f"{key}_basis": "3 paired seeds",
            f"{key}_value": value, f"{key}_low": low, f"{key}_high": high}


def test_the_reproduction_record_and_its_table():
    (label, stem, key), (label_b, _, key_b) = book.CLAIMS[0], book.CLAIMS[1]
    then = {stem: _nb({**_parts(key, "37 %", "does not hold", 0.375, 0.25, 0.5), "n": 3}, RECORD)}
    now_record = {**RECORD, "executed": "2026-12-05T01:00:00+00:00"}
    now = {stem: _nb({**_parts(key, "62 %", "not resolved", 0.625, 0.5, 0.75), **_parts(key_b, "x", "holds", 1.0, 0.5, 1.5),
                      "n": 3}, now_record)}
    committed = {"profile": "cpu", "rows": [{"claim": label_b, "paper": "p", "here": "y", "verdict": "does not hold"}]}
    record = book.reproduction("cpu", then, now, [stem], committed)
    rows = {r["claim"]: r for r in record["claims"]}
    assert set(rows) == {lab for lab, s, _ in book.CLAIMS if s == stem}  # only the rebuilt notebook's rows
    assert (rows[label]["moved"], rows[label]["change"], rows[label]["verdict_changed"]) == ("beyond its noise", 0.25, True)
    # the committed copy lacks the second row; the committed claims record has it, without numbers
    assert (rows[label_b]["moved"], rows[label_b]["then"]["here"], rows[label_b]["verdict_changed"]) == ("changed", "y", True)
    assert record["verdicts_changed"] == [label, label_b]
    assert record["notebooks"][stem] == {
        "executed_then": "2026-12-04T02:10:33+00:00", "executed_now": "2026-12-05T01:00:00+00:00",
        "machine_then": "127 / 380 GFLOP/s fp32 / bf16, bfloat16", "machine_now": "127 / 380 GFLOP/s fp32 / bf16, bfloat16",
        "same_code": True, "glued": {"figures": 15, "identical": 3, "changed": record["notebooks"][stem]["glued"]["changed"]}}
    table = book.reproduction_table(record)
    assert f"| {label} | 37 % | 62 % | 0.25 (± 0.125) | beyond its noise | **does not hold → not resolved** |" in table
    assert f"Verdicts that changed: {label}, {label_b}." in table
    assert f"- **{stem}**, the same code; executed 2026-12-04T02:10:33+00:00" in table
    assert "3 of 15 glued figures identical" in table
    assert "No rebuild has been compared" in book.reproduction_table(None)
    first = book.reproduction_table(book.reproduction("cpu", {stem: None}, now, [stem]))
    assert (f"- **{stem}**: no committed copy to compare; now 2026-12-05T01:00:00+00:00 on 127 / 380 GFLOP/s fp32 / bf16, "
            "bfloat16: 15 glued figures.") in first
    assert f"| {label} | not run | 62 % |  | new | not run → not resolved |" in first


def test_a_real_build_stamps_its_copy_and_reports_what_reproduced(repo, capsys, monkeypatch):
    """papermill on a one-cell notebook: the copy is stamped, committed, re-executed, and compared."""
    label, stem, key = book.CLAIMS[0]
    notebook = repo / "notebooks" / f"{stem}.ipynb"

    def set_parts(value: float, verdict: str) -> None:
        nb = json.loads(notebook.read_text())
        nb["cells"][1]["source"] = f"PROFILE = 'cpu'\nPARTS = {_parts(key, f'{value:g}', verdict, value, value - 0.125, value + 0.125)!r}"
        notebook.write_text(json.dumps(nb))
        _git(repo, "commit", "-qam", "parts")

    monkeypatch.setattr(book, "machine_speed", lambda: SPEED)
    set_parts(0.375, "does not hold")
    tiny = get_profile("tiny")
    first = book.build_book(tiny, root=repo, render=False)
    assert list(first["notebooks"]) == [stem] and first["copies"] == {stem: "current"}
    copy = json.loads((repo / "book" / "notebooks" / f"{stem}.ipynb").read_text())
    ids = book.source_ids(repo)
    assert copy["metadata"]["streamdistill"]["source"] == {
        "src": ids["src"], "notebooks": ids["notebooks"], "requirements.lock": ids["requirements.lock"],
        "notebook": ids["notebook_files"][stem], "dirty": False}
    assert copy["metadata"]["streamdistill"]["machine"]["precision"] == tiny.eval_precision
    assert copy["cells"][1]["source"].startswith("> **Executed copy.** Profile `tiny`")
    assert book.glued_values(copy)[f"{key}_value"] == "0.375"
    assert book.build_book(tiny, root=repo, render=False)["notebooks"] == {}  # current: nothing to execute
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "the executed copy")
    capsys.readouterr()
    set_parts(0.625, "not resolved")  # the notebook changes: its copy is stale
    assert book.build_book(tiny, root=repo, render=False)["copies"] == {stem: "stale"}
    out = book.build_book(tiny, execute="stale", root=repo, render=False)
    assert out["verdicts_changed"] == [label]
    record = json.loads(book.reproduction_path("tiny", repo).read_text())
    row = record["claims"][0]
    assert (row["moved"], row["change"], row["noise"], row["then"]["verdict"], row["now"]["verdict"]) == \
        ("beyond its noise", 0.25, 0.125, "does not hold", "not resolved")
    assert record["notebooks"][stem]["same_code"] is False
    err = capsys.readouterr().err
    assert f"[book]   {label}: 0.375 -> 0.625: beyond its noise +0.25 (noise ± 0.125); verdict does not hold -> not resolved (CHANGED)" in err


def test_the_copies_table_says_where_each_copy_came_from_and_whether_it_matches():
    states = {"05_evaluation": ("current", "made from the code beside it"),
              "07_streaming": ("stale", "src/ (aaaaaaa → eeeeeee) changed since the copy was executed"),
              "09_leaf_alignment": ("missing", "no executed copy")}
    copies = {"05_evaluation": _nb(record=RECORD), "07_streaming": _nb(record={**RECORD, "source": {**CODE, "dirty": True}}),
              "09_leaf_alignment": None}
    assert book.copies_table(states, copies).splitlines()[2:] == [
        "| 05_evaluation | cpu | 2026-12-04 02:10 | 127 / 380 GFLOP/s fp32 / bf16, bfloat16 | `aaaaaaaaaa` | yes |",
        "| 07_streaming | cpu | 2026-12-04 02:10 | 127 / 380 GFLOP/s fp32 / bf16, bfloat16 | `aaaaaaaaaa` (uncommitted changes) | "
        "no: src/ (aaaaaaa → eeeeeee) changed since the copy was executed |",
        "| 09_leaf_alignment | | | | | missing: no executed copy |"]


def _determinism(same: bool, threads: bool) -> dict:
    def comparison(varies, identical, step):
        return {"runs": ["2 threads", varies], "varies": varies, "weights_identical": identical, "base_identical": True,
                "first_step_whose_loss_differs": step, "loss_max_abs_difference": 0.0 if identical else 2.5e-07,
                "embeddings": {"bfloat16": {"identical": identical, "max_abs_difference": 0.0 if identical else 0.0039,
                                            "min_cosine": 1.0 if identical else 0.9999871}}}
    return {"measured": "2026-12-05T04:00:00+00:00", "stage": "causal (A)", "profile": "cpu", "train_steps": 6, "texts": 64,
            "machine": {**SPEED, "native_bf16": ["amx_bf16"], "cpus": 2, "torch": "2.13.0", "precision": "bfloat16"},
            "runs": [{"label": "2 threads", "precision": "bfloat16"}, {"label": "AVX2 kernels", "precision": "float32"}],
            "comparisons": [comparison("nothing", same, None if same else 3),
                                        comparison("the thread count", not threads, 1 if threads else None),
                                        comparison("the kernels", True, None)]}


def test_the_determinism_finding_is_read_from_its_json(tmp_path):
    (tmp_path / "book" / "data").mkdir(parents=True)
    assert book.determinism_text(tmp_path).startswith("Not measured yet")
    path = tmp_path / "book" / "data" / "determinism.json"
    path.write_text(json.dumps(_determinism(same=True, threads=True)))
    text = book.determinism_text(tmp_path)
    assert text.startswith("Stage causal (A) at profile `cpu`, trained for 6 steps in each run")
    assert ("| the thread count | 2 threads / the thread count | differ | 1 | 2.5e-07 | max abs. difference 0.0039, "
            "largest cosine distance 1.3e-05 |") in text
    assert "| nothing | 2 threads / nothing | identical | none | 0 | identical |" in text
    assert text.endswith("A same-seed retrain on one machine, with the same threads and kernels, is bitwise identical: "
                         "weights, every step's loss and the embeddings. Changing the thread count changes the weights. "
                         "The run with AVX2 kernels chose float32 inference where the others chose bfloat16 (the precision "
                         "follows the machine), so its embeddings are compared in float32 only.\n")
    path.write_text(json.dumps(_determinism(same=False, threads=False)))
    assert book.determinism_text(tmp_path).endswith(
        "A same-seed retrain on one machine is not bitwise identical even with the same threads and kernels (the loss "
        "first differs at step 3). Neither the thread count nor the kernels changed the weights. The run with AVX2 "
        "kernels chose float32 inference where the others chose bfloat16 (the precision follows the machine), so its "
        "embeddings are compared in float32 only.\n")


def test_a_book_reexecuted_in_parts_keeps_each_notebooks_last_comparison():
    (first, stem_a, _), (last, stem_b, _) = book.CLAIMS[0], book.CLAIMS[-1]

    def record(rows: dict[str, tuple[str, bool]], when: str) -> dict:
        claims = [{"claim": label, "notebook": stem, "verdict_changed": flipped} for label, (stem, flipped) in rows.items()]
        return {"profile": "cpu", "compared": when, "notebooks": {stem: {"executed_now": when} for stem, _ in rows.values()},
                "claims": claims, "verdicts_changed": [c["claim"] for c in claims if c["verdict_changed"]]}

    before = record({first: (stem_a, True), last: (stem_b, False)}, "day 1")
    merged = book.merge_reproduction(before, record({last: (stem_b, True)}, "day 2"))
    assert [(row["claim"], row["verdict_changed"]) for row in merged["claims"]] == [(first, True), (last, True)]
    assert merged["notebooks"] == {stem_a: {"executed_now": "day 1"}, stem_b: {"executed_now": "day 2"}}
    assert merged["verdicts_changed"] == [first, last] and merged["compared"] == "day 2"
    assert book.merge_reproduction({**before, "profile": "tiny"}, record({last: (stem_b, False)}, "day 2"))["claims"] == \
        [{"claim": last, "notebook": stem_b, "verdict_changed": False}]
