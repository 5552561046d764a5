"""Seed noise, stated: intervals of means and of paired differences, the pooled within-config spread, a verdict.

A proxy score is one draw from a distribution over seeds. Two configs differ only where the difference of their
scores is larger than that noise, so every comparison this project prints goes through here: a mean with its
95 % t-interval (:func:`interval`), a paired comparison over the seeds both configs were trained with
(:func:`paired_difference`, which cancels what a seed does to every config alike: data order and
initialisation), and a plain verdict (:func:`verdict`).

Where several configs were trained under the same seeds (the finalists of a search), the seed noise of a paired
difference is estimated from all of them (:func:`blocked_sd`, the residual of an additive configs × seeds model)
rather than from the pair alone: with 2 seeds a pair's own estimate has 1 degree of freedom and a t quantile of
12.7, 4 verified configs give 3 and 3.18. This assumes the configs' seed noise is alike; with two configs it is
exactly the paired t-interval.

Written out rather than taken from SciPy (not a dependency): the t quantile is the inverse of the regularised
incomplete beta function, by bisection on a continued fraction (Numerical Recipes' ``betacf``)::

    >>> round(t_quantile(0.975, 2), 3)
    4.303
    >>> iv = paired_difference([0.80, 0.82, 0.81], [0.78, 0.79, 0.79])
    >>> round(iv.mean, 4), verdict(iv)
    (0.0233, 'better')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["CONFIDENCE", "VERDICTS", "Interval", "blocked_sd", "interval", "paired_difference", "paired_words",
           "pooled_difference", "pooled_sd", "t_quantile", "verdict"]

CONFIDENCE = 0.95
VERDICTS = ("better", "worse", "not distinguishable")


@dataclass(frozen=True)
class Interval:
    """``mean`` ± ``half`` at ``confidence``, from ``n`` values (``half`` is NaN below 2 values); ``pooled``: for a
    paired difference whose noise was estimated over more configs than the pair (:func:`pooled_difference`), how
    many, else 0."""

    mean: float
    half: float
    n: int
    confidence: float = CONFIDENCE
    pooled: int = 0

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def format(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """``+1.23 ± 0.45 unit`` (``± ?`` when there is no interval)."""
        mean = f"{self.mean * scale:+.{digits}f}"
        half = "?" if math.isnan(self.half) else f"{self.half * scale:.{digits}f}"
        return f"{mean} ± {half}{(' ' + unit) if unit else ''}"


def _betacf(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > 1e-300 else 1e-300
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > 1e-300 else 1e-300
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``0 < q < 1``, ``df > 0``)."""
    if not 0.0 < q < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if _t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of the finite ``values`` with its ``confidence`` t-interval (half-width NaN below 2 values)."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, 0, confidence)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, n, confidence)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Interval(mean, t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n), n, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Interval of the mean of ``a[i] - b[i]``: the two configs' scores under the same seeds, in the same order."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds on both sides, got {len(a)} and {len(b)}")
    return interval((x - y for x, y in zip(a, b, strict=True)), confidence)


def blocked_sd(rows: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The residual standard deviation of an additive model of ``rows`` (one row per config, one column per seed,
    every config trained under every seed), and its degrees of freedom ``(k - 1) * (n - 1)``: the seed noise of
    the configs once what each config and each seed does to all is taken out (NaN, 0 below 2 rows or columns)."""
    table = [[float(x) for x in row] for row in rows]
    k, n = len(table), (len(table[0]) if table else 0)
    if any(len(row) != n for row in table):
        raise ValueError("blocked_sd needs every config under every seed: rows of different lengths")
    if any(not math.isfinite(x) for row in table for x in row):
        raise ValueError("blocked_sd needs a finite value for every config under every seed")
    dof = (k - 1) * (n - 1)
    if dof <= 0:
        return math.nan, 0
    grand = sum(map(sum, table)) / (k * n)
    row_means = [sum(row) / n for row in table]
    col_means = [sum(row[j] for row in table) / k for j in range(n)]
    ss = sum((x - row_means[i] - col_means[j] + grand) ** 2 for i, row in enumerate(table) for j, x in enumerate(row))
    return math.sqrt(ss / dof), dof


def pooled_difference(a: Sequence[float], b: Sequence[float], sd: float, dof: int, configs: int,
                      confidence: float = CONFIDENCE) -> Interval:
    """Interval of the mean of ``a[i] - b[i]`` (paired as in :func:`paired_difference`) with the noise of the
    :func:`blocked_sd` ``sd`` (``dof`` degrees of freedom) of the ``configs`` configs it was estimated over: the
    half-width is ``t(dof) * sd * sqrt(2 / n)``."""
    own = paired_difference(a, b, confidence)  # the mean and the seeds; its half-width is replaced
    if own.n == 0 or dof <= 0 or not math.isfinite(sd):
        return Interval(own.mean, math.nan, own.n, confidence)
    half = t_quantile(0.5 + confidence / 2.0, dof) * sd * math.sqrt(2.0 / own.n)
    return Interval(own.mean, half, own.n, confidence, pooled=configs)


def paired_words(diff: Interval) -> str:
    """What a paired difference rests on, in words: ``"2 paired seeds"``, and where its noise was pooled,
    ``"2 paired seeds, seed noise pooled over 4 configs"``."""
    seeds = f"{diff.n} paired seed{'s' if diff.n != 1 else ''}"
    return f"{seeds}, seed noise pooled over {diff.pooled} configs" if diff.pooled > 2 else seeds


def pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    """The pooled within-group standard deviation and its degrees of freedom (groups of 1 contribute nothing)."""
    ss, dof = 0.0, 0
    for group in groups:
        xs = _finite(group)
        if len(xs) < 2:
            continue
        mean = sum(xs) / len(xs)
        ss += sum((x - mean) ** 2 for x in xs)
        dof += len(xs) - 1
    return (math.sqrt(ss / dof) if dof else math.nan), dof


def verdict(difference: Interval, direction: str = "maximize") -> str:
    """``better`` / ``worse`` when the interval of a difference (this minus the other) excludes 0, else
    ``not distinguishable`` (also when there is no interval); ``direction`` is the score's."""
    if math.isnan(difference.half) or difference.low <= 0.0 <= difference.high:
        return VERDICTS[2]
    up = difference.low > 0.0
    return VERDICTS[0] if up == (direction == "maximize") else VERDICTS[1]
