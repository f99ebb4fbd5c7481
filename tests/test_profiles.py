import pytest

from streamdistill.profiles import PROFILES, ProfileError, get_profile, parse_sets


def test_named_profiles_and_env_default(monkeypatch):
    assert set(PROFILES) == {"tiny", "cpu", "gpu", "paper"}
    monkeypatch.setenv("STREAMDISTILL_PROFILE", "tiny")
    assert get_profile().name == "tiny"
    monkeypatch.delenv("STREAMDISTILL_PROFILE")
    assert get_profile().name == "cpu"


def test_unknown_profile_is_refused_with_the_list():
    with pytest.raises(ProfileError, match="unknown profile 'huge'; choose one of: tiny, cpu, gpu, paper"):
        get_profile("huge")


def test_overrides_are_typed():
    p = get_profile("tiny", {"train_steps": "7", "lr": "0.5", "pooling": "echo", "task_max_samples": "none", "seeds": "3,4"})
    assert (p.train_steps, p.lr, p.pooling, p.task_max_samples, p.seeds) == (7, 0.5, "echo", None, (3, 4))
    assert get_profile("tiny").train_steps != 7  # profiles are frozen, overrides copy


@pytest.mark.parametrize("sets, message", [
    ({"nope": "1"}, "unknown setting 'nope'"),
    ({"train_steps": "many"}, "expected int"),
    ({"eval_precision": "fp8"}, "eval_precision='fp8': choose one of: float32, bfloat16, auto"),
])
def test_bad_overrides(sets, message):
    with pytest.raises(ProfileError, match=message):
        get_profile("tiny", sets)


def test_parse_sets():
    assert parse_sets(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ProfileError, match="key=value"):
        parse_sets(["oops"])


def test_streaming_fits_the_cpu_model():
    cpu = get_profile("cpu")
    assert cpu.max_positions >= cpu.stream_prefix + cpu.stream_delta


@pytest.mark.parametrize("flags, speeds, chosen", [
    (frozenset({"avx2", "fma"}), None, "float32"),  # AVX2 only: no probe, float32
    (frozenset({"avx2", "amx_bf16"}), {"fp32_gflops": 100.0, "bf16_gflops": 2400.0}, "bfloat16"),
    (frozenset({"avx512_bf16"}), {"fp32_gflops": 100.0, "bf16_gflops": 120.0}, "float32"),  # native but not faster
])
def test_auto_precision_follows_the_cpu_flags_and_the_probe(monkeypatch, flags, speeds, chosen):
    from streamdistill import hardware

    probed = []
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "machine_speed", lambda seconds=0.5: probed.append(seconds) or speeds)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    hardware.precision_choice.cache_clear()
    try:
        choice = hardware.precision_choice()
        assert choice["precision"] == chosen and bool(probed) == (speeds is not None)
        assert get_profile("cpu").eval_precision == chosen and get_profile("tiny").eval_precision == "float32"
        assert get_profile("cpu", {"eval_precision": "float32"}).eval_precision == "float32"
    finally:
        hardware.precision_choice.cache_clear()


def test_this_machines_choice_is_one_of_the_precisions():
    from streamdistill.hardware import native_bf16, precision_choice

    choice = precision_choice()
    assert choice["precision"] == ("float32" if not native_bf16() else choice["precision"])
    assert get_profile("cpu").eval_precision == choice["precision"] in ("float32", "bfloat16")


def test_timed_rounds_run_each_once_untimed_then_alternate_the_rounds(monkeypatch):
    from streamdistill import hardware

    order, clock = [], iter([0.0, 3.0, 3.0, 4.0, 4.0, 6.0, 6.0, 6.5])  # a: 3 then 2; b: 1 then 0.5
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: next(clock))
    seconds = hardware.timed_rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2)
    assert order == ["a", "b", "a", "b", "a", "b"] and seconds == {"a": [3.0, 2.0], "b": [1.0, 0.5]}
