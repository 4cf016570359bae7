"""The ladder's claims as tests (design section 9) and its report.

EA and DPA are paired by seed and task instance (``task_seed = seed``: same rule, data and
init). With d(task, level, seed) = acc(EA) - acc(DPA) (final accuracy, predictable positions):

- "EA >= DPA": non-inferiority of the mean d, with the margin ``tie_tolerance`` stated in the
  preset before running (cluster bootstrap: the seeds are resampled, each with all its levels);
- "the margin grows with complexity": the OLS slope of d on the level, > 0 (cluster bootstrap
  over seeds);
- "EA reaches 100% where DPA does not": solved (accuracy >= ``solved_threshold``) per (level,
  seed) pair, exact McNemar test on the discordant pairs.

Each is tested per task and pooled over the paper's tasks (clusters: (task, seed)). The paper's
tasks (:data:`PAPER_TASKS`: ``recurrence``, delayed addition, and ``mixture``, the multi-task
setting) head every table; ``recall`` is attnlab's own addition, tested on its own after them,
labelled, and never pooled with them. Steps to solve (first periodic evaluation at validation
accuracy >= ``solved_threshold``) are reported paired by seed, over the pairs where both kernels
solve, with the number of such pairs: a description, not a test. A preset of fewer than
:data:`SMOKE_STEPS` training steps is a smoke test: its report gives the numbers, no verdict.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..stats import ClaimResult, mcnemar_exact_test, non_inferiority, paired_bootstrap, slope_ci, superiority
from .report import RunDir, line_plot, markdown_table

__all__ = ["OWN_TASK_NOTE", "PAPER_TASKS", "SMOKE_STEPS", "claims", "steps_to_solve_pairs", "task_order",
           "verdict_table", "write_report"]

DPA, EA = "softmax", "expressive"
#: fewer training steps than this make a smoke test: its report states no verdict.
SMOKE_STEPS = 100
#: the tasks of Gros (arXiv 2407.18601), in report order; any other task is attnlab's own
PAPER_TASKS = ("recurrence", "mixture")
OWN_TASK_NOTE = "attnlab's own task, not in the paper"


def task_order(tasks: Any) -> list[str]:
    """``tasks`` with the paper's (:data:`PAPER_TASKS`) first, in that order, then the others.

    >>> task_order(["recall", "mixture", "recurrence"])
    ['recurrence', 'mixture', 'recall']
    """
    tasks = list(tasks)
    return [t for t in PAPER_TASKS if t in tasks] + [t for t in tasks if t not in PAPER_TASKS]


def task_label(task: str) -> str:
    """The task's name, with :data:`OWN_TASK_NOTE` when it is not one of the paper's.

    >>> task_label("recall")
    "recall (attnlab's own task, not in the paper)"
    """
    return task if task in PAPER_TASKS else f"{task} ({OWN_TASK_NOTE})"


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
    for task in task_order(preset.levels):
        xs, ds, groups, pairs = _by_seed(preset, results, task)
        for level in sorted(preset.levels[task]):
            d = [x for lv, x in zip(xs, ds, strict=True) if lv == level]
            ci = paired_bootstrap(d, seed=0, unit="seeds") if len(d) > 1 else None
            margins.append({"task": task, "level": level, "margin_ea_minus_dpa": statistics.fmean(d),
                            "ci_low": ci.ci_low if ci else None, "ci_high": ci.ci_high if ci else None,
                            **{f"{k}_mean": by[task, level, k]["mean_accuracy"] for k in preset.kernels}})
        tests += _tests(preset, task, xs, ds, groups, pairs)
        if task in PAPER_TASKS:
            for acc, new in zip(pooled, (xs, ds, groups, pairs), strict=True):
                acc += new
    paper = [t for t in PAPER_TASKS if t in preset.levels]
    if len(paper) > 1:
        at = len([t for t in tests if t["scope"] in paper])  # pooled right after the paper's tasks
        tests[at:at] = [t for t in _tests(preset, "paper tasks", *pooled)
                        if t["claim"] != "margin grows with complexity"]
    return margins, tests


def steps_to_solve_pairs(preset: Any, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (task, level): the seeds where both EA and DPA solve (validation accuracy >=
    ``solved_threshold`` at a periodic evaluation), the median steps to solve of each and of
    the paired difference EA − DPA, and how often each was faster; seeds where only one solves
    are counted apart. Descriptive (no test): the pairs are few and selected by solving."""
    from .ladder import cell_key

    rows = []
    for task in task_order(preset.levels):
        for level in sorted(preset.levels[task]):
            both, ea_only, dpa_only = [], 0, 0
            for s in preset.seeds:
                ea, dpa = (results[cell_key(task, level, k, s)].get("steps_to_solve") for k in (EA, DPA))
                if ea is not None and dpa is not None:
                    both.append((ea, dpa))
                ea_only += ea is not None and dpa is None
                dpa_only += dpa is not None and ea is None
            rows.append({"task": task_label(task), "level": level, "pairs_both_solve": len(both),
                         "ea_only_solves": ea_only, "dpa_only_solves": dpa_only,
                         "median_steps_ea": statistics.median(a for a, _ in both) if both else None,
                         "median_steps_dpa": statistics.median(b for _, b in both) if both else None,
                         "median_diff_ea_minus_dpa": statistics.median(a - b for a, b in both) if both else None,
                         "ea_faster": sum(a < b for a, b in both), "dpa_faster": sum(b < a for a, b in both)})
    return rows


def _line(r: ClaimResult, judged: bool) -> str:
    text = r.format()
    if judged:
        return text
    return text.split("; ")[0] + f"; not judged, smoke test ({r.basis})"


def verdict_table(tests: list[dict[str, Any]], judged: bool) -> str:
    """The markdown table of the claims: effect, CI, verdict, what it rests on, budget to settle."""
    rows = [{"claim": t["claim"], "scope": f"**{t['scope']}**" + ("" if t["scope"] in (*PAPER_TASKS, "paper tasks")
                                                                  else f" ({OWN_TASK_NOTE})"),
             "result": _line(t["result"], judged),
             "to settle": (t["result"].settle_hint or "") if judged else ""} for t in tests]
    return markdown_table(rows, ["claim", "scope", "result", "to settle"])


def _overall(preset: Any, margins: list[dict[str, Any]]) -> str:
    ok = sum(m["margin_ea_minus_dpa"] >= -preset.tie_tolerance for m in margins)
    mean = statistics.fmean(m["margin_ea_minus_dpa"] for m in margins)
    return (f"EA's mean is within {preset.tie_tolerance} of DPA's or above in {ok} of {len(margins)} (task, level) "
            f"cells; mean margin EA − DPA {mean:+.3f}. Every verdict below rests on {preset.n_seeds} seeds of "
            f"{_budget(preset)} each (pairs: same seed and task instance); an unsolved level means 'not solved "
            "at this budget', not a limit of the kernel.")


def _budget(preset: Any) -> str:
    stops = [f"at validation accuracy >= {preset.stop_at_accuracy}" if preset.stop_at_accuracy is not None else "",
             f"after {preset.early_stop_patience} evaluations without improvement" if preset.early_stop_patience
             else ""]
    stops = [x for x in stops if x]
    if not stops:
        return f"{preset.steps} steps"
    return f"up to {preset.steps} steps (early stopping: {' or '.join(stops)}; evaluated every {preset.eval_every})"


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
    for task in task_order(preset.levels):
        rows = {k: [r for r in summary if r["task"] == task and r["kernel"] == k] for k in preset.kernels}
        path = line_plot(run_dir.path / f"accuracy_{task}.png",
                         {k: ([r["level"] for r in rs], [r["mean_accuracy"] for r in rs]) for k, rs in rows.items()},
                         errors={k: [[max(0.0, r["mean_accuracy"] - r["ci_low"]) for r in rs],
                                     [max(0.0, r["ci_high"] - r["mean_accuracy"]) for r in rs]]
                                 for k, rs in rows.items()},
                         xlabel="complexity level", ylabel="final accuracy (predictable positions)",
                         title=f"{task_label(task)}: mean and 95% CI over {preset.n_seeds} seeds")
        if path is not None:
            plots.append(f"![accuracy vs complexity, {task}]({path.name})")
    caveat = "" if judged else (f"**Caveat: a smoke test, not evidence.** The models were trained for {preset.steps} "
                                f"steps (fewer than {SMOKE_STEPS}): the claims are listed with their numbers but not "
                                "judged; rerun with `quick` or `paper` for verdicts.\n\n")
    cols = ["task", "level", "kernel", "mean_accuracy", "ci_low", "ci_high", "min_accuracy", "seeds_at_100",
            "median_steps_to_solve", "median_steps_trained", "seeds_stopped_early", "solved"]
    order = {t: i for i, t in enumerate(task_order(preset.levels))}
    ordered = sorted(summary, key=lambda r: order[r["task"]])  # stable: levels and kernels keep their order
    pairs = steps_to_solve_pairs(preset, results)
    run_dir.write_csv("steps_to_solve.csv", pairs)
    env = run_dir.info["environment"]
    text = "\n\n".join([
        "# Complexity ladder: EA vs DPA (Gros, arXiv 2407.18601)",
        f"Preset `{info.get('preset')}`. Model: CausalLM, {preset.n_layers} layers, d_model {preset.d_model}, "
        f"{preset.n_heads} heads (same for every kernel); {_budget(preset)} of batch {preset.batch_size}, lr "
        f"{preset.lr}; seeds {list(preset.seeds)}. Accuracy on predictable positions of {preset.final_eval_sequences} "
        f"test sequences. Solved = accuracy >= {preset.solved_threshold}. Device: {info.get('device')} "
        f"({env.get('processor')}, {env.get('cpu_count')} CPUs); wall time {info.get('seconds', 0):.0f} s in this "
        f"session (cells summed: {sum(r['train_seconds'] for r in cells):.0f} s). Tasks: `recurrence` (delayed "
        "addition, the paper's NT tasks, then weighted rules) and `mixture` (the paper's multi-task setting) "
        f"come first; `recall` (associative recall) is {OWN_TASK_NOTE}, reported after them and not pooled "
        "with them.",
        "## Claims\n\n" + caveat + _overall(preset, margins) + " Non-inferiority margin (stated in the preset): "
        f"{preset.tie_tolerance}. Effects are accuracy differences EA − DPA (slope: per level; McNemar: "
        "difference in solved shares).\n\n" + verdict_table(tests, judged),
        "## EA − DPA margin by task and level (95% CI over seeds)\n\n"
        + markdown_table([{**m, "task": task_label(m["task"])} for m in margins],
                         ["task", "level", "margin_ea_minus_dpa", "ci_low", "ci_high"], floatfmt="+.3f"),
        "## Accuracy by task, level and kernel\n\nSteps to solve: the first periodic evaluation at validation "
        f"accuracy >= {preset.solved_threshold} (median over the seeds that got there); steps trained: up to "
        f"the cap of {preset.steps}, fewer after an early stop.\n\n"
        + markdown_table([{**r, "task": task_label(r["task"]), "solved": "yes" if r["solved"] else "no"}
                          for r in ordered], cols, floatfmt=".3f"),
        "## Steps to solve, EA vs DPA paired by seed\n\nOver the seeds where both kernels solve (validation); "
        "a description, not a test: the pairs are few and selected by solving.\n\n"
        + markdown_table(pairs, ["task", "level", "pairs_both_solve", "median_steps_ea", "median_steps_dpa",
                                 "median_diff_ea_minus_dpa", "ea_faster", "dpa_faster", "ea_only_solves",
                                 "dpa_only_solves"], floatfmt=".0f"),
        "## Plots\n\n" + ("\n\n".join(plots) or "(matplotlib is not installed: no plots)"),
        "Every cell (task, level, kernel, seed) is in `results.csv`, every periodic evaluation in `curves.csv`, "
        "the per-level aggregates in `summary.csv`, the EA − DPA margins in `claims.csv`, the paired steps to "
        "solve in `steps_to_solve.csv` and the tests in `verdicts.csv`.",
    ])
    run_dir.write_text("report.md", text + "\n")
