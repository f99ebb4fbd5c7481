"""Build the book: papermill executes every notebook of the toc, then Jupyter Book (v1) renders.

Jupyter Book's own execution is off (``_config.yml``): papermill runs each source notebook in
``notebooks/`` with the profile as a parameter, writing the executed copy to ``book/notebooks/``,
and stops at the first failing cell. Each notebook's wall time, and how many artifacts and mteb
results it had to build (0 for a warm run), are merged into ``book/timings-<profile>.json``; the
Reproducing page shows that file as a table (``book/_generated/timings.md``, written here before
the build). The build then runs with warnings as errors.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .artifacts import artifacts_root, atomic_write_json, atomic_write_text, repo_root
from .hardware import machine_speed  # noqa: F401  (book.machine_speed(): the speed quoted beside each timing)

TOC = Path("book") / "_toc.yml"
# What a cold build may cost on 2 cores, in minutes, now that the ablations notebook is in (the
# project's budget: 120 before it, 180 with it); the Reproducing page checks each record against it
# and says what the ablations take of it
COLD_BUDGET_MINUTES = {"cpu": {"whole": 180.0, "ablations": "06_ablations"}}


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


def execute_notebooks(profile: str, root: Path | None = None, names: list[str] | None = None) -> dict[str, dict]:
    """Run the notebooks (all of the toc, or ``names``) and merge their timings into the JSON."""
    import papermill

    root = root or repo_root()
    out_dir = root / "book" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = toc_notebooks(root)
    names = [resolve_notebook(n, stems) for n in names] if names else None
    path = timings_path(profile, root)
    record = json.loads(path.read_text()) if path.exists() else {"profile": profile, "notebooks": {}}
    runs: dict[str, dict] = {}
    for stem in names or stems:
        src = root / "notebooks" / f"{stem}.ipynb"
        if not src.exists():
            raise FileNotFoundError(f"the toc lists {stem} but {src} does not exist")
        before = _built_counts()
        speed = machine_speed()
        started = time.perf_counter()
        print(f"[book] executing {src.name} (profile={profile})", file=sys.stderr, flush=True)
        papermill.execute_notebook(
            str(src), str(out_dir / src.name), parameters={"PROFILE": profile},
            cwd=str(root / "notebooks"), kernel_name="python3", progress_bar=False, log_output=False)
        hide_injected_parameters(out_dir / src.name)
        after = _built_counts()
        runs[stem] = {"seconds": round(time.perf_counter() - started, 1), "artifacts_built": after[0] - before[0],
                      "results_written": after[1] - before[1],
                      "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "speed": speed}
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


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected ``# Parameters`` cell ``remove-cell``: set-up, not reading."""
    nb = json.loads(Path(path).read_text())
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


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


CLAIMS = [  # (row label, notebook, glue key prefix): the first page's table, in its order
    ("Gap closure (C − A)/(B − A)", "05_evaluation", "claim_closure"),
    ("Gap closure per task type", "05_evaluation", "claim_types"),
    ("Student over Echo embeddings", "05_evaluation", "claim_echo"),
    ("Streaming speed-up against the teacher's recompute", "07_streaming", "claim_stream"),
    ("Streaming fidelity (cosine distance)", "07_streaming", "claim_fidelity"),
    ("Long-context retrieval", "08_long_context", "claim_long"),
    ("LEAF retention", "09_leaf_alignment", "claim_retention"),
    ("Asymmetric retrieval", "09_leaf_alignment", "claim_asym"),
    ("MRL inheritance", "09_leaf_alignment", "claim_mrl"),
    ("Quantization inheritance", "09_leaf_alignment", "claim_quant"),
    ("Student throughput against its teacher", "09_leaf_alignment", "claim_throughput"),
]


def glued(path: Path) -> dict[str, str]:
    """The text of every ``glue``d value in an executed notebook (its ``text/plain`` under glue's MIME prefix, unquoted)."""
    import ast

    values = {}
    for cell in json.loads(Path(path).read_text())["cells"]:
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


def executed_profile(path: Path) -> str | None:
    """The profile papermill executed a notebook at (its ``PROFILE`` parameter), or None if unknown."""
    metadata = json.loads(Path(path).read_text()).get("metadata", {})
    return metadata.get("papermill", {}).get("parameters", {}).get("PROFILE")


def claims(root: Path | None = None, profile: str | None = None) -> list[dict[str, str]]:
    """The claims table's rows, read from the executed notebooks in ``book/notebooks/``.

    With ``profile``, a notebook that papermill executed at another profile counts as not run.
    """
    root = root or repo_root()
    cache: dict[str, dict[str, str]] = {}
    rows = []
    for label, stem, key in CLAIMS:
        path = root / "book" / "notebooks" / f"{stem}.ipynb"
        if stem not in cache:
            ran = path.exists() and (profile is None or executed_profile(path) in (None, profile))
            cache[stem] = glued(path) if ran else {}
        values = cache[stem]
        rows.append({"claim": label, **{part: values.get(f"{key}_{part}", "not run") for part in ("paper", "here", "verdict")}})
    return rows


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
        if row["verdict"] == "not run" and row["claim"] in kept:
            rows.append(kept[row["claim"]])
            sources[row["claim"]] = old_sources.get(row["claim"], "kept from the previous record")
        else:
            rows.append(row)
            sources[row["claim"]] = "not run" if row["verdict"] == "not run" else f"{stem} executed {finished.get(stem, '')}".strip()
    atomic_write_json(out, {"profile": profile, "rows": rows, "sources": sources})
    fig = claims_figure(rows, title=f"What holds at this scale (profile {profile})")
    fig.savefig(out.with_suffix(".png"), dpi=130, bbox_inches="tight")
    return out


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


def build_book(profile: str = "cpu", execute: bool = True, root: Path | None = None,
               names: list[str] | None = None, render: bool = True) -> dict:
    root = root or repo_root()
    started = time.perf_counter()
    runs = execute_notebooks(profile, root, names) if execute else {}
    if not render:
        return {"profile": profile, "notebooks": runs, "total_seconds": round(time.perf_counter() - started, 1)}
    if names is None:  # the whole book: the claims figure follows the executed notebooks
        write_claims(profile, root)
    atomic_write_text(root / "book" / "_generated" / "timings.md", timings_table(profile, root))
    atomic_write_text(root / "book" / "_generated" / "sizing.md", sizing_table(root))
    offline_mathjax(root)
    if not (Path(sys.executable).parent / "jupyter-book").exists():
        raise FileNotFoundError("jupyter-book is not installed in this environment (make book installs it)")
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "--toc", str(root / TOC),
           "--config", str(root / "_config.yml"), "--warningiserror", "--keep-going"]
    subprocess.run(cmd, check=True, cwd=root, env={**os.environ, "STREAMDISTILL_PROFILE": profile})
    html = root / "_build" / "html" / "index.html"
    return {"profile": profile, "notebooks": runs, "html": str(html),
            "total_seconds": round(time.perf_counter() - started, 1)}
