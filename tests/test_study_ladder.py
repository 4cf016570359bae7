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


def _fake(task, level, kernel, seed, acc):
    return {"task": task, "level": level, "kernel": kernel, "seed": seed, "final_accuracy": acc,
            "steps_to_100": 100 if acc >= 1.0 else None}


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
