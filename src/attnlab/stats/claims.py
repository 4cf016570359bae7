"""Verdict rules: an :class:`Estimate` and a rule give a :class:`ClaimResult`
(:func:`superiority`, :func:`non_inferiority`; :func:`ci_verdict` for a bare interval)."""

from __future__ import annotations

import math

import numpy as np

from ._args import _real
from ._types import ClaimResult, Estimate, Verdict
from .budget import BUDGET_CAP, budget_to_settle

__all__ = ["non_inferiority", "superiority"]


def _claim(estimate: object, claim: object, unit: object) -> tuple[Estimate, str, str]:
    if not isinstance(estimate, Estimate):
        raise TypeError(f"estimate must be an Estimate (from paired_bootstrap or slope_ci), "
                        f"got {type(estimate).__name__}")
    if not isinstance(claim, str):
        raise TypeError(f"claim must be a str, got {type(claim).__name__}")
    if not isinstance(unit, str):
        raise TypeError(f"unit must be a str, got {type(unit).__name__}")
    return estimate, claim, unit


def _rule(ci_low: float, ci_high: float, threshold: float) -> Verdict:
    if ci_low > threshold:
        return Verdict.SUPPORTED
    return Verdict.NOT_SUPPORTED if ci_high < threshold else Verdict.INCONCLUSIVE


def ci_verdict(ci_low: float, ci_high: float, threshold: float) -> Verdict:
    """The three-valued rule of every claim, on a bare confidence interval (for an interval that
    is not an :class:`Estimate`, e.g. Clopper-Pearson's): supported if ``ci_low > threshold``,
    not supported if ``ci_high < threshold``, inconclusive otherwise.

    Raises:
        TypeError: a bound or the threshold that is not a number.
        ValueError: a NaN, or ``ci_low > ci_high``.

    >>> [ci_verdict(lo, hi, 0.5).value for lo, hi in ((0.6, 0.9), (0.4, 0.9), (0.1, 0.3))]
    ['supported', 'inconclusive', 'not supported']
    """
    for name, value in (("ci_low", ci_low), ("ci_high", ci_high), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if math.isnan(value):
            raise ValueError(f"{name} must not be NaN")
    if ci_low > ci_high:
        raise ValueError(f"ci_low must be <= ci_high, got {ci_low} > {ci_high}")
    return _rule(float(ci_low), float(ci_high), float(threshold))


def _judge(est: Estimate, claim: str, unit: str, threshold: float, rule: str) -> ClaimResult:
    verdict = _rule(est.ci_low, est.ci_high, threshold)
    settle_n, hint = None, None
    if verdict is Verdict.INCONCLUSIVE:
        settle_n = budget_to_settle(est.effect, est.ci_low, est.ci_high, est.units, threshold=threshold,
                                    level=est.level, df_lost=est.units - est.df)
        hint = _hint(settle_n, est.units, est.unit, threshold)
    return ClaimResult(claim, est.effect, est.ci_low, est.ci_high, est.level, verdict, dict(est.n), est.method,
                       rule, est.basis, unit, None, settle_n, est.unit, hint)


def _hint(settle_n: int | None, now: int, unit: str, threshold: float) -> str:
    if settle_n is None:
        return (f"no budget would settle it: the estimate sits at the threshold {threshold:g}, or more than "
                f"{BUDGET_CAP:,} {unit} would be needed")
    return (f"about {settle_n:,} {unit} (now {now:,}) would settle it, if the effect and its spread held "
            f"(CI half-width ~ t/sqrt(n))")


def superiority(estimate: Estimate, *, claim: str = "", by: float = 0.0, unit: str = "") -> ClaimResult:
    """The verdict on "the effect exceeds ``by``" ("A > B" with ``by=0``; "A beats B by more than X"
    with ``by=X``), from the estimate's confidence interval:

    - supported if ``ci_low > by``;
    - not supported if ``ci_high < by``;
    - inconclusive otherwise (the CI contains ``by``), with the budget that would settle it.

    With a 95% two-sided CI each wrong decisive verdict has at most a 2.5% rate (one-sided).

    Args:
        estimate: from :func:`paired_bootstrap` or :func:`slope_ci` (a slope > ``by``: "y grows
            with x").
        claim: the claim in words; unit: the effect's unit, for :meth:`ClaimResult.format`.

    >>> est = Estimate(0.8, -0.3, 1.9, 0.95, {"seeds": 3}, "3 seeds", "m", 3, "seeds", 2)
    >>> r = superiority(est, claim="A > B")
    >>> r.verdict.value, r.settle_n
    ('inconclusive', 4)
    """
    est, claim, unit = _claim(estimate, claim, unit)
    by = _real("by", by)
    return _judge(est, claim, unit, by, f"supported if ci_low > {by:g}; not supported if ci_high < {by:g}; "
                                        "else inconclusive")


def non_inferiority(estimate: Estimate, *, margin: float, claim: str = "", unit: str = "") -> ClaimResult:
    """The verdict on "A >= B - margin" for an estimate of A - B (higher is better):

    - supported if ``ci_low > -margin``;
    - not supported if ``ci_high < -margin``;
    - inconclusive otherwise, with the budget that would settle it.

    Args:
        estimate: from :func:`paired_bootstrap` (A - B).
        margin: the stated non-inferiority margin, >= 0, in the effect's unit.
        claim, unit: as in :func:`superiority`.

    >>> est = Estimate(-0.2, -0.9, 0.5, 0.95, {"seeds": 5}, "5 seeds", "m", 5, "seeds", 4)
    >>> non_inferiority(est, margin=1.0).verdict.value, non_inferiority(est, margin=0.5).verdict.value
    ('supported', 'inconclusive')
    """
    est, claim, unit = _claim(estimate, claim, unit)
    margin = _real("margin", margin)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return _judge(est, claim, unit, -margin, f"non-inferiority, margin {margin:g}: supported if ci_low > "
                                             f"{-margin:g}; not supported if ci_high < {-margin:g}; else inconclusive")
