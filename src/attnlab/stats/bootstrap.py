"""Bootstrap estimates: :func:`paired_bootstrap` (a mean difference on paired, optionally clustered
units) and :func:`slope_ci` ("y grows with x")."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .._checks import check_int
from ._args import _groups, _level, _name, _rng, _vector
from ._types import Estimate
from .distributions import _z, t_quantile

__all__ = ["BCA_MIN_UNITS", "N_BOOT", "paired_bootstrap", "slope_ci"]

#: Default number of bootstrap resamples.
N_BOOT = 2000
#: Fewest resampled units (groups, when clustered) for a BCa interval; fewer get the percentile one.
BCA_MIN_UNITS = 10
#: Elements per chunk of a bootstrap's resample-count matrix (bounds memory at ~32 MB).
_CHUNK = 1 << 22


def _resample_counts(rng: np.random.Generator, n_boot: int, k: int):
    """Chunks of the (resamples, k) matrix of how often each of k units is drawn in a resample of size k."""
    rows = max(1, _CHUNK // k)
    for start in range(0, n_boot, rows):
        r = min(rows, n_boot - start)
        idx = rng.integers(0, k, size=(r, k)) + (np.arange(r) * k)[:, None]
        yield np.bincount(idx.ravel(), minlength=r * k).reshape(r, k).astype(np.float64)


def _expanded_interval(est: float, reps: np.ndarray, jack: np.ndarray, units: int, df: int,
                       level: float) -> tuple[float, float]:
    """The bootstrap interval of the resamples ``reps``, its two arms stretched about ``est``.

    From :data:`BCA_MIN_UNITS` units on, the BCa interval (Efron 1987): bias correction from the
    share of ``reps`` below ``est``, acceleration from the jackknife estimates ``jack``. Each of
    its ends is second-order accurate, where the percentile interval's are only first-order
    (an O(1/sqrt(n)) error per end, which cancels in the two-sided coverage but not in a
    one-sided verdict): on skewed data it keeps the wrong-verdict rates nearer their nominal
    ``(1 - level) / 2``. Below that, the percentile interval: with a handful of units (3 seeds)
    the bias and acceleration estimates are too noisy and BCa covers worse (measured).

    The stretch is ``sqrt(units / df) * t_{df} / z``: the factor that turns the percentile
    interval of a mean of normal data into the t-interval (it undoes the plug-in variance's
    ``df / units`` bias and uses t's quantile instead of z's); it tends to 1 as ``units`` grows.
    """
    if units < BCA_MIN_UNITS:
        jack = np.zeros(1)
        reps_below = 0.5
    else:
        reps_below = (np.count_nonzero(reps < est) + 0.5 * np.count_nonzero(reps == est)) / reps.size
    alpha = 1.0 - level
    z0 = _z(min(max(reps_below, 0.5 / reps.size), 1 - 0.5 / reps.size))
    dev = jack.mean() - jack if jack.size >= 2 else np.zeros(1)
    ss = float(dev @ dev)
    accel = float((dev**3).sum()) / (6.0 * ss**1.5) if ss > 0 else 0.0
    ends = []
    for q in (alpha / 2, 1 - alpha / 2):
        zq = z0 + _z(q)
        ends.append(NormalDist().cdf(z0 + zq / (1 - accel * zq)))
    q_lo, q_hi = np.quantile(reps, ends)
    factor = math.sqrt(units / df) * t_quantile(1 - alpha / 2, df) / _z(1 - alpha / 2)
    return est - factor * max(est - float(q_lo), 0.0), est + factor * max(float(q_hi) - est, 0.0)


def _kind(units: int) -> str:
    return "BCa" if units >= BCA_MIN_UNITS else "percentile"


def _basis(group: str | None, n_groups: int, unit: str, sizes: np.ndarray | None, total: int) -> str:
    if group is None or sizes is None:
        return f"{total:,} {unit}"
    if (sizes == sizes[0]).all():
        return f"{n_groups:,} {group} x {int(sizes[0]):,} {unit}"
    return f"{n_groups:,} {group}, {total:,} {unit}"


def paired_bootstrap(a: object, b: object = None, *, groups: object = None, n_boot: int = N_BOOT,
                     level: float = 0.95, seed: int | np.random.Generator, unit: str = "units",
                     group: str = "groups") -> Estimate:
    """The mean paired difference ``mean(a - b)`` with a bootstrap confidence interval.

    Without ``groups`` the units (e.g. tokens) are resampled with replacement. With ``groups``
    (e.g. the seed of each token) it is a cluster bootstrap: whole groups are resampled with
    replacement and the statistic is the pooled mean over the units of the drawn groups. Units
    within a group are not resampled again: a group's mean already carries its units' noise, and
    resampling both stages counts that noise twice (Davison & Hinkley 1997, section 3.8). Any
    correlation inside a group (tokens of one sequence, of one model) is thus allowed for.

    The interval is the BCa interval (the percentile interval below :data:`BCA_MIN_UNITS`
    resampled units), each arm stretched about the estimate by ``sqrt(G / (G - 1)) * t_{G-1} / z``
    (``G`` = the units resampled: groups, or units without groups); for a mean of normal data
    this makes the percentile interval about the t-interval. Unstretched bootstrap intervals undercover
    with few units, badly so with 3 seeds (they cannot reach beyond the seeds' range); the
    stretch tends to 1 as ``G`` grows and keeps the interval's asymmetry for skewed data.

    Measured (1,000 data sets each, 95%): normal n=30 95.4%; exponential n=40 94.2% (misses
    2.3% below, 3.5% above); 3 seeds x 200 units, normal seed effects 95.2%; 10 seeds, skewed
    units 94.5%. Skewed data with few units remain the weak spot (exponential n=20: 92.4%, the
    misses on the long tail's side; 3 seeds with exponential seed effects: 90%).

    Args:
        a, b: paired values, one per unit (1-D, same length, finite); ``b=None`` takes ``a`` as
            the differences themselves.
        groups: optional cluster label per unit (e.g. the seed); at least 2 distinct labels.
        n_boot: number of resamples (>= 100).
        level: confidence level in (0, 1).
        seed: an int or a ``numpy.random.Generator`` (required: results are reproducible).
        unit, group: names of the units and groups, for the report ("tokens", "seeds").

    Returns:
        An :class:`Estimate`; its ``units``/``unit`` are the groups when ``groups`` is given.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: mismatched lengths, empty or non-finite data, fewer than 2 units (groups),
            ``level`` outside (0, 1), ``n_boot < 100``.

    >>> est = paired_bootstrap([3.0, 4.5, 2.0, 5.0, 3.5], [1.0, 2.0, 1.5, 2.5, 1.0], seed=0)
    >>> round(est.effect, 2), est.ci_low < est.effect < est.ci_high, est.basis
    (2.0, True, '5 units')
    """
    a = _vector("a", a)
    d = a if b is None else a - _vector("b", b, a.size, "a")
    n_boot = check_int("n_boot", n_boot, 100)
    level = _level(level)
    rng = _rng(seed)
    unit = _name("unit", unit)
    est = float(d.mean())
    if groups is None:
        if d.size < 2:
            raise ValueError(f"a needs at least 2 paired units, got {d.size}")
        reps = np.concatenate([w @ d for w in _resample_counts(rng, n_boot, d.size)]) / d.size
        jack = (d.sum() - d) / (d.size - 1)
        units, resampled, n = d.size, unit, {unit: int(d.size)}
        basis = _basis(None, 0, unit, None, d.size)
        how = f"paired bootstrap over {d.size:,} {unit}"
    else:
        group = _name("group", group)
        codes, G = _groups(groups, d.size, "a")
        if G < 2:
            raise ValueError(f"groups needs at least 2 distinct labels, got {G}")
        sums, sizes = np.bincount(codes, weights=d, minlength=G), np.bincount(codes, minlength=G).astype(np.float64)
        reps = np.concatenate([(w @ sums) / (w @ sizes) for w in _resample_counts(rng, n_boot, G)])
        jack = (sums.sum() - sums) / (sizes.sum() - sizes)
        units, resampled, n = G, group, {group: G, unit: int(d.size)}
        basis = _basis(group, G, unit, sizes, d.size)
        how = f"cluster bootstrap over {G} {group} ({d.size:,} {unit})"
    low, high = _expanded_interval(est, reps, jack, units, units - 1, level)
    method = f"{how}, {n_boot:,} resamples, {_kind(units)} CI stretched by the t factor"
    return Estimate(est, low, high, level, n, basis, method, units, resampled, units - 1)


def slope_ci(x: object, y: object, *, groups: object = None, n_boot: int = N_BOOT, level: float = 0.95,
             seed: int | np.random.Generator, unit: str = "points", group: str = "groups") -> Estimate:
    """The least-squares slope of ``y`` on ``x`` with a bootstrap confidence interval.

    Without ``groups`` the (x, y) points are resampled with replacement (case resampling); with
    ``groups`` whole groups of points are (e.g. a seed's margins at every complexity level). The
    interval is the (BCa or percentile) interval stretched as in :func:`paired_bootstrap`, with
    ``df = points - 2`` (or ``groups - 2`` when some group sits at a single x; ``groups - 1`` when
    every group spans at least two x values and so carries a slope of its own). Resamples whose
    x values are all equal have no slope and are dropped.

    Args:
        x, y: 1-D, same length, finite; ``x`` with at least 2 distinct values.
        groups: optional cluster label per point.
        n_boot, level, seed, unit, group: as in :func:`paired_bootstrap`.

    Raises:
        TypeError, ValueError: as :func:`paired_bootstrap`; also too few points or groups for the
            degrees of freedom (at least 3 points, or 2-3 groups), or a constant ``x``.

    >>> x = np.arange(10.0)
    >>> est = slope_ci(x, 2.0 * x + np.random.default_rng(0).normal(0.0, 0.5, 10), seed=0)
    >>> round(est.effect, 2), est.ci_low < 2.0 < est.ci_high
    (1.97, True)
    """
    x = _vector("x", x)
    y = _vector("y", y, x.size, "x")
    n_boot = check_int("n_boot", n_boot, 100)
    level = _level(level)
    rng = _rng(seed)
    unit = _name("unit", unit)
    if np.ptp(x) == 0.0:
        raise ValueError("x must have at least 2 distinct values")
    xc, yc = x - x.mean(), y - y.mean()
    sxx = float(xc @ xc)
    est = float(xc @ yc) / sxx
    stats = np.stack([np.ones_like(xc), xc, yc, xc * xc, xc * yc], axis=1)  # per point: 1, x, y, xx, xy
    if groups is None:
        units, df, resampled, n = x.size, x.size - 2, unit, {unit: int(x.size)}
        basis = _basis(None, 0, unit, None, x.size)
        how = f"bootstrap over {x.size:,} {unit}"
        if df < 1:
            raise ValueError(f"x needs at least 3 points for a slope's CI, got {x.size}")
    else:
        group = _name("group", group)
        codes, G = _groups(groups, x.size, "x")
        stats = np.stack([np.bincount(codes, weights=col, minlength=G) for col in stats.T], axis=1)
        spans = all(np.ptp(x[codes == g]) > 0 for g in range(G))
        units, df, resampled = G, G - 1 if spans else G - 2, group
        if df < 1:
            raise ValueError(f"groups needs at least {2 if spans else 3} groups for a slope's CI, got {G}")
        n = {group: G, unit: int(x.size)}
        basis = _basis(group, G, unit, np.bincount(codes, minlength=G), x.size)
        how = f"cluster bootstrap over {G} {group} ({x.size:,} {unit})"

    def slopes(sums: np.ndarray) -> np.ndarray:  # rows of summed (1, x, y, xx, xy) -> their slopes
        s1, sx, sy, sxx_w, sxy = sums.T
        den = sxx_w - sx * sx / s1
        ok = den > 1e-12 * sxx * s1 / x.size
        return (sxy[ok] - sx[ok] * sy[ok] / s1[ok]) / den[ok]

    reps = np.concatenate([slopes(w @ stats) for w in _resample_counts(rng, n_boot, units)])
    jack = slopes(stats.sum(axis=0) - stats)  # leave one point (group) out
    dropped = n_boot - reps.size
    if reps.size < n_boot // 2:
        raise ValueError(f"x varies in too few resamples ({reps.size} of {n_boot}) for a slope's CI")
    low, high = _expanded_interval(est, reps, jack, units, df, level)
    method = (f"OLS slope, {how}, {n_boot:,} resamples ({dropped} without a slope dropped), "
              f"{_kind(units)} CI stretched by the t factor")
    return Estimate(est, low, high, level, n, basis, method, units, resampled, df)
