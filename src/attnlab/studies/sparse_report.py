"""The sparse study's summary and report: gap closed per method and budget, error vs budget and vs
bytes with the oracle ceiling, equal-bytes comparisons, selector time per query, the downstream
LM loss, and issue 14's target stated with its measured outcome (:mod:`attnlab.studies.sparse`).

Aggregation: for a (source, method, k) the per-sequence errors are averaged over layers; the
errors reported are means over sequences, and gap closed is formed from those means
(:func:`attnlab.studies.sparse.gap_closed`). CIs (95%): the error difference top-k - method by
:func:`attnlab.stats.paired_bootstrap` over sequences (each sequence one unit: its rows and
layers are averaged first); gap closed by a percentile bootstrap of the ratio over sequences
(2,000 resamples, seed 0). The downstream loss difference is paired per token and clustered by
sequence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .report import RunDir, line_plot, markdown_table, series_styles

__all__ = ["equal_bytes", "report", "summarize", "targets"]

ORACLE = "va-greedy (oracle)"
MINE = "va-select"


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _layer_avg(recs: list[dict], key: str) -> np.ndarray:
    """(n_seqs,) the per-sequence values of ``key`` averaged over the records' layers."""
    return np.nanmean(np.array([r[key] for r in recs], dtype=float), axis=0)


def _gap_ci(et: np.ndarray, em: np.ndarray, eo: np.ndarray, n_boot: int = 2000) -> tuple[float, float]:
    from .sparse import gap_closed

    rng = np.random.default_rng(0)
    n = len(et)
    reps = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        g = gap_closed(float(et[i].mean()), float(em[i].mean()), float(eo[i].mean()))
        if not math.isnan(g):
            reps.append(g)
    if len(reps) < n_boot // 2:
        return math.nan, math.nan
    return float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))


def summarize(p: Any, results: dict[str, Any]) -> dict[str, Any]:
    """``rows``: one per (source, method, k) (top-k and the oracle included as methods);
    ``skipped``: source -> reason; ``lm``: the downstream rows; ``equal_bytes``; ``targets``."""
    from ..stats import paired_bootstrap
    from .sparse import gap_closed

    rows, skipped = [], {}
    for src in p.sources:
        res = results.get(f"err/{src}")
        if res is None:
            continue
        if res.get("skipped"):
            skipped[src] = res["skipped"]
            continue
        recs = [r for r in res["records"] if not r.get("extra")]
        for r in res["records"]:
            if r.get("extra") and not r["skipped"]:  # bytes-only budgets: top-k and the others' reach
                rows.append({"source": src, "budget": r["budget"], "method": r["method"], "extra": True,
                             "err": float(np.nanmean(r["err"])), "gap_closed": math.nan, "bytes": r["bytes"],
                             "rows_read": r["rows_read"], "sec_per_query": r["sec_per_query"]})
        for b in sorted({r["budget"] for r in recs}):
            at = [r for r in recs if r["budget"] == b]
            base = [r for r in at if r["method"] == at[0]["method"]]  # one record per layer
            et, eo = _layer_avg(base, "err_topk"), _layer_avg(base, "err_oracle")
            common = {"source": src, "budget": b, "err_topk": float(et.mean()), "err_oracle": float(eo.mean()),
                      "topk_sec_per_query": _mean([r["topk_sec_per_query"] for r in base]),
                      "read_sec_per_query": _mean([r["read_sec_per_query"] for r in base])}
            swap = {}
            if base[0].get("err_swap") is not None:
                swap = {"err_swap": float(_layer_avg(base, "err_swap").mean()),
                        "err_oracle_swap_rows": float(_layer_avg(base, "err_oracle_on_swap_rows").mean()),
                        "err_topk_swap_rows": float(_layer_avg(base, "err_topk_on_swap_rows").mean())}
            rows.append({**common, **swap, "method": "topk", "err": common["err_topk"], "gap_closed": 0.0,
                         "bytes": _mean([r["topk_bytes"] for r in base]), "rows_read": float(b),
                         "sec_per_query": common["topk_sec_per_query"]})
            rows.append({**common, "method": ORACLE, "err": common["err_oracle"], "gap_closed": 1.0,
                         "bytes": math.nan, "rows_read": float(b), "sec_per_query": math.nan})
            for m in p.methods:
                mine = [r for r in at if r["method"] == m and not r["skipped"]]
                if not mine:
                    continue
                em = _layer_avg(mine, "err")
                row = {**common, "method": m, "err": float(em.mean()),
                       "gap_closed": gap_closed(float(et.mean()), float(em.mean()), float(eo.mean())),
                       "bytes": _mean([r["bytes"] for r in mine]), "rows_read": _mean([r["rows_read"] for r in mine]),
                       "sec_per_query": _mean([r["sec_per_query"] for r in mine]),
                       "build_sec_per_key": _mean([r.get("build_sec_per_key", 0.0) for r in mine])}
                row["gap_ci_low"], row["gap_ci_high"] = _gap_ci(et, em, eo)
                est = paired_bootstrap(et, em, seed=0, unit="sequences")
                row["diff_vs_topk"], row["diff_ci_low"], row["diff_ci_high"] = est.effect, est.ci_low, est.ci_high
                rows.append(row)
    lm = _lm_rows(p, results)
    eq = equal_bytes(rows, p)
    return {"rows": rows, "skipped": skipped, "lm": lm, "equal_bytes": eq, "targets": targets(rows, eq, p)}


def _interp(points: list[tuple[float, float]], x: float) -> tuple[float, str]:
    """The error at bytes ``x`` by linear interpolation in log(bytes), clamped to the end points;
    the flag says where it was clamped: "" (inside), "above" (every budget of the method reads more
    than x: its error at x would be no lower) or "below" (its largest budget reads less than x: it
    might be better at x than at that end point)."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1], "above" if x < pts[0][0] * (1 - 1e-9) else ""
    if x >= pts[-1][0]:
        return pts[-1][1], "below" if x > pts[-1][0] * (1 + 1e-9) else ""
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            t = 0.0 if x1 == x0 else (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0), ""
    return pts[-1][1], "below"


def equal_bytes(rows: list[dict], p: Any) -> list[dict]:
    """Per (source, k): va-select's bytes B and error, each other practical method's error at B
    (log-bytes interpolation, see :mod:`attnlab.studies.sparse`), and the best of them.

    va-select counts as best only when its error is below every other method's at B *and* no
    method's budgets end below B (``undecided``: such a method was not run at va-select's bytes,
    and might win there; the preset's ``bytes_budgets`` should reach the context)."""
    out = []
    practical = ["topk", *[m for m in p.methods if m not in ("caote", MINE)]]
    for src in dict.fromkeys(r["source"] for r in rows):
        mine = {r["budget"]: r for r in rows if r["source"] == src and r["method"] == MINE}
        for b, me in sorted(mine.items()):
            others = {}
            for m in practical:
                pts = [(r["bytes"], r["err"]) for r in rows if r["source"] == src and r["method"] == m
                       and r["bytes"] > 0 and not math.isnan(r["err"])]
                if pts:
                    others[m] = _interp(pts, me["bytes"])
            best = min(others, key=lambda m: others[m][0]) if others else ""
            short = sorted(m for m, (_, side) in others.items() if side == "below")
            out.append({"source": src, "budget": b, "bytes": me["bytes"], "err_va_select": me["err"],
                        "best_other": best, "err_best_other": others[best][0] if best else math.nan,
                        "best_other_clamped": others[best][1] if best else "",
                        "undecided": ", ".join(short),
                        "va_select_best": bool(best) and me["err"] < others[best][0] and not short,
                        **{f"err@B:{m}": e for m, (e, _) in others.items()}})
    return out


def _is_model(src: str) -> bool:
    return not src.startswith("synthetic")


def targets(rows: list[dict], eq: list[dict], p: Any) -> list[dict]:
    """Issue 14's three targets with their measured outcome, on the models (trained, MiniLM,
    GPT-2) and, separately, on every source including the synthetic grid.

    ``met`` reads the targets as the issue states them, on point estimates; ``verdict`` and
    ``ci`` (95%) say what the data settle:

    - lower error than top-k at every k: per cell, the paired CI of err_topk - err over
      sequences; supported if every cell's CI is above 0, not supported if any cell's is below;
    - mean gap closed >= 0.5: a bootstrap CI of the mean over the (source, k) cells (the cells
      are the units: it sees the spread over models and budgets, not within a cell);
    - best at equal bytes on a majority: the Clopper-Pearson CI of the share of cells won,
      against 1/2.
    """
    from ..stats import Verdict, ci_verdict, clopper_pearson, paired_bootstrap

    out = []
    for scope, keep in (("models", _is_model), ("all sources", lambda s: True)):
        mine = [r for r in rows if r["method"] == MINE and keep(r["source"]) and 4 <= r["budget"] <= 64]
        if not mine:
            continue
        wins = [r for r in mine if r["err"] < r["err_topk"]]
        fails = [f"{r['source']} k={r['budget']}" for r in mine if r["err"] >= r["err_topk"]]
        lows = [r.get("diff_ci_low", math.nan) for r in mine]
        highs = [r.get("diff_ci_high", math.nan) for r in mine]
        above = sum(lo > 0 for lo in lows)
        v1 = (Verdict.NOT_SUPPORTED if any(h < 0 for h in highs) else
              Verdict.SUPPORTED if above == len(mine) else Verdict.INCONCLUSIVE).value
        out.append({"scope": scope, "target": "va-select err < top-k err at every k in 4..64 on every source",
                    "measured": f"{len(wins)}/{len(mine)} cells" + (f"; not: {', '.join(fails)}" if fails else ""),
                    "met": len(wins) == len(mine), "verdict": v1,
                    "ci": f"{above}/{len(mine)} cells with the CI of err_topk - err above 0"})
        gaps = [r["gap_closed"] for r in mine if not math.isnan(r["gap_closed"])]
        g = _mean(gaps)
        row = {"scope": scope, "target": "mean gap closed >= 0.5",
               "measured": f"{g:.3f} over {len(gaps)} (source, k) cells (min {min(gaps):.2f}, max "
                           f"{max(gaps):.2f})" if gaps else "no cell", "met": bool(gaps) and g >= 0.5,
               "verdict": Verdict.INCONCLUSIVE.value, "ci": ""}  # fewer than two cells: no interval
        if len(gaps) >= 2:
            est = paired_bootstrap(gaps, seed=0, unit="(source, k) cells")
            row["verdict"] = ci_verdict(est.ci_low, est.ci_high, 0.5).value
            row["ci"] = f"[{est.ci_low:.3f}, {est.ci_high:.3f}]"
        out.append(row)
        cells = [e for e in eq if keep(e["source"]) and 4 <= e["budget"] <= 64]
        best = sum(e["va_select_best"] for e in cells)
        lo, hi = clopper_pearson(best, len(cells)) if cells else (0.0, 1.0)
        out.append({"scope": scope, "target": "best practical method at equal bytes on a majority of cells",
                    "measured": f"{best}/{len(cells)} cells", "met": 2 * best > len(cells),
                    "verdict": ci_verdict(lo, hi, 0.5).value, "ci": f"share {lo:.2f} to {hi:.2f}"})
    return out


def _lm_rows(p: Any, results: dict[str, Any]) -> list[dict]:
    from ..stats import paired_bootstrap

    out = []
    for name in p.models + (["gpt2"] if p.gpt2 else []) + (["minilm"] if p.minilm else []):
        exact = results.get(f"lm/{name}/exact/k=0")
        for b in p.lm_budgets:
            topk = results.get(f"lm/{name}/topk/k={b}")
            for m in ("topk", *(p.lm_methods or p.methods)):
                res = results.get(f"lm/{name}/{m}/k={b}")
                if res is None:
                    continue
                row = {"model": name, "method": m, "budget": b, "skipped": res.get("skipped", "")}
                if not row["skipped"]:
                    row.update({k: res[k] for k in ("loss", "error_pct", "tokens")})
                    row["layer_error"] = _mean(res.get("layer_error", []))
                    if exact and not exact.get("skipped"):
                        row["exact_loss"] = exact["loss"]
                    if m != "topk" and topk and not topk.get("skipped"):
                        seqs = res["token_seq"]
                        if len(set(seqs)) >= 2:
                            est = paired_bootstrap(res["token_loss"], topk["token_loss"], groups=seqs, seed=0,
                                                   unit="tokens", group="sequences")
                            row["dloss_vs_topk"], row["dloss_ci_low"], row["dloss_ci_high"] = (
                                est.effect, est.ci_low, est.ci_high)
                out.append(row)
    return out


def _fmt(x: Any, f: str = ".3f") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, f)


def _plots(run: RunDir, rows: list[dict], p: Any) -> list[str]:
    md = []
    for src in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == src]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        dashed = [ORACLE, MINE, "va-swap (oracle, subsample)", f"{ORACLE} at top-k's bytes"]
        series, bseries = {}, {}
        for m in methods:
            pts = sorted((r["budget"], r["err"], r["bytes"], r.get("extra", False)) for r in mine
                         if r["method"] == m)
            series[m] = ([x for x, _, _, e in pts if not e], [y for _, y, _, e in pts if not e])
            bp = [(z, y) for _, y, z, _ in pts if z == z and z > 0 and y > 1e-6]  # not the read-all points
            if bp:
                bseries[m] = ([x / 1024 for x, _ in bp], [y for _, y in bp])
        top_bytes = {r["budget"]: r["bytes"] for r in mine if r["method"] == "topk" and not r.get("extra")}
        orc = sorted((top_bytes[r["budget"]], r["err"]) for r in mine if r["method"] == ORACLE
                     and r["budget"] in top_bytes and r["err"] > 1e-6)
        if orc:  # the ceiling at k rows, drawn at top-k's bytes (it reads no summary of its own)
            bseries[f"{ORACLE} at top-k's bytes"] = ([x / 1024 for x, _ in orc], [y for _, y in orc])
        sw = sorted((r["budget"], r["err_swap"]) for r in mine if r["method"] == "topk" and "err_swap" in r)
        if sw:
            series["va-swap (oracle, subsample)"] = ([x for x, _ in sw], [y for _, y in sw])
        safe = src.replace("=", "").replace("/", "_")
        name = f"err-vs-budget-{safe}.png"
        if line_plot(run.path / name, series, xlabel="budget k (full K/V rows per query)",
                     ylabel="||o - o_hat|| / ||o||", logx=True, yscale="auto",
                     styles=series_styles(list(series), dashed=dashed), title=f"{src}: error vs budget") is not None:
            md.append(f"![{src} error vs budget]({name})")
        name = f"err-vs-bytes-{safe}.png"
        if bseries and line_plot(run.path / name, bseries, xlabel="kB read per query (log)",
                                 ylabel="||o - o_hat|| / ||o||", logx=True, yscale="auto",
                                 styles=series_styles(list(bseries), dashed=dashed),
                                 title=f"{src}: error vs bytes read per query") is not None:
            md.append(f"![{src} error vs bytes]({name})")
    gseries = {}
    for m in [*p.methods]:
        pts = {}
        for r in rows:
            if r["method"] == m and _is_model(r["source"]) and not math.isnan(r["gap_closed"]):
                pts.setdefault(r["budget"], []).append(r["gap_closed"])
        if pts:
            gseries[m] = (sorted(pts), [_mean(pts[b]) for b in sorted(pts)])
    if gseries:
        name = "gap-closed.png"
        if line_plot(run.path / name, gseries, xlabel="budget k", ylabel="gap closed (mean over models)", logx=True,
                     styles=series_styles(list(gseries), dashed=[MINE]),
                     title="gap closed = (err_topk - err) / (err_topk - err_va-greedy)") is not None:
            md.append(f"![gap closed]({name})")
    return md


def gap_table(rows: list[dict], p: Any, sources: Sequence[str] | None = None) -> str:
    """Markdown: gap closed per (source, method) and budget (the README table)."""
    rows = [r for r in rows if not r.get("extra")]
    budgets = sorted({r["budget"] for r in rows})
    table = []
    for src in sources or dict.fromkeys(r["source"] for r in rows):
        for m in p.methods:
            got = {r["budget"]: r["gap_closed"] for r in rows if r["source"] == src and r["method"] == m}
            if got:
                table.append({"source": src, "method": m, **{f"k={b}": _fmt(got.get(b), ".2f") for b in budgets}})
    return markdown_table(table, ["source", "method", *[f"k={b}" for b in budgets]])


def report(p: Any, run: RunDir, results: dict[str, Any], summary: dict[str, Any], info: dict[str, Any]) -> None:
    """Write the CSVs, the plots and report.md."""
    rows, lm, eq = summary["rows"], summary["lm"], summary["equal_bytes"]
    recs = [{"source": k.split("/", 1)[1], **{x: y for x, y in r.items() if not isinstance(y, list)},
             **{f"{x}_mean": _mean(y) for x, y in r.items() if isinstance(y, list)}}
            for k, res in results.items() if k.startswith("err/") for r in res.get("records", [])]
    if recs:
        run.write_csv("layer_records.csv", recs)
    if rows:
        run.write_csv("summary.csv", rows)
    if eq:
        run.write_csv("equal_bytes.csv", eq)
    if lm:
        run.write_csv("downstream.csv", lm)
    md = [f"# Sparse selectors vs the value-aware optimum (preset {info.get('preset', '')})", "",
          f"Ran {info.get('seconds', 0) / 60:.1f} min on {info.get('device', 'cpu')} (this session; a shared "
          f"machine: times are indicative). Seed {p.seed}; {p.n_seqs} sequences per source, {p.n_queries} query "
          f"rows per sequence, head and layer (second half of {p.context} positions); va-swap on "
          f"{p.swap_queries} of them. Methods: top-k, {', '.join(p.methods)}; budgets {list(p.budgets)}.", ""]
    for src, why in summary["skipped"].items():
        md.append(f"- source {src} skipped: {why}")
    md += ["", "## Issue 14's target, as measured", "",
           markdown_table(summary["targets"], ["scope", "target", "measured", "met", "verdict", "ci"]), "",
           "`met` reads each target on point estimates, as the issue states it; `verdict` is what the 95% CIs "
           "settle (supported / not supported / inconclusive; see `sparse_report.targets`).", "",
           "Equal bytes: each method's error interpolated (log bytes) at va-select's bytes per query; a cell where "
           "some method's budgets all read fewer bytes than va-select is undecided and not counted as won; clamped "
           "to a method's end point outside its range (see equal_bytes.csv).", "",
           "## Gap closed per method and budget", "",
           "gap closed = (err_topk - err) / (err_topk - err_va-greedy); 1 = the oracle, 0 = top-k, < 0 worse "
           "than top-k.", "", gap_table(rows, p), ""]
    vs = [r for r in rows if r["method"] == MINE]
    if vs:
        md += ["## va-select against top-k and the oracle (95% CIs over sequences)", "",
               markdown_table([{"source": r["source"], "k": r["budget"], "err_topk": _fmt(r["err_topk"], ".4f"),
                                "err_va_select": _fmt(r["err"], ".4f"), "err_oracle": _fmt(r["err_oracle"], ".4f"),
                                "topk - va_select [CI]": f"{_fmt(r['diff_vs_topk'], '.4f')} "
                                                         f"[{_fmt(r['diff_ci_low'], '.4f')}, "
                                                         f"{_fmt(r['diff_ci_high'], '.4f')}]",
                                "gap closed [CI]": f"{_fmt(r['gap_closed'], '.2f')} [{_fmt(r['gap_ci_low'], '.2f')}, "
                                                   f"{_fmt(r['gap_ci_high'], '.2f')}]",
                                "kB/query": _fmt(r["bytes"] / 1024, ".2f"),
                                "topk kB/query": _fmt(next((t["bytes"] for t in rows if t["method"] == "topk" and
                                                            t["source"] == r["source"] and
                                                            t["budget"] == r["budget"]), math.nan) / 1024, ".2f")}
                               for r in vs],
                              ["source", "k", "err_topk", "err_va_select", "err_oracle", "topk - va_select [CI]",
                               "gap closed [CI]", "kB/query", "topk kB/query"]), ""]
    if eq:
        md += ["## Equal bytes: va-select against the best other practical method", "",
               markdown_table([{"source": e["source"], "k": e["budget"], "kB/query": _fmt(e["bytes"] / 1024, ".2f"),
                                "err va-select": _fmt(e["err_va_select"], ".4f"),
                                "best other": e["best_other"] + (f" (clamped {e['best_other_clamped']})"
                                                                 if e["best_other_clamped"] else ""),
                                "its err at these bytes": _fmt(e["err_best_other"], ".4f"),
                                "va-select best": e["va_select_best"],
                                "undecided (run below these bytes)": e["undecided"]} for e in eq],
                              ["source", "k", "kB/query", "err va-select", "best other", "its err at these bytes",
                               "va-select best", "undecided (run below these bytes)"]), ""]
    swap = [r for r in rows if r["method"] == "topk" and "err_swap" in r]
    if swap:
        md += ["## The oracle: va-greedy and va-swap on the va-swap subsample", "",
               markdown_table([{"source": r["source"], "k": r["budget"],
                                "topk": _fmt(r["err_topk_swap_rows"], ".4f"),
                                "va-greedy": _fmt(r["err_oracle_swap_rows"], ".4f"),
                                "va-swap": _fmt(r["err_swap"], ".4f")} for r in swap],
                              ["source", "k", "topk", "va-greedy", "va-swap"]), ""]
    timing = []
    for m in ["topk", *p.methods]:
        got = [r for r in rows if r["method"] == m and not r.get("extra")]
        if got:
            sec, top, read = (_mean([r[k] for r in got]) for k in ("sec_per_query", "topk_sec_per_query",
                                                                   "read_sec_per_query"))
            build = _mean([r.get("build_sec_per_key", 0.0) for r in got])
            timing.append({"method": m, "selector us/query": _fmt(1e6 * sec, ".2f"),
                           "summary build us/key": _fmt(1e6 * build, ".3f") if build else "",
                           "top-k us/query": _fmt(1e6 * top, ".2f"), "ratio to top-k": _fmt(sec / top, ".1f"),
                           "attend over k rows us/query": _fmt(1e6 * read, ".2f"),
                           "ratio to attending": _fmt(sec / read, ".1f")})
    md += ["## Selector time per query (mean over sources and budgets)", "",
           "The selector's own work (exact scores and weights given; output formed afterwards), wall time per "
           "query row on this CPU, batched over heads and rows; beside top-k's selection and the time to attend "
           "over the k gathered rows. A method with a summary hook (va-select's value sketch) builds its per-key "
           "summaries apart, as a KV cache would once per written key: 'summary build us/key'. At 128 keys and "
           "head dim 16 every selector is mostly framework overhead; `benchmarks/selector_cost.py` compares "
           "whole per-query costs (score, select, read) at longer caches. Indicative only.", "",
           markdown_table(timing, ["method", "selector us/query", "summary build us/key", "top-k us/query",
                                   "ratio to top-k", "attend over k rows us/query", "ratio to attending"]), ""]
    lms, enc = [r for r in lm if r["model"] != "minilm"], [r for r in lm if r["model"] == "minilm"]
    if lms:
        md += ["## Downstream: every layer uses the method", "",
               "LM loss (nats/token) and error % on held-out text; dloss vs top-k at the same k, paired per "
               "token, 95% CI clustered by sequence.", "",
               markdown_table([{"model": r["model"], "method": r["method"], "k": r["budget"],
                                "loss": _fmt(r.get("loss"), ".4f"), "exact loss": _fmt(r.get("exact_loss"), ".4f"),
                                "error %": _fmt(r.get("error_pct"), ".2f"),
                                "dloss vs topk [CI]": (f"{_fmt(r['dloss_vs_topk'], '.4f')} "
                                                       f"[{_fmt(r['dloss_ci_low'], '.4f')}, "
                                                       f"{_fmt(r['dloss_ci_high'], '.4f')}]")
                                if "dloss_vs_topk" in r else "", "skipped": r["skipped"]} for r in lms],
                              ["model", "method", "k", "loss", "exact loss", "error %", "dloss vs topk [CI]",
                               "skipped"]), ""]
    if enc:
        md += ["## Downstream on all-MiniLM-L6-v2: sentence-embedding distortion", "",
               "MiniLM has no LM head; its output is a sentence embedding (mean-pooled last hidden states, "
               "L2-normalized). Per held-out sequence: 1 - cos(embedding with the method in every layer, exact "
               "embedding); Δ vs top-k at the same k, paired per sequence (95% CI).", "",
               markdown_table([{"method": r["method"], "k": r["budget"], "1 - cos": _fmt(r.get("loss"), ".2e"),
                                "Δ vs topk [CI]": (f"{_fmt(r['dloss_vs_topk'], '.2e')} "
                                                   f"[{_fmt(r['dloss_ci_low'], '.2e')}, "
                                                   f"{_fmt(r['dloss_ci_high'], '.2e')}]")
                                if "dloss_vs_topk" in r else "", "skipped": r["skipped"]} for r in enc],
                              ["method", "k", "1 - cos", "Δ vs topk [CI]", "skipped"]), ""]
    md += ["## Plots", "", *_plots(run, rows, p), ""]
    md += ["Files: summary.csv (per source, method, k), layer_records.csv (per layer), equal_bytes.csv, "
           "downstream.csv; run.json holds the preset, seeds, versions and commit."]
    run.write_text("report.md", "\n".join(md) + "\n")
