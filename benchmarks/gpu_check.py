"""GPU check: the pipeline's stages, evaluation and streaming on an accelerator, with figures.

    python benchmarks/gpu_check.py --out gpu.json

1. The tiny profile end to end on the GPU: A, B (GG-SM) and C trained through accelerate, C loaded
   on the GPU, its embeddings against the same encoder on the CPU, a stream against ``encode``,
   and one mteb task through the harness.
2. GG-SM's per-step overhead against plain bidirectional training at the cpu profile's size.
3. Streaming (prefix 4,096, delta 128) with randomly initialised models (latency does not depend
   on the weights) of the cpu student's shape and of the ``gpu`` profile's (the whole SmolLM2):
   the paper's benchmark on the dynamic path (batch 1), and the GPU path (a static cache replayed
   as a CUDA graph, ``streaming.StaticBatch``) at batch 1 and batched, each against the teacher's
   recompute; the clock starts and stops with the device idle.

Needs a CUDA device and the mirror (``STREAMDISTILL_DATA_DIR``) for the first check. Prints one
line per figure; ``--out`` writes them all as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

DEVICE = "cuda"  # --device cpu runs the same script as a dry run without a GPU


def _cosine_distance(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])
    b = np.asarray(b, dtype=np.float64).reshape(-1, np.shape(b)[-1])
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    return float((1.0 - (a * b).sum(-1)).max())


def tiny_pipeline() -> dict:
    from streamdistill import evaluate, pipeline
    from streamdistill.data import training_texts
    from streamdistill.registry import resolve_model
    from streamdistill.profiles import get_profile
    from streamdistill.streaming import StreamingEncoder

    tiny = get_profile("tiny")
    out = {}
    for stage in ("causal", "teacher", "student"):
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        pipeline.run_stage(stage, tiny)
        out[stage] = {"seconds": round(time.perf_counter() - started, 1),
                      "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if DEVICE == "cuda" else 0}
        print(f"tiny {stage}: {out[stage]}", flush=True)
    encoder, _ = pipeline.load_stage_encoder("C", tiny)
    out["C_device"] = str(encoder.device)
    texts = [t for t in training_texts(limit=200, seed=0) if len(t) < 300][:64]
    on_gpu = encoder.encode(texts, batch_size=16)
    on_cpu = encoder.to("cpu").encode(texts, batch_size=16)
    out["C_gpu_vs_cpu_max_cosine_distance"] = _cosine_distance(on_gpu, on_cpu)
    encoder.to(DEVICE)
    stream = StreamingEncoder(encoder)
    pieces = ["The committee met on Tuesday", " to discuss the budget", " and the repairs of the old bridge."]
    for piece in pieces:
        streamed = stream.append(piece)
    out["stream_vs_encode_max_cosine_distance"] = _cosine_distance(streamed, encoder.encode("".join(pieces)))
    started = time.perf_counter()
    out["C_STSBenchmark_tiny"] = evaluate.evaluate_model(resolve_model("C", tiny), ["STSBenchmark"], tiny)["scores"]["STSBenchmark"]
    out["evaluate_seconds"] = round(time.perf_counter() - started, 1)
    print({k: v for k, v in out.items() if k not in ("causal", "teacher", "student")}, flush=True)
    return out


def ggsm_overhead(profile: str) -> dict:
    from streamdistill.pipeline import ggsm_overhead as measure

    result = measure(profile, steps=12, repeats=3)
    print(f"GG-SM overhead on the GPU: {result['overhead_vs_bidirectional']}; tokens/s {result['tokens_per_s']}",
          flush=True)
    return result


def stream_bench(prefix: int, delta: int, updates: int, batch: int, large: bool) -> dict:
    from streamdistill.profiles import get_profile
    from streamdistill.streambench import random_benchmark_encoders, static_benchmark, stream_benchmark

    out = {}
    positions = 2 * (prefix + delta) + 64  # Echo reads the text twice
    shapes = {"cpu student shape": get_profile("cpu")}
    if large:
        shapes["gpu profile shape (whole SmolLM2)"] = get_profile("gpu")
    for name, profile in shapes.items():
        encoders = {k: v.to(DEVICE) for k, v in random_benchmark_encoders(profile, max_positions=positions).items()}
        dynamic = stream_benchmark(profile, prefix, delta, updates, **encoders)
        out[name] = {"dynamic, batch 1": dynamic}
        print(f"stream {name}, dynamic path: latency ms {dynamic['latency_ms']}, x{dynamic['speedup_vs_teacher']:.1f} "
              f"vs teacher (limit {dynamic['token_ratio_limit']:.0f}), max cos dist {dynamic['max_cosine_distance']:.1e}",
              flush=True)
        for b in sorted({1, batch}):
            r = static_benchmark(encoders["student"], encoders["teacher"], prefix, delta, updates, batch=b)
            out[name][f"static, batch {b}"] = r
            print(f"stream {name}, static path (graphs {r['graphs']}), batch {b}: latency ms {r['latency_ms']}, "
                  f"x{r['speedup_vs_teacher']:.1f} vs teacher, {r['streams_per_s']:.0f} streams/s, "
                  f"max cos dist {r['max_cosine_distance']:.1e}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--prefix", type=int, default=4096)
    parser.add_argument("--delta", type=int, default=128)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--overhead-profile", default="cpu")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script without a GPU")
    parser.add_argument("--batch", type=int, default=8, help="streams per batched append on the static path")
    parser.add_argument("--no-large", action="store_true", help="skip the gpu profile's shape (the whole SmolLM2)")
    parser.add_argument("--only", default="", help="comma-separated checks to run: tiny_pipeline,ggsm_overhead,stream")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    report = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__}
    print(report, flush=True)
    for name, check in (("tiny_pipeline", tiny_pipeline),
                        ("ggsm_overhead", lambda: ggsm_overhead(args.overhead_profile)),
                        ("stream", lambda: stream_bench(args.prefix, args.delta, args.updates, args.batch,
                                                        not args.no_large))):
        if args.only and name not in args.only.split(","):
            continue
        try:
            report[name] = check()
        except Exception as exc:  # report every check, even after one fails
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            import traceback

            traceback.print_exc()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
