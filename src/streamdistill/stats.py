"""The noise arithmetic every verdict reads: paired seed differences, their standard errors and
intervals, pooled seed spreads, single-seed differences, and Fieller's interval for a ratio.

Pure functions of numbers; :mod:`streamdistill.report` turns them into verdicts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GATE = 2.0  # the half-width, in standard errors, of a single-seed row's interval (no t to read)
LEVEL = 0.95  # every interval of the book


def signed(x: float, digits: int) -> str:
    """``x`` with its sign at ``digits`` decimals, rounded first: a value that rounds to zero reads
    +0.0, never -0.0."""
    return f"{round(float(x), digits) + 0.0:+.{digits}f}"


def _t(n: int, level: float = 0.95) -> float:
    """Student's t quantile for ``n`` paired samples (``n - 1`` degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, max(1, n - 1)))


@dataclass(frozen=True)
class Difference:
    """A difference in points with its standard error and its 95 % interval.

    ``ci`` is the t interval of paired seed differences (``n - 1`` degrees of freedom), or, for a
    single-seed row (``n == 1``), ``mean ± GATE * se`` with ``se = sqrt(2) * pooled seed sd``.
    ``resolved``: the interval excludes 0. ``mdd``: the interval's half-width, the smallest
    difference the seeds used can resolve. ``seeds_to_resolve``: the fewest paired seeds whose t
    interval would exclude 0 at the observed spread (None when the mean is zero or it needs more
    than 1000).
    """

    mean: float
    se: float
    n: int
    sd: float
    ci: tuple[float, float]
    resolved: bool
    mdd: float
    seeds_to_resolve: int | None
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sign(self) -> int:
        """+1 / -1 for a resolved difference, 0 for one within the noise."""
        return 0 if not self.resolved else (1 if self.mean > 0 else -1)

    def text(self, unit: str = "points") -> str:
        return f"{signed(self.mean, 2)} ± {self.se:.2f} {unit}"


def seeds_to_resolve(mean: float, sd: float, limit: int = 1000) -> int | None:
    """The fewest paired seeds n >= 2 with t(n - 1) * sd / sqrt(n) < |mean|, or None."""
    if mean == 0 or not np.isfinite(sd):
        return None
    if sd == 0:
        return 2
    for n in range(2, limit + 1):
        if _t(n) * sd / math.sqrt(n) < abs(mean):
            return n
    return None


def _difference(mean: float, sd: float, n: int, se: float, rule: str) -> Difference:
    half = _t(n) * se if n > 1 else GATE * se
    lo, hi = mean - half, mean + half
    return Difference(mean=float(mean), se=float(se), n=int(n), sd=float(sd), ci=(float(lo), float(hi)),
                      resolved=bool(lo > 0 or hi < 0), mdd=float(half), seeds_to_resolve=seeds_to_resolve(mean, sd),
                      rule=rule)


def paired_difference(x, y) -> Difference:
    """``x - y`` over paired seeds (seed s of both shares data order and initialisation).

    The standard error is that of the per-seed differences, ``sd(d) / sqrt(n)``; the interval is
    the 95 % t interval on ``n - 1`` degrees of freedom. Needs two seeds or more.
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if d.size < 2:
        raise ValueError("a paired difference needs at least two seeds")
    sd = float(d.std(ddof=1))
    return _difference(float(d.mean()), sd, d.size, sd / math.sqrt(d.size),
                       f"paired over {d.size} seeds: 95 % t interval of the per-seed differences")


def pooled_sd(runs: dict[str, list[float]]) -> float:
    """The seed standard deviation pooled over several models' seeds (each with two seeds or more)."""
    num = sum((len(v) - 1) * float(np.var(v, ddof=1)) for v in runs.values() if len(v) > 1)
    dof = sum(len(v) - 1 for v in runs.values() if len(v) > 1)
    if dof == 0:
        raise ValueError("pooling a seed spread needs a model with two seeds or more")
    return math.sqrt(num / dof)


def single_seed_difference(x: float, y: float, sd: float) -> Difference:
    """``x - y`` from one seed each, judged against a pooled seed spread ``sd``: the standard error
    of a difference of two single-seed scores is ``sqrt(2) * sd``, its interval ``± GATE`` of those."""
    se = math.sqrt(2.0) * sd
    return _difference(float(x - y), math.sqrt(2.0) * sd, 1, se,
                       "one seed each: ± 2 × √2 × the pooled seed standard deviation")


def median_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """A distribution-free interval for the median of repeated measurements (a speed measured
    without seeds): the order statistics x_(k) and x_(n+1-k) with the largest k whose binomial
    coverage is at least ``level``; the whole range when there are too few measurements for that."""
    from scipy.stats import binom

    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    k = 0
    # [x[k], x[n-1-k]] (0-indexed) covers the median with probability 1 - 2 P(Binomial(n, 1/2) <= k)
    while k + 1 <= (n - 1) // 2 and 1 - 2 * binom.cdf(k + 1, n, 0.5) >= level:
        k += 1
    return float(x[k]), float(x[n - 1 - k])


def fieller_interval(numerator, denominator, level: float = 0.95) -> tuple[float, float]:
    """Fieller's interval for ``mean(numerator) / mean(denominator)`` from paired per-seed values.

    Unbounded ``(-inf, inf)`` when the denominator's mean is not distinguishable from zero at
    ``level`` (then no ratio is meaningful).
    """
    a, b = np.asarray(numerator, float), np.asarray(denominator, float)
    n = a.size
    ma, mb = a.mean(), b.mean()
    vaa, vbb = a.var(ddof=1) / n, b.var(ddof=1) / n
    vab = float(np.cov(a, b, ddof=1)[0, 1]) / n
    t2 = _t(n, level) ** 2
    # (ma - r mb)^2 = t2 (vaa - 2 r vab + r^2 vbb)  ->  A r^2 + B r + C = 0
    qa, qb, qc = mb * mb - t2 * vbb, -2 * (ma * mb - t2 * vab), ma * ma - t2 * vaa
    disc = qb * qb - 4 * qa * qc
    if qa <= 0 or disc < 0:
        return (-math.inf, math.inf)
    root = math.sqrt(disc)
    return (float((-qb - root) / (2 * qa)), float((-qb + root) / (2 * qa)))


def as_difference(d: dict | Difference) -> Difference:
    return d if isinstance(d, Difference) else Difference(**{**d, "ci": tuple(d["ci"])})
