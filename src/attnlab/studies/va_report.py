"""Study 1's claims as tests (design section 9), its summary tables and its report.

Points saved on a token = correct(value-aware) - correct(top-r), in error-% points: the same
tokens of the same model for both methods (paired). The claims, stated before running:

- **Claim 1** (OVA beats OVO by 8-20 error points): the mean points saved over the (kernel,
  r in ``rs``) cells of a model kind, per token, is > 0 (1a) and > 8, the paper's lower figure (1b);
  superiority on a cluster bootstrap over the evaluation sequences of every seed's models
  (each sequence's tokens stay together).
- **Claim 2** (flatter kernels suffer more from ignoring values): the OLS slope of a token's
  points saved (mean over r in ``rs``) on the flatness of the kernel's exact weights
  (1 - measured skewness), > 0; cluster bootstrap over sequences, each seen by every kernel.

The uncertainty is that of the evaluation tokens for the trained models (and over seeds when a
preset trains several). A smoke test (:func:`smoke_caveat`) states numbers, never verdicts.
"""

from __future__ import annotations

from typing import Any

from ..stats import paired_bootstrap, slope_ci, superiority
from .report import RunDir, markdown_table

__all__ = ["NOT_JUDGED", "SMOKE_STEPS", "claim_tests", "gap_lines", "gaps", "report", "smoke_caveat", "summarize"]

#: Fewer training steps than this make a smoke test: its report states no verdict.
SMOKE_STEPS = 100
NOT_JUDGED = "Not judged (smoke test: see the caveat above)."
TOKENS = ("token_loss", "token_correct", "token_seq")


def _flatten(rows: list[dict]) -> list[dict]:
    flat = []
    for row in rows:
        row = {k: v for k, v in row.items() if k not in TOKENS}
        layers, skews = row.pop("layer_error", None) or [], row.pop("skewness", None) or []
        row["mean_layer_error"] = sum(layers) / len(layers) if layers else None
        row["skewness"] = sum(skews) / len(skews) if skews else None
        row.update({f"layer{i}_error": e for i, e in enumerate(layers)})
        flat.append(row)
    return flat


def _gain(ovo: dict, ova: dict) -> list[float] | None:
    a, b = ovo.get("token_correct"), ova.get("token_correct")
    if not a or not b or len(a) != len(b):
        return None
    return [100.0 * (y - x) for x, y in zip(a, b, strict=True)]


def _diffs(rows: list[dict], tokens: dict | None = None) -> list[dict]:
    """Error-point difference OVO - OVA (topr - va-greedy) per (kind, kernel, seed, r), with its
    95% CI (paired over the same tokens, clustered by sequence) where per-token data exist."""
    tokens = tokens or {}
    key = lambda r, m=None: (r["kind"], r["kernel"], r.get("seed", 0), m or r["method"], r["r"])  # noqa: E731
    by = {key(r): r for r in rows if not r.get("skipped")}
    out = []
    for (kind, kernel, seed, method, r), ovo in by.items():
        ova = by.get((kind, kernel, seed, "va-greedy", r))
        if method != "topr" or ova is None:
            continue
        exact = by.get((kind, kernel, seed, "exact", 0), {})
        row = {"kind": kind, "kernel": kernel, "seed": seed, "r": r, "skewness": exact.get("skewness"),
               "exact_error_pct": exact.get("error_pct"), "ovo_error_pct": ovo["error_pct"],
               "ova_error_pct": ova["error_pct"], "points_saved": ovo["error_pct"] - ova["error_pct"]}
        gain = _gain(tokens.get((kind, kernel, seed, "topr", r), {}),
                     tokens.get((kind, kernel, seed, "va-greedy", r), {}))
        seqs = tokens.get((kind, kernel, seed, "topr", r), {}).get("token_seq")
        if gain and len(set(seqs)) >= 2:
            est = paired_bootstrap(gain, groups=seqs, seed=0, unit="tokens", group="sequences")
            row.update(ci_low=est.ci_low, ci_high=est.ci_high, tokens=len(gain))
        row.update(ovo_output_error=ovo["mean_layer_error"], ova_output_error=ova["mean_layer_error"])
        out.append(row)
    return out


def _rel_gap(err: float | None, best: float | None) -> float | None:
    """(err - best) / best in %, 0 where both are 0, None where undefined."""
    if err is None or best is None:
        return None
    if best > 0:
        return 100.0 * (err - best) / best
    return 0.0 if err <= best else None


def gaps(rows: list[dict]) -> list[dict]:
    """va-greedy's mean per-layer output error against va-swap's and va-exact's, per (kind,
    kernel, seed, r) where va-greedy and at least one of them ran: the errors, the relative gaps
    ``(err_greedy - err_best) / err_best`` in % (best = va-exact where it ran, else va-swap, an
    upper bound on the optimum), and the largest per-layer relative gap to that best."""
    key = lambda r, m=None: (r["kind"], r["kernel"], r.get("seed", 0), m or r["method"], r["r"])  # noqa: E731
    by = {key(r): r for r in rows if not r.get("skipped") and r.get("mean_layer_error") is not None}
    out = []
    for (kind, kernel, seed, method, r), greedy in by.items():
        if method != "va-greedy":
            continue
        swap, exact = (by.get((kind, kernel, seed, m, r)) for m in ("va-swap", "va-exact"))
        if swap is None and exact is None:
            continue
        best = exact or swap
        g_err = greedy["mean_layer_error"]
        layers = sorted(k for k in greedy if k.startswith("layer") and k.endswith("_error") and k in best)
        per_layer = [_rel_gap(greedy[k], best[k]) for k in layers]
        per_layer = [x for x in per_layer if x is not None]
        out.append({"kind": kind, "kernel": kernel, "seed": seed, "r": r, "greedy_output_error": g_err,
                    "swap_output_error": swap and swap["mean_layer_error"],
                    "exact_output_error": exact and exact["mean_layer_error"],
                    "gap_to_swap_pct": swap and _rel_gap(g_err, swap["mean_layer_error"]),
                    "gap_to_exact_pct": exact and _rel_gap(g_err, exact["mean_layer_error"]),
                    "largest_layer_gap_pct": max(per_layer) if per_layer else None,
                    "best": "va-exact" if exact else "va-swap"})
    return out


def gap_lines(gap_rows: list[dict], rows: list[dict]) -> list[str]:
    """The report's section on how far va-greedy (the value-aware numbers) is from the optimum."""
    if not gap_rows:
        return []
    cells = [g for g in gap_rows if g["gap_to_exact_pct"] is not None or g["gap_to_swap_pct"] is not None]
    vals = [g["gap_to_exact_pct"] if g["gap_to_exact_pct"] is not None else g["gap_to_swap_pct"] for g in cells]
    vals = [v for v in vals if v is not None]
    n_exact = sum(g["best"] == "va-exact" for g in gap_rows)
    lines = ["## How far the value-aware numbers are from the optimum", ""]
    if vals:
        lines.append(
            f"Over {len(vals)} (model, kernel, seed, r) cells, va-greedy's mean per-layer output error is "
            f"{sum(vals) / len(vals):.1f}% above the best value-aware solver's on average (largest "
            f"{max(vals):.1f}%, smallest {min(vals):.1f}%). The best is va-exact, the certified optimum, in "
            f"{n_exact} of them and va-swap, a 1-swap local optimum (an upper bound on the optimum), in the "
            f"other {len(gap_rows) - n_exact}: there the gap to the optimum is at least the one shown. "
            "Errors are measured inside each approximated model (every layer's own inputs), so beyond the "
            "first layer the solvers face slightly different problems; the share of queries on which "
            "va-greedy is already optimal is not recorded per query, so it is not given.")
    skipped = sorted({r["skipped"] for r in rows if r["method"] == "va-exact" and r.get("skipped")})
    if skipped:
        lines.append("")
        lines.append("va-exact did not run where enumeration is infeasible: " + "; ".join(skipped) + ".")
    cols = ["kind", "kernel", "seed", "r", "greedy_output_error", "swap_output_error", "exact_output_error",
            "gap_to_swap_pct", "gap_to_exact_pct", "largest_layer_gap_pct"]
    return [*lines, "", markdown_table(gap_rows, cols), ""]


def smoke_caveat(rows: list[dict], preset: Any, *, trained: bool = True) -> str | None:
    """Why this run's numbers cannot support verdicts on the claims, or None when they can:
    models trained for fewer than :data:`SMOKE_STEPS` steps (``trained``: the models are attnlab's
    own), or a model whose error % no approximation changes (every cell equals the exact
    model's: the error cannot tell methods apart, as in an untrained model that predicts one
    token)."""
    reasons = []
    if trained and preset.steps < SMOKE_STEPS:
        reasons.append(f"the models were trained for {preset.steps} steps (fewer than {SMOKE_STEPS})")
    flat = []
    for kind, kernel in dict.fromkeys((r["kind"], r["kernel"]) for r in rows):
        mine = [r for r in rows if (r["kind"], r["kernel"]) == (kind, kernel) and not r["skipped"]]
        exact = next((r for r in mine if r["method"] == "exact"), None)
        cells = [r for r in mine if r["method"] != "exact"]
        if exact is not None and cells and all(r["error_pct"] == exact["error_pct"] for r in cells):
            flat.append(f"{kind} {kernel} ({exact['error_pct']:.2f}%)")
    if flat:
        reasons.append("no approximation changes the error % of " + ", ".join(flat)
                       + ": the error cannot tell the methods apart")
    if not reasons:
        return None
    why = "; ".join(reasons)
    return ("**Caveat: a smoke test, not evidence.** " + why[0].upper() + why[1:] + ". The claims "
            "below are listed with their numbers but not judged; rerun with a trained preset (`quick` or "
            "`paper`) for verdicts. The sanity check tests the oracles, not the models, and stands.")


def claim_tests(rows: list[dict], tokens: dict, preset: Any) -> list[dict[str, Any]]:
    """Claims 1a, 1b (per kind and over all kinds) and 2 (per kind), as in the module doc."""
    skew = {(r["kind"], r["kernel"], r.get("seed", 0)): r["skewness"] for r in rows
            if r["method"] == "exact" and not r["skipped"] and r.get("skewness") is not None}
    per: dict[tuple, list[float]] = {}  # (kind, kernel, seed) -> per-token gain, mean over r in rs
    seqs: dict[tuple, list] = {}
    for (kind, kernel, seed, method, r), data in tokens.items():
        if method != "topr" or r not in preset.rs:
            continue
        gain = _gain(data, tokens.get((kind, kernel, seed, "va-greedy", r), {}))
        if gain is None:
            continue
        acc = per.setdefault((kind, kernel, seed), [0.0] * len(gain))
        per[(kind, kernel, seed)] = [a + g / len(preset.rs) for a, g in zip(acc, gain, strict=True)]
        seqs[(kind, kernel, seed)] = data["token_seq"]
    tests = []
    kinds = list(dict.fromkeys(k[0] for k in per))
    for scope in kinds + (["all kinds"] if len(kinds) > 1 else []):
        mine = [k for k in per if scope in (k[0], "all kinds")]
        units: dict[tuple, float] = {}  # (kind, seed, token index) -> mean gain over kernels
        groups: dict[tuple, str] = {}
        for kind, kernel, seed in mine:
            n_k = sum(1 for k in mine if k[0] == kind and k[2] == seed)
            for i, (g, s) in enumerate(zip(per[kind, kernel, seed], seqs[kind, kernel, seed], strict=True)):
                units[kind, seed, i] = units.get((kind, seed, i), 0.0) + g / n_k
                groups[kind, seed, i] = f"{kind}/{seed}/{s}"
        if len(set(groups.values())) < 2:
            continue
        est = paired_bootstrap(list(units.values()), groups=list(groups.values()), seed=0, unit="tokens",
                               group="sequences")
        tests.append({"claim": "1a: OVA beats OVO", "scope": scope,
                      "result": superiority(est, claim="points saved > 0", unit="points")})
        tests.append({"claim": "1b: OVA beats OVO by >= 8 points", "scope": scope,
                      "result": superiority(est, by=8.0, claim="points saved > 8", unit="points")})
    for kind in kinds:
        xs, ys, gs = [], [], []
        for (k, kernel, seed), gain in per.items():
            if k == kind and (k, kernel, seed) in skew:
                xs += [1.0 - skew[k, kernel, seed]] * len(gain)
                ys += gain
                gs += [f"{seed}/{s}" for s in seqs[k, kernel, seed]]
        if len(set(xs)) >= 2 and len(set(gs)) >= 2:
            est = slope_ci(xs, ys, groups=gs, seed=0, unit="tokens", group="sequences")
            tests.append({"claim": "2: flatter kernels gain more from values", "scope": kind,
                          "result": superiority(est, claim="slope of points saved on flatness > 0",
                                                unit="points per unit flatness")})
    return tests


def _verdicts(diffs: list[dict], rows: list[dict], preset: Any, tests: list[dict], *, judged: bool = True) -> list[str]:
    """The claims' tests as a table and the sanity point; ``judged=False`` (a smoke test, see
    :func:`smoke_caveat`) gives the numbers with :data:`NOT_JUDGED` instead of a verdict."""
    lines = []
    budget = [d for d in diffs if d["r"] in preset.rs]
    if budget:
        best = max(d["points_saved"] for d in budget)
        mean = sum(d["points_saved"] for d in budget) / len(budget)
        lines.append(f"- **Claim 1 (OVA beats OVO by 8-20 error points).** Over {len(budget)} (model, kernel, seed, r) "
                     f"cells with r in {list(preset.rs)} (models trained {preset.steps} steps, seeds {preset.seeds}): "
                     f"mean {mean:.2f} points, largest {best:.2f} points; OVA is better in "
                     f"{sum(d['points_saved'] > 0 for d in budget)} of {len(budget)} cells."
                     + ("" if judged else f" {NOT_JUDGED}"))
    if tests:
        rows_t = [{"claim": t["claim"], "scope": t["scope"],
                   "result": t["result"].format() if judged else
                   t["result"].format().split("; ")[0] + f"; not judged ({t['result'].basis})",
                   "to settle": (t["result"].settle_hint or "") if judged else ""} for t in tests]
        lines += ["", markdown_table(rows_t, ["claim", "scope", "result", "to settle"]), ""]
    sanity = [r for r in rows if r["method"].startswith("va-") and r["r"] == preset.head_dim + 1 and not r["skipped"]]
    if sanity:
        worst = max(r["mean_layer_error"] for r in sanity)
        lines.append(f"- **Sanity (r = D + 1 = {preset.head_dim + 1}).** Largest mean per-layer value-aware output "
                     f"error: {worst:.2e} ({'near zero' if worst < 0.05 else 'NOT near zero'}; at r >= D + 1 "
                     "va-greedy reduces p's support to D + 1 keys (Caratheodory) where its greedy steps fall "
                     "short, va-exact, where it ran, is the certified optimum).")
    return lines


def summarize(preset: Any, results: dict[str, Any]) -> dict[str, Any]:
    """Rows per evaluated cell, OVA-vs-OVO differences with CIs, the claims' tests, the caveat."""
    from .value_aware import cells

    rows, tokens, train = [], {}, []
    for cell in cells(preset):
        c, res = cell.config, results[cell.key]
        if cell.stage == 0:
            train.append({"kind": c["kind"], "kernel": c["kernel"], "seed": c["seed"], **res})
            continue
        kind, kernel = ("hf", c["hf_model"]) if "hf_model" in c else (c["kind"], c["kernel"])
        rows.append({"kind": kind, "kernel": kernel, "seed": c["seed"], "method": c["method"], "r": c["r"], **res})
        if "token_correct" in res:
            tokens[(kind, kernel, c["seed"], c["method"], c["r"])] = {k: res[k] for k in TOKENS}
    flat = _flatten(rows)
    for row in flat:  # error % with its 95% CI (sequences resampled), for tables and error bars
        data = tokens.get((row["kind"], row["kernel"], row["seed"], row["method"], row["r"]))
        if data and len(set(data["token_seq"])) >= 2:
            est = paired_bootstrap([100.0 * (1 - c) for c in data["token_correct"]], groups=data["token_seq"],
                                   seed=0, unit="tokens", group="sequences")
            row.update(error_ci_low=est.ci_low, error_ci_high=est.ci_high)
    caveat = smoke_caveat(flat, preset, trained=preset.hf_model is None)
    return {"rows": flat, "diffs": _diffs(flat, tokens), "tests": claim_tests(flat, tokens, preset),
            "caveat": caveat, "training": train, "gaps": gaps(flat)}


def report(preset: Any, run_dir: RunDir, results: dict[str, Any], summary: dict[str, Any], info: dict) -> None:
    """results.csv, ova_vs_ovo.csv, va_gap.csv (where va-swap or va-exact ran), verdicts.csv,
    training.csv, plots and report.md."""
    from .va_plots import plots
    from .value_aware import __doc__ as doc

    rows, diffs, tests, caveat = summary["rows"], summary["diffs"], summary["tests"], summary["caveat"]
    run_dir.write_csv("results.csv", rows)
    run_dir.write_csv("ova_vs_ovo.csv", diffs)
    if summary.get("gaps"):
        run_dir.write_csv("va_gap.csv", summary["gaps"])
    run_dir.write_csv("verdicts.csv", [{"scope": t["scope"], "claim_name": t["claim"], **t["result"].to_dict(),
                                        "judged": caveat is None} for t in tests])
    md = [f"# Study 1: value-aware vs value-oblivious attention (preset `{info.get('preset')}`)", "",
          doc.split("\n\n", 1)[1].strip(), "",
          f"Device: {info.get('device')}; wall time {info.get('seconds', 0):.0f} s in this session.", "",
          "## Verdicts", "", *([caveat, ""] if caveat else []),
          *_verdicts(diffs, rows, preset, tests, judged=caveat is None), "",
          "## OVA vs OVO (error % points saved = OVO - OVA, 95% CI over the same tokens)", "",
          markdown_table(diffs, list(diffs[0]) if diffs else ["kind"]), "",
          *gap_lines(summary.get("gaps") or [], rows), "## Plots", "",
          *[line for p in plots(run_dir, rows, preset) for line in (p, "")],
          "## All cells", "",
          markdown_table(rows, ["kind", "kernel", "seed", "method", "r", "loss", "perplexity", "error_pct",
                                "error_ci_low", "error_ci_high", "mean_layer_error", "skewness", "skipped"]), ""]
    if summary["training"]:
        run_dir.write_csv("training.csv", summary["training"])
        md += ["## Training", "", markdown_table(summary["training"], list(summary["training"][0])), ""]
    run_dir.write_text("report.md", "\n".join(md))
