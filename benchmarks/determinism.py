"""Is a same-seed retrain bitwise identical on one machine? What varies when it is not?

Trains paper 1's stage A (``causal``) at the cpu profile with fewer steps, several times, each in a
fresh artifact cache and its own process: twice alike (2 threads), with 1 thread, and with the
kernels an AVX2-only machine would run (PyTorch's AVX2 code paths, MKL and oneDNN capped at AVX2:
the nearest this machine can come to being another machine). It compares the weights' SHA-256,
the loss at every step, and the embeddings of a fixed set of texts in the profile's inference
precision and in float32.

    python benchmarks/determinism.py --out book/data/determinism.json    # about 10 min on 2 cores

The Reproducing page reads the JSON (``book.determinism_text``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
RUNS = [  # (label, environment, whether the run builds its upstream stages itself)
    ("2 threads", {"OMP_NUM_THREADS": "2"}, True),
    ("2 threads, again", {"OMP_NUM_THREADS": "2"}, True),
    ("1 thread", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, False),
    ("2 threads, AVX2 kernels", {"OMP_NUM_THREADS": "2", **AVX2}, False),
]
COMPARED = [(0, 1, "nothing: the same seed, threads and kernels, a fresh cache"), (0, 2, "the thread count"),
            (0, 3, "the kernels (AVX2 code paths in PyTorch, MKL and oneDNN)")]
TEXTS = 64  # training texts embedded by each run's model


def worker(steps: int, out: Path) -> None:
    """One run, in this process: train A, embed the texts; write what the parent compares."""
    import numpy as np
    import torch

    from streamdistill.artifacts import read_done
    from streamdistill.data import training_texts
    from streamdistill.profiles import get_profile
    from streamdistill.registry import history, resolve_model, run_stage

    profile = get_profile("cpu", {"train_steps": steps})
    started = time.perf_counter()
    folder, _ = run_stage("causal", profile)
    seconds = time.perf_counter() - started
    texts = training_texts(limit=TEXTS)
    embeddings = {}
    for precision in dict.fromkeys((profile.eval_precision, "float32")):
        model = resolve_model("A", get_profile(profile, {"eval_precision": precision}))
        embeddings[precision] = np.asarray(model.encode(texts), dtype=np.float32)
        np.save(out / f"embeddings-{precision}.npy", embeddings[precision])
    record = {"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
              "precision": profile.eval_precision, "train_seconds": round(seconds, 1),
              "weights_sha256": read_done(folder)["files"],
              "base_sha256": read_done(run_stage("base", profile)[0])["files"],
              "losses": [row["loss"] for row in history(folder)]}
    (out / "run.json").write_text(json.dumps(record))


def compare(a: dict, b: dict, a_dir: Path, b_dir: Path) -> dict:
    import numpy as np

    steps = [i for i, (x, y) in enumerate(zip(a["losses"], b["losses"])) if x != y]
    out = {"weights_identical": a["weights_sha256"] == b["weights_sha256"],
           "base_identical": a["base_sha256"] == b["base_sha256"],
           "first_step_whose_loss_differs": steps[0] + 1 if steps else None,
           "loss_max_abs_difference": max(abs(x - y) for x, y in zip(a["losses"], b["losses"])),
           "embeddings": {}}
    for path in sorted(a_dir.glob("embeddings-*.npy")):
        if not (b_dir / path.name).exists():  # the other run chose another inference precision
            continue
        x, y = np.load(path), np.load(b_dir / path.name)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        out["embeddings"][path.stem.removeprefix("embeddings-")] = {
            "identical": bool(np.array_equal(x, y)), "max_abs_difference": float(np.abs(x - y).max()),
            "min_cosine": float(cos.min())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="the JSON to write (book/data/determinism.json)")
    parser.add_argument("--steps", type=int, default=6, help="training steps of each run (the cpu profile trains 100)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, Path(args.worker))
    if not args.out:
        parser.error("--out is required")

    from streamdistill.hardware import machine_speed, native_bf16
    from streamdistill.profiles import get_profile

    import torch

    work = Path(tempfile.mkdtemp(prefix="determinism-"))
    runs = []
    try:
        for i, (label, env, builds_upstream) in enumerate(RUNS):
            run_dir = work / f"run{i}"
            cache = run_dir / "artifacts"
            cache.mkdir(parents=True)
            if not builds_upstream:  # the first run's pretrained and base stages: identical, and a minute saved
                for stage in ("pretrained", "base"):
                    shutil.copytree(work / "run0" / "artifacts" / stage, cache / stage)
            clean = {k: v for k, v in os.environ.items() if k not in (*AVX2, "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
            print(f"[determinism] {label}: training A for {args.steps} steps in a fresh cache", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker", str(run_dir)], check=True,
                           env={**clean, **env, "STREAMDISTILL_ARTIFACTS": str(cache),
                                "STREAMDISTILL_RESULTS": str(run_dir / "results")})
            runs.append({"label": label, "environment": env, **json.loads((run_dir / "run.json").read_text())})
        comparisons = [{"runs": [RUNS[a][0], RUNS[b][0]], "varies": varies,
                        **compare(runs[a], runs[b], work / f"run{a}", work / f"run{b}")} for a, b, varies in COMPARED]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stage": "causal (A)",
              "profile": "cpu", "train_steps": args.steps, "texts": TEXTS,
              "machine": {**machine_speed(), "native_bf16": native_bf16(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "precision": get_profile("cpu").eval_precision},
              "runs": runs, "comparisons": comparisons}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for c in comparisons:
        print(f"[determinism] {c['runs'][0]} vs {c['runs'][1]} ({c['varies']}): weights identical "
              f"{c['weights_identical']}, first differing loss at step {c['first_step_whose_loss_differs']}", file=sys.stderr)


if __name__ == "__main__":
    main()
