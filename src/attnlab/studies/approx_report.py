"""The report of ``attnlab approx-error`` (:mod:`attnlab.studies.approx_error`): approx_error.csv,
one error-vs-r plot per problem (:func:`plot_series` says what it shows) and report.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..approx import get_record
from .approx_methods import VALUE_AWARE, practical_methods
from .report import RunDir

if TYPE_CHECKING:
    from .approx_error import ApproxErrorPreset

__all__ = ["plot_series", "report"]


def plot_series(rows: Sequence[dict[str, Any]], methods: Sequence[str], rs: Sequence[int]) -> tuple[
        dict[str, tuple[list[int], list[float]]], dict[str, str], dict[str, str], str]:
    """What one error-vs-r plot of ``rows`` (one problem's rows of :func:`compare_methods`) shows:
    (series, styles, notes, caption). Series: value-aware error over r per method that ran at
    some r (a method with no budget, as elu-linear: one constant line); styles: distinct per
    method (:func:`attnlab.studies.report.series_styles`, value-aware dashed); notes: where a
    method stops before the last r, and why (va-exact beyond its size limit); caption: the
    methods with no point at all, and why ("" when none). No series: no plot to draw."""
    from .report import series_styles

    series: dict[str, tuple[list[int], list[float]]] = {}
    notes: dict[str, str] = {}
    missing: dict[str, str] = {}
    for m in methods:
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["r"])
        pts = [(r["r"], r["value_aware_error"]) for r in mine if r["value_aware_error"] is not None]
        if not pts:
            if mine:
                missing[m] = next((r["skipped"] for r in mine if r.get("skipped")), "no result")
            continue
        if m in practical_methods() and get_record(m).budget is None:
            pts = [(x, pts[0][1]) for x in sorted(rs)]
        series[m] = ([x for x, _ in pts], [y for _, y in pts])
        after = [r for r in mine if r["r"] > pts[-1][0] and r.get("skipped")]
        if after:
            notes[m] = f"stops at r={pts[-1][0]}: {after[0]['skipped']}"
    styles = series_styles(list(series), dashed=[m for m in series if m in VALUE_AWARE])
    caption = ("not shown: " + "; ".join(f"{m} ({why})" for m, why in missing.items())) if missing else ""
    return series, styles, notes, caption


def report(args: ApproxErrorPreset, run_dir: RunDir, results: dict[str, Any], rows: list[dict[str, Any]],
           info: dict[str, Any]) -> None:
    """approx_error.csv, one error-vs-r plot per problem (synthetic: at ``plot_temperature``), report.md."""
    from .report import line_plot, markdown_table

    run_dir.write_csv("approx_error.csv", rows)
    cols = ["source", "kernel", "condition", "method", "r", "value_aware_error", "value_oblivious_error",
            "top_r_mass", "skewness", "skipped"]
    lines = ["# Approximation error", "", "Value-aware error = ||O - O_hat||_F / ||O||_F; value-oblivious "
             "error = mean_i ||p_i - p_hat_i||_1 (oracles only). In the plots each method has its own marker, "
             "value-aware methods are dashed, a method that stops is labelled where it stops, and the y axis is "
             "logarithmic where the errors span more than 1.5 decades.", ""]
    plot_cond = f"T={args.plot_temperature:g}"
    for source, kernel, cond in dict.fromkeys((r["source"], r["kernel"], r["condition"]) for r in rows):
        if source == "synthetic" and cond != plot_cond:
            continue
        sel = [r for r in rows if (r["source"], r["kernel"], r["condition"]) == (source, kernel, cond)]
        series, styles, notes, caption = plot_series(sel, args.methods, args.rs)
        if not series:  # never an empty plot: say why there is none
            why = f"No plot for {source} {kernel} {cond}: no method applies ({caption.removeprefix('not shown: ')})."
            print(why)
            lines += [why, ""]
            continue
        name = f"error-{kernel}-{cond.replace('=', '')}.png".replace("/", "_")
        if line_plot(run_dir.path / name, series, xlabel="r", ylabel="||O - O_hat|| / ||O||", logx=True,
                     styles=styles, title=f"{source} {kernel} {cond}", yscale="auto", notes=notes,
                     caption=caption) is not None:
            lines += [f"![{kernel} {cond}]({name})", ""]
            lines += [caption, ""] if caption else []
    lines += [markdown_table(rows, cols), ""]
    run_dir.write_text("report.md", "\n".join(lines))
