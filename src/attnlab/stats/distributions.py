"""Distributions and binomial intervals (numpy and math only: no scipy)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from statistics import NormalDist

from .._checks import check_int
from ._args import _level, _real

__all__ = ["clopper_pearson", "t_quantile", "wilson"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _bisect(f: Callable[[float], float], lo: float, hi: float) -> float:
    """The root of an increasing ``f`` in [lo, hi] (f(lo) <= 0 <= f(hi)), to float precision."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if f(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _z(p: float) -> float:
    return NormalDist().inv_cdf(p)


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom.

    Bisection on the t CDF (through the incomplete beta function) for ``df <= 1000``, the
    Cornish-Fisher expansion to 1/df**3 above (error < 1e-9 there).

    >>> round(t_quantile(0.975, 2), 4), round(t_quantile(0.975, 10), 4), round(t_quantile(0.025, 1), 3)
    (4.3027, 2.2281, -12.706)
    """
    p = _real("p", p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    df = check_int("df", df, 1)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df > 1000:
        z = _z(p)
        g1 = (z**3 + z) / 4
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
        return z + g1 / df + g2 / df**2 + g3 / df**3
    tail = 1.0 - p

    def excess(t: float) -> float:  # increasing in t: tail - P(T > t)
        return tail - 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    hi = 1.0
    while excess(hi) < 0.0:
        hi *= 2.0
    return _bisect(excess, 0.0, hi)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) confidence interval for a binomial proportion ``k / n``.

    Each end has at most ``(1 - level) / 2`` probability of missing the true proportion: the
    lower end solves ``P(X >= k | p) = (1 - level) / 2``, the upper ``P(X <= k | p) = (1 - level) / 2``.

    >>> [round(v, 4) for v in clopper_pearson(0, 10)]
    [0.0, 0.3085]
    >>> [round(v, 4) for v in clopper_pearson(3, 10)]
    [0.0667, 0.6525]
    """
    n = check_int("n", n, 1)
    k = check_int("k", k, 0, n)
    alpha = 1.0 - _level(level)
    # P(X >= k | p) = I_p(k, n - k + 1); P(X <= k | p) = 1 - I_p(k + 1, n - k)
    low = 0.0 if k == 0 else _bisect(lambda p: _betainc(k, n - k + 1, p) - alpha / 2, 0.0, 1.0)
    high = 1.0 if k == n else _bisect(lambda p: _betainc(k + 1, n - k, p) - (1.0 - alpha / 2), 0.0, 1.0)
    return low, high


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ``k / n``.

    >>> [round(v, 4) for v in wilson(0, 10)]
    [0.0, 0.2775]
    """
    n = check_int("n", n, 1)
    k = check_int("k", k, 0, n)
    z = _z(0.5 + _level(level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
