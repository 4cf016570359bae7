"""Study 1 (value-aware vs value-oblivious): end to end on the tiny preset, resume, sanity point."""

from __future__ import annotations

import csv

import pytest
import torch

import attnlab.train
from attnlab.models import CausalLM, ModelConfig
from attnlab.studies import value_aware as va


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return va.run("tiny", tmp_path_factory.mktemp("va"), seed=0)


def test_tiny_end_to_end_outputs(tiny_run):
    preset = va.PRESETS["tiny"]
    assert (tiny_run / "report.md").is_file() and (tiny_run / "run.json").is_file()
    rows = read(tiny_run / "results.csv")
    per_model = 1 + len(preset.all_rs) * len(preset.methods)
    assert len(rows) == 4 * per_model
    assert {"kind", "kernel", "method", "r", "loss", "perplexity", "error_pct", "mean_layer_error", "skewness",
            "layer0_error", "skipped"} <= set(rows[0])
    skipped = {(r["kind"], r["kernel"], r["method"]): r["skipped"] for r in rows if r["skipped"]}
    assert "softmax only" in skipped[("causal", "relu", "performer")]
    assert "non-causal" in skipped[("causal", "softmax", "nystrom")]
    assert ("masked", "softmax", "nystrom") not in skipped
    diffs = read(tiny_run / "ova_vs_ovo.csv")
    assert len(diffs) == 4 * len(preset.all_rs) and "points_saved" in diffs[0]
    for d in diffs:  # value-aware output error never above value-oblivious
        assert float(d["ova_output_error"]) <= float(d["ovo_output_error"]) + 1e-6
    report = (tiny_run / "report.md").read_text()
    for png in ("error-vs-r-causal-softmax.png", "layer-error-masked.png"):
        assert (tiny_run / png).is_file() and f"({png})" in report
    assert "Claim 1" in report and "Sanity" in report
    assert len(read(tiny_run / "training.csv")) == 4
    assert len(list((tiny_run / "models").glob("*/checkpoints/step_*/model.safetensors"))) == 4


def test_resume_recomputes_nothing_finished(tiny_run, monkeypatch):
    lines = (tiny_run / "cells.jsonl").read_text().splitlines()
    evals = [ln for ln in lines if '"eval/' in ln]
    (tiny_run / "cells.jsonl").write_text("\n".join([ln for ln in lines if ln not in evals[-3:]]) + "\n")
    calls = {"train": 0, "evaluate": 0}
    real = attnlab.train.evaluate

    def no_train(*a, **k):
        calls["train"] += 1
        raise AssertionError("a finished training was recomputed")

    def counted(*a, **k):
        calls["evaluate"] += 1
        return real(*a, **k)

    monkeypatch.setattr(attnlab.train, "train", no_train)
    monkeypatch.setattr(attnlab.train, "evaluate", counted)
    assert va.run("tiny", resume=str(tiny_run)) == tiny_run
    assert calls["train"] == 0
    assert calls["evaluate"] == sum('"skipped": ""' in ln for ln in evals[-3:])
    assert len(read(tiny_run / "results.csv")) == 4 * (1 + len(va.PRESETS["tiny"].all_rs) * 5)


def test_caratheodory_point_inside_a_real_model():
    """r = D + 1: the exact value-aware oracle reproduces every attention output of the model."""
    model = CausalLM(ModelConfig(vocab_size=40, n_layers=2, d_model=8, n_heads=2, context=12, kernel="softmax"))
    idx = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    stats = {name: {} for name in ("va-exact", "va-greedy", "topr")}
    for name, s in stats.items():
        for i in range(2):
            model.set_attention(va.LayerProbe(name, 5, kernel="softmax", eps=1e-6, layer=i, stats=s), layers=[i])
        model(idx)
    err = {n: [(a[0] / a[1]) ** 0.5 for _, a in sorted(s.items())] for n, s in stats.items()}
    assert max(err["va-exact"]) < 1e-3
    assert max(err["va-greedy"]) < 0.05 and min(err["topr"]) > 10 * max(err["va-exact"])


def test_hf_model_evaluation(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=300, n_positions=12)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    run = va.run("tiny", tmp_path / "out", hf_model=str(tmp_path / "gpt2"))
    rows = read(run / "results.csv")
    assert [(r["method"], r["r"]) for r in rows] == [("exact", "0")] + [
        (m, str(r)) for r in (1, 2, 5) for m in ("topr", "va-greedy")]
    assert {"layer0_error", "layer1_error", "loss", "error_pct"} <= set(rows[0])
    assert float(rows[0]["mean_layer_error"]) == 0.0
    assert (run / "report.md").is_file()


@pytest.mark.parametrize("kw, message", [
    (dict(rs=(0,)), "rs must be"), (dict(kernels=("cosine",)), "kernels must be"),
    (dict(methods=("topk",)), "methods must be"), (dict(steps=0), "steps must be >= 1"),
    (dict(d_model=10, n_heads=4), "divisible"), (dict(steps=1.5), "steps must be int"),
])
def test_preset_validation(kw, message):
    with pytest.raises((ValueError, TypeError), match=message):
        va.ValueAwarePreset(**kw)


def test_bad_run_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="preset must be one of"):
        va.run("huge", tmp_path)
    with pytest.raises(TypeError, match="preset must be a preset name"):
        va.run(3, tmp_path)
    assert va.main(["--resume", str(tmp_path / "nope")]) == 2
    assert "--resume must be a run folder" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text('{"study": "ladder", "seeds": [0]}')
    with pytest.raises(ValueError, match="resume must be a value-aware run folder"):
        va.run("tiny", resume=str(tmp_path / "other"))
