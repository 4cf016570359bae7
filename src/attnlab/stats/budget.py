"""Budgets: how many more units would settle a claim (:func:`budget_to_settle`, :func:`n_for_half_width`)."""

from __future__ import annotations

import math
from collections.abc import Callable

from .._checks import check_int
from ._args import _level, _real
from .distributions import _z, t_quantile

__all__ = ["BUDGET_CAP", "budget_to_settle", "n_for_half_width"]

#: Largest budget :func:`budget_to_settle` searches (beyond it, no budget is named).
BUDGET_CAP = 10**7


def _smallest(pred: Callable[[int], bool], start: int, cap: int) -> int | None:
    """The smallest m in [start, cap] with pred(m), assuming pred is monotone (doubling, then bisection)."""
    if pred(start):
        return start
    lo, hi = start, start
    while True:
        if hi >= cap:
            return None
        lo, hi = hi, min(cap, 2 * hi)
        if pred(hi):
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid, hi)
    return hi


def _width_factor(m: int, df_lost: int, level: float) -> float:
    """How a CI's half-width scales with the number of units m: t_{m - df_lost} / sqrt(m) (z when df_lost=0)."""
    q = 0.5 + level / 2
    return (_z(q) if df_lost == 0 else t_quantile(q, m - df_lost)) / math.sqrt(m)


def budget_to_settle(effect: float, ci_low: float, ci_high: float, n: int, *, threshold: float = 0.0,
                     level: float = 0.95, df_lost: int = 0, cap: int = BUDGET_CAP) -> int | None:
    """About how many units would make a CI exclude ``threshold``, if the effect and spread held.

    The CI's half-width on the threshold's side (``effect - ci_low`` when ``effect > threshold``,
    else ``ci_high - effect``) is scaled from ``n`` units to ``m`` as ``1 / sqrt(m)`` (``df_lost=0``)
    or as ``t_{m - df_lost} / sqrt(m)`` (``df_lost >= 1``: the CI carries a small-sample t factor
    that shrinks too, as :func:`paired_bootstrap` and :func:`slope_ci` do); the answer is the
    smallest ``m`` at which it falls below ``|effect - threshold|``.

    Returns:
        ``n`` when the CI already excludes ``threshold``; None when ``effect == threshold`` (no
        budget settles a claim whose estimate sits on its threshold) or when more than ``cap``
        units would be needed.

    >>> budget_to_settle(0.5, -0.5, 1.5, 10)      # half-width 1 -> 0.5 needs 4x the units
    41
    >>> budget_to_settle(0.5, 0.1, 0.9, 10)
    10
    """
    effect, ci_low, ci_high = (_real(k, v) for k, v in (("effect", effect), ("ci_low", ci_low), ("ci_high", ci_high)))
    threshold = _real("threshold", threshold)
    if not ci_low <= effect <= ci_high:
        raise ValueError(f"effect must lie in [ci_low, ci_high], got {effect} and [{ci_low}, {ci_high}]")
    level = _level(level)
    df_lost = check_int("df_lost", df_lost, 0)
    n = check_int("n", n, df_lost + 1)
    cap = check_int("cap", cap, n)
    if ci_low > threshold or ci_high < threshold:
        return n
    distance = abs(effect - threshold)
    half = effect - ci_low if effect > threshold else ci_high - effect
    if distance == 0.0:
        return None
    now = _width_factor(n, df_lost, level)
    return _smallest(lambda m: half * _width_factor(m, df_lost, level) / now < distance, n + 1, cap)


def n_for_half_width(sd: float, half_width: float, *, level: float = 0.95, df_lost: int = 1) -> int:
    """The smallest n whose t-interval ``t_{n - df_lost} * sd / sqrt(n)`` is at most ``half_width``
    (``df_lost=0``: ``z * sd / sqrt(n)``). Sizes a preset from a measured spread: ``sd`` of the
    per-unit effect (of the per-seed means, when seeds are the units).

    >>> n_for_half_width(1.0, 0.5)
    18
    """
    sd, half_width = _real("sd", sd), _real("half_width", half_width)
    if sd < 0 or half_width <= 0:
        raise ValueError(f"sd must be >= 0 and half_width > 0, got {sd} and {half_width}")
    df_lost = check_int("df_lost", df_lost, 0)
    level = _level(level)
    m = _smallest(lambda m: sd * _width_factor(m, df_lost, level) <= half_width, df_lost + 1, BUDGET_CAP)
    if m is None:
        raise ValueError(f"more than {BUDGET_CAP:,} units needed for half_width {half_width} at sd {sd}")
    return m
