"""The streaming benchmark: its figures are complete and consistent (no timing assertions).

Speed targets are read from the printed figures of ``streamdistill stream-bench``, not asserted
here: a shared CI machine makes wall-clock ratios noisy.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from streamdistill import registry, streambench
from streamdistill.profiles import get_profile
from streamdistill.streambench import random_benchmark_encoders, stream_benchmark, stream_sweep

KEYS = {"prefix", "delta", "updates", "speedup_vs_teacher", "speedup_vs_echo", "speedup_vs_recompute",
        "speedups_vs_teacher", "speedups_vs_recompute", "token_ratio_limit", "max_cosine_distance",
        "oracle_cosine_distance", "latency_ms", "cache_mb", "threads", "precision", "attention_path", "machine_speed"}
PROFILE = get_profile("tiny")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny matrices: thread hand-off costs more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def encoders():
    return random_benchmark_encoders(PROFILE, max_positions=1024)


def check_figures(result: dict, prefix: int, delta: int, updates: int) -> None:
    assert KEYS <= set(result)
    assert (result["prefix"], result["delta"], result["updates"]) == (prefix, delta, updates)
    assert result["token_ratio_limit"] == (prefix + delta) / delta
    assert set(result["latency_ms"]) == set(streambench.METHODS)
    assert all(v > 0 for v in result["latency_ms"].values())
    assert all(len(v) == updates for v in result["latency_ms_all"].values())
    assert 0 <= result["max_cosine_distance"] <= 1e-6 and 0 <= result["oracle_cosine_distance"] <= 1e-6
    assert len(result["cosine_distances"]) == updates
    assert result["attention_path"] == "direct" and result["precision"] == "float32"
    times = result["latency_ms_all"]
    assert result["speedups_vs_recompute"] == pytest.approx(
        [r / k for r, k in zip(times["student_recompute"], times["student_kv"])])
    assert result["cache_mb"] > 0 and result["threads"] >= 1
    kv = result["latency_ms"]["student_kv"]
    assert result["speedup_vs_teacher"] == pytest.approx(result["latency_ms"]["teacher_recompute"] / kv)
    assert result["speedup_vs_echo"] == pytest.approx(result["latency_ms"]["echo_recompute"] / kv)
    assert result["speedup_vs_recompute"] == pytest.approx(result["latency_ms"]["student_recompute"] / kv)


def test_benchmark_figures_with_given_encoders():
    result = stream_benchmark(PROFILE, prefix=96, delta=16, updates=3, **encoders())
    check_figures(result, 96, 16, 3)
    assert result["weights"] == "given" and not result["growing"]
    # the KV cache of L + D tokens: layers x (K + V) x kv_heads x head_dim x float32
    head_dim = PROFILE.hidden_size // PROFILE.num_heads
    expected = PROFILE.num_layers * 2 * PROFILE.num_kv_heads * head_dim * (96 + 16) * 4 / 2**20
    assert result["cache_mb"] == pytest.approx(expected)


def test_growing_stream_and_seeded_ids():
    result = stream_benchmark(PROFILE, prefix=40, delta=8, updates=3, growing=True, **encoders())
    check_figures(result, 40, 8, 3)
    head_dim = PROFILE.hidden_size // PROFILE.num_heads
    assert result["cache_mb"] == pytest.approx(PROFILE.num_layers * 2 * PROFILE.num_kv_heads * head_dim * 64 * 4 / 2**20)
    assert torch.equal(streambench._token_stream(50, 512, 0), streambench._token_stream(50, 512, 0))


def test_sweep_returns_one_result_per_prefix():
    results = stream_sweep(PROFILE, prefixes=(32, 64), delta=16, updates=2, **encoders())
    assert [r["prefix"] for r in results] == [32, 64]
    for r in results:
        check_figures(r, r["prefix"], 16, 2)


def test_echo_beyond_the_positions_is_timed_not_refused():
    models = random_benchmark_encoders(PROFILE, max_positions=160)
    result = stream_benchmark(PROFILE, prefix=96, delta=16, updates=1, **models)
    assert result["echo_beyond_positions"] and result["echo_tokens"] > 160


def test_random_stream_encoders_have_the_profile_shape(monkeypatch):
    monkeypatch.setenv(registry.STREAM_WEIGHTS_ENV, "random")
    models, weights = registry.stream_encoders(PROFILE)
    assert weights == "random"
    assert models["student"].attention == "causal" and models["student"].pooling == "mean"
    assert models["teacher"].attention == "bidirectional" and models["echo_model"].pooling == "echo"
    config = models["student"].backbone.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (PROFILE.hidden_size, PROFILE.num_layers, PROFILE.num_heads,
                                          PROFILE.num_kv_heads, PROFILE.intermediate_size)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="must be >= 1"):
        stream_benchmark(PROFILE, prefix=0, delta=8, updates=1, **encoders())
    with pytest.raises(ValueError, match="positions"):
        stream_benchmark(PROFILE, prefix=2000, delta=8, updates=1, **encoders())
    with pytest.raises(ValueError, match="weights must be"):
        registry.stream_encoders(PROFILE, weights="pretty")


def test_cli_stream_bench_writes_json(tmp_path):
    out = tmp_path / "stream.json"
    env = {**os.environ, registry.STREAM_WEIGHTS_ENV: "random", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamdistill.cli", "stream-bench", "--profile", "tiny", "--out", str(out)],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    check_figures(result, PROFILE.stream_prefix, PROFILE.stream_delta, PROFILE.stream_updates)
    assert result["weights"] == "random"
    assert json.loads(proc.stdout) == result  # stdout is the JSON; the reader's summary goes to stderr
    assert f"token-ratio limit {result['token_ratio_limit']:.1f}x" in proc.stderr


def test_cli_stream_bench_refuses_a_zero_prefix_in_one_line():
    env = {**os.environ, registry.STREAM_WEIGHTS_ENV: "random", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamdistill.cli", "stream-bench", "--profile", "tiny", "--prefix", "0"],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 2
    assert "must be >= 1" in proc.stderr.strip().splitlines()[-1]


def test_gpu_check_script_runs_its_stream_check_as_a_cpu_dry_run(tmp_path):
    """benchmarks/gpu_check.py is run on GPU hosts; its --device cpu dry run keeps it from rotting."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--only", "stream", "--no-large", "--prefix", "32",
         "--delta", "8", "--updates", "2", "--batch", "3", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and set(result) == {"device", "torch", "stream"}
    shape = result["stream"]["cpu student shape"]
    check_figures(shape["dynamic, batch 1"], 32, 8, 2)
    for batch in (1, 3):
        static = shape[f"static, batch {batch}"]
        assert static["batch"] == batch and not static["graphs"] and static["max_cosine_distance"] <= 1e-6
        assert len(static["speedups_vs_teacher"]) == 2 and static["streams_per_s"] > 0


def test_many_streams_batched_equal_one_at_a_time():
    rows = streambench.many_streams_benchmark(encoders()["student"], (1, 3), delta=8, lengths=(16, 200), rounds=2)
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert r["max_cosine_distance"] <= 1e-6 and r["streams_per_s_single"] > 0 and r["streams_per_s_batched"] > 0
        assert r["speedup"] == pytest.approx(r["streams_per_s_batched"] / r["streams_per_s_single"])
        assert 16 + 8 <= r["mean_tokens_per_stream"] <= 200 + 8 and r["cache_mb_per_stream"] > 0


def test_profile_update_groups_both_paths_operators():
    profiled = streambench.profile_update(encoders()["student"], prefix=64, delta=16, repeats=2)
    assert list(profiled) == ["transformers", "direct"]
    for parts in profiled.values():
        assert set(parts) <= set(streambench.UPDATE_PARTS) | {"other"}
        assert parts["attention (scaled dot product)"] > 0 and parts["linear layers (matmul)"] > 0
        assert list(parts.values()) == sorted(parts.values(), reverse=True)
