"""What this machine is: its CPU's bf16 support, its matmul speed, and the inference precision
that follows from them.

Timings in this book are quoted beside the machine's measured speed (CPUs differ between machines
and days), and stage models are scored under bf16 autocast only where that is faster: on a CPU with
bf16 matrix units (AMX, or AVX512-BF16) a bf16 forward runs about twice as fast as float32; on an
AVX2-only CPU it is emulated and runs about five times slower.
"""

from __future__ import annotations

import functools
import platform
import time
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
BF16_MIN_SPEEDUP = 1.3  # bf16 is chosen only when the probe shows it at least this much faster


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return frozenset()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16() -> list[str]:
    """The native-bf16 flags this CPU has (empty: bf16 would be emulated)."""
    return sorted(set(BF16_FLAGS) & cpu_flags())


def machine_speed(seconds: float = 0.5) -> dict[str, float]:
    """GFLOP/s of one matmul of the cpu model's shape (a batch of 32 texts at 96 tokens through an
    MLP projection), float32 and bf16, on this process's threads."""
    import torch

    speeds = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(32 * 96, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        a @ b  # one-off costs
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            a @ b
            count += 1
        speeds[f"{name}_gflops"] = round(2 * a.shape[0] * a.shape[1] * b.shape[1] * count / elapsed / 1e9, 1)
    return speeds


@functools.cache
def precision_choice() -> dict:
    """The inference precision for ``eval_precision="auto"``, decided once per process.

    ``bfloat16`` only where the CPU has native bf16 (:data:`BF16_FLAGS`) *and* the probe measures
    bf16 matmuls at least :data:`BF16_MIN_SPEEDUP` times faster than float32; ``float32``
    otherwise, without a probe on a CPU that lacks the flags (a choice made on timing alone could
    flip between runs). On a CUDA device: ``bfloat16`` where the GPU supports it.
    """
    import torch

    from_env = __import__("os").environ.get("STREAMDISTILL_DEVICE", "")
    if torch.cuda.is_available() and not from_env.startswith("cpu"):
        ok = torch.cuda.is_bf16_supported()
        return {"precision": "bfloat16" if ok else "float32", "device": "cuda", "native_bf16": ["cuda"] if ok else [],
                "reason": "the GPU supports bf16" if ok else "the GPU lacks bf16"}
    flags = native_bf16()
    out = {"device": "cpu", "native_bf16": flags, "machine": platform.processor() or platform.machine()}
    if not flags:
        return {**out, "precision": "float32", "reason": "the CPU has no native bf16 (no amx_bf16, no avx512_bf16)"}
    speed = machine_speed(0.3)
    ratio = speed["bf16_gflops"] / max(speed["fp32_gflops"], 1e-9)
    chosen = "bfloat16" if ratio >= BF16_MIN_SPEEDUP else "float32"
    return {**out, **speed, "bf16_over_fp32": round(ratio, 2), "precision": chosen,
            "reason": f"native bf16 ({', '.join(flags)}), measured {ratio:.1f}x the float32 matmul rate "
                      f"({'at least' if chosen == 'bfloat16' else 'below'} {BF16_MIN_SPEEDUP}x)"}


def timed_rounds(runs: dict, repeats: int = 3) -> dict[str, list[float]]:
    """Seconds of each ``runs[name]()`` (a call with no arguments), measured side by side.

    Each runs once untimed (one-off costs), then ``repeats`` rounds call every one in turn, so a
    slow moment of a shared machine falls on all of them alike rather than on one; returns every
    round's seconds per name (callers take the best, or pair the rounds into ratios).
    """
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return seconds
