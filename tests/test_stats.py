"""attnlab.stats: the CIs cover at their nominal rate, the verdict rules keep their error rates,
the exact tests and intervals match hand-computed and published values, bad input is named.

Rate checks simulate REPS data sets with fixed seeds, so they are deterministic; their bounds are
what an honest method passes with a wide margin: the nominal rate +- 3 binomial sd over REPS, plus
a stated allowance for the percentile bootstrap's known undercoverage in small and skewed samples
(two-sided coverage error O(1/n), Hall 1988; e.g. the mean of 20 exponential draws: ~92% for
a 95% CI). With 1,000 replicates the scenarios below measured: normal 95.4%, exponential n=40
94.2%, 3 seeds between-seed dominated 95.2%, 10 seeds skewed within 94.5%; slopes 92.3-97.2%.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnlab.stats import (
    ClaimResult,
    Estimate,
    Verdict,
    budget_to_settle,
    clopper_pearson,
    exact_solve_count_test,
    mcnemar_exact_test,
    n_for_half_width,
    non_inferiority,
    paired_bootstrap,
    slope_ci,
    superiority,
    t_quantile,
    wilson,
)

REPS = 400
N_BOOT = 1000
NOMINAL = 0.95
#: Allowance below nominal for the percentile bootstrap's small-sample, skewed-data undercoverage.
UNDERCOVERAGE = 0.025


def _sd(rate: float, reps: int = REPS) -> float:
    return math.sqrt(rate * (1 - rate) / reps)


def _max_rate(rate: float, allowance: float = 0.01) -> float:
    """Largest observed rate of a wrong decisive verdict accepted for a nominal ``rate``."""
    return rate + 3 * _sd(rate) + allowance


# --------------------------------------------------------------------------------------------- data


def _normal(rng):
    return rng.normal(1.0, 2.0, 30), None, 1.0


def _exponential(rng):  # skewed
    return rng.exponential(1.0, 40), None, 1.0


def _clustered(n_seeds: int, between: float, within: float, skewed: bool):
    """Units within seeds: each seed has its own effect (sd ``between``) plus unit noise."""

    def draw(rng):
        seed_effect = rng.normal(0.0, between, n_seeds)[:, None]
        noise = rng.exponential(within, (n_seeds, 200)) - within if skewed else rng.normal(0.0, within, (n_seeds, 200))
        return (0.5 + seed_effect + noise).ravel(), np.repeat(np.arange(n_seeds), 200), 0.5

    return draw


SCENARIOS = {
    "normal-30": _normal,
    "exponential-40": _exponential,
    "3-seeds-between-dominated": _clustered(3, 1.0, 1.0, False),
    "10-seeds-skewed-within": _clustered(10, 0.05, 1.0, True),
}


def _shifted(draw, to: float):
    """The scenario's data shifted so that their true mean is ``to``."""

    def shifted(rng):
        d, groups, mean = draw(rng)
        return d - mean + to, groups, to

    return shifted


# --------------------------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_bootstrap_ci_covers_known_mean_at_nominal_rate(scenario):
    rng = np.random.default_rng(20261201)
    covered = 0
    for rep in range(REPS):
        d, groups, mean = SCENARIOS[scenario](rng)
        est = paired_bootstrap(d, groups=groups, n_boot=N_BOOT, seed=rep)
        covered += est.ci_low <= mean <= est.ci_high
    rate = covered / REPS
    assert NOMINAL - 3 * _sd(NOMINAL) - UNDERCOVERAGE <= rate <= NOMINAL + 3 * _sd(NOMINAL), rate


def test_bootstrap_on_pairs_equals_bootstrap_on_differences():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a - b, seed=3)
    gen = np.random.default_rng(3)
    assert paired_bootstrap(a, b, seed=gen).effect == pytest.approx(float(np.mean(a - b)))


def test_cluster_bootstrap_counts_seeds_not_tokens():
    """4,096 tokens per seed do not make 3 seeds with different effects look certain."""
    rng = np.random.default_rng(1)
    seeds = np.repeat([0, 1, 2], 4096)
    d = np.array([0.3, -0.1, 0.4])[seeds] + rng.normal(0.0, 0.5, seeds.size)
    pooled = paired_bootstrap(d, seed=0)
    clustered = paired_bootstrap(d, groups=seeds, seed=0, unit="tokens", group="seeds")
    assert pooled.ci_low > 0  # the tokens alone would call it
    assert clustered.ci_low < 0 < clustered.ci_high
    assert (clustered.units, clustered.unit, clustered.df) == (3, "seeds", 2)
    assert clustered.n == {"seeds": 3, "tokens": 3 * 4096}
    assert clustered.basis == "3 seeds x 4,096 tokens"
    result = superiority(clustered, claim="A > B")
    assert result.verdict is Verdict.INCONCLUSIVE and result.settle_n > 3 and result.settle_unit == "seeds"


# --------------------------------------------------------------------------------------------- verdict error rates


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_effect_is_not_supported_beyond_nominal_rate(scenario):
    """True effect 0: "A > B" supported (and, the other way, not supported) each at most at ~2.5%."""
    rng = np.random.default_rng(7)
    draw = _shifted(SCENARIOS[scenario], 0.0)
    verdicts = []
    for rep in range(REPS):
        d, groups, _ = draw(rng)
        verdicts.append(superiority(paired_bootstrap(d, groups=groups, n_boot=N_BOOT, seed=rep)).verdict)
    for wrong in (Verdict.SUPPORTED, Verdict.NOT_SUPPORTED):
        assert verdicts.count(wrong) / REPS <= _max_rate(0.025), (wrong, verdicts.count(wrong))


@pytest.mark.parametrize("scenario", ["normal-30", "3-seeds-between-dominated"])
def test_non_inferiority_at_the_margin_is_not_supported_beyond_nominal_rate(scenario):
    margin = 0.5
    rng = np.random.default_rng(11)
    draw = _shifted(SCENARIOS[scenario], -margin)
    supported = 0
    for rep in range(REPS):
        d, groups, _ = draw(rng)
        result = non_inferiority(paired_bootstrap(d, groups=groups, n_boot=N_BOOT, seed=rep), margin=margin)
        supported += result.verdict is Verdict.SUPPORTED
    assert supported / REPS <= _max_rate(0.025), supported


def test_real_effects_are_decided():
    rng = np.random.default_rng(5)
    d = rng.normal(1.0, 1.0, 200)
    assert superiority(paired_bootstrap(d, seed=0)).verdict is Verdict.SUPPORTED
    assert superiority(paired_bootstrap(-d, seed=0)).verdict is Verdict.NOT_SUPPORTED
    assert superiority(paired_bootstrap(d, seed=0), by=3.0).verdict is Verdict.NOT_SUPPORTED  # not by 3
    seeds = np.repeat(np.arange(5), 100)
    d = 1.0 + rng.normal(0.0, 0.1, 5)[seeds] + rng.normal(0.0, 1.0, 500)
    est = paired_bootstrap(d, groups=seeds, seed=0)
    assert superiority(est).verdict is Verdict.SUPPORTED
    assert non_inferiority(est, margin=0.1).verdict is Verdict.SUPPORTED
    worse = paired_bootstrap(-d, groups=seeds, seed=0)
    assert non_inferiority(worse, margin=0.1).verdict is Verdict.NOT_SUPPORTED
    assert non_inferiority(worse, margin=0.1).settle_n is None


def test_verdict_rules_at_their_boundaries():
    def est(lo, hi):
        return Estimate((lo + hi) / 2, lo, hi, 0.95, {"units": 10}, "10 units", "m", 10, "units", 9)

    assert superiority(est(0.01, 1.0)).verdict is Verdict.SUPPORTED
    assert superiority(est(0.0, 1.0)).verdict is Verdict.INCONCLUSIVE  # ci_low must exceed 0
    assert superiority(est(-1.0, -0.01)).verdict is Verdict.NOT_SUPPORTED
    assert superiority(est(1.0, 1.9), by=2.0).verdict is Verdict.NOT_SUPPORTED
    assert non_inferiority(est(-0.4, 0.2), margin=0.5).verdict is Verdict.SUPPORTED
    assert non_inferiority(est(-0.9, -0.6), margin=0.5).verdict is Verdict.NOT_SUPPORTED
    assert non_inferiority(est(-0.6, 0.2), margin=0.5).verdict is Verdict.INCONCLUSIVE
    assert "ci_low > -0.5" in non_inferiority(est(-0.6, 0.2), margin=0.5).rule


# --------------------------------------------------------------------------------------------- slopes


def test_slope_recovers_known_slope():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.0, 1.0, 60)
    y = 0.5 * x + rng.normal(0.0, 0.1, 60)
    est = slope_ci(x, y, seed=0)
    assert est.effect == pytest.approx(float(np.polyfit(x, y, 1)[0]))
    assert est.ci_low < 0.5 < est.ci_high
    assert superiority(est, claim="y grows with x").verdict is Verdict.SUPPORTED


def test_grouped_slope_covers_known_slope():
    """Seeds each spanning complexity levels 1-4 with their own slope (mean 0.4)."""
    rng = np.random.default_rng(3)
    covered = 0
    for rep in range(200):
        x = np.tile(np.arange(1.0, 5.0), 6)
        slopes = np.repeat(0.4 + rng.normal(0.0, 0.3, 6), 4)
        y = slopes * x + np.repeat(rng.normal(0.0, 1.0, 6), 4) + rng.normal(0.0, 0.3, 24)
        est = slope_ci(x, y, groups=np.repeat(np.arange(6), 4), n_boot=N_BOOT, seed=rep)
        covered += est.ci_low <= 0.4 <= est.ci_high
        assert est.df == 5
    assert covered / 200 >= NOMINAL - 3 * _sd(NOMINAL, 200) - UNDERCOVERAGE


def test_zero_slope_is_not_supported_beyond_nominal_rate():
    rng = np.random.default_rng(4)
    supported = 0
    for rep in range(REPS):
        x = rng.uniform(0.0, 1.0, 12)
        est = slope_ci(x, rng.normal(0.0, 1.0, 12), n_boot=N_BOOT, seed=rep)
        supported += superiority(est).verdict is Verdict.SUPPORTED
    assert supported / REPS <= _max_rate(0.025), supported


def test_slope_degrees_of_freedom():
    x, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.1, 1.9, 3.2])
    assert slope_ci(x, y, seed=0).df == 2
    one_x_per_group = slope_ci(x, y, groups=[0, 1, 2, 3], seed=0)
    assert (one_x_per_group.units, one_x_per_group.df) == (4, 2)
    spanning = slope_ci(np.tile(x, 2), np.tile(y, 2), groups=np.repeat([0, 1], 4), seed=0)
    assert (spanning.units, spanning.df) == (2, 1)


# --------------------------------------------------------------------------------------------- exact tests


def test_mcnemar_matches_hand_computed_p_values():
    r = mcnemar_exact_test([True] * 6, [False] * 6)
    assert r.p_value == 2 * 0.5**6 == 0.03125
    assert r.verdict is Verdict.SUPPORTED and r.effect == 1.0
    # concordant pairs do not change the test; 5 discordant pairs one way do not suffice
    r = mcnemar_exact_test([True] * 5 + [True, False] * 3, [False] * 5 + [True, False] * 3)
    assert r.p_value == 2 * 0.5**5 and r.verdict is Verdict.INCONCLUSIVE
    assert r.settle_n == 13  # 5 of 11 pairs A-only, scaled: round(5 * 13 / 11) = 6 -> p = 2 / 2**6
    # 7 vs 1 discordant: one-sided P(X >= 7) = (C(8,7) + C(8,8)) / 2**8 = 9 / 256
    a = [True] * 7 + [False] + [True] * 4
    b = [False] * 7 + [True] + [True] * 4
    r = mcnemar_exact_test(a, b, unit="instances")
    assert r.p_value == pytest.approx(18 / 256) and r.verdict is Verdict.INCONCLUSIVE
    assert mcnemar_exact_test(b, a).verdict is Verdict.INCONCLUSIVE
    r = mcnemar_exact_test([False] * 6, [True] * 6)
    assert r.verdict is Verdict.NOT_SUPPORTED and r.effect == -1.0
    r = mcnemar_exact_test([True] * 5, [True] * 5)  # both always solve: nothing to settle
    assert r.verdict is Verdict.INCONCLUSIVE and r.settle_n is None and r.p_value == 1.0


def test_mcnemar_settle_budget_is_the_smallest_that_settles():
    r = mcnemar_exact_test([True] * 5 + [True, False] * 3, [False] * 5 + [True, False] * 3)
    m = r.settle_n  # the observed 5 of 11 pairs discordant one way, scaled to m pairs
    ones = round(5 * m / 11)
    assert ones >= 6 and 2 * 0.5**ones < 0.05
    assert 2 * 0.5 ** round(5 * (m - 1) / 11) >= 0.05


def test_fisher_matches_hand_computed_p_values():
    r = exact_solve_count_test(5, 5, 0, 5, claim="EA reaches 100% where DPA does not")
    assert r.p_value == pytest.approx(2 / math.comb(10, 5))  # one table as extreme: 1 / C(10, 5)
    assert r.verdict is Verdict.SUPPORTED
    one_sided = sum(math.comb(8, x) * math.comb(60, 34 - x) for x in range(7, 9)) / math.comb(68, 34)
    r = exact_solve_count_test(7, 34, 1, 34)
    assert r.p_value == pytest.approx(2 * one_sided) == pytest.approx(2 * 0.02720006524753283)
    assert r.verdict is Verdict.INCONCLUSIVE
    r = exact_solve_count_test(3, 3, 0, 3)
    assert r.p_value == pytest.approx(0.1) and r.verdict is Verdict.INCONCLUSIVE
    assert r.settle_n == 4  # 4 of 4 vs 0 of 4: one-sided 1 / C(8, 4) = 1/70 < 0.025
    assert exact_solve_count_test(0, 6, 6, 6).verdict is Verdict.NOT_SUPPORTED
    assert exact_solve_count_test(2, 4, 2, 4).settle_n is None


def test_solve_count_intervals():
    # unpaired, 7/34 vs 1/34: 0.1765 (0.0189 to 0.3404) (Newcombe hybrid score; Fagerland, Lydersen
    # & Laake 2017, ch. 4); the exact test, not the CI, decides: p = 0.054
    r = exact_solve_count_test(7, 34, 1, 34)
    assert (round(r.effect, 4), round(r.ci_low, 4), round(r.ci_high, 4)) == (0.1765, 0.0189, 0.3404)
    assert r.verdict is Verdict.INCONCLUSIVE
    # paired, 6 of 6 one way: D / n * (2 * Clopper-Pearson(6 of 6) - 1) = 2 * 0.025**(1/6) - 1
    r = mcnemar_exact_test([True] * 6, [False] * 6)
    assert (r.ci_low, r.ci_high) == (pytest.approx(2 * 0.025 ** (1 / 6) - 1), 1.0)
    # paired [[59, 6], [16, 80]]: 22 discordant, 6 A only; the CI agrees with the exact verdict
    a = np.array([True] * 65 + [False] * 96)
    b = np.array([True] * 59 + [False] * 6 + [True] * 16 + [False] * 80)
    r = mcnemar_exact_test(a, b)
    low, high = clopper_pearson(6, 22)
    assert r.effect == pytest.approx(-10 / 161)
    assert (r.ci_low, r.ci_high) == (pytest.approx(22 / 161 * (2 * low - 1)), pytest.approx(22 / 161 * (2 * high - 1)))
    assert r.ci_low < 0 < r.ci_high and r.verdict is Verdict.INCONCLUSIVE  # exact p = 0.052
    assert r.p_value == pytest.approx(2 * sum(math.comb(22, x) for x in range(7)) / 2**22)


def test_paired_ci_agrees_with_the_exact_verdict():
    for n_a in range(0, 13):
        for n_b in range(0, 13 - n_a):
            r = mcnemar_exact_test([True] * n_a + [False] * n_b + [True], [False] * n_a + [True] * n_b + [True])
            decisive = r.verdict is not Verdict.INCONCLUSIVE
            assert decisive == (r.ci_low > 0 or r.ci_high < 0), (n_a, n_b, r)


def test_clopper_pearson_known_values():
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025**0.1) == pytest.approx(0.3085, abs=5e-5)
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025**0.1)
    low, high = clopper_pearson(3, 10)
    assert (round(low, 4), round(high, 4)) == (0.0667, 0.6525)

    def tail(k, n, p):  # P(X >= k)
        return sum(math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(k, n + 1))

    low, high = clopper_pearson(7, 23, level=0.9)
    assert tail(7, 23, low) == pytest.approx(0.05) and 1 - tail(8, 23, high) == pytest.approx(0.05)
    assert [round(v, 4) for v in wilson(3, 10)] == [0.1078, 0.6032]


def test_t_quantile_known_values():
    for p, df, want in [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 10, 2.2281), (0.995, 5, 4.0321),
                        (0.975, 30, 2.0423), (0.975, 5000, 1.9604)]:
        assert t_quantile(p, df) == pytest.approx(want, abs=1e-4)
    assert t_quantile(0.025, 4) == -t_quantile(0.975, 4)


# --------------------------------------------------------------------------------------------- budgets


def test_budget_to_settle():
    assert budget_to_settle(0.5, -0.5, 1.5, 10) == 41  # half-width 1 -> < 0.5: more than 4x the units
    assert budget_to_settle(0.5, 0.1, 0.9, 10) == 10  # already settled
    assert budget_to_settle(0.0, -1.0, 1.0, 10) is None  # on the threshold
    assert budget_to_settle(-0.5, -1.5, 0.2, 10) > 10  # toward "not supported": the upper arm counts
    assert budget_to_settle(0.5, -0.5, 1.5, 10, threshold=-1.0) == 10
    # with the t factor: from 3 seeds, the t quantile's shrink (4.30 -> 3.18) helps at once
    assert budget_to_settle(0.8, -0.3, 1.9, 3, df_lost=1) == 4
    assert n_for_half_width(1.0, 0.5) == 18  # t_17 / sqrt(18) = 0.497
    assert n_for_half_width(1.0, 0.5, df_lost=0) == 16  # 1.96 / 4 = 0.49


def test_settle_hint_is_about_right_for_the_bootstrap():
    """Data scaled up to the suggested budget (same mean and sd) settle; far fewer do not."""
    rng = np.random.default_rng(8)
    d = rng.normal(0.0, 1.0, 20)
    d = (d - d.mean()) / d.std() + 0.25
    result = superiority(paired_bootstrap(d, seed=0))
    assert result.verdict is Verdict.INCONCLUSIVE and result.settle_unit == "units"
    assert "would settle it" in result.settle_hint

    def verdict_at(m):
        e = np.resize(d, m)
        e = (e - e.mean()) / e.std() * d.std() + d.mean()
        return superiority(paired_bootstrap(e, seed=1)).verdict

    assert verdict_at(int(result.settle_n * 1.2)) is Verdict.SUPPORTED
    assert verdict_at(int(result.settle_n / 1.5)) is Verdict.INCONCLUSIVE


# --------------------------------------------------------------------------------------------- results


def test_claim_result_format_and_round_trip():
    seeds = np.repeat([0, 1, 2], 4096)
    d = 2.4 + np.random.default_rng(9).normal(0.0, 1.0, seeds.size)
    est = paired_bootstrap(d, groups=seeds, seed=0, unit="tokens", group="seeds")
    r = superiority(est, claim="value-aware beats top-r", unit="points")
    line = r.format()
    assert line.startswith("+2.4") and line.endswith("; supported (3 seeds x 4,096 tokens)"), line
    assert "points [95% CI +" in line
    data = r.to_dict()
    assert data["verdict"] == "supported" and data["n"] == {"seeds": 3, "tokens": 12288}
    assert ClaimResult.from_dict(json.loads(json.dumps(data))) == r
    assert Verdict.SUPPORTED == "supported" and str(Verdict.NOT_SUPPORTED) == "not supported"
    r = ClaimResult("c", 0.8, -0.3, 1.9, 0.95, Verdict.INCONCLUSIVE, {"seeds": 3}, "m", "r",
                    basis="3 seeds", unit="points", settle_n=12, settle_unit="seeds")
    assert r.format() == "+0.8 points [95% CI -0.3, +1.9]; inconclusive (3 seeds; about 12 seeds would settle it)"
    assert r.format(digits=2).startswith("+0.80 points [95% CI -0.30, +1.90]")
    with pytest.raises(TypeError, match="unknown keys"):
        ClaimResult.from_dict({**data, "extra": 1})


def test_same_seed_same_result():
    d = np.random.default_rng(0).exponential(1.0, 100)
    assert paired_bootstrap(d, seed=4) == paired_bootstrap(d, seed=4)
    assert paired_bootstrap(d, seed=4) != paired_bootstrap(d, seed=5)


# --------------------------------------------------------------------------------------------- bad input


def _pb(**kw):
    return lambda: paired_bootstrap(**{"a": [1.0, 2.0, 3.0], "seed": 0, **kw})


BAD = [
    (_pb(b=[1.0, 2.0]), ValueError, "b and a must have the same length"),
    (_pb(a=[]), ValueError, "a must not be empty"),
    (_pb(a=[1.0]), ValueError, "at least 2 paired units"),
    (_pb(a=[1.0, float("nan")]), ValueError, "a must be finite"),
    (_pb(b=[1.0, 2.0, float("inf")]), ValueError, "b must be finite"),
    (_pb(a=[[1.0, 2.0]]), ValueError, "a must be 1-D"),
    (_pb(a=["x", "y"]), TypeError, "a must be a 1-D array of numbers"),
    (_pb(level=1.0), ValueError, r"level must be in \(0, 1\)"),
    (_pb(level=0.0), ValueError, r"level must be in \(0, 1\)"),
    (_pb(level="0.95"), TypeError, "level must be a float"),
    (_pb(seed=None), TypeError, "seed must be an int or a numpy.random.Generator"),
    (_pb(n_boot=10), ValueError, "n_boot must be >= 100"),
    (_pb(groups=[0, 1]), ValueError, "groups and a must have the same length"),
    (_pb(groups=[0, 0, 0]), ValueError, "groups needs at least 2"),
    (lambda: slope_ci([1.0, 2.0], [1.0, 2.0, 3.0], seed=0), ValueError, "y and x must have the same length"),
    (lambda: slope_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], seed=0), ValueError, "x must have at least 2 distinct"),
    (lambda: slope_ci([1.0, 2.0], [1.0, 2.0], seed=0), ValueError, "at least 3 points"),
    (lambda: non_inferiority(paired_bootstrap([1.0, 2.0], seed=0), margin=-1.0), ValueError, "margin must be >= 0"),
    (lambda: superiority((0.1, -1.0, 1.0)), TypeError, "estimate must be an Estimate"),
    (lambda: mcnemar_exact_test([True, False], [True]), ValueError, "solved_b and solved_a must have the same"),
    (lambda: mcnemar_exact_test([0.5, 1.0], [1, 0]), TypeError, "solved_a must hold bools"),
    (lambda: exact_solve_count_test(4, 3, 0, 3), ValueError, "solved_a must be in"),
    (lambda: exact_solve_count_test(1, 3, 0, 0), ValueError, "n_b must be >= 1"),
    (lambda: clopper_pearson(1, 10, level=95), ValueError, "level must be in"),
    (lambda: t_quantile(0.975, 0), ValueError, "df must be >= 1"),
    (lambda: budget_to_settle(float("nan"), 0.0, 1.0, 10), ValueError, "effect must be finite"),
    (lambda: n_for_half_width(1.0, 0.0), ValueError, "half_width > 0"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD, ids=[m for _, _, m in BAD])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_ci_verdict_is_the_claims_rule_on_a_bare_interval():
    from attnlab.stats import Verdict, ci_verdict

    assert ci_verdict(0.51, 0.9, 0.5) is Verdict.SUPPORTED
    assert ci_verdict(0.1, 0.49, 0.5) is Verdict.NOT_SUPPORTED
    assert ci_verdict(0.5, 0.9, 0.5) is Verdict.INCONCLUSIVE  # touching the threshold settles nothing
    assert ci_verdict(-math.inf, math.inf, 0.0) is Verdict.INCONCLUSIVE
    with pytest.raises(TypeError, match="ci_low must be a number"):
        ci_verdict("0.1", 0.2, 0.0)
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        ci_verdict(0.1, 0.2, math.nan)
    with pytest.raises(ValueError, match="ci_low must be <= ci_high"):
        ci_verdict(0.3, 0.2, 0.0)
