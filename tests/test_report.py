"""The paper's constants and every claim verdict: each outcome a verdict can take is tested."""

import math

import pytest

from streamdistill import report as R


def test_gap_closure_arithmetic():
    assert R.gap_closure(50.0, 60.0, 56.81) == pytest.approx(0.681)
    assert math.isnan(R.gap_closure(50.0, 50.0, 55.0))
    report = R.gap_closure_report({
        "A": {"STSBenchmark": 50.0, "SciFact": 10.0},
        "A+Echo": {"STSBenchmark": 52.0, "SciFact": 11.0},
        "B": {"STSBenchmark": 60.0, "SciFact": 20.0},
        "C": {"STSBenchmark": 58.0, "SciFact": 12.0},
    })
    assert report["gap_closure"] == pytest.approx((35 - 30) / (40 - 30))
    assert report["gap_closure_by_type"] == {"Retrieval": pytest.approx(0.2), "STS": pytest.approx(0.8)}
    assert report["student_minus_echo"] == pytest.approx(35 - 31.5)
    assert R.gap_closure_verdict(report) == ("The student closes only 50 % of the A -> B gap of 10.00 points "
                                             "(paper: 68.1 %). C beats A+Echo by 3.50 points (paper: +2.0) "
                                             "while reading each text once (Echo reads it twice).")


@pytest.mark.parametrize("a, b, c, echo, expected", [
    (45.16, 45.76, 44.69, 45.56, ["does not hold at this scale", "-0.47 points against A", "+0.60 points above A",
                                  "does not beat A+Echo here (-0.87 points"]),
    (50.0, 49.0, 55.0, 40.0, ["B does not beat the causal baseline A here (B - A = -1.00 points)", "beats A+Echo by 15.00"]),
    (50.0, 60.0, 59.0, 50.0, ["closes 90 % of the A -> B gap of 10.00 points, as much as the paper's 68.1 % or more"]),
])
def test_gap_closure_verdict_says_which_way_the_numbers_went(a, b, c, echo, expected):
    report = R.gap_closure_report({"A": {"STSBenchmark": a}, "A+Echo": {"STSBenchmark": echo},
                                   "B": {"STSBenchmark": b}, "C": {"STSBenchmark": c}})
    verdict = R.gap_closure_verdict(report)
    assert all(part in verdict for part in expected), verdict


def test_best_teacher_verdict_both_ways():
    assert R.best_teacher_verdict({"B": 50.0, "B-hard": 49.0, "B-linear": 49.5}) == \
        "GG-SM (B) is the best of the three teachers here"
    assert R.best_teacher_verdict({"B": 50.0, "B-hard": 49.0, "B-linear": 50.25}) == \
        "GG-SM (B) is not the best teacher here: B-linear is, by 0.25 points"


@pytest.mark.parametrize("means, expected", [
    ({"A": 10.0, "B": 12.0, "C": 15.0}, "The claim holds here: C (15.0) beats every other model (next: B, 12.0)."),
    ({"A": 10.0, "B": 16.0, "C": 15.0}, "The claim does not hold here: C scores 15.0, below B (16.0)."),
    ({"A": 10.0, "B": 16.0}, "The stage models are not available here, so the claim is not tested."),
])
def test_long_context_verdict_each_outcome(means, expected):
    assert R.long_context_verdict(means) == expected


@pytest.mark.parametrize("teacher_gain, student_gain, start", [
    (3.0, 2.0, "Inherited: PCA ordering lets the teacher keep +3.0 points"),
    (3.0, -1.0, "Not inherited here: PCA ordering helps the teacher at 32 dimensions (+3.0 points"),
    (-5.0, 1.0, "PCA ordering does not help the teacher at 32 dimensions here (-5.0 points kept)"),
])
def test_mrl_verdict_each_outcome(teacher_gain, student_gain, start):
    assert R.mrl_verdict(teacher_gain, student_gain, 32).startswith(start)


def test_harness_table_puts_the_public_scores_beside_ours():
    table = R.harness_table({"STSBenchmark": 82.0, "MRPC": 70.0}, {"STSBenchmark": 82.03})
    assert table.loc["STSBenchmark", "difference"] == pytest.approx(-0.03)
    assert math.isnan(table.loc["MRPC", "public leaderboard"]) and table.loc["MRPC", "type"] == "PairClassification"
