"""LEAF under two real processes: each reads its own slice of one global batch, and together they
train what one process with two micro-batches trains.

``accelerate launch --cpu --num_processes 2`` starts a single process (accelerate's simple launcher);
two CPU processes come from its torchrun launcher (``--multi_gpu``) with CUDA hidden, where the
library's process state asks accelerate for CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from streamdistill.artifacts import load_tensors

HERE = Path(__file__).resolve().parent


def test_two_processes_read_disjoint_slices_and_equal_accumulation(tmp_path):
    launch = Path(sys.executable).parent / "accelerate"
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    # the checkout's own package, whichever one the environment installed
    paths = os.pathsep.join([str(HERE.parent), str(HERE.parent / "src")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": paths, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(launch), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tests.leaf_two_processes",
                           str(two), "1"], capture_output=True, text=True, env=env, cwd=HERE.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "tests.leaf_two_processes", str(one), "2"], capture_output=True,
                            text=True, env=env, cwd=HERE.parent, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    ranks = [json.loads((two / f"seen-{r}.json").read_text()) for r in range(2)]
    alone = json.loads((one / "seen-0.json").read_text())
    assert [r["world"] for r in ranks] == [2, 2] and alone["world"] == 1
    for step in range(3):
        mine = [set(i) for r in ranks for s, _, i in r["seen"] if s == step]
        assert len(mine) == 2 and not mine[0] & mine[1]  # disjoint slices...
        whole = [i for s, _, items in alone["seen"] if s == step for i in items]
        assert mine[0] | mine[1] == set(whole) and len(whole) == 8  # ...of the one global batch
    a, b = load_tensors(two / "weights.safetensors"), load_tensors(one / "weights.safetensors")
    assert set(a) == set(b)
    for name in a:  # two processes = one process accumulating two micro-batches
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
