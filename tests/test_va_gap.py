"""Study 1's gap table (issue 13 item 5): va-greedy against va-swap and va-exact, on fabricated
rows (arithmetic checked by hand) and in the report of a tiny-preset run with va-swap cells."""

from __future__ import annotations

import pytest

from attnlab.studies.va_report import gap_lines, gaps


def _row(method, r, errs, kernel="softmax", skipped=""):
    row = {"kind": "causal", "kernel": kernel, "seed": 0, "method": method, "r": r, "skipped": skipped,
           "mean_layer_error": sum(errs) / len(errs) if errs else None}
    row.update({f"layer{i}_error": e for i, e in enumerate(errs)})
    return row


def test_gap_arithmetic_on_fabricated_rows():
    rows = [_row("topr", 2, [0.9, 0.9]),
            _row("va-greedy", 2, [0.3, 0.5]), _row("va-swap", 2, [0.2, 0.4]), _row("va-exact", 2, [0.2, 0.2]),
            _row("va-greedy", 4, [0.2, 0.4]), _row("va-swap", 4, [0.2, 0.2]),
            _row("va-exact", 4, [], skipped="va-exact infeasible: C(128, 4) > 5000 supports"),
            _row("va-greedy", 8, [0.1, 0.1])]  # no va-swap or va-exact at r = 8: no row
    out = {g["r"]: g for g in gaps(rows)}
    assert sorted(out) == [2, 4]
    g2, g4 = out[2], out[4]
    assert g2["greedy_output_error"] == pytest.approx(0.4)
    assert g2["gap_to_swap_pct"] == pytest.approx(100 * (0.4 - 0.3) / 0.3)
    assert g2["gap_to_exact_pct"] == pytest.approx(100.0)
    assert g2["largest_layer_gap_pct"] == pytest.approx(150.0)  # layer 1: (0.5 - 0.2) / 0.2
    assert g2["best"] == "va-exact"
    assert g4["exact_output_error"] is None and g4["gap_to_exact_pct"] is None
    assert g4["gap_to_swap_pct"] == pytest.approx(50.0)
    assert g4["largest_layer_gap_pct"] == pytest.approx(100.0)
    assert g4["best"] == "va-swap"
    text = "\n".join(gap_lines(list(out.values()), rows))
    assert "75.0% above" in text  # mean of the gaps to the best: (100 + 50) / 2
    assert "va-exact, the certified optimum, in 1 of them" in text
    assert "C(128, 4) > 5000" in text


def test_zero_errors_give_a_zero_gap_and_no_section_without_cells():
    rows = [_row("va-greedy", 5, [0.0, 0.0]), _row("va-swap", 5, [0.0, 0.0])]
    assert gaps(rows)[0]["gap_to_swap_pct"] == 0.0
    assert gaps([_row("va-greedy", 2, [0.1])]) == []
    assert gap_lines([], rows) == []


def test_tiny_run_report_has_the_gap_table(tmp_path):
    from attnlab.studies.value_aware import ValueAwarePreset, run

    preset = ValueAwarePreset(kernels=("softmax",), kinds=("causal",), rs=(2,), methods=("topr", "va-greedy",
                              "va-swap", "va-exact"), n_layers=1, d_model=8, n_heads=2, context=12, steps=15,
                              batch_size=8, max_bytes=100_000, eval_batch_size=2)
    run_dir = run(preset, out=tmp_path)
    md = (run_dir / "report.md").read_text()
    assert "## How far the value-aware numbers are from the optimum" in md
    assert (run_dir / "va_gap.csv").exists()
    lines = (run_dir / "va_gap.csv").read_text().splitlines()
    assert len(lines) == 1 + 2  # r = 2 and the sanity point r = D + 1 = 5
