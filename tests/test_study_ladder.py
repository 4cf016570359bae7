"""Study 2 (complexity ladder): end to end on the tiny preset, resume, presets and verdicts."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import attnlab.train
from attnlab.data.tasks import sample, task_config
from attnlab.models import CausalLM, ModelConfig
from attnlab.studies import ladder, ladder_claims
from attnlab.studies.ladder import LadderPreset, cell_key, get_preset, run, summarize


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _small(**kw) -> LadderPreset:
    """One task, one level, one seed, a few steps: the cheapest preset that runs every path."""
    base = dict(levels={"recurrence": (1,)}, n_seeds=1, d_model=16, n_heads=2, steps=12, batch_size=8,
                eval_every=4, eval_batches=1, final_eval_sequences=16)
    return get_preset("tiny", **{**base, **kw})


def test_tiny_end_to_end(tmp_path):
    p = get_preset("tiny")
    path = run("tiny", tmp_path)
    n_cells = sum(len(lv) for lv in p.levels.values()) * len(p.kernels) * p.n_seeds
    results = _rows(path / "results.csv")
    assert len(results) == n_cells == 12
    assert {(r["task"], r["kernel"], r["seed"]) for r in results} == {
        (t, k, str(s)) for t in p.levels for k in p.kernels for s in p.seeds}
    summary = _rows(path / "summary.csv")
    assert len(summary) == n_cells // p.n_seeds
    curves = _rows(path / "curves.csv")
    assert len(curves) == n_cells * (p.steps // p.eval_every)
    for r in results:
        assert 0.0 <= float(r["final_accuracy"]) <= 1.0
        assert r["stopped"] in ("cap", "target", "plateau") and 0 < int(r["steps_trained"]) <= p.steps
        # steps_to_100 is the first periodic evaluation at 100%, or empty
        mine = [c for c in curves if (c["task"], c["kernel"], c["seed"]) == (r["task"], r["kernel"], r["seed"])]
        first = next((int(c["step"]) for c in mine if float(c["val_accuracy"]) >= 1.0), None)
        assert (int(r["steps_to_100"]) if r["steps_to_100"] else None) == first
    for task in p.levels:
        assert (path / f"accuracy_{task}.png").stat().st_size > 0
    # finished cells keep their weights but not the optimizer state
    assert len(list(path.glob("cells/*/checkpoints/step_*/model.safetensors"))) == n_cells
    assert not list(path.glob("cells/*/checkpoints/step_*/state.pt"))
    report = (path / "report.md").read_text()
    assert "## Claims" in report and "![accuracy vs complexity, mixture](accuracy_mixture.png)" in report
    assert "## Steps to solve, EA vs DPA paired by seed" in report and "median_steps_to_solve" in report
    assert "`recall` (associative recall) is attnlab's own task, not in the paper" in report
    assert len(_rows(path / "steps_to_solve.csv")) == sum(len(lv) for lv in p.levels.values())
    for task in p.levels:
        assert f"**{task}**" in report
    claims = report.split("## Claims", 1)[1].split("\n## ", 1)[0]  # the smoke preset states no verdict
    assert "Caveat: a smoke test, not evidence" in claims and "not judged" in claims
    assert not any(v in claims for v in ("; supported", "; not supported", "; inconclusive"))
    info = json.loads((path / "run.json").read_text())
    assert info["study"] == "ladder" and info["seeds"] == list(p.seeds)
    # the mean in summary.csv is the mean of the cells
    row = next(r for r in summary if r["task"] == "mixture" and r["kernel"] == "expressive")
    cells = [float(r["final_accuracy"]) for r in results if r["task"] == "mixture" and r["kernel"] == "expressive"]
    assert float(row["mean_accuracy"]) == pytest.approx(sum(cells) / len(cells))


def test_saved_weights_reproduce_final_accuracy(tmp_path):
    p = _small(kernels=("softmax", "expressive"))
    result = ladder.train_cell(p, "recurrence", 1, "expressive", 0, tmp_path)
    ckpt = tmp_path / "cells" / cell_key("recurrence", 1, "expressive", 0) / "checkpoints"
    spec = task_config("recurrence", 1, seed=0)
    model = CausalLM(ModelConfig(vocab_size=spec.vocab_size, context=spec.seq_len, d_model=16, n_heads=2,
                                 kernel="expressive"))
    model.load_state_dict(load_file(str(ckpt / (ckpt / "latest").read_text().strip() / "model.safetensors")))
    b = sample(spec, 16, 0, split="test")
    with torch.no_grad():
        pred = model.eval()(b.inputs).argmax(-1)
    expected = float(((pred == b.targets) & b.predictable).sum()) / float(b.predictable.sum())
    assert result["final_accuracy"] == pytest.approx(expected)
    assert [c[0] for c in result["curve"]] == [4, 8, 12]


def test_resume_skips_finished_cells(tmp_path, monkeypatch):
    p = _small()
    real, calls = ladder.train_cell, []

    def interrupted(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1:5])
        return real(*args, **kw)

    monkeypatch.setattr(ladder, "train_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(p, tmp_path)
    (path,) = [d for d in tmp_path.iterdir() if d.name.startswith("ladder-")]
    assert len(list((path / "results").glob("*.json"))) == 2  # one atomic file per finished cell

    def counting(*args, **kw):
        calls.append(args[1:5])
        return real(*args, **kw)

    monkeypatch.setattr(ladder, "train_cell", counting)
    assert run("tiny", tmp_path, resume=path) == path
    assert calls == [("recurrence", 1, k, 0) for k in p.kernels]  # two before, only the third after
    first = _rows(path / "results.csv")
    calls.clear()
    run("tiny", tmp_path, resume=path)
    assert calls == [] and _rows(path / "results.csv") == first


def test_unfinished_cell_continues_from_its_checkpoint(tmp_path, monkeypatch):
    p = _small()
    first = ladder.train_cell(p, "recurrence", 1, "softmax", 0, tmp_path)
    steps = []
    real_lr = attnlab.train.lr_at
    monkeypatch.setattr(attnlab.train, "lr_at", lambda step, cfg: steps.append(step) or real_lr(step, cfg))
    again = ladder.train_cell(p, "recurrence", 1, "softmax", 0, tmp_path)
    assert steps == []  # the final checkpoint is there: no step is retrained
    assert again["final_accuracy"] == first["final_accuracy"] and again["curve"] == first["curve"]


def test_workers_match_in_process(tmp_path):
    p = _small(kernels=("softmax", "expressive"))
    serial = _rows(run(p, tmp_path / "a") / "results.csv")
    parallel = _rows(run(p, tmp_path / "b", jobs=2) / "results.csv")
    key = lambda r: r["kernel"]  # noqa: E731
    drop = ("train_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in sorted(serial, key=key)] == [
        {k: v for k, v in r.items() if k not in drop} for r in sorted(parallel, key=key)]


def _fake(task, level, kernel, seed, acc, steps_to_solve=None):
    return {"task": task, "level": level, "kernel": kernel, "seed": seed, "final_accuracy": acc,
            "steps_to_100": 100 if acc >= 1.0 else None,
            "steps_to_solve": steps_to_solve if steps_to_solve is not None else (100 if acc >= 1.0 else None),
            "steps_trained": 300, "stopped": "target" if acc >= 1.0 else "plateau"}


def test_claims_verdicts():
    p = LadderPreset(levels={"recurrence": (1, 2, 3)}, kernels=("softmax", "expressive"), n_seeds=2)
    acc = {("softmax", 1): (1.0, 1.0), ("softmax", 2): (0.9, 0.8), ("softmax", 3): (0.3, 0.4),
           ("expressive", 1): (1.0, 1.0), ("expressive", 2): (1.0, 1.0), ("expressive", 3): (0.9, 0.8)}
    results = {cell_key("recurrence", lv, k, s): _fake("recurrence", lv, k, s, a[s])
               for (k, lv), a in acc.items() for s in (0, 1)}
    summary = summarize(p, results)
    row = next(r for r in summary if r["level"] == 2 and r["kernel"] == "softmax")
    assert row["mean_accuracy"] == pytest.approx(0.85) and row["std_accuracy"] == pytest.approx(0.0707107)
    assert not row["solved"] and row["seeds_at_100"] == 0 and row["median_steps_to_100"] is None
    margins, tests = ladder_claims.claims(p, summary, results)
    assert [m["margin_ea_minus_dpa"] for m in margins] == pytest.approx([0.0, 0.15, 0.5])
    got = {t["claim"]: t["result"] for t in tests}
    assert set(got) == {"EA >= DPA", "margin grows with complexity", "EA reaches 100% where DPA does not"}
    assert got["EA >= DPA"].effect == pytest.approx(0.65 / 3) and got["EA >= DPA"].n == {"seeds": 2, "cells": 6}
    assert got["margin grows with complexity"].effect == pytest.approx(0.25)  # OLS slope of d on the level
    solve = got["EA reaches 100% where DPA does not"]
    assert solve.n["A only"] == 2 and solve.n["B only"] == 0 and solve.p_value == pytest.approx(0.5)
    assert solve.verdict == "inconclusive" and solve.settle_n is not None  # 2 discordant pairs cannot decide
    assert "in 3 of 3 (task, level) cells; mean margin EA − DPA +0.217" in ladder_claims._overall(p, margins)
    # reversed: DPA ahead at level 3, by 0.4 on both seeds
    acc[("softmax", 3)], acc[("expressive", 3)] = (0.9, 0.9), (0.5, 0.5)
    results = {cell_key("recurrence", lv, k, s): _fake("recurrence", lv, k, s, a[s])
               for (k, lv), a in acc.items() for s in (0, 1)}
    margins, tests = ladder_claims.claims(p, summarize(p, results), results)
    assert "in 2 of 3 (task, level) cells" in ladder_claims._overall(p, margins)
    assert margins[-1]["margin_ea_minus_dpa"] == pytest.approx(-0.4)
    assert margins[-1]["ci_low"] == margins[-1]["ci_high"] == pytest.approx(-0.4)
    grows = next(t["result"] for t in tests if t["claim"] == "margin grows with complexity")
    assert grows.effect < 0 and grows.verdict != "supported"
    table = ladder_claims.verdict_table(tests, judged=False)
    assert "not judged, smoke test" in table and "supported" not in table


@pytest.mark.parametrize(("overrides", "match"), [
    ({"levels": {}}, "levels must be a non-empty dict"),
    ({"levels": {"copy": (1,)}}, "task must be one of"),
    ({"levels": {"recall": (0,)}}, r"levels\['recall'\] must be distinct levels"),
    ({"levels": {"recall": (1, 1)}}, r"levels\['recall'\] must be distinct levels"),
    ({"kernels": ("softmax", "squared")}, "kernels must be names in"),
    ({"kernels": ("softmax", "expressive", "gauss")}, "kernels must be names in"),
    ({"n_seeds": 0}, "n_seeds must be >= 1"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"eval_every": 1000}, "eval_every must be <= steps"),
    ({"solved_threshold": 1.5}, r"solved_threshold must be in \(0, 1\]"),
    ({"tie_tolerance": -0.1}, r"tie_tolerance must be in \[0, 1\)"),
    ({"lr": 1e-5}, "lr must be > 0 and >= min_lr"),
    ({"d_model": 18, "n_heads": 2}, "d_model / n_heads must be even for rotary positions"),
    ({"d_model": 20, "n_heads": 3}, r"d_model \(20\) must be divisible by n_heads \(3\)"),
    ({"depth": 3}, "overrides must be fields of LadderPreset"),
])
def test_preset_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_preset("tiny", **overrides)


def test_preset_rejects_a_non_int_count():
    with pytest.raises(TypeError, match="jobs must be an int, got float"):
        get_preset("tiny", jobs=1.5)


def test_presets_build_and_unknown_name():
    for name in ladder.PRESETS:
        p = get_preset(name)
        assert {"softmax", "expressive"} <= set(p.kernels) and p.n_seeds >= (2 if name == "tiny" else 3)
    assert set(get_preset("paper").levels) == {"recurrence", "recall", "mixture"}
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("huge")


def test_resume_errors(tmp_path):
    with pytest.raises(ValueError, match="resume path must be a study run folder"):
        run("tiny", tmp_path, resume=tmp_path)
    other = ladder.RunDir.create(tmp_path, "value_aware", config={}, seeds=[0])
    with pytest.raises(ValueError, match="resume must be a ladder run folder"):
        run("tiny", tmp_path, resume=other.path)
    mine = ladder.RunDir.create(tmp_path, "ladder", config=ladder.dataclasses.asdict(_small()), seeds=[0])
    with pytest.raises(ValueError, match=r"overrides may only set \['jobs', 'threads'\], got \['steps'\]"):
        run("tiny", tmp_path, resume=mine.path, steps=5)


def test_main_reports_bad_options(tmp_path, capsys):
    assert ladder.main(["--preset", "tiny", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert ladder.main(["--resume", str(tmp_path)]) == 2
    assert "resume path must be a study run folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing started


# --- early stopping, steps to solve, the paper's tasks first ----------------------------------


def test_cell_without_early_stopping_trains_to_the_cap(tmp_path):
    r = ladder.train_cell(_small(solved_threshold=0.3), "recurrence", 1, "expressive", 0, tmp_path)
    assert r["stopped"] == "cap" and r["steps_trained"] == r["steps"] == 12
    assert r["steps_to_solve"] == next((s for s, _, acc in r["curve"] if acc >= 0.3), None)


def test_cell_stops_when_solved_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    p = _small(steps=40, stop_at_accuracy=1e-6, solved_threshold=1e-6)  # any correct prediction solves it
    r = ladder.train_cell(p, "recurrence", 1, "softmax", 0, tmp_path)
    assert r["curve"][0][2] > 0  # so the first evaluation (step 4) meets the target
    assert r["stopped"] == "target" and r["steps_trained"] == 4 and r["steps_to_solve"] == 4
    assert [c[0] for c in r["curve"]] == [4] and r["steps"] == 40
    steps = []
    real_lr = attnlab.train.lr_at
    monkeypatch.setattr(attnlab.train, "lr_at", lambda step, cfg, *a: steps.append(step) or real_lr(step, cfg, *a))
    again = ladder.train_cell(p, "recurrence", 1, "softmax", 0, tmp_path)
    assert steps == [] and again["stopped"] == "target" and again["curve"] == r["curve"]
    assert again["final_accuracy"] == r["final_accuracy"]


def test_cell_stops_at_a_plateau(tmp_path):
    """A learning rate of ~0 leaves the accuracy flat: patience 2 stops at the third evaluation."""
    p = _small(steps=40, lr=1e-9, min_lr=0.0, early_stop_patience=2)
    r = ladder.train_cell(p, "recurrence", 2, "expressive", 0, tmp_path)
    assert r["stopped"] == "plateau" and r["steps_trained"] == 12 and [c[0] for c in r["curve"]] == [4, 8, 12]


def test_device_string_goes_through_whole(tmp_path):
    from attnlab.studies.ladder_train import _run_config

    cfg, _ = _run_config(_small(stop_at_accuracy=0.9, early_stop_patience=3), "recurrence", 1, "softmax", 0,
                         tmp_path, device="cuda:1")
    assert cfg.train.device == "cuda:1"
    assert (cfg.train.stop_at_accuracy, cfg.train.early_stop_patience) == (0.9, 3)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"stop_at_accuracy": 1.5}, r"stop_at_accuracy must be in \(0, 1\]"),
    ({"early_stop_patience": -1}, "early_stop_patience must be >= 0"),
])
def test_preset_early_stopping_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_preset("tiny", **overrides)


def test_summary_and_paired_steps_to_solve():
    p = LadderPreset(levels={"recall": (1,), "recurrence": (1,), "mixture": (1,)},
                     kernels=("softmax", "expressive"), n_seeds=3)
    steps = {("expressive", 0): 100, ("expressive", 1): 300, ("expressive", 2): 50,
             ("softmax", 0): 200, ("softmax", 1): 200, ("softmax", 2): None}
    results = {cell_key(t, 1, k, s): _fake(t, 1, k, s, 1.0 if steps[k, s] else 0.5, steps[k, s])
               for t in p.levels for k in p.kernels for s in p.seeds}
    row = next(r for r in summarize(p, results) if r["task"] == "recurrence" and r["kernel"] == "expressive")
    assert row["median_steps_to_solve"] == 100 and row["seeds_solved_in_training"] == 3
    assert row["median_steps_trained"] == 300 and row["seeds_stopped_early"] == 3
    pairs = ladder_claims.steps_to_solve_pairs(p, results)
    assert [r["task"] for r in pairs] == ["recurrence", "mixture", "recall (attnlab's own task, not in the paper)"]
    assert pairs[0]["pairs_both_solve"] == 2 and pairs[0]["ea_only_solves"] == 1 and pairs[0]["dpa_only_solves"] == 0
    assert (pairs[0]["median_steps_ea"], pairs[0]["median_steps_dpa"]) == (200, 200)
    assert pairs[0]["median_diff_ea_minus_dpa"] == 0 and (pairs[0]["ea_faster"], pairs[0]["dpa_faster"]) == (1, 1)


def test_headline_puts_the_paper_tasks_first_and_labels_recall():
    p = LadderPreset(levels={"recall": (1, 2), "mixture": (1, 2), "recurrence": (1, 2)},
                     kernels=("softmax", "expressive"), n_seeds=2)
    acc = {"softmax": 0.8, "expressive": 0.9}
    results = {cell_key(t, lv, k, s): _fake(t, lv, k, s, acc[k] + 0.01 * s)
               for t in p.levels for lv in (1, 2) for k in p.kernels for s in p.seeds}
    margins, tests = ladder_claims.claims(p, summarize(p, results), results)
    scopes = list(dict.fromkeys(t["scope"] for t in tests))
    assert scopes == ["recurrence", "mixture", "paper tasks", "recall"]  # recall after, never pooled
    assert [m["task"] for m in margins][::2] == ["recurrence", "mixture", "recall"]
    table = ladder_claims.verdict_table(tests, judged=True)
    assert "**recall** (attnlab's own task, not in the paper)" in table
    assert "**recurrence** (" not in table and "**mixture** (" not in table
    assert table.index("**recurrence**") < table.index("**mixture**") < table.index("**recall**")
