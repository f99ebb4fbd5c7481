"""The paper's constants and every claim verdict: each outcome a verdict can take is tested."""

import json
import math

import numpy as np
import pytest

from streamdistill import report as R


def test_gap_closure_arithmetic():
    assert R.gap_closure(50.0, 60.0, 56.81) == pytest.approx(0.681)
    assert math.isnan(R.gap_closure(50.0, 50.0, 55.0))
    assert R.type_means({"STSBenchmark": 50.0, "SICK-R": 60.0, "SciFact": 10.0}) == {"Retrieval": 10.0, "STS": 55.0}


@pytest.mark.parametrize("c_minus, verdict", [
    ({"A": (3.0, 0.5), "B": (2.0, 0.4)}, R.HOLDS), ({"A": (3.0, 0.5), "B": (-2.0, 0.4)}, R.DOES_NOT_HOLD),
    ({"A": (3.0, 0.5), "B": (0.3, 0.4)}, R.NOT_RESOLVED)])
def test_all_ahead_verdict_each_outcome(c_minus, verdict):
    diffs = {k: R._difference(m, se * math.sqrt(3), 3, se, "test") for k, (m, se) in c_minus.items()}
    got, sentence = R.all_ahead_verdict(diffs, "C on long documents")
    assert got == verdict and "vs A +3.00 ± 0.50 points" in sentence


# --------------------------------------------------------------------------- the one rule


@pytest.mark.parametrize("lo, hi, paper, verdict, words", [
    (2.5, 3.5, 2.0, R.HOLDS, "above +0.00 and beyond the paper's +2.00"),         # wholly past the figure
    (1.0, 2.5, 2.0, R.HOLDS, "above +0.00 and reaching the paper's +2.00"),       # excludes 0, reaches 2
    (0.2, 1.5, 2.0, R.DOES_NOT_HOLD, "above +0.00 but short of the paper's +2.00"),
    (-0.22, 1.24, 2.0, R.DOES_NOT_HOLD, "short of the paper's +2.00, and it holds +0.00"),  # Echo: say both
    (-1.5, -0.5, 2.0, R.DOES_NOT_HOLD, "wholly below +0.00, the opposite of the paper's +2.00"),
    (-0.5, 2.5, 2.0, R.NOT_RESOLVED, "holds both +0.00 and the paper's +2.00"),
    (0.5, 1.5, None, R.HOLDS, "wholly above +0.00"), (-1.5, -0.5, None, R.DOES_NOT_HOLD, "wholly below +0.00"),
    (-0.5, 0.5, None, R.NOT_RESOLVED, "holds +0.00"),
])
def test_the_one_rule_for_every_outcome(lo, hi, paper, verdict, words):
    got, reason = R.judge(lo, hi, paper=paper)
    assert got == verdict and words in reason, reason


@pytest.mark.parametrize("lo, hi, verdict", [(1e-15, 5e-15, R.HOLDS), (2e-6, 5e-6, R.DOES_NOT_HOLD),
                                             (1e-7, 2e-6, R.NOT_RESOLVED)])
def test_a_bound_is_judged_on_the_good_side_of_the_figure(lo, hi, verdict):
    """Lower is better and the paper's figure is its own null (a fidelity of 1.19e-6 or better)."""
    assert R.judge(lo, hi, paper=1.19e-6, null=1.19e-6, higher_is_better=False)[0] == verdict


def test_the_rule_reads_a_lower_is_better_claim_the_other_way():
    assert R.judge(-3.0, -2.5, paper=-2.0, higher_is_better=False)[0] == R.HOLDS
    assert R.judge(-1.0, 0.5, paper=-2.0, higher_is_better=False)[0] == R.DOES_NOT_HOLD
    assert R.judge(-3.0, 0.5, paper=-2.0, higher_is_better=False)[0] == R.NOT_RESOLVED


@pytest.mark.parametrize("values, goal, verdict", [([31.0, 33.0, 32.0], 30.0, R.HOLDS),
                                                   ([27.0, 33.0, 29.0], 30.0, R.HOLDS),  # consistent with the goal
                                                   ([20.0, 25.0, 22.0], 30.0, R.DOES_NOT_HOLD),
                                                   ([0.8, 31.0, 12.0], 30.0, R.NOT_RESOLVED)])
def test_a_row_without_seeds_is_judged_on_its_range_and_marked_as_hardware(values, goal, verdict):
    got, sentence, stats = R.range_claim(values, "speed-up", paper=goal, null=1.0)
    assert got == verdict and stats["median"] == float(np.median(values)) and "depends on the hardware" in sentence
    assert sentence.startswith(f"speed-up: {np.median(values):.1f}× (median of 3; 95 % interval of the median ")
    assert (stats["low"], stats["high"]) == (min(values), max(values))  # three measurements: their range


def test_the_interval_of_a_median_is_distribution_free():
    from scipy.stats import binom

    x = list(range(1, 21))  # 20 updates: x_(6) to x_(15) covers the median with probability >= 95 %
    assert R.median_interval(x) == (6.0, 15.0)
    assert 1 - 2 * binom.cdf(5, 20, 0.5) >= 0.95 > 1 - 2 * binom.cdf(6, 20, 0.5)
    assert R.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)


def test_differences_and_seeded_tables():
    seeded = _seeded([50, 51, 50.5], [55, 56, 54.5], [53, 54, 53.5], [51, 51.5, 50])
    table = R.differences_table({"B − A": seeded["b_minus_a"], "C − A": seeded["c_minus_a"]})
    assert list(table.index) == ["B − A", "C − A"] and bool(table.loc["B − A", "resolved"])
    frame = R.seeded_table(seeded["per_seed_tasks"])
    assert frame.loc["mean", "A"] == "40.50 ± 0.50" and frame.loc["STSBenchmark", "type"] == "STS"
    partial = R.seeded_table({"A": {"0": {"STSBenchmark": 50.0, "SciFact": 10.0}, "1": {"STSBenchmark": 52.0, "SciFact": 12.0}},
                              "E": {"0": {"STSBenchmark": 51.0}, "1": {"STSBenchmark": 53.0}}},
                             means={"mean": ["STSBenchmark", "SciFact"], "mean, STS only": ["STSBenchmark"]})
    assert partial.loc["SciFact", "E"] == "—" and partial.loc["mean", "E"] == "—"
    assert partial.loc["mean, STS only", "E"] == "52.00 ± 1.41" and partial.loc["mean", "A"] == "31.00 ± 1.41"


def test_harness_table_puts_the_public_scores_beside_ours():
    table = R.harness_table({"STSBenchmark": 82.0, "MRPC": 70.0}, {"STSBenchmark": 82.03})
    assert table.loc["STSBenchmark", "difference"] == pytest.approx(-0.03)
    assert math.isnan(table.loc["MRPC", "public leaderboard"]) and table.loc["MRPC", "type"] == "PairClassification"


# --------------------------------------------------------------------------- seeds and intervals


def test_paired_difference_gate_detectable_difference_and_seeds_needed():
    d = R.paired_difference([55.0, 56.0, 57.0], [52.0, 53.0, 52.5])
    assert d.mean == pytest.approx(3.5) and d.n == 3
    assert d.se == pytest.approx(float(np.std([3.0, 3.0, 4.5], ddof=1)) / math.sqrt(3))
    t2 = 4.302652729911275  # t(0.975) on 2 degrees of freedom
    assert d.ci == pytest.approx((3.5 - t2 * d.se, 3.5 + t2 * d.se)) and d.mdd == pytest.approx(t2 * d.se)
    assert d.resolved == (d.ci[0] > 0) and d.resolved
    small = R.paired_difference([50.1, 50.9, 49.8], [50.0, 50.0, 50.0])
    assert not small.resolved and small.sign() == 0
    # seeds to resolve: the smallest n whose t interval would exclude 0 at the observed spread
    n = small.seeds_to_resolve
    from streamdistill.stats import _t

    assert _t(n) * small.sd / math.sqrt(n) < abs(small.mean) <= _t(n - 1) * small.sd / math.sqrt(n - 1)
    # the Echo row of the cpu record: +0.51 ± 0.17 over 3 seeds passed a 2-SE gate, not the t interval
    echo = R._difference(0.51, 0.17 * math.sqrt(3), 3, 0.17, "paired")
    assert not echo.resolved and echo.ci == pytest.approx((0.51 - t2 * 0.17, 0.51 + t2 * 0.17))
    with pytest.raises(ValueError, match="at least two seeds"):
        R.paired_difference([1.0], [0.0])


def test_single_seed_differences_are_judged_against_root_two_pooled_spreads():
    sd = R.pooled_sd({"A": [50.0, 51.0, 52.0], "B": [55.0, 55.5, 56.0]})
    assert sd == pytest.approx(math.sqrt((2 * 1.0 + 2 * 0.25) / 4))
    d = R.single_seed_difference(53.0, 50.0, sd)
    assert d.se == pytest.approx(math.sqrt(2) * sd) and d.n == 1 and d.resolved == (3.0 > 2 * d.se)
    assert d.ci == pytest.approx((3.0 - 2 * d.se, 3.0 + 2 * d.se))
    assert not R.single_seed_difference(50.5, 50.0, sd).resolved


def test_fieller_interval_brackets_the_ratio_and_is_unbounded_without_a_gap():
    lo, hi = R.fieller_interval([1.5, 2.5, 2.0], [3.0, 3.1, 4.5])
    assert lo < 2.0 / np.mean([3.0, 3.1, 4.5]) < hi
    assert R.fieller_interval([1.0, -1.0, 0.5], [0.2, -0.3, 0.1]) == (-math.inf, math.inf)


def _seeded(a, b, c, echo=None):
    models = {"A": a, "B": b, "C": c} | ({"A+Echo": echo} if echo else {})
    return R.gap_closure_seeded({m: {s: {"STSBenchmark": v[s], "SciFact": v[s] - 20} for s in range(len(v))}
                                 for m, v in models.items()})


@pytest.mark.parametrize("a, b, c, verdict", [
    ([50, 51, 50.5], [55, 56, 54.5], [53, 54, 53.5], R.HOLDS),           # closes ~64 %, interval above 0, holds 68 %
    ([50, 51, 50.5], [55, 56, 54.5], [50.5, 51.2, 50.9], R.DOES_NOT_HOLD),  # closes little: interval below 68 %
    ([50, 51, 50.5], [50.2, 50.8, 50.9], [53, 54, 53.5], R.NOT_RESOLVED),  # B - A within the noise
    ([50, 51, 50.5], [53, 56, 52], [50, 54, 52], R.NOT_RESOLVED),         # interval holds 0 and 68 %
])
def test_gap_closure_over_seeds_for_every_outcome(a, b, c, verdict):
    seeded = _seeded(a, b, c)
    assert seeded["seeds"] == [0, 1, 2] and set(seeded["per_seed"]) == {"A", "B", "C"}
    assert seeded["resolved"] == R.as_difference(seeded["b_minus_a"]).resolved
    got, sentence = R.closure_verdict(seeded)
    assert got == verdict, sentence
    assert json.loads(json.dumps(seeded, default=float))  # what `streamdistill gap-closure --out` writes


def test_per_type_closures_appear_only_where_that_types_gap_is_resolved():
    per = {m: {s: {"STSBenchmark": v[s], "SciFact": w[s]} for s in range(3)}
           for m, v, w in [("A", [50, 51, 50.5], [10, 10, 10]), ("B", [55, 56, 54.5], [10.5, 9.6, 10.1]),
                           ("C", [53, 54, 53.5], [10, 10, 10])]}
    by_type = R.gap_closure_seeded(per)["by_type"]
    assert by_type["STS"]["resolved"] and by_type["STS"]["gap_closure"] == pytest.approx(3.0 / 4.67, abs=0.01)
    assert not by_type["Retrieval"]["resolved"] and by_type["Retrieval"]["gap_closure"] is None


@pytest.mark.parametrize("c, echo, verdict, words", [
    ([53, 54, 53.5], [51, 51.5, 50], R.HOLDS, "reaching the paper's +2.00"),          # +2.67, interval 0.2 to 5.1
    ([50, 51, 50.5], [53, 54, 53.5], R.DOES_NOT_HOLD, "the opposite of the paper's"),  # -3.00 exactly
    ([53, 54, 53.5], [53.2, 53.6, 53.9], R.DOES_NOT_HOLD, "and it holds +0.00"),       # -0.07: short of +2, holds 0
    ([53, 54, 53.5], [50.5, 53.0, 52.0], R.NOT_RESOLVED, "holds both")])               # +1.67 ± 0.73
def test_the_echo_claim_for_every_outcome(c, echo, verdict, words):
    seeded = _seeded([50, 51, 50.5], [55, 56, 54.5], c, echo)
    got, sentence = R.difference_claim(seeded["c_minus_echo"], "C against A+Echo", paper=R.PAPER_STUDENT_MINUS_ECHO)
    assert got == verdict and sentence.startswith("C against A+Echo") and words in sentence, sentence


def test_percentages_never_read_minus_zero():
    assert R._pct(-0.003) == "0 %" and R._pct(0.4049) == "40 %" and R._pct(-0.99) == "-99 %"
    assert R._pct(-math.inf) == "−∞"


def test_an_unbounded_closure_interval_is_said_in_words():
    """B − A beyond 2 SE but not beyond t(0.975, 2) SE at three seeds: the 2-SE gate lets the
    closure through, Fieller's interval is unbounded, and the text says why instead of −∞ to +∞."""
    gap = {"mean": 1.0, "se": 0.4, "n": 3, "sd": 0.69, "ci": (-0.7, 2.7), "resolved": True, "mdd": 0.8,
           "seeds_to_resolve": 2, "rule": "paired"}
    by_type = {"Retrieval": {"b_minus_a": gap, "resolved": True, "gap_closure": -1.12,
                             "gap_closure_interval": (-math.inf, math.inf)}}
    verdict, text = R.per_type_claim(by_type)
    assert verdict == R.NOT_RESOLVED and "∞" not in text
    assert text == "Retrieval -112 % (interval unbounded: B − A is not distinguishable from 0 at 95 %)"


def test_the_closure_is_also_shown_without_the_task_that_can_carry_the_slice():
    """SciFact lifts the slice mean: the closure without it is computed from the same seeds."""
    per = {m: {s: {"STSBenchmark": v[s], "SciFact": w[s]} for s in range(3)}
           for m, v, w in [("A", [50, 51, 50.5], [10, 10.2, 10.1]), ("B", [55, 56, 54.5], [12, 12.1, 12.2]),
                           ("C", [51, 52, 51.5], [13, 13.1, 13.2])]}
    seeded = R.gap_closure_seeded(per)
    sub = seeded["without_task"]
    assert sub["task"] == "SciFact" and sub["tasks"] == ["STSBenchmark"]
    assert sub["gap_closure"] == pytest.approx(1.0 / (np.mean([5, 5, 4]))) and sub["gap_closure"] < seeded["gap_closure"]
    assert "; without SciFact 21 % (16 % to 31 %)" in R.closure_text(seeded)


def test_paired_closure_reads_a_warm_start_against_its_control():
    means = {"A": {0: 50.0, 1: 51.0, 2: 50.5}, "B": {0: 55.0, 1: 56.0, 2: 54.5},
             "C-fromA": {0: 53.0, 1: 54.0, 2: 53.4}, "A-continued": {0: 51.0, 1: 52.2, 2: 51.5}}
    out = R.paired_closure(means, [0, 1, 2], ("C-fromA", "A-continued"))
    assert out["gap_closure"] == pytest.approx(np.mean([2.0, 1.8, 1.9]) / np.mean([5.0, 5.0, 4.0]))
    lo, hi = out["gap_closure_interval"]
    assert lo < out["gap_closure"] < hi and out["resolved"]


def test_the_differences_table_keeps_numeric_columns_so_it_rounds():
    seeded = _seeded([50, 51, 50.5], [55.1234, 56, 54.5], [53, 54, 53.5], [51, 51.5, 50])
    table = R.differences_table({"B − A": seeded["b_minus_a"]}).round(3)
    assert table.loc["B − A", "difference"] == round(seeded["b_minus_a"]["mean"], 3)
    assert table["resolved"].dtype == bool and table["seeds"].dtype.kind == "i"


def test_a_difference_that_rounds_to_zero_prints_without_a_minus_sign():
    assert (R.signed(49.96 - 50.0, 1), R.signed(49.1 - 50.0, 1)) == ("+0.0", "-0.9")
    assert R.paired_difference([50.0, 50.0, 50.0], [50.003, 49.998, 50.0]).text().startswith("+0.00 ±")


@pytest.mark.parametrize("teacher_ms, distance, goal, fidelity, above", [
    (3200.0, 3e-15, R.HOLDS, "within", False),  # 25.6-35.2x reaches 30x
    (2000.0, 2e-6, R.DOES_NOT_HOLD, "ABOVE", False),  # 16-22x is short of it
    (4000.0, 3e-15, R.HOLDS, "within", True),  # a median of 40x passes the 33x limit: flagged
])
def test_stream_bench_text_reads_the_goal_and_the_fidelity_from_the_figures(teacher_ms, distance, goal, fidelity,
                                                                            above):
    kv = 100.0
    bench = {"profile": "cpu", "weights": "trained", "prefix": 4096, "delta": 128, "updates": 3, "threads": 2,
             "precision": "float32", "device": "cpu", "attention_path": "direct",
             "machine_speed": {"fp32_gflops": 274.8, "bf16_gflops": 2466.9},
             "latency_ms": {"student_kv": kv, "teacher_recompute": teacher_ms},
             "speedups_vs_teacher": [teacher_ms / kv * f for f in (0.8, 1.0, 1.1)],
             "speedups_vs_recompute": [15.0, 20.0, 21.0],
             "speedup_vs_teacher": teacher_ms / kv, "speedup_vs_echo": 80.0, "speedup_vs_recompute": 20.0,
             "token_ratio_limit": 33.0, "max_cosine_distance": distance, "oracle_cosine_distance": 4e-15,
             "cache_mb": 24.8, "echo_beyond_positions": False}
    text = R.stream_bench_text(bench)
    median = teacher_ms / kv
    assert f"vs recomputing teacher B: {median:.1f}x (median; updates {0.8 * median:.1f}-{1.1 * median:.1f}x)" in text
    assert f"{100 * median / 33:.0f} % of the token-ratio limit 33.0x" in text
    assert "vs the student's own recompute: 20.0x (median; updates 15.0-21.0x), 61 % of the token-ratio limit" in text
    assert f"Verdict: {goal}." in text and "275 fp32 / 2467 bf16 GFLOP/s" in text
    assert ("ABOVE the token-ratio limit" in text) == above
    assert f"{distance:.2e} ({fidelity} 1e-6" in text and "vs transformers' forward 4.00e-15" in text


def test_claim_parts_name_every_part_and_refuse_an_unknown_verdict():
    parts = R.claim_parts("echo", paper="+2.0 points", here="+0.51 ± 0.17", verdict=R.DOES_NOT_HOLD,
                          basis="3 paired seeds, 95 % t interval", value=0.51, low=-0.22, high=1.24)
    assert set(parts) == {f"claim_echo_{p}" for p in R.CLAIM_PARTS} and parts["claim_echo_low"] == -0.22
    assert "claim_x_value" not in R.claim_parts("x", paper="p", here="h", verdict=R.HOLDS, basis="b")
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        R.claim_parts("x", paper="p", here="h", verdict="maybe", basis="b")
    basis = R.hardware_basis({"fp32_gflops": 105.4, "bf16_gflops": 2453.5}, "bfloat16")
    assert basis == "measured without seeds; depends on the hardware: this machine 105 fp32 / 2454 bf16 GFLOP/s, bfloat16"
