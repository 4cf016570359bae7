"""The statistics that settle a study's claims (design section 9): an effect, a CI, a verdict.

A claim is a pre-stated test. Its data give an :class:`Estimate` (an effect with a confidence
interval, by default 95%): :func:`paired_bootstrap` for a mean difference on paired units
(optionally clustered, e.g. tokens within seeds), :func:`slope_ci` for "y grows with x". A rule
then turns the estimate into a :class:`ClaimResult` with a three-valued :class:`Verdict`:
:func:`superiority` ("A > B", or "A better than B by more than X") and :func:`non_inferiority`
("A >= B - margin"). Solve counts ("A reaches 100% where B does not") go through an exact test
instead: :func:`mcnemar_exact_test` (paired by seed and task instance) or
:func:`exact_solve_count_test` (two independent samples). An inconclusive result carries an
estimate of the budget that would settle it (:func:`budget_to_settle`).

The package's modules: :mod:`._types` (the result types), :mod:`.bootstrap`, :mod:`.claims` (the
verdict rules), :mod:`.exact` (the exact tests), :mod:`.budget`, :mod:`.distributions` (t
quantiles, binomial intervals) and :mod:`._args` (argument checks); every public name is here.

Orient every difference so that the claim says it is positive (for a loss, ``a`` = the baseline's
loss, ``b`` = the claimed-better method's loss). Every resampling takes an explicit ``seed``
(an int or a ``numpy.random.Generator``), so that a report is reproducible.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> seeds = np.repeat([0, 1, 2], 500)                    # 3 seeds x 500 tokens
    >>> diff = 1.0 + rng.normal(0.0, 2.0, 1500) + 0.2 * seeds
    >>> est = paired_bootstrap(diff, groups=seeds, unit="tokens", group="seeds", seed=0)
    >>> superiority(est, claim="value-aware beats top-r", unit="points").format()
    '+1.17 points [95% CI +0.57, +2.06]; supported (3 seeds x 500 tokens)'
    >>> non_inferiority(est, margin=0.5, claim="within 0.5 points").verdict
    <Verdict.SUPPORTED: 'supported'>
"""

from ._types import ClaimResult, Estimate, Verdict
from .bootstrap import BCA_MIN_UNITS as BCA_MIN_UNITS  # the defaults, importable here as before the split
from .bootstrap import N_BOOT as N_BOOT
from .bootstrap import paired_bootstrap, slope_ci
from .budget import BUDGET_CAP as BUDGET_CAP
from .budget import budget_to_settle, n_for_half_width
from .claims import ci_verdict, non_inferiority, superiority
from .distributions import clopper_pearson, t_quantile, wilson
from .exact import exact_solve_count_test, mcnemar_exact_test

__all__ = [
    "ClaimResult",
    "Estimate",
    "Verdict",
    "budget_to_settle",
    "ci_verdict",
    "clopper_pearson",
    "exact_solve_count_test",
    "mcnemar_exact_test",
    "n_for_half_width",
    "non_inferiority",
    "paired_bootstrap",
    "slope_ci",
    "superiority",
    "t_quantile",
    "wilson",
]
