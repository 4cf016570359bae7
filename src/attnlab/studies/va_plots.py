"""Study 1's plots: error % vs r per model, output error per layer per kind."""

from __future__ import annotations

from typing import Any

from .report import RunDir

__all__ = ["plots"]


def _layer_columns(row: dict) -> list[str]:
    """The row's ``layer<i>_error`` columns in layer order (layer10 after layer9)."""
    cols = [k for k in row if k.startswith("layer") and k.endswith("_error") and k[5:-6].isdigit()]
    return sorted(cols, key=lambda k: int(k[5:-6]))


def plots(run: RunDir, rows: list[dict], preset: Any) -> list[str]:
    """The plots (markdown lines): error % vs r per model, output error per layer per kind. Each
    method has its own marker (value-aware dashed), a method that stops is labelled where it
    stops, methods never run are named under the plot, and a plot with nothing to show is not
    drawn: its line says why."""
    from .report import line_plot, series_styles

    md = []
    first = min((r.get("seed", 0) for r in rows), default=0)
    rows = [r for r in rows if r.get("seed", 0) == first]  # one seed's models (the others: results.csv)
    labels = {"topr": "OVO (topr)", "va-greedy": "OVA (va-greedy)"}
    for kind, kernel in dict.fromkeys((r["kind"], r["kernel"]) for r in rows):
        mine = [r for r in rows if (r["kind"], r["kernel"]) == (kind, kernel)]
        exact = next((r for r in mine if r["method"] == "exact" and not r["skipped"]), None)
        series, notes, missing, errors = {}, {}, {}, {}
        for m in dict.fromkeys(r["method"] for r in mine if r["method"] != "exact"):
            cells = sorted((r for r in mine if r["method"] == m), key=lambda r: r["r"])
            pts = [(r["r"], r["error_pct"]) for r in cells if not r["skipped"]]
            label = labels.get(m, m)
            if not pts:
                missing[label] = cells[0]["skipped"] if cells else "no result"
                continue
            series[label] = ([x for x, _ in pts], [y for _, y in pts])
            ok = [r for r in cells if not r["skipped"]]
            if all(r.get("error_ci_low") is not None for r in ok):  # 95% CI over sequences
                errors[label] = [[max(0.0, r["error_pct"] - r["error_ci_low"]) for r in ok],
                                 [max(0.0, r["error_ci_high"] - r["error_pct"]) for r in ok]]
            after = [r for r in cells if r["r"] > pts[-1][0] and r["skipped"]]
            if after:
                notes[label] = f"stops at r={pts[-1][0]}: {after[0]['skipped']}"
        styles = series_styles(list(series), dashed=[lb for lb in series if "va-" in lb])
        caption = ("not shown: " + "; ".join(f"{m} ({why})" for m, why in missing.items())) if missing else ""
        if not series:
            md.append(f"No error-vs-r plot for {kind} {kernel}: no method ran"
                      + (f" ({caption.removeprefix('not shown: ')})." if caption else "."))
            continue
        if exact is not None:
            xs = sorted({x for xs, _ in series.values() for x in xs})
            series["exact"], styles["exact"] = (xs, [exact["error_pct"]] * len(xs)), ":"
        name = f"error-vs-r-{kind}-{kernel}.png".replace("/", "_")
        if line_plot(run.path / name, series, xlabel="r", ylabel="error % (95% CI)", logx=True, styles=styles,
                     errors=errors,
                     title=f"{kind} {kernel}: error vs r", yscale="auto", notes=notes, caption=caption) is not None:
            md.append(f"![{kind} {kernel}]({name})" + (f"\n\n{caption}" if caption else ""))
    for kind in dict.fromkeys(r["kind"] for r in rows):
        r_mid = sorted(preset.rs)[len(preset.rs) // 2] if kind != "hf" else None
        r_plot = r_mid if r_mid is not None else min(preset.rs)
        series, dashed = {}, []
        for r in rows:
            if r["kind"] != kind or r["skipped"] or r["method"] not in ("topr", "va-greedy") or r["r"] != r_plot:
                continue
            errs = [r[c] for c in _layer_columns(r)]
            label = f"{r['kernel']} {'OVA' if r['method'] == 'va-greedy' else 'OVO'}"
            if errs:
                series[label] = (list(range(len(errs))), errs)
                dashed += [label] if r["method"] == "va-greedy" else []
        if not series:
            md.append(f"No per-layer plot for {kind}: neither topr nor va-greedy ran at r = {r_plot}.")
            continue
        name = f"layer-error-{kind}.png"
        if line_plot(run.path / name, series, xlabel="layer", ylabel="||O - O_hat|| / ||O||",
                     styles=series_styles(list(series), dashed=dashed), yscale="auto",
                     title=f"{kind}: output error per layer (r = {r_plot})") is not None:
            md.append(f"![{kind} per layer]({name})")
    return md
