"""Run by tests/test_leaf_processes.py under ``accelerate launch --num_processes 2 --cpu``: a LEAF
student trained for a few steps, each process recording the items it read; process 0 saves the weights."""

import json
import os
import sys
from pathlib import Path

import numpy as np

from streamdistill import leaf
from streamdistill.artifacts import data_parallel_world, save_tensors
from streamdistill.decoders import BaseModel
from streamdistill.profiles import get_profile
from streamdistill.testing import tiny_llama, tiny_tokenizer


def run(out: Path, grad_accum: int) -> None:
    profile = get_profile("tiny", {"leaf_steps": "3", "leaf_batch_size": "8", "leaf_grad_accum": str(grad_accum),
                                   "leaf_lr": "1e-2"})
    texts = [f"text number {i} about {'abcdefgh'[i % 8] * (1 + i % 5)}" for i in range(40)]
    targets = np.random.default_rng(0).standard_normal((len(texts), 16)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    rank = int(os.environ.get("RANK", "0"))  # what the launcher sets
    folder = out / f"base-{rank}"  # one tiny decoder per process, the same weights (seeded)
    tokenizer = tiny_tokenizer(texts)
    tiny_llama(tokenizer.vocab_size + 8).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    student = leaf.CausalStudent(profile, 16, BaseModel(str(folder), {"base": "tiny"}))
    plan = leaf.leaf_plan(profile, texts)
    seen = []
    indices = plan.indices
    plan.indices = lambda step, micro: seen.append([step, micro, indices(step, micro)]) or seen[-1][2]
    leaf.fit(student, texts, targets, profile, plan=plan, progress=False)
    (out / f"seen-{rank}.json").write_text(json.dumps({"world": data_parallel_world(), "seen": seen}))
    if rank == 0:
        save_tensors(out / "weights.safetensors", dict(student.model.state_dict()))


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]))
