"""Exact tests on solve counts: :func:`mcnemar_exact_test` (paired) and
:func:`exact_solve_count_test` (two independent samples)."""

from __future__ import annotations

import math
from collections.abc import Callable

from .._checks import check_int
from ._args import _bools, _level, _name
from ._types import ClaimResult, Verdict
from .budget import _smallest
from .distributions import clopper_pearson, wilson

__all__ = ["exact_solve_count_test", "mcnemar_exact_test"]

#: Largest count the exact tests' settle search scales up to (exact sums stay cheap below it).
_EXACT_CAP = 20_000


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _sum_exp(logs: list[float]) -> float:
    top = max(logs)
    return math.exp(top) * math.fsum(math.exp(v - top) for v in logs)


#: Above this many units the exact tails are summed in floating point (log-gamma) instead of integers.
_EXACT_INT_MAX = 2000


def _binom_half_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): exact integer sums up to _EXACT_INT_MAX, then log-gamma."""
    k = max(k, 0)
    if k > n:
        return 0.0
    if n <= _EXACT_INT_MAX:
        return sum(math.comb(n, x) for x in range(k, n + 1)) / 2**n
    return min(1.0, _sum_exp([_log_comb(n, x) - n * math.log(2) for x in range(k, n + 1)]))


def _hypergeom_sf(k: int, n_a: int, n_b: int, solved: int) -> float:
    """P(X >= k) for X = the solved count in sample A when ``solved`` solves are dealt over the
    n_a + n_b units at random (the null of Fisher's exact test)."""
    k, top, total = max(k, 0, solved - n_b), min(n_a, solved), n_a + n_b
    if k > top:
        return 0.0
    if total <= _EXACT_INT_MAX:
        num = sum(math.comb(solved, x) * math.comb(total - solved, n_a - x) for x in range(k, top + 1))
        return num / math.comb(total, n_a)
    norm = _log_comb(total, n_a)
    return min(1.0, _sum_exp([_log_comb(solved, x) + _log_comb(total - solved, n_a - x) - norm
                              for x in range(k, top + 1)]))


def _exact_result(claim: str, effect: float, ci: tuple[float, float], level: float, p_up: float, p_down: float,
                  n: dict[str, int], basis: str, method: str, settle: Callable[[int], bool] | None,
                  now: int, unit: str, cap: int) -> ClaimResult:
    alpha = 1.0 - level
    if effect > 0 and p_up < alpha / 2:
        verdict = Verdict.SUPPORTED
    elif effect < 0 and p_down < alpha / 2:
        verdict = Verdict.NOT_SUPPORTED
    else:
        verdict = Verdict.INCONCLUSIVE
    settle_n, hint = None, None
    if verdict is Verdict.INCONCLUSIVE:
        settle_n = None if settle is None else _smallest(settle, now + 1, cap)
        hint = (f"about {settle_n:,} {unit} (now {now:,}) would settle it, if the solve rates held"
                if settle_n is not None else
                f"no budget would settle it: the solve rates are equal, or more than {cap:,} {unit} would be needed")
    rule = (f"supported if A solves more and the one-sided exact p < {alpha / 2:g}; not supported if B solves "
            f"more and its one-sided exact p < {alpha / 2:g}; else inconclusive")
    p_value = min(1.0, 2 * min(p_up, p_down))
    return ClaimResult(claim, effect, ci[0], ci[1], level, verdict, n, method, rule, basis, "", p_value,
                       settle_n, unit, hint)


def mcnemar_exact_test(solved_a: object, solved_b: object, *, claim: str = "", level: float = 0.95,
                       unit: str = "seeds") -> ClaimResult:
    """"A solves where B does not", on pairs (same seed and task instance): the exact McNemar test.

    Of the pairs where exactly one of A and B solves (the discordant pairs; ``n_a`` A only,
    ``n_b`` B only), under the null each is A's with probability 1/2. One-sided exact p-values:
    ``P(X >= n_a)`` and ``P(X >= n_b)``, ``X ~ Binomial(n_a + n_b, 1/2)``. Verdict:

    - supported if A solves more (``n_a > n_b``) and ``P(X >= n_a) < (1 - level) / 2``;
    - not supported if B solves more and ``P(X >= n_b) < (1 - level) / 2``;
    - inconclusive otherwise. ``p_value`` is the two-sided ``min(1, 2 * smaller one-sided p)``,
      so a decisive verdict is ``p_value < 1 - level`` with the sign of the effect.

    The effect is the difference in solve proportions, ``(n_a - n_b) / pairs``. Its interval is
    exact conditional on the number of discordant pairs ``D = n_a + n_b``:
    ``D / pairs * (2 * [p_lo, p_hi] - 1)`` with ``[p_lo, p_hi]`` the Clopper-Pearson interval of
    ``n_a / D`` (the share of discordant pairs that are A's). It excludes 0 exactly when the
    verdict is decisive (the central Clopper-Pearson interval excludes 1/2 exactly when a
    one-sided exact p is below ``(1 - level) / 2``), so a table's CI never contradicts its
    verdict. With no discordant pairs it is [0, 0] (conditionally, A and B never differ) and the
    verdict inconclusive. An inconclusive verdict names the pairs that would settle it with the
    observed shares of discordant pairs.

    Args:
        solved_a, solved_b: per pair, whether A (B) solved (bools, or 0/1), same length.
        claim: the claim in words. level: in (0, 1). unit: what a pair is ("seeds").

    >>> r = mcnemar_exact_test([True] * 6, [False] * 6, claim="EA reaches 100% where DPA does not")
    >>> r.p_value, r.verdict.value
    (0.03125, 'supported')
    """
    a = _bools("solved_a", solved_a)
    b = _bools("solved_b", solved_b, a.size, "solved_a")
    level = _level(level)
    unit = _name("unit", unit)
    if not isinstance(claim, str):
        raise TypeError(f"claim must be a str, got {type(claim).__name__}")
    both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither, pairs = a.size - both - only_a - only_b, int(a.size)
    disc = only_a + only_b
    effect = (only_a - only_b) / pairs
    if disc:  # conditional on the discordant pairs: exact, and excludes 0 exactly when the test decides
        low, high = clopper_pearson(only_a, disc, level)
        ci = (disc / pairs * (2 * low - 1), disc / pairs * (2 * high - 1))
    else:
        ci = (0.0, 0.0)

    def settle(m: int) -> bool:
        ma, mb = round(only_a * m / pairs), round(only_b * m / pairs)
        return ma != mb and _binom_half_sf(max(ma, mb), ma + mb) < (1 - level) / 2

    return _exact_result(
        claim, effect, ci, level, _binom_half_sf(only_a, disc), _binom_half_sf(only_b, disc),
        {unit: pairs, "A only": only_a, "B only": only_b, "both": both, "neither": neither},
        f"{pairs:,} {unit}, paired: {only_a} A only, {only_b} B only",
        "exact McNemar test (binomial on discordant pairs); conditional Clopper-Pearson CI",
        settle if disc > 0 and only_a != only_b else None, pairs, unit, _EXACT_CAP)


def exact_solve_count_test(solved_a: int, n_a: int, solved_b: int, n_b: int, *, claim: str = "",
                           level: float = 0.95, unit: str = "seeds") -> ClaimResult:
    """"A solves more often than B" on two independent samples: Fisher's exact test.

    One-sided exact p-values from the hypergeometric null (the solves dealt at random over the
    ``n_a + n_b`` units): ``P(X >= solved_a)`` for "A more" and ``P(X <= solved_a)`` for "B more".
    Verdict and ``p_value`` as in :func:`mcnemar_exact_test` (two-sided p = doubled smaller
    one-sided p, which can exceed the probability-sum two-sided Fisher p). Prefer the paired test
    when A and B ran on the same seeds and task instances.

    The effect is ``solved_a / n_a - solved_b / n_b`` with Newcombe's hybrid score interval
    (square-and-add of Wilson intervals; Newcombe 1998, method 10). That interval is not exact
    and is less conservative than Fisher's test: near the boundary it can exclude 0 while the
    verdict (always the exact test's) stays inconclusive, e.g. 7/34 vs 1/34: CI [0.019, 0.340],
    exact p = 0.054.

    >>> r = exact_solve_count_test(5, 5, 0, 5)
    >>> round(r.p_value, 5), r.verdict.value
    (0.00794, 'supported')
    >>> exact_solve_count_test(3, 3, 0, 3).format()
    '+1.00 [95% CI +0.21, +1.00], exact p = 0.1; inconclusive (3 vs 3 seeds; about 4 seeds would settle it)'
    """
    n_a, n_b = check_int("n_a", n_a, 1), check_int("n_b", n_b, 1)
    solved_a, solved_b = check_int("solved_a", solved_a, 0, n_a), check_int("solved_b", solved_b, 0, n_b)
    level = _level(level)
    unit = _name("unit", unit)
    if not isinstance(claim, str):
        raise TypeError(f"claim must be a str, got {type(claim).__name__}")
    total = solved_a + solved_b
    p_up = _hypergeom_sf(solved_a, n_a, n_b, total)
    p_down = 1.0 - _hypergeom_sf(solved_a + 1, n_a, n_b, total)
    ra, rb = solved_a / n_a, solved_b / n_b
    la, ua = wilson(solved_a, n_a, level)
    lb, ub = wilson(solved_b, n_b, level)
    effect = ra - rb
    ci = (max(-1.0, effect - math.hypot(ra - la, ub - rb)), min(1.0, effect + math.hypot(ua - ra, rb - lb)))

    def settle(m: int) -> bool:  # m units in sample A, sample B grown in proportion
        mb = max(1, round(n_b * m / n_a))
        ka, kb = round(ra * m), round(rb * mb)
        if ka == kb * m / mb:
            return False
        if ka / m > kb / mb:
            return _hypergeom_sf(ka, m, mb, ka + kb) < (1 - level) / 2
        return 1.0 - _hypergeom_sf(ka + 1, m, mb, ka + kb) < (1 - level) / 2

    return _exact_result(
        claim, effect, ci, level, p_up, p_down, {f"{unit} (A)": n_a, f"{unit} (B)": n_b},
        f"{n_a:,} vs {n_b:,} {unit}", "Fisher's exact test (one-sided, doubled); Newcombe hybrid score CI",
        settle if effect != 0 else None, n_a, unit, _EXACT_CAP)
