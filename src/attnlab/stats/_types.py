"""The result types: :class:`Verdict`, :class:`Estimate` and :class:`ClaimResult`."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._checks import check_int


class Verdict(str, enum.Enum):
    """The three verdicts on a claim. Compares equal to its text: ``Verdict.SUPPORTED == "supported"``."""

    SUPPORTED = "supported"
    NOT_SUPPORTED = "not supported"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Estimate:
    """An effect with its confidence interval, before a rule turns it into a verdict.

    Attributes:
        effect: the point estimate (a mean difference, a slope).
        ci_low, ci_high: the confidence interval.
        level: its confidence level, e.g. 0.95.
        n: what the estimate rests on, as totals by name, e.g. ``{"seeds": 3, "tokens": 12288}``.
        basis: the same in words, e.g. ``"3 seeds x 4,096 tokens"``.
        method: how the interval was made.
        units: the number of independent units resampled (the groups when clustered).
        unit: their name, e.g. ``"seeds"``; a budget to settle a claim is counted in them.
        df: degrees of freedom of the small-sample expansion (``units - 1`` for a mean,
            ``units - 2`` for a slope over points); :func:`budget_to_settle` uses ``units - df``.
    """

    effect: float
    ci_low: float
    ci_high: float
    level: float
    n: dict[str, int]
    basis: str
    method: str
    units: int
    unit: str
    df: int


@dataclass(frozen=True)
class ClaimResult:
    """A claim's test: effect, CI, verdict, and what it rests on.

    Attributes:
        claim: the claim in words.
        effect, ci_low, ci_high, level: the estimate and its confidence interval.
        verdict: supported, not supported or inconclusive (see ``rule``).
        n: what the verdict rests on, as totals by name (seeds, tokens, instances).
        method: how the interval (and p-value, if any) was made.
        rule: the verdict rule, stated with its numbers.
        basis: ``n`` in words, e.g. ``"3 seeds x 4,096 tokens"``.
        unit: the unit of the effect, e.g. ``"points"`` (may be empty).
        p_value: the exact test's two-sided p-value, where the verdict comes from one.
        settle_n: for an inconclusive verdict, about how many units (``settle_unit``) would settle
            it if the effect and its spread held; None otherwise, or when no budget would.
        settle_unit: the unit of ``settle_n`` (seeds when the data are clustered by seed).
        settle_hint: the same in words, for an inconclusive verdict.
    """

    claim: str
    effect: float
    ci_low: float
    ci_high: float
    level: float
    verdict: Verdict
    n: dict[str, int]
    method: str
    rule: str
    basis: str = ""
    unit: str = ""
    p_value: float | None = None
    settle_n: int | None = None
    settle_unit: str = ""
    settle_hint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Verdict(self.verdict))  # "supported" -> Verdict.SUPPORTED

    def format(self, digits: int | None = None) -> str:
        """One line: effect, CI, (p-value,) verdict and what it rests on.

        Args:
            digits: decimals; by default enough to show the CI's half-width to two digits.

        >>> r = ClaimResult("c", 2.4, 1.1, 3.7, 0.95, Verdict.SUPPORTED, {"seeds": 3, "tokens": 12288},
        ...                 "m", "r", basis="3 seeds x 4,096 tokens", unit="points")
        >>> r.format()
        '+2.4 points [95% CI +1.1, +3.7]; supported (3 seeds x 4,096 tokens)'
        """
        if digits is None:
            half = (self.ci_high - self.ci_low) / 2
            digits = min(6, max(0, 1 - math.floor(math.log10(half)))) if half > 0 else 2
        else:
            check_int("digits", digits, 0, 12)

        def num(x: float) -> str:
            return f"{(x if round(x, digits) != 0 else 0.0):+,.{digits}f}"

        unit = f" {self.unit}" if self.unit else ""
        text = f"{num(self.effect)}{unit} [{self.level * 100:g}% CI {num(self.ci_low)}, {num(self.ci_high)}]"
        if self.p_value is not None:
            text += f", exact p = {self.p_value:.2g}"
        rests = self.basis or ", ".join(f"{v:,} {k}" for k, v in self.n.items())
        if self.verdict is Verdict.INCONCLUSIVE and self.settle_n is not None:
            rests += f"; about {self.settle_n:,} {self.settle_unit} would settle it"
        elif self.verdict is Verdict.INCONCLUSIVE:
            rests += "; no budget would settle it at this effect"
        return f"{text}; {self.verdict.value} ({rests})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the verdict as its text). :meth:`from_dict` reverses it."""
        d = dataclasses.asdict(self)
        d["verdict"] = self.verdict.value
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClaimResult:
        """The result :meth:`to_dict` wrote. Raises TypeError on unknown or missing keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TypeError(f"ClaimResult.from_dict got unknown keys {unknown}")
        kwargs = dict(data)
        kwargs["verdict"] = Verdict(kwargs.get("verdict"))
        kwargs["n"] = dict(kwargs.get("n", {}))
        return cls(**kwargs)
