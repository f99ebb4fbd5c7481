"""Build the book: papermill executes the notebooks, Jupyter Book (v1) renders the executed copies.

The executed copies in ``book/notebooks/`` are committed, so reading the book trains nothing:
``streamdistill book`` renders them and executes only the notebooks that have no copy at the
profile asked for; ``--stale`` also re-executes copies made from other code, ``--execute-all``
every notebook, ``--no-execute`` none. Each copy records where it came from (its provenance: the
git ids of ``src/``, ``notebooks/`` and ``requirements.lock`` as they were on disk, the profile,
the machine's speed and precision, the date) in its metadata and in a line under its title, and
the build warns, one line per notebook, when a copy does not match the code beside it.

After a build that executed notebooks, every claims row and every glued figure of those notebooks
is compared with the committed record (the copies at ``HEAD``, or the files as they were before
the build outside git): :func:`reproduction` writes ``book/data/reproduction-<profile>.json`` and
the Reproducing page shows it. Each notebook's wall time is merged into
``book/timings-<profile>.json`` (``book/_generated/timings.md`` on the same page). The HTML build
runs with warnings as errors.
"""

from __future__ import annotations

import ast
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .artifacts import artifacts_root, atomic_write_json, atomic_write_text, repo_root
from .hardware import machine_speed  # noqa: F401  (book.machine_speed(): the speed quoted beside each timing)
from .profiles import Profile
from .report import CLAIM_PARTS

TOC = Path("book") / "_toc.yml"
COPIES = Path("book") / "notebooks"  # the executed copies (committed: the book a reader reads)
# What a cold build may cost on 2 cores, in minutes, summed per notebook, on a machine of at least
# 120 fp32 / 330 bf16 GFLOP/s (the project's budget: 240 with the distillation arms, the LEAF
# teacher at 109 M and the streaming conversations); the Reproducing page checks each record against
# it and says what the ablations take of it
COLD_BUDGET_MINUTES = {"cpu": {"whole": 240.0, "ablations": "06_ablations"}}
SOURCES = ("src", "notebooks", "requirements.lock")  # what an executed copy's provenance names
PROVENANCE_TAG = "streamdistill-provenance"  # the markdown cell under a copy's title that says where it came from
# the words report.hardware_basis puts in the basis of a row measured without seeds (its figure
# depends on the machine; tests/test_notebooks.py checks report still says them)
HARDWARE_MARK = "depends on the hardware"


def toc_notebooks(root: Path | None = None) -> list[str]:
    """Notebook stems listed in the toc as ``book/notebooks/<stem>``, in order."""
    root = root or repo_root()
    return re.findall(r"file:\s*book/notebooks/([\w\-]+)", (root / TOC).read_text())


def timings_path(profile: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / "book" / f"timings-{profile}.json"


def _built_counts() -> tuple[int, int]:
    """(artifacts, mteb result files) in the caches now: what a notebook built is the difference."""
    from .evaluate import results_root

    artifacts = sum(1 for _ in artifacts_root().glob("*/*/DONE.json")) if artifacts_root().exists() else 0
    results = sum(1 for _ in results_root().rglob("*.json")) if results_root().exists() else 0
    return artifacts, results


# --- where an executed copy came from -------------------------------------------------------

def _git(root: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          env=env).stdout


def _tree_entries(root: Path, tree: str) -> dict[str, str]:
    """``{path: object id}`` of :data:`SOURCES` and of every ``notebooks/*.ipynb`` in ``tree``."""
    ids = {}
    for listing in (_git(root, "ls-tree", tree, "--", *SOURCES), _git(root, "ls-tree", tree, "--", "notebooks/")):
        for line in listing.splitlines():
            meta, path = line.split("\t", 1)
            ids[path] = meta.split()[2]
    return ids


def source_ids(root: Path | None = None) -> dict | None:
    """The git ids of the code on disk now (uncommitted edits and new files included), or None
    outside a git checkout: ``{"src", "notebooks", "requirements.lock", "notebook_files":
    {stem: blob}, "dirty"}``, ``dirty`` when any of them differs from ``HEAD``.

    The ids come from a throw-away index (``git add -A`` of :data:`SOURCES` on top of ``HEAD``), so
    they equal the ids a commit of this code will have: a copy executed from uncommitted code still
    matches once that code is committed unchanged.
    """
    root = root or repo_root()
    try:
        _git(root, "rev-parse", "--verify", "HEAD")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(root, "read-tree", "HEAD", env=env)
        _git(root, "add", "-A", "--", *[p for p in SOURCES if (root / p).exists()], env=env)
        tree = _git(root, "write-tree", env=env).strip()
    now, head = _tree_entries(root, tree), _tree_entries(root, "HEAD")
    return {**{p: now.get(p) for p in SOURCES},
            "notebook_files": {Path(p).stem: i for p, i in now.items() if p.startswith("notebooks/") and p.endswith(".ipynb")},
            "dirty": now != head}


def provenance_record(profile: Profile, stem: str, source: dict | None, run: dict) -> dict:
    """What an executed copy records about itself (its metadata's ``streamdistill`` entry)."""
    code = None
    if source is not None:
        code = {**{p: source[p] for p in SOURCES}, "notebook": source["notebook_files"].get(stem), "dirty": source["dirty"]}
    return {"profile": profile.name, "executed": run["finished"], "seconds": run["seconds"], "source": code,
            "machine": {**run.get("speed", {}), "precision": profile.eval_precision, "cpus": os.cpu_count(),
                        "platform": platform.platform(), "python": platform.python_version()}}


def provenance(nb: dict | None) -> dict | None:
    """The provenance an executed copy records (None: missing, or executed before copies were stamped)."""
    return (nb or {}).get("metadata", {}).get("streamdistill")


def machine_text(machine: dict | None) -> str:
    """``127 / 380 GFLOP/s fp32 / bf16, bfloat16``: the speed and precision a figure was measured at."""
    if not machine or "fp32_gflops" not in machine:
        return "not recorded"
    return f"{machine['fp32_gflops']:.0f} / {machine['bf16_gflops']:.0f} GFLOP/s fp32 / bf16, {machine.get('precision', '?')}"


def provenance_text(record: dict) -> str:
    """The line under a copy's title: where it came from, for a reader of the page or of the file on the web."""
    when = record["executed"].replace("T", " ").replace("+00:00", " UTC")
    machine = record["machine"]
    text = (f"> **Executed copy.** Profile `{record['profile']}`, executed {when} in {record['seconds'] / 60:.1f} min "
            f"on {machine.get('cpus', '?')} CPUs ({machine_text(machine)}).")
    code = record["source"]
    if code is None:
        return text + " Not executed from a git checkout: the code it ran is not recorded.\n"
    state = "with uncommitted changes" if code["dirty"] else "as committed"
    return (text + f" Code: `src/` tree `{code['src'][:10]}`, `notebooks/` tree `{code['notebooks'][:10]}`, "
            f"`requirements.lock` `{(code['requirements.lock'] or 'none')[:10]}`, {state}. "
            "`streamdistill book` warns when these differ from the code beside the copy.\n")


def stamp(path: Path, record: dict) -> None:
    """Record ``record`` in an executed copy: its metadata, and a markdown cell under the first
    heading (replacing an earlier one). Papermill's injected ``# Parameters`` cell is tagged
    ``remove-cell``: set-up, not reading."""
    nb = json.loads(Path(path).read_text())
    nb.setdefault("metadata", {})["streamdistill"] = record
    cells = [c for c in nb["cells"] if PROVENANCE_TAG not in c.get("metadata", {}).get("tags", [])]
    for cell in cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    title = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown"), -1)
    note = {"cell_type": "markdown", "id": "streamdistill-provenance", "metadata": {"tags": [PROVENANCE_TAG]},
            "source": provenance_text(record)}
    cells.insert(title + 1, note)
    nb["cells"] = cells
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def copy_state(nb: dict | None, stem: str, profile: str, source: dict | None) -> tuple[str, str]:
    """``(state, why)`` of one executed copy against the code beside it: ``current``, ``missing``
    (no copy at ``profile``) or ``stale`` (made from other code, or recording none)."""
    if nb is None:
        return "missing", "no executed copy"
    record = provenance(nb)
    ran_at = record["profile"] if record else nb.get("metadata", {}).get("papermill", {}).get("parameters", {}).get("PROFILE")
    if ran_at not in (None, profile):
        return "missing", f"the copy was executed at profile {ran_at}"
    if record is None:
        return "stale", "the copy records no provenance (executed before copies were stamped)"
    if source is None:
        return "current", "not a git checkout: the copy cannot be checked against the code"
    code = record["source"]
    if code is None:
        return "stale", "the copy was not executed from a git checkout"
    now = {**{p: source[p] for p in SOURCES}, "notebook": source["notebook_files"].get(stem)}
    names = {"src": "src/", "notebooks": None, "requirements.lock": "requirements.lock", "notebook": f"notebooks/{stem}.ipynb"}
    changed = [f"{names[k]} ({(code.get(k) or 'none')[:7]} → {(now[k] or 'none')[:7]})"
               for k in ("src", "notebook", "requirements.lock") if code.get(k) != now[k]]
    if changed:
        return "stale", f"{', '.join(changed)} changed since the copy was executed"
    return "current", "made from the code beside it"


def read_copy(root: Path, stem: str) -> dict | None:
    path = root / COPIES / f"{stem}.ipynb"
    return json.loads(path.read_text()) if path.exists() else None


def committed_copy(root: Path, rel: str) -> dict | None:
    """A file of the committed record as JSON: ``HEAD``'s version, or the file on disk outside git
    (or while git does not track it yet); None when there is neither."""
    try:
        return json.loads(_git(root, "show", f"HEAD:{rel}"))
    except (subprocess.CalledProcessError, FileNotFoundError, json.JSONDecodeError):
        path = root / rel
        return json.loads(path.read_text()) if path.exists() else None


# --- executing -------------------------------------------------------------------------------

def execute_notebooks(profile: Profile, root: Path | None = None, stems: list[str] | None = None,
                      source: dict | None = None) -> dict[str, dict]:
    """Run the notebooks (``stems``, default every one of the toc) with papermill into
    ``book/notebooks/``, stamp each copy with its provenance, and merge the timings into the JSON."""
    import papermill

    root = root or repo_root()
    out_dir = root / COPIES
    out_dir.mkdir(parents=True, exist_ok=True)
    path = timings_path(profile.name, root)
    record = json.loads(path.read_text()) if path.exists() else {"profile": profile.name, "notebooks": {}}
    runs: dict[str, dict] = {}
    for stem in toc_notebooks(root) if stems is None else stems:
        src = root / "notebooks" / f"{stem}.ipynb"
        if not src.exists():
            raise FileNotFoundError(f"the toc lists {stem} but {src} does not exist")
        before = _built_counts()
        speed = machine_speed()
        started = time.perf_counter()
        print(f"[book] executing {src.name} (profile={profile.name})", file=sys.stderr, flush=True)
        papermill.execute_notebook(
            str(src), str(out_dir / src.name), parameters={"PROFILE": profile.name},
            cwd=str(root / "notebooks"), kernel_name="python3", progress_bar=False, log_output=False)
        after = _built_counts()
        runs[stem] = {"seconds": round(time.perf_counter() - started, 1), "artifacts_built": after[0] - before[0],
                      "results_written": after[1] - before[1],
                      "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "speed": speed}
        stamp(out_dir / src.name, provenance_record(profile, stem, source, runs[stem]))
        kind = merge_run(record, stem, runs[stem])
        print(f"[book] {src.name}: {runs[stem]['seconds']} s ({kind})", file=sys.stderr, flush=True)
        record["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
        atomic_write_json(path, record)
    return runs


def _built(run: dict) -> bool:
    return bool(run["artifacts_built"] or run["results_written"])


def merge_run(record: dict, stem: str, run: dict) -> str:
    """Put one notebook's run into the timings record; returns ``"cold"`` or ``"warm"``.

    A run that trained no artifact and wrote no mteb result is warm: it goes under ``warm`` and
    leaves the cold record alone, so re-running a built book never passes a warm time off as a cold
    one. A notebook whose cold run built nothing either (it reuses earlier notebooks' stages only)
    costs the same every time, so each of its runs is also its cold time.
    """
    cold = record["notebooks"].get(stem)
    if not _built(run):
        record.setdefault("warm", {})[stem] = run
    if _built(run) or cold is None or not _built(cold):
        record["notebooks"][stem] = run
        return "cold"
    return "warm"


def resolve_notebook(name: str, stems: list[str]) -> str:
    """A notebook of the toc by its stem or a unique prefix of it (``05`` is ``05_evaluation``)."""
    matches = [s for s in stems if s == name] or [s for s in stems if s.startswith(name)]
    if len(matches) != 1:
        why = "matches several" if matches else "is not in the toc"
        raise FileNotFoundError(f"{name!r} {why}; the notebooks are {', '.join(stems)}")
    return matches[0]


EXECUTE = ("none", "missing", "stale", "all")  # which notebooks a build executes; "missing" is the default


def to_execute(states: dict[str, tuple[str, str]], execute: str, names: list[str] | None = None) -> list[str]:
    """The notebooks a build executes, in toc order: ``names`` if given, else by ``execute``:
    none, those without a copy at the profile (``missing``), those and the ``stale`` ones, or ``all``."""
    if names:
        chosen = {resolve_notebook(n, list(states)) for n in names}
        return [s for s in states if s in chosen]
    wanted = {"none": (), "missing": ("missing",), "stale": ("missing", "stale"), "all": ("missing", "stale", "current")}[execute]
    return [s for s, (state, _) in states.items() if state in wanted]


def copies_table(states: dict[str, tuple[str, str]], copies: dict[str, dict | None]) -> str:
    """The Reproducing page's table of the executed copies: where each came from, and whether it
    matches the code of this checkout."""
    rows = ["| notebook | profile | executed (UTC) | machine | `src/` tree | matches the code here |", "|---|---|---|---|---|---|"]
    for stem, (state, why) in states.items():
        record = provenance(copies.get(stem))
        if record is None:
            rows.append(f"| {stem} | | | | | {state}: {why} |")
            continue
        code = record["source"] or {}
        tree = f"`{code['src'][:10]}`" + (" (uncommitted changes)" if code.get("dirty") else "") if code else "not recorded"
        answer = "yes" if state == "current" else f"no: {why}"
        rows.append(f"| {stem} | {record['profile']} | {record['executed'][:16].replace('T', ' ')} | "
                    f"{machine_text(record['machine'])} | {tree} | {answer} |")
    return "\n".join(rows) + "\n"


# --- the Reproducing page's tables -------------------------------------------------------------

def timings_table(profile: str, root: Path | None = None) -> str:
    """The Reproducing page's table, in Markdown, from ``book/timings-<profile>.json``."""
    path = timings_path(profile, root)
    if not path.exists():
        return f"No timings recorded for profile `{profile}` yet (`streamdistill book --profile {profile}` writes them).\n"
    record = json.loads(path.read_text())
    rows = ["| notebook | minutes, cold | minutes, warm | built (artifacts / results) | GFLOP/s (fp32 / bf16) | finished (UTC) |",
            "|---|---|---|---|---|---|"]
    total = 0.0
    stems = toc_notebooks(root)
    warm = {stem: record.get("warm", {}).get(stem) for stem in stems}
    for stem in stems:
        run = record["notebooks"].get(stem)
        warm_minutes = f"{warm[stem]['seconds'] / 60:.1f}" if warm[stem] else "not run"
        if run is None:
            rows.append(f"| {stem} | not run | {warm_minutes} | | | |")
            continue
        total += run["seconds"]
        speed = run.get("speed")
        speed = f"{speed['fp32_gflops']:.0f} / {speed['bf16_gflops']:.0f}" if speed else "not recorded"
        finished = run["finished"].replace("T", " ").replace("+00:00", "")[:16]
        rows.append(f"| {stem} | {run['seconds'] / 60:.1f} | {warm_minutes} | {run['artifacts_built']} / "
                    f"{run['results_written']} | {speed} | {finished} |")
    warm_total = f"**{sum(w['seconds'] for w in warm.values()) / 60:.1f}**" if all(warm.values()) else ""
    rows.append(f"| **sum** | **{total / 60:.1f}** | {warm_total} | | | |")
    machine = record.get("machine", {})
    note = (f"\nProfile `{profile}`, recorded by `streamdistill book` in `book/timings-{profile}.json` on "
            f"{machine.get('cpus', '?')} CPUs ({machine.get('platform', '?')}, Python {machine.get('python', '?')}).\n")
    return "\n".join(rows) + "\n" + note + budget_sentence(profile, record["notebooks"], stems)


def budget_sentence(profile: str, runs: dict[str, dict], stems: list[str]) -> str:
    """The record against ``COLD_BUDGET_MINUTES``: within or over, or incomplete while a notebook
    of the toc has no timing (a sum that leaves one out proves nothing)."""
    budget = COLD_BUDGET_MINUTES.get(profile)
    if budget is None:
        return ""
    missing = [s for s in stems if s not in runs]
    if missing:
        return (f"\nThe budget (a cold build in {budget['whole']:g} minutes) cannot be checked yet: "
                f"{', '.join(missing)} not timed.\n")
    whole = sum(runs[s]["seconds"] for s in stems) / 60
    ablations = budget["ablations"]
    share = runs[ablations]["seconds"] / 60 if ablations in runs else 0.0
    verdict = "within" if whole <= budget["whole"] else "over"
    return (f"\nAgainst the budget of a cold build on 2 cores, ablations included: the whole book {whole:.0f} "
            f"minutes, {verdict} its {budget['whole']:g}; the ablations ({ablations}) take {share:.0f} of them.\n")


def sizing_table(root: Path | None = None) -> str:
    """The sizing measurements (``benchmarks/sizing.py`` wrote ``book/data/sizing.json``) in Markdown."""
    path = (root or repo_root()) / "book" / "data" / "sizing.json"
    if not path.exists():
        return "No sizing measurement recorded (`python benchmarks/sizing.py --out book/data/sizing.json`).\n"
    record = json.loads(path.read_text())
    rows = ["| layers kept | precision | training step (s) | forward (tokens/s) |", "|---|---|---|---|"]
    rows += [f"| {r['layers']} | {r['precision']} | {r['train_step_s']:.2f} | {r['forward_tokens_per_s']:,.0f} |"
             for r in record["rows"]]
    from .profiles import get_profile

    cpu = get_profile("cpu")
    chosen = (f"The `cpu` profile chose: the first {cpu.base_layers} layers, trained in float32 and scored in "
              f"{cpu.eval_precision}, LoRA r = {cpu.lora_r}, "
              f"α = {cpu.lora_alpha}, {cpu.train_steps} steps of {cpu.batch_size} triplets of up to {cpu.max_length} "
              f"tokens, every evaluated text read at {cpu.eval_max_length} tokens, seeds {', '.join(map(str, cpu.seeds))}.")
    return "\n".join(rows) + (f"\n\nA training step: {record['batch']}; forward: {record['forward']}; "
                              f"{record['threads']} threads, {record['cpus']} CPUs, measured {record['measured']}.\n\n"
                              f"{chosen}\n")


def determinism_text(root: Path | None = None) -> str:
    """What ``benchmarks/determinism.py`` found (``book/data/determinism.json``), in Markdown: one
    row per comparison of same-seed retrains, and the finding, both read from the JSON."""
    path = (root or repo_root()) / "book" / "data" / "determinism.json"
    if not path.exists():
        return "Not measured yet (`python benchmarks/determinism.py --out book/data/determinism.json`).\n"
    record = json.loads(path.read_text())
    machine = record["machine"]
    precisions = sorted({p for c in record["comparisons"] for p in c["embeddings"]})
    rows = ["| what varies | runs | weights (SHA-256) | first step whose loss differs | largest loss difference | "
            + " | ".join(f"embeddings, {p}" for p in precisions) + " |", "|---" * (5 + len(precisions)) + "|"]

    def embeddings(e: dict | None) -> str:
        if e is None:
            return "not compared"
        return ("identical" if e["identical"] else
                f"max abs. difference {e['max_abs_difference']:.2g}, largest cosine distance {1 - e['min_cosine']:.2g}")

    for c in record["comparisons"]:
        rows.append(f"| {c['varies']} | {c['runs'][0]} / {c['runs'][1]} | "
                    f"{'identical' if c['weights_identical'] else 'differ'} | {c['first_step_whose_loss_differs'] or 'none'} | "
                    f"{c['loss_max_abs_difference']:.2g} | " + " | ".join(embeddings(c["embeddings"].get(p)) for p in precisions) + " |")
    same, *others = record["comparisons"]
    varying = [c["varies"] for c in others if not c["weights_identical"]]
    if same["weights_identical"]:
        finding = ("A same-seed retrain on one machine, with the same threads and kernels, is bitwise identical: "
                   "weights, every step's loss and the embeddings.")
    else:
        finding = ("A same-seed retrain on one machine is not bitwise identical even with the same threads and kernels "
                   f"(the loss first differs at step {same['first_step_whose_loss_differs']}).")
    finding += (f" Changing {' or '.join(varying)} changes the weights." if varying else
                " Neither the thread count nor the kernels changed the weights.")
    first = record["runs"][0] if record["runs"] else None
    for run in record["runs"][1:]:
        if run["precision"] != first["precision"]:  # the machine's precision choice moved with it
            finding += (f" The run with {run['label']} chose {run['precision']} inference where the others chose "
                        f"{first['precision']} (the precision follows the machine), so its embeddings are compared in "
                        f"{run['precision']} only.")
    header = (f"Stage {record['stage']} at profile `{record['profile']}`, trained for {record['train_steps']} steps in each "
              f"run, each in a fresh artifact cache and its own process; {record['texts']} training texts embedded by each "
              f"run's model. Measured {record['measured'][:10]} by `python benchmarks/determinism.py` on {machine['cpus']} CPUs "
              f"at {machine['fp32_gflops']:.0f} / {machine['bf16_gflops']:.0f} GFLOP/s fp32 / bf16 (native bf16: "
              f"{', '.join(machine['native_bf16']) or 'none'}), PyTorch {machine['torch']}.")
    return header + "\n\n" + "\n".join(rows) + "\n\n" + finding + "\n"


# --- the claims table ----------------------------------------------------------------------------

CLAIMS = [  # (row label, notebook, glue key prefix): the first page's table, in its order
    ("Gap closure (C − A)/(B − A)", "05_evaluation", "claim_closure"),
    ("Gap closure per task type", "05_evaluation", "claim_types"),
    ("Student over Echo embeddings", "05_evaluation", "claim_echo"),
    ("Streaming speed-up against the teacher's recompute", "07_streaming", "claim_stream"),
    ("Streaming fidelity (cosine distance)", "07_streaming", "claim_fidelity"),
    ("Long-context retrieval", "08_long_context", "claim_long"),
    ("LEAF student aligned to its teacher", "09_leaf_alignment", "claim_alignment"),
    ("LEAF retention", "09_leaf_alignment", "claim_retention"),
    ("Asymmetric retrieval", "09_leaf_alignment", "claim_asym"),
    ("MRL inheritance", "09_leaf_alignment", "claim_mrl"),
    ("Quantization inheritance", "09_leaf_alignment", "claim_quant"),
    ("Student throughput against its teacher", "09_leaf_alignment", "claim_throughput"),
]
NUMBER_PARTS = ("value", "low", "high")  # the parts of a claims row that are numbers (report.claim_parts)
NOT_RUN = "not run"


def glued_values(nb: dict | None) -> dict[str, str]:
    """The text of every ``glue``d value in an executed notebook (its ``text/plain`` under glue's
    MIME prefix, unquoted)."""
    values = {}
    for cell in (nb or {}).get("cells", []):
        for output in cell.get("outputs", []):
            scrapbook = output.get("metadata", {}).get("scrapbook", {})
            name = scrapbook.get("name")
            text = output.get("data", {}).get(scrapbook.get("mime_prefix", "") + "text/plain")
            if name and text is not None:
                text = "".join(text) if isinstance(text, list) else text
                try:
                    value = ast.literal_eval(text)
                    values[name] = value if isinstance(value, str) else text
                except (ValueError, SyntaxError):
                    values[name] = text
    return values


def glued(path: Path) -> dict[str, str]:
    """:func:`glued_values` of the executed notebook at ``path``."""
    return glued_values(json.loads(Path(path).read_text()))


def executed_profile(path: Path) -> str | None:
    """The profile papermill executed a notebook at (its ``PROFILE`` parameter), or None if unknown."""
    metadata = json.loads(Path(path).read_text()).get("metadata", {})
    return metadata.get("papermill", {}).get("parameters", {}).get("PROFILE")


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def claim_rows(copies: dict[str, dict | None], profile: str | None = None) -> list[dict]:
    """The claims table's rows read from executed notebooks (``{stem: notebook JSON or None}``):
    each row's :data:`report.CLAIM_PARTS` (text parts ``not run`` and numbers None where the
    notebook did not glue them), and the machine its notebook ran on. With ``profile``, a
    notebook executed at another profile counts as not run."""
    rows = []
    for label, stem, key in CLAIMS:
        nb = copies.get(stem)
        ran_at = (nb or {}).get("metadata", {}).get("papermill", {}).get("parameters", {}).get("PROFILE")
        values = glued_values(nb) if profile is None or ran_at in (None, profile) else {}
        row = {"claim": label}
        for part in CLAIM_PARTS:
            text = values.get(f"{key}_{part}")
            row[part] = _number(text) if part in NUMBER_PARTS else (NOT_RUN if text is None else text)
        row["machine"] = (provenance(nb) or {}).get("machine") if values else None
        rows.append(row)
    return rows


def claims(root: Path | None = None, profile: str | None = None) -> list[dict]:
    """The claims table's rows, read from the executed notebooks in ``book/notebooks/``."""
    root = root or repo_root()
    return claim_rows({stem: read_copy(root, stem) for stem in {s for _, s, _ in CLAIMS}}, profile)


def write_claims(profile: str, root: Path | None = None) -> Path:
    """``book/data/claims-<profile>.json`` and the README's figure of it (``.png`` beside it).

    A row whose notebook has not been executed at ``profile`` here keeps its value from the record
    already there (a session may re-run some notebooks only); ``sources`` says which rows were read
    now and which were kept.
    """
    from .plots import claims_figure

    root = root or repo_root()
    out = root / "book" / "data" / f"claims-{profile}.json"
    before = json.loads(out.read_text()) if out.exists() else {}
    kept = {row["claim"]: row for row in before.get("rows", [])} if before.get("profile") == profile else {}
    old_sources = before.get("sources", {}) if kept else {}
    timings = timings_path(profile, root)
    # the executed copy is the latest run, warm or cold (a warm run re-measures live figures such as throughput)
    record = json.loads(timings.read_text()) if timings.exists() else {}
    finished: dict[str, str] = {}
    for runs in (record.get("notebooks", {}), record.get("warm", {})):
        for stem, run in runs.items():
            finished[stem] = max(finished.get(stem, ""), run.get("finished", ""))
    rows, sources = [], {}
    for row, (_, stem, _) in zip(claims(root, profile), CLAIMS):
        if row["verdict"] == NOT_RUN and row["claim"] in kept:
            rows.append(kept[row["claim"]])
            sources[row["claim"]] = old_sources.get(row["claim"], "kept from the previous record")
        else:
            rows.append(row)
            executed = (provenance(read_copy(root, stem)) or {}).get("executed") or finished.get(stem, "")
            sources[row["claim"]] = NOT_RUN if row["verdict"] == NOT_RUN else f"{stem} executed {executed}".strip()
    atomic_write_json(out, {"profile": profile, "rows": rows, "sources": sources})
    fig = claims_figure(rows, title=f"What holds at this scale (profile {profile})")
    fig.savefig(out.with_suffix(".png"), dpi=130, bbox_inches="tight")
    return out


# --- what a rebuild reproduced ---------------------------------------------------------------------

def compare_claim(then: dict, now: dict) -> dict:
    """One claims row of the committed record (``then``) against a rebuild's (``now``).

    ``moved`` says how the point moved against the noise the committed row was judged by (the
    half-width of its interval): ``unchanged``, ``within its noise``, ``beyond its noise``;
    ``changed`` for rows without numbers whose text differs; ``new`` or ``not run`` where a side
    has no row. A row whose basis says it depends on the hardware is marked, with the machine of
    each side.
    """
    ran = then["verdict"] != NOT_RUN, now["verdict"] != NOT_RUN
    out = {"claim": now["claim"], "then": {k: then.get(k) for k in ("here", "verdict", *NUMBER_PARTS)},
           "now": {k: now.get(k) for k in ("here", "verdict", *NUMBER_PARTS)},
           "change": None, "noise": None, "change_over_noise": None,
           "verdict_changed": all(ran) and then["verdict"] != now["verdict"],
           "hardware": any(HARDWARE_MARK in str(r.get("basis") or "") for r in (then, now))}
    if out["hardware"]:
        out["machine_then"], out["machine_now"] = machine_text(then.get("machine")), machine_text(now.get("machine"))
    if not all(ran):
        out["moved"] = NOT_RUN if not ran[1] else "new"
        return out
    numbers = [then.get(k) for k in NUMBER_PARTS], [now.get(k) for k in NUMBER_PARTS]
    if numbers[0][0] is None or numbers[1][0] is None:
        out["moved"] = "unchanged" if then["here"] == now["here"] else "changed"
        return out
    out["change"] = numbers[1][0] - numbers[0][0]
    low, high = numbers[0][1:]
    if low is not None and high is not None:
        out["noise"] = (high - low) / 2
    if numbers[0] == numbers[1]:
        out["moved"] = "unchanged"
    elif out["noise"] is None:
        out["moved"] = "changed"  # the committed row has no interval to weigh the change against
    else:
        if out["noise"] > 0 and math.isfinite(out["noise"]):
            out["change_over_noise"] = out["change"] / out["noise"]
        out["moved"] = "within its noise" if abs(out["change"]) <= out["noise"] else "beyond its noise"
    return out


def compare_glued(then: dict[str, str], now: dict[str, str]) -> dict:
    """Every glued figure of one notebook, committed against rebuilt: how many are identical, and
    each one that changed, appeared or went (with the numeric change where both read as numbers)."""
    changed = []
    for name in sorted(set(then) | set(now)):
        old, new = then.get(name), now.get(name)
        if old == new:
            continue
        entry = {"name": name, "then": old, "now": new}
        if _number(old) is not None and _number(new) is not None:
            entry["change"] = _number(new) - _number(old)
        changed.append(entry)
    identical = sum(1 for name in then if name in now and then[name] == now[name])
    return {"figures": len(set(then) | set(now)), "identical": identical, "changed": changed}


def reproduction(profile: str, then: dict[str, dict | None], now: dict[str, dict | None], stems: list[str],
                 claims_record: dict | None = None) -> dict:
    """The committed record against a rebuild of ``stems``: every claims row of those notebooks
    (:func:`compare_claim`; a row the committed copies lack is read from ``claims_record``, the
    committed ``claims-<profile>.json``, when it has it) and every glued figure (:func:`compare_glued`),
    with each notebook's code and machine then and now (``same_code``: the same ``src/``, notebook
    and lock, so a flipped verdict is the run's own variation)."""
    kept = {r["claim"]: r for r in (claims_record or {}).get("rows", [])} if (claims_record or {}).get("profile") == profile else {}
    old_rows, new_rows = claim_rows(then, profile), claim_rows(now, profile)
    rows = []
    for (label, stem, _), old, new in zip(CLAIMS, old_rows, new_rows):
        if stem not in stems:
            continue
        if old["verdict"] == NOT_RUN and label in kept:
            old = {**{p: None for p in NUMBER_PARTS}, "basis": None, "machine": None, **kept[label]}
        rows.append({"notebook": stem, **compare_claim(old, new)})
    notebooks = {}
    for stem in stems:
        old, new = provenance(then.get(stem)), provenance(now.get(stem))
        notebooks[stem] = {"executed_then": (old or {}).get("executed"), "executed_now": (new or {}).get("executed"),
                           "machine_then": machine_text((old or {}).get("machine")),
                           "machine_now": machine_text((new or {}).get("machine")),
                           "same_code": _code(old) is not None and _code(old) == _code(new),
                           "glued": compare_glued(glued_values(then.get(stem)), glued_values(now.get(stem)))}
    flipped = [r["claim"] for r in rows if r["verdict_changed"]]
    return {"profile": profile, "compared": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "notebooks": notebooks, "claims": rows, "verdicts_changed": flipped}


def merge_reproduction(before: dict | None, record: dict) -> dict:
    """``record`` (a build that executed some notebooks) over the previous reproduction record of
    the same profile: the notebooks it did not execute keep their last comparison, so a book
    re-executed in parts (``--only``, one session after another) ends with every notebook's. Rows
    keep the table's order; ``verdicts_changed`` follows the rows."""
    if not before or before.get("profile") != record["profile"]:
        return record
    notebooks = {**before["notebooks"], **record["notebooks"]}
    new = {row["claim"]: row for row in record["claims"]}
    old = {row["claim"]: row for row in before["claims"] if row["notebook"] not in record["notebooks"]}
    rows = [new.get(label) or old[label] for label, _, _ in CLAIMS if label in new or label in old]
    return {**record, "notebooks": {s: notebooks[s] for s in sorted(notebooks)}, "claims": rows,
            "verdicts_changed": [row["claim"] for row in rows if row["verdict_changed"]]}


def _code(record: dict | None) -> dict | None:
    """What a copy's result depends on in its provenance: the library, its own notebook, the pins."""
    code = (record or {}).get("source")
    return {k: code.get(k) for k in ("src", "notebook", "requirements.lock")} if code else None


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def reproduction_table(record: dict | None) -> str:
    """The reproduction record as Markdown: one row per claim, then the glued figures per notebook."""
    if not record:
        return ("No rebuild has been compared with the committed record yet: `streamdistill book --execute-all` "
                "(or `make reproduce`) re-executes the notebooks and writes the comparison.\n")
    rows = ["| claim | committed | rebuilt | change (noise ±) | moved | verdict then → now |", "|---|---|---|---|---|---|"]
    for r in record["claims"]:
        change = "" if r["change"] is None else f"{_fmt(r['change'])} (± {_fmt(r['noise'])})"
        verdict = r["then"]["verdict"] + (" → " + r["now"]["verdict"] if r["now"]["verdict"] != r["then"]["verdict"] else " (same)")
        moved = r["moved"] + (f"; hardware: then {r['machine_then']}, now {r['machine_now']}" if r["hardware"] else "")
        if r["verdict_changed"]:
            verdict = f"**{verdict}**"
        rows.append(f"| {r['claim']} | {r['then']['here']} | {r['now']['here']} | {change} | {moved} | {verdict} |")
    lines = []
    for stem, nb in record["notebooks"].items():
        glue = nb["glued"]
        now = f"now {nb['executed_now']} on {nb['machine_now']}"
        if not nb["executed_then"]:
            lines.append(f"- **{stem}**: no committed copy to compare; {now}: {glue['figures']} glued figures.")
            continue
        code = "the same code" if nb["same_code"] else "other code (or code not recorded)"
        changed = f"; changed: {', '.join(c['name'] for c in glue['changed'])}" if glue["changed"] else ""
        lines.append(f"- **{stem}**, {code}; executed {nb['executed_then']} on {nb['machine_then']}, {now}: "
                     f"{glue['identical']} of {glue['figures']} glued figures identical{changed}.")
    flipped = record["verdicts_changed"]
    summary = (f"Verdicts that changed: {', '.join(flipped)}." if flipped else "No verdict changed.")
    return (f"Profile `{record['profile']}`, compared {record['compared'][:16].replace('T', ' ')} UTC "
            f"(`book/data/reproduction-{record['profile']}.json`). {summary}\n\n" + "\n".join(rows) + "\n\n" + "\n".join(lines) + "\n")


def reproduction_path(profile: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / "book" / "data" / f"reproduction-{profile}.json"


def print_reproduction(record: dict) -> None:
    """The reproduction table on stderr, for the person who ran the build."""
    print(f"[book] what this build reproduced (against the committed record; {reproduction_path(record['profile']).name}):",
          file=sys.stderr)
    for r in record["claims"]:
        change = "" if r["change"] is None else f" {r['change']:+.4g} (noise ± {_fmt(r['noise'])})"
        verdict = r["now"]["verdict"] if r["then"]["verdict"] == r["now"]["verdict"] else f"{r['then']['verdict']} -> {r['now']['verdict']}"
        verdict += " (CHANGED)" if r["verdict_changed"] else ""
        hardware = f" [hardware: then {r['machine_then']}; now {r['machine_now']}]" if r["hardware"] else ""
        print(f"[book]   {r['claim']}: {r['then']['here']} -> {r['now']['here']}: {r['moved']}{change}; "
              f"verdict {verdict}{hardware}", file=sys.stderr)
    for stem, nb in record["notebooks"].items():
        glue = nb["glued"]
        print(f"[book]   {stem}: " + (f"{glue['identical']} of {glue['figures']} glued figures identical" if nb["executed_then"]
                                     else f"{glue['figures']} glued figures, no committed copy to compare"), file=sys.stderr)


# --- rendering ------------------------------------------------------------------------------------

MATHJAX_PACKAGE = "django-static-mathjax"  # MathJax 3's es5 build as plain files; it declares no dependencies
MATHJAX_FILES = ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2")  # what _config.yml's mathjax_path loads


def offline_mathjax(root: Path | None = None) -> Path:
    """Copy MathJax from the installed ``django-static-mathjax`` wheel into ``_static/mathjax/``
    (git-ignored), where ``_config.yml``'s ``mathjax_path`` points: the book's math typesets
    offline, where Jupyter Book's default (a CDN) leaves TeX source on the page."""
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("mathjax")
    es5 = Path(spec.submodule_search_locations[0]) / "static" / "mathjax" / "es5" if spec else None
    if es5 is None or not (es5 / MATHJAX_FILES[0]).exists():
        raise FileNotFoundError(f"MathJax is not installed: pip install {MATHJAX_PACKAGE} (make book installs it)")
    dest = (root or repo_root()) / "_static" / "mathjax"
    for name in MATHJAX_FILES:
        source = es5 / name
        if source.is_dir():
            shutil.copytree(source, dest / name, dirs_exist_ok=True)
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest / name)
    return dest


def build_book(profile: Profile, execute: str = "missing", root: Path | None = None,
               names: list[str] | None = None, render: bool = True) -> dict:
    """Execute the notebooks :func:`to_execute` picks, compare what they glued with the committed
    record, and render the HTML from the executed copies.

    Every copy left stale is named in one warning line; a copy still missing at ``profile`` stops
    the render (nothing to show for it)."""
    if execute not in EXECUTE:
        raise ValueError(f"execute={execute!r}: choose one of {', '.join(EXECUTE)}")
    root = root or repo_root()
    started = time.perf_counter()
    source = source_ids(root)
    stems = toc_notebooks(root)
    states = {stem: copy_state(read_copy(root, stem), stem, profile.name, source) for stem in stems}
    chosen = to_execute(states, execute, names)
    if source is None:
        print("[book] not a git checkout: the executed copies cannot be checked against the code", file=sys.stderr)
    then = {stem: committed_copy(root, (COPIES / f"{stem}.ipynb").as_posix()) for stem in chosen}
    then = {stem: nb if copy_state(nb, stem, profile.name, None)[0] != "missing" else None for stem, nb in then.items()}
    claims_then = committed_copy(root, f"book/data/claims-{profile.name}.json") if chosen else None
    runs = execute_notebooks(profile, root, chosen, source) if chosen else {}
    copies = {stem: read_copy(root, stem) for stem in stems}
    states = {stem: copy_state(copies[stem], stem, profile.name, source) for stem in stems}
    for stem, (state, why) in states.items():
        if state == "stale":
            print(f"[book] warning: {stem}: the executed copy does not match the code beside it: {why} "
                  f"(streamdistill book --stale re-executes it)", file=sys.stderr)
    out = {"profile": profile.name, "notebooks": runs, "copies": {s: state for s, (state, _) in states.items()}}
    if runs:
        record = reproduction(profile.name, then, {s: copies[s] for s in runs}, list(runs), claims_then)
        print_reproduction(record)
        out["verdicts_changed"] = record["verdicts_changed"]
        path = reproduction_path(profile.name, root)
        atomic_write_json(path, merge_reproduction(json.loads(path.read_text()) if path.exists() else None, record))
    if not render:
        return {**out, "total_seconds": round(time.perf_counter() - started, 1)}
    missing = [stem for stem, (state, _) in states.items() if state == "missing"]
    if missing:
        raise FileNotFoundError(f"no executed copy at profile {profile.name} of {', '.join(missing)}: "
                                f"`streamdistill book --profile {profile.name}` executes the missing ones")
    write_claims(profile.name, root)
    generated = root / "book" / "_generated"
    path = reproduction_path(profile.name, root)
    atomic_write_text(generated / "timings.md", timings_table(profile.name, root))
    atomic_write_text(generated / "sizing.md", sizing_table(root))
    atomic_write_text(generated / "copies.md", copies_table(states, copies))
    atomic_write_text(generated / "determinism.md", determinism_text(root))
    atomic_write_text(generated / "reproduction.md", reproduction_table(json.loads(path.read_text()) if path.exists() else None))
    offline_mathjax(root)
    if not (Path(sys.executable).parent / "jupyter-book").exists():
        raise FileNotFoundError("jupyter-book is not installed in this environment (make book installs it)")
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "--toc", str(root / TOC),
           "--config", str(root / "_config.yml"), "--warningiserror", "--keep-going"]
    subprocess.run(cmd, check=True, cwd=root, env={**os.environ, "STREAMDISTILL_PROFILE": profile.name})
    html = root / "_build" / "html" / "index.html"
    return {**out, "html": str(html), "total_seconds": round(time.perf_counter() - started, 1)}
