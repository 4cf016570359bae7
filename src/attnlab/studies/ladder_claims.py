"""The ladder's claims as tests (design section 9) and its report.

EA and DPA are paired by seed and task instance (``task_seed = seed``: same rule, data and
init). With d(task, level, seed) = acc(EA) - acc(DPA) (final accuracy, predictable positions):

- "EA >= DPA": non-inferiority of the mean d, with the margin ``tie_tolerance`` stated in the
  preset before running (cluster bootstrap: the seeds are resampled, each with all its levels);
- "the margin grows with complexity": the OLS slope of d on the level, > 0 (cluster bootstrap
  over seeds);
- "EA reaches 100% where DPA does not": solved (accuracy >= ``solved_threshold``) per (level,
  seed) pair, exact McNemar test on the discordant pairs.

Each is tested per task and pooled over tasks (clusters: (task, seed)). A preset of fewer than
:data:`SMOKE_STEPS` training steps is a smoke test: its report gives the numbers, no verdict.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..stats import ClaimResult, mcnemar_exact_test, non_inferiority, paired_bootstrap, slope_ci, superiority
from .report import RunDir, line_plot, markdown_table

__all__ = ["SMOKE_STEPS", "claims", "verdict_table", "write_report"]

DPA, EA = "softmax", "expressive"
#: fewer training steps than this make a smoke test: its report states no verdict.
SMOKE_STEPS = 100


def _by_seed(preset: Any, results: dict[str, Any], task: str) -> tuple[list[float], list[float], list, list]:
    """(level, d, seed label, solved pair) over the task's (level, seed) cells."""
    from .ladder import cell_key

    xs, ds, groups, pairs = [], [], [], []
    for level in sorted(preset.levels[task]):
        for s in preset.seeds:
            ea, dpa = (results[cell_key(task, level, k, s)]["final_accuracy"] for k in (EA, DPA))
            xs.append(level), ds.append(ea - dpa), groups.append(f"{task}/{s}")
            pairs.append((ea >= preset.solved_threshold, dpa >= preset.solved_threshold))
    return xs, ds, groups, pairs


def _tests(preset: Any, scope: str, xs: list, ds: list, groups: list, pairs: list) -> list[dict[str, Any]]:
    out = []
    if len(set(groups)) >= 2:
        est = paired_bootstrap(ds, groups=groups, seed=0, unit="cells", group="seeds")
        out.append(("EA >= DPA", non_inferiority(est, margin=preset.tie_tolerance, unit="accuracy",
                                                 claim=f"EA >= DPA - {preset.tie_tolerance:g}")))
    if len(set(xs)) >= 2 and len(set(groups)) >= 2:
        try:
            est = slope_ci(xs, ds, groups=groups, seed=0, unit="cells", group="seeds")
            out.append(("margin grows with complexity", superiority(est, claim="slope of EA - DPA per level > 0",
                                                                    unit="per level")))
        except ValueError:  # too few seeds for the slope's degrees of freedom
            pass
    if pairs:
        out.append(("EA reaches 100% where DPA does not", mcnemar_exact_test(
            [a for a, _ in pairs], [b for _, b in pairs], unit="(level, seed) pairs",
            claim="EA solves more (level, seed) pairs than DPA")))
    return [{"scope": scope, "claim": name, "result": r} for name, r in out]


def claims(preset: Any, summary: list[dict[str, Any]], results: dict[str, Any]) -> tuple[list, list]:
    """(margin rows per (task, level) with the paired CI over seeds, the claims' tests)."""
    by = {(r["task"], r["level"], r["kernel"]): r for r in summary}
    margins, tests, pooled = [], [], ([], [], [], [])
    for task in preset.levels:
        xs, ds, groups, pairs = _by_seed(preset, results, task)
        for level in sorted(preset.levels[task]):
            d = [x for lv, x in zip(xs, ds, strict=True) if lv == level]
            ci = paired_bootstrap(d, seed=0, unit="seeds") if len(d) > 1 else None
            margins.append({"task": task, "level": level, "margin_ea_minus_dpa": statistics.fmean(d),
                            "ci_low": ci.ci_low if ci else None, "ci_high": ci.ci_high if ci else None,
                            **{f"{k}_mean": by[task, level, k]["mean_accuracy"] for k in preset.kernels}})
        tests += _tests(preset, task, xs, ds, groups, pairs)
        for acc, new in zip(pooled, (xs, ds, groups, pairs), strict=True):
            acc += new
    if len(preset.levels) > 1:
        tests += [t for t in _tests(preset, "all tasks", *pooled) if t["claim"] != "margin grows with complexity"]
    return margins, tests


def _line(r: ClaimResult, judged: bool) -> str:
    text = r.format()
    if judged:
        return text
    return text.split("; ")[0] + f"; not judged, smoke test ({r.basis})"


def verdict_table(tests: list[dict[str, Any]], judged: bool) -> str:
    """The markdown table of the claims: effect, CI, verdict, what it rests on, budget to settle."""
    rows = [{"claim": t["claim"], "scope": f"**{t['scope']}**", "result": _line(t["result"], judged),
             "to settle": (t["result"].settle_hint or "") if judged else ""} for t in tests]
    return markdown_table(rows, ["claim", "scope", "result", "to settle"])


def _overall(preset: Any, margins: list[dict[str, Any]]) -> str:
    ok = sum(m["margin_ea_minus_dpa"] >= -preset.tie_tolerance for m in margins)
    mean = statistics.fmean(m["margin_ea_minus_dpa"] for m in margins)
    return (f"EA's mean is within {preset.tie_tolerance} of DPA's or above in {ok} of {len(margins)} (task, level) "
            f"cells; mean margin EA − DPA {mean:+.3f}. Every verdict below rests on {preset.n_seeds} seeds of "
            f"{preset.steps} steps each (pairs: same seed and task instance); an unsolved level means 'not solved "
            "at this budget', not a limit of the kernel.")


def write_report(preset: Any, run_dir: RunDir, results: dict[str, Any], summary: list[dict[str, Any]],
                 info: dict[str, Any]) -> None:
    """results.csv, curves.csv, summary.csv, claims.csv (margins), verdicts.csv, plots, report.md."""
    cells = [{k: v for k, v in r.items() if k != "curve"} for r in results.values()]
    run_dir.write_csv("results.csv", cells)
    run_dir.write_csv("curves.csv", [{"task": r["task"], "level": r["level"], "kernel": r["kernel"],
                                      "seed": r["seed"], "step": s, "train_loss": loss, "val_accuracy": acc}
                                     for r in results.values() for s, loss, acc in r["curve"]])
    run_dir.write_csv("summary.csv", summary)
    margins, tests = claims(preset, summary, results)
    judged = preset.steps >= SMOKE_STEPS
    run_dir.write_csv("claims.csv", margins)
    run_dir.write_csv("verdicts.csv", [{"scope": t["scope"], "claim_name": t["claim"], **t["result"].to_dict(),
                                        "judged": judged} for t in tests])
    plots = []
    for task in preset.levels:
        rows = {k: [r for r in summary if r["task"] == task and r["kernel"] == k] for k in preset.kernels}
        path = line_plot(run_dir.path / f"accuracy_{task}.png",
                         {k: ([r["level"] for r in rs], [r["mean_accuracy"] for r in rs]) for k, rs in rows.items()},
                         errors={k: [[max(0.0, r["mean_accuracy"] - r["ci_low"]) for r in rs],
                                     [max(0.0, r["ci_high"] - r["mean_accuracy"]) for r in rs]]
                                 for k, rs in rows.items()},
                         xlabel="complexity level", ylabel="final accuracy (predictable positions)",
                         title=f"{task}: mean and 95% CI over {preset.n_seeds} seeds")
        if path is not None:
            plots.append(f"![accuracy vs complexity, {task}]({path.name})")
    caveat = "" if judged else (f"**Caveat: a smoke test, not evidence.** The models were trained for {preset.steps} "
                                f"steps (fewer than {SMOKE_STEPS}): the claims are listed with their numbers but not "
                                "judged; rerun with `quick` or `paper` for verdicts.\n\n")
    cols = ["task", "level", "kernel", "mean_accuracy", "ci_low", "ci_high", "min_accuracy", "seeds_at_100",
            "median_steps_to_100", "solved"]
    env = run_dir.info["environment"]
    text = "\n\n".join([
        "# Complexity ladder: EA vs DPA (Gros, arXiv 2407.18601)",
        f"Preset `{info.get('preset')}`. Model: CausalLM, {preset.n_layers} layers, d_model {preset.d_model}, "
        f"{preset.n_heads} heads (same for every kernel); {preset.steps} steps of batch {preset.batch_size}, lr "
        f"{preset.lr}; seeds {list(preset.seeds)}. Accuracy on predictable positions of {preset.final_eval_sequences} "
        f"test sequences. Solved = accuracy >= {preset.solved_threshold}. Device: {info.get('device')} "
        f"({env.get('processor')}, {env.get('cpu_count')} CPUs); wall time {info.get('seconds', 0):.0f} s in this "
        f"session (cells summed: {sum(r['train_seconds'] for r in cells):.0f} s).",
        "## Claims\n\n" + caveat + _overall(preset, margins) + " Non-inferiority margin (stated in the preset): "
        f"{preset.tie_tolerance}. Effects are accuracy differences EA − DPA (slope: per level; McNemar: "
        "difference in solved shares).\n\n" + verdict_table(tests, judged),
        "## EA − DPA margin by task and level (95% CI over seeds)\n\n"
        + markdown_table(margins, ["task", "level", "margin_ea_minus_dpa", "ci_low", "ci_high"], floatfmt="+.3f"),
        "## Accuracy by task, level and kernel\n\n"
        + markdown_table([{**r, "solved": "yes" if r["solved"] else "no"} for r in summary], cols, floatfmt=".3f"),
        "## Plots\n\n" + ("\n\n".join(plots) or "(matplotlib is not installed: no plots)"),
        "Every cell (task, level, kernel, seed) is in `results.csv`, every periodic evaluation in `curves.csv`, "
        "the per-level aggregates in `summary.csv`, the EA − DPA margins in `claims.csv` and the tests in "
        "`verdicts.csv`.",
    ])
    run_dir.write_text("report.md", text + "\n")
