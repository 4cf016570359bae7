"""Study 1's gap cells (issue 13 item 5): va-greedy against va-swap and va-exact on a subsample of
the unmodified models' queries; the pooled table's arithmetic on fabricated cells (checked by
hand), the cells of a small run, and resuming an older run folder adds only the gap cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from attnlab.studies import value_aware as va
from attnlab.studies.va_report import gap_lines, gap_sentence, gaps

SMALL = dict(kernels=("softmax",), rs=(2, 8), methods=("topr", "va-greedy"), n_layers=1, d_model=8, n_heads=2,
             context=12, steps=15, batch_size=8, max_bytes=100_000, eval_batch_size=2)


def _cell(seed, greedy, swap, exact, seqs, r=2):
    return {"kind": "causal", "kernel": "softmax", "seed": seed, "r": r, "err_greedy": [greedy],
            "err_swap": [swap], "err_exact": [exact], "query_seq": [seqs], "query_keys": [[5] * len(seqs)]}


def test_gap_arithmetic_on_fabricated_cells():
    cells = [_cell(0, [0.3, 0.2, 0.5], [0.2, 0.2, 0.5], [0.2, 0.2, None], [0, 1, 1]),
             _cell(1, [0.4, 0.0], [0.4, 0.0], [None, 0.0], [0, 0])]
    (row,) = gaps(cells)
    assert (row["queries"], row["exact_queries"], row["seeds"]) == (5, 3, 2)
    assert row["err_greedy"] == pytest.approx((0.3 + 0.2 + 0.5 + 0.4 + 0.0) / 5)
    assert row["err_swap"] == pytest.approx((0.2 + 0.2 + 0.5 + 0.4 + 0.0) / 5)
    assert row["err_exact"] == pytest.approx(0.4 / 3)
    assert row["err_greedy_exact_queries"] == pytest.approx((0.3 + 0.2 + 0.0) / 3)  # the same 3 queries
    assert row["mean_gap_pct"] == pytest.approx(50.0 / 5)  # only the first query has a gap: 50%
    assert row["greedy_optimal_share"] == pytest.approx(2 / 3)  # certified on 2 of the 3 with va-exact
    assert row["greedy_swap_optimal_share"] == pytest.approx(1.0)  # the 2 others: 1-swap local optima
    assert row["gap_ci_low"] <= row["mean_gap_pct"] <= row["gap_ci_high"]
    assert row["median_gap_pct"] == 0.0
    assert row["mean_error_gap_pct"] == pytest.approx(100 * (1.4 / 5 - 1.3 / 5) / (1.3 / 5))
    text = gap_sentence([row])
    assert "8% to 8% above" in text and "67% of the 3 queries" in text and "other 2" in text
    assert gaps([_cell(0, [], [], [], [])]) == []
    assert gap_lines([], va.ValueAwarePreset()) == []


def test_gap_cells_only_below_d_plus_1_and_off_at_zero():
    p = va.ValueAwarePreset(**SMALL)
    assert [c.key for c in va.cells(p) if c.key.startswith("gap/")] == [
        f"gap/{k}/softmax/s0/r=2" for k in ("causal", "masked")]  # r = 8 >= D + 1 = 5: greedy is exact
    assert not [c for c in va.cells(va.ValueAwarePreset(**SMALL, gap_queries=0)) if c.key.startswith("gap/")]
    with pytest.raises(ValueError, match="gap_queries"):
        va.ValueAwarePreset(**SMALL, gap_queries=-1)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run made before the gap cells existed (gap_queries=0 and no such field in run.json)."""
    run_dir = va.run(va.ValueAwarePreset(**SMALL, gap_queries=0), out=tmp_path_factory.mktemp("gap"))
    assert not list((run_dir / "results").glob("gap~*"))
    info = json.loads((run_dir / "run.json").read_text())
    for name in ("gap_queries", "gap_exact_max_subsets"):
        del info["config"][name]
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def _copy(run_dir, tmp_path):
    """A private copy of the module's run folder: each test resumes its own, so the tests pass in
    any order and on any xdist worker."""
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def test_resume_adds_only_the_gap_cells(small_run, tmp_path, monkeypatch):
    small_run = _copy(small_run, tmp_path)
    before = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (small_run / "results").glob("*.json")}
    monkeypatch.setattr(va, "evaluate_tokens", lambda *a, **k: pytest.fail("an eval cell was recomputed"))
    monkeypatch.setattr("attnlab.train.train", lambda *a, **k: pytest.fail("a training was recomputed"))
    assert va.run(resume=str(small_run)) == small_run
    after = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (small_run / "results").glob("*.json")}
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["gap~causal~softmax~s0~r=2.json", "gap~masked~softmax~s0~r=2.json"]


def test_gap_cells_order_the_oracles_and_reach_the_report(small_run, tmp_path):
    small_run = _copy(small_run, tmp_path)
    assert va.run(resume=str(small_run)) == small_run  # adds the gap cells and the report's table
    preset = va.ValueAwarePreset(**SMALL)
    for path in sorted((small_run / "results").glob("gap~*.json")):
        res = json.loads(path.read_text())["result"]
        (greedy,), (swap,), (exact,) = res["err_greedy"], res["err_swap"], res["err_exact"]
        assert len(greedy) == len(swap) == len(exact) == preset.gap_queries  # of 2 seqs x 2 heads x 10 or 12 rows
        assert min(res["query_keys"][0]) > 2 and set(res["query_seq"][0]) == {0, 1}
        for g, s, e in zip(greedy, swap, exact, strict=True):
            assert e is not None  # C(<= 12, 2) <= gap_exact_max_subsets: va-exact ran on every query
            assert g >= s - 1e-9 * max(1.0, s) and s >= e - 1e-9 * max(1.0, e)
    with open(small_run / "va_gap.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["r"]) for r in rows] == [("causal", "2"), ("masked", "2")]
    for r in rows:
        assert 0.0 <= float(r["greedy_optimal_share"]) <= 1.0 and r["greedy_swap_optimal_share"] == ""
        assert float(r["gap_ci_low"]) <= float(r["mean_gap_pct"]) <= float(r["gap_ci_high"])
        assert float(r["err_greedy"]) >= float(r["err_swap"]) - 1e-9 >= float(r["err_exact"]) - 2e-9
        assert float(r["err_greedy_exact_queries"]) >= float(r["err_exact"]) - 1e-9
    md = (small_run / "report.md").read_text()
    assert "## How far the value-aware numbers are from the optimum" in md
    assert "**Distance from the optimum (r < D + 1).** Over 32 sampled queries" in md
    assert preset.gap_queries > 0  # the default is on, so an older run folder gains the cells


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_sampled_rows_keep_the_layers_exact_weights(kernel):
    """The gap cells recompute each sampled query's weights alone, with its visibility as the
    mask: they equal the full layer's weights, and only rows with more than r keys are drawn."""
    import torch

    from attnlab.capture import capture_qkv
    from attnlab.functional import attention
    from attnlab.models import CausalLM, ModelConfig
    from attnlab.studies.va_eval import _row_visible, _sample_rows

    model = CausalLM(ModelConfig(vocab_size=40, n_layers=1, d_model=16, n_heads=2, context=12, kernel=kernel))
    cap = capture_qkv(model, torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0)))[0]
    _, p_full = cap.exact(return_weights=True, eps=model.config.attn_eps)
    counts = _row_visible(cap, None, None, None, 12).sum(-1).flatten()
    pick = _sample_rows(counts, 2, 20, 0)
    assert len(pick) == 20 and len(set(pick.tolist())) == 20 and bool((counts[pick] > 2).all())
    seq, head, pos = pick // 24, (pick // 12) % 2, pick % 12
    vis = _row_visible(cap, seq, head, pos, 12)
    assert torch.equal(vis.sum(-1), pos + 1)  # causal: query t sees t + 1 keys
    _, p = attention(cap.q[seq, head, pos][:, None, None], cap.k[seq, head][:, None], cap.v[seq, head][:, None],
                     kernel=kernel, attn_mask=vis[:, None, None], scale=cap.scale, eps=model.config.attn_eps,
                     return_weights=True)
    torch.testing.assert_close(p[:, 0, 0], p_full[seq, head, pos], atol=1e-6, rtol=1e-5)
