"""Study 1 (value-aware vs value-oblivious): end to end on the tiny preset, resume, sanity point."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import attnlab.train
from attnlab.models import CausalLM, ModelConfig
from attnlab.studies import va_plots, va_report
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
    assert "does not support kernel 'relu'" in skipped[("causal", "relu", "performer")]  # the records' refusals
    assert "does not support is_causal=True" in skipped[("causal", "softmax", "nystrom")]
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
    evals = sorted((tiny_run / "results").glob("eval~*.json"))
    removed = [json.loads(p.read_text()) for p in evals[-3:]]
    for p in evals[-3:]:
        p.unlink()
    calls = {"train": 0, "evaluate": 0}
    real = va.evaluate_tokens

    def no_train(*a, **k):
        calls["train"] += 1
        raise AssertionError("a finished training was recomputed")

    def counted(*a, **k):
        calls["evaluate"] += 1
        return real(*a, **k)

    monkeypatch.setattr(attnlab.train, "train", no_train)
    monkeypatch.setattr(va, "evaluate_tokens", counted)
    assert va.run("tiny", resume=str(tiny_run)) == tiny_run
    assert calls["train"] == 0
    assert calls["evaluate"] == sum(r["result"]["skipped"] == "" for r in removed)
    preset = va.PRESETS["tiny"]
    assert len(read(tiny_run / "results.csv")) == 4 * (1 + len(preset.all_rs) * len(preset.methods))
    assert [json.loads(p.read_text()) for p in evals[-3:]] == removed  # recomputed the same


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


VERDICTS = ("Holds at some budgets", "Does not hold here", "Agrees (monotone", "Does not agree", "Inconclusive")


def test_tiny_report_has_the_smoke_caveat_and_no_bare_verdict(tiny_run):
    """Issue 12: the tiny preset's untrained models (91.67 / 100 % error in every cell) got
    verdicts on the claims with no caveat."""
    report = (tiny_run / "report.md").read_text()
    verdicts = report.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    assert "Caveat: a smoke test, not evidence" in verdicts and "trained for 15 steps" in verdicts
    assert not any(v in report for v in VERDICTS)
    assert "not judged" in verdicts and "supported" not in verdicts and "inconclusive" not in verdicts
    assert verdicts.count("Not judged (smoke test") == verdicts.count("**Claim")


def _cells(err_by_method, skewness=0.2, tokens=40):
    """Rows and per-token data: top-r wrong on 9 more tokens in 100 than va-greedy, at every r."""
    rows, data = [], {}
    for kernel, errs in err_by_method.items():
        rows.append({"kind": "causal", "kernel": kernel, "method": "exact", "r": 0, "error_pct": errs[0],
                     "skipped": "", "skewness": skewness, "mean_layer_error": 0.0})
        for r, e in zip((1, 2), errs[1:], strict=True):
            for method, err in (("topr", e + 9.0), ("va-greedy", e)):
                rows.append({"kind": "causal", "kernel": kernel, "method": method, "r": r, "error_pct": err,
                             "skipped": "", "skewness": skewness, "mean_layer_error": 0.1})
                wrong = set(range(int(err * tokens / 100)))
                data[("causal", kernel, 0, method, r)] = {
                    "token_correct": [int(i not in wrong) for i in range(tokens)],
                    "token_seq": [i % 8 for i in range(tokens)], "token_loss": [0.0] * tokens}
    return rows, data


def test_smoke_caveat_decides_from_the_budget_and_the_data():
    trained = va.ValueAwarePreset(rs=(1, 2), steps=500)
    moving, tokens = _cells({"softmax": [40.0, 45.0, 42.0]}, tokens=400)
    assert va.smoke_caveat(moving, trained) is None
    tests = va_report.claim_tests(moving, tokens, trained)
    lines = va_report._verdicts(va_report._diffs(moving, tokens), moving, trained, tests, judged=True)
    claim_1a = next(t["result"] for t in tests if t["claim"].startswith("1a"))
    assert claim_1a.effect == pytest.approx(9.0) and claim_1a.verdict == "supported"
    assert claim_1a.n == {"sequences": 8, "tokens": 400}
    assert "Not judged" not in "\n".join(lines) and "+9.00 points" in "\n".join(lines)
    short = va.smoke_caveat(moving, va.ValueAwarePreset(rs=(1, 2), steps=15))
    assert "trained for 15 steps" in short
    flat = [dict(r, error_pct=91.67) for r in moving]
    caveat = va.smoke_caveat(flat, trained)
    assert "No approximation changes the error % of causal softmax (91.67%)" in caveat
    assert va.smoke_caveat(flat, trained, trained=False) == caveat  # a loaded (HF) model too
    lines = va_report._verdicts(va_report._diffs(flat), flat, trained, tests, judged=False)
    text = "\n".join(lines)
    assert "Not judged" in lines[0] and not any(v in text for v in VERDICTS)
    assert "supported" not in text and "not judged" in text


def _flatness_cells(extra_gain_by_seed, tokens=400):
    """Per seed a flat (relu, skewness 0.1) and a sharp (softmax, 0.5) model; both gain 9 points
    from the values at r = 1 and 2, the flat one ``extra_gain_by_seed[seed]`` points more."""
    rows, data = [], {}
    for seed, extra in enumerate(extra_gain_by_seed):
        for kernel, skew, gain in (("relu", 0.1, 9.0 + extra), ("softmax", 0.5, 9.0)):
            rows.append({"kind": "causal", "kernel": kernel, "seed": seed, "method": "exact", "r": 0,
                         "error_pct": 40.0, "skipped": "", "skewness": skew, "mean_layer_error": 0.0})
            for r in (1, 2):
                for method, wrong in (("topr", 160 + int(gain * 4)), ("va-greedy", 160)):
                    rows.append({"kind": "causal", "kernel": kernel, "seed": seed, "method": method, "r": r,
                                 "error_pct": wrong / 4, "skipped": "", "skewness": skew, "mean_layer_error": 0.1})
                    data[("causal", kernel, seed, method, r)] = {
                        "token_correct": [int(i >= wrong) for i in range(tokens)],
                        "token_seq": [i % 8 for i in range(tokens)], "token_loss": [0.0] * tokens}
    return rows, data


def test_flatter_kernels_claim_is_a_slope_on_flatness():
    preset = va.ValueAwarePreset(rs=(1, 2), steps=500, kernels=("softmax", "relu"), n_seeds=3)
    rows, tokens = _flatness_cells([3.0, 2.75, 3.25])  # every seed: the flat kernel gains ~3 points more
    slope = next(t["result"] for t in va_report.claim_tests(rows, tokens, preset) if t["claim"].startswith("2"))
    assert slope.effect == pytest.approx(3.0 / 0.4) and slope.verdict == "supported"
    assert slope.n["seeds"] == 3


def test_flatness_slope_resamples_seeds_not_sequences():
    """The flatness is a trained model's: seeds whose models disagree (slopes +30, +20, -12.5 points
    per unit flatness) make the claim inconclusive, however many tokens each seed has; a
    bootstrap over sequences held the models fixed and called this 'supported'."""
    preset = va.ValueAwarePreset(rs=(1, 2), steps=500, kernels=("softmax", "relu"), n_seeds=3)
    rows, tokens = _flatness_cells([12.0, 8.0, -5.0], tokens=800)
    slope = next(t["result"] for t in va_report.claim_tests(rows, tokens, preset) if t["claim"].startswith("2"))
    assert slope.effect > 0 and slope.ci_low < 0 < slope.ci_high
    assert slope.verdict == "inconclusive"


def test_plots_skip_a_model_with_nothing_to_draw(tmp_path):
    from attnlab.studies.report import RunDir

    run = RunDir.create(tmp_path, "value-aware", config={}, seeds=[0])
    rows = [{"kind": "causal", "kernel": "relu", "method": m, "r": r, "skipped": "performer approximates softmax "
             "only", "error_pct": None} for m in ("performer",) for r in (1, 2)]
    md = va_plots.plots(run, rows, va.ValueAwarePreset(rs=(1, 2)))
    assert md == ["No error-vs-r plot for causal relu: no method ran (performer (performer approximates softmax "
                  "only)).", "No per-layer plot for causal: neither topr nor va-greedy ran at r = 2."]
    assert not list(run.path.glob("*.png"))


def test_one_seed_report_says_the_flatness_claim_is_not_tested():
    preset = va.ValueAwarePreset(rs=(1, 2), steps=500, kernels=("softmax", "relu"))
    rows, tokens = _flatness_cells([3.0])
    tests = va_report.claim_tests(rows, tokens, preset)
    assert not any(t["claim"].startswith("2") for t in tests)
    text = "\n".join(va_report._verdicts(va_report._diffs(rows, tokens), rows, preset, tests))
    assert "Claim 2 (flatter kernels suffer more from ignoring values).** Not tested" in text
    three = va.ValueAwarePreset(rs=(1, 2), steps=500, kernels=("softmax", "relu"), n_seeds=3)
    rows3, tokens3 = _flatness_cells([3.0, 2.75, 3.25])
    tests3 = va_report.claim_tests(rows3, tokens3, three)
    assert "Not tested" not in "\n".join(va_report._verdicts(va_report._diffs(rows3, tokens3), rows3, three, tests3))
