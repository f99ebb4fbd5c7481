"""How the cpu profile was sized: SmolLM2's training step and forward cost by layers kept and precision.

    python benchmarks/sizing.py --out book/data/sizing.json

For each number of layers kept, one contrastive training step (LoRA r = 16 on every projection, a
batch of SNLI triplets as the stages read them) and the forward throughput of the merged encoder (as
the stages save it) on SciFact documents read at the evaluation length, in float32 and under bf16
autocast, side by side in one process. Prints a
table and writes the JSON that book/reproducing.md shows.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from datetime import datetime, timezone

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from streamdistill import data  # noqa: E402
from streamdistill.artifacts import atomic_write_json  # noqa: E402
from streamdistill.contrastive import Contrastive, make_encoder, pair_data  # noqa: E402
from streamdistill.decoders import load_decoder, merge_lora  # noqa: E402
from streamdistill.lm import cut_layers  # noqa: E402
from streamdistill.profiles import get_profile  # noqa: E402
from streamdistill.registry import STAGES  # noqa: E402


def measure(layers: int, precision: str, profile, steps: int, docs: list[str]) -> dict:
    pretrained = STAGES["pretrained"].build(profile)
    lm, tokenizer = load_decoder(pretrained / "model")
    lm = cut_layers(lm, layers)
    encoder = make_encoder(lm, tokenizer, profile)
    items = pair_data(profile)
    objective = Contrastive(profile)
    params = [p for p in encoder.parameters() if p.requires_grad]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    times = []
    for step in range(steps + 1):  # the first step pays one-off costs
        idx = items.indices(step, 0)
        q = encoder.tokenize([items.pairs[i][0] for i in idx], max_length=profile.max_length)
        d = encoder.tokenize([items.pairs[i][1] for i in idx] + [items.pairs[i][2] for i in idx if items.pairs[i][2]],
                             max_length=profile.max_length)
        started = time.perf_counter()
        with autocast:
            loss, _ = objective.loss(encoder(**q)["embedding"], encoder(**d)["embedding"], {}, step)
        loss.backward()
        for p in params:
            p.grad = None
        times.append(time.perf_counter() - started)
    # evaluation reads the model as the stages save it: LoRA merged into the base weights (under
    # autocast an unmerged adapter re-casts its weights every call, several times slower)
    encoder.backbone = merge_lora(encoder.backbone)
    encoder.eval()
    encoder.encode(docs[:32], batch_size=32, max_length=profile.eval_max_length, precision=precision)  # warm-up
    started = time.perf_counter()
    encoder.encode(docs, batch_size=32, max_length=profile.eval_max_length, precision=precision)
    seconds = time.perf_counter() - started
    tokens = sum(encoder.tokens_per_text(docs, max_length=profile.eval_max_length))
    return {"layers": layers, "precision": precision, "train_step_s": sorted(times[1:])[len(times[1:]) // 2],
            "forward_tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="4,8")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--docs", type=int, default=128)
    parser.add_argument("--out")
    args = parser.parse_args()
    profile = get_profile("cpu")
    corpus = data.read_jsonl("retrieval/SciFact/corpus.jsonl")[: args.docs]
    docs = [data.document_text(d) for d in corpus]
    rows = []
    for layers in [int(x) for x in args.layers.split(",")]:
        for precision in ("float32", "bfloat16"):
            row = measure(layers, precision, replace(profile, base_layers=layers), args.steps, docs)
            rows.append(row)
            print(f"{layers:>2} layers, {precision:<8}: training step {row['train_step_s']:.2f} s, "
                  f"forward {row['forward_tokens_per_s']:.0f} tokens/s", flush=True)
    result = {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "batch": f"{profile.batch_size} SNLI triplets (anchor, positive, hard negative), up to "
                       f"{profile.max_length} tokens", "forward": f"{args.docs} SciFact documents read at "
                                                             f"{profile.eval_max_length} tokens", "rows": rows}
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
