"""The approximation-error harness: oracle attention, method budgets, metrics rows and the CLI."""

from __future__ import annotations

import csv

import pytest
import torch

import attnlab
from attnlab.approx.topk import topk_attention
from attnlab.studies import approx_error as ae


def qkv(B=2, H=2, Hkv=2, L=10, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, D, generator=g, dtype=torch.float64),
            torch.randn(B, Hkv, L, D, generator=g, dtype=torch.float64),
            torch.randn(B, Hkv, L, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("kernel", ["softmax", "expressive", "relu"])
def test_oracle_topr_is_topk_attention_including_short_causal_rows(kernel):
    q, k, v = qkv()
    # eps = 0: topk adds eps to the top-k sum, topr renormalizes p (whose normalizer had eps)
    got = ae.oracle_attention(q, k, v, method="topr", r=3, kernel=kernel, is_causal=True, eps=0.0)
    want = topk_attention(q, k, v, top_k=3, kernel=kernel, is_causal=True, eps=0.0)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", ["topr", "va-greedy", "omp"])
def test_oracle_at_full_budget_is_exact(method):
    q, k, v = qkv()
    exact = attnlab.attention(q, k, v, kernel="expressive", eps=0.0)
    got = ae.oracle_attention(q, k, v, method=method, r=10, kernel="expressive", eps=0.0)
    torch.testing.assert_close(got, exact, atol=1e-6, rtol=1e-6)


def test_oracle_short_rows_exact_weights_and_gqa():
    q, k, v = qkv(H=4, Hkv=2)
    out, p, p_hat = ae.oracle_attention(q, k, v, method="va-greedy", r=4, is_causal=True, enable_gqa=True,
                                        return_weights=True)
    exact = attnlab.attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out[..., :3, :], exact[..., :3, :])  # rows 0..2 see < 4 keys
    assert not torch.allclose(out[..., 3:, :], exact[..., 3:, :])
    assert int((p_hat[..., 3:, :] > 0).sum(-1).max()) <= 4 and bool((p_hat[..., :3, :] == p[..., :3, :]).all())
    rep = ae.oracle_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), method="va-greedy", r=4,
                              is_causal=True)
    torch.testing.assert_close(out, rep)


def test_oracle_zero_weight_rows_stay_zero_and_mask_respected():
    q, k, v = qkv()
    q[0, 0, 0] = 0.0  # relu: all scores 0 -> all weights 0 -> output 0
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    mask[1, ..., 7:] = False
    out, _, p_hat = ae.oracle_attention(q, k, v, method="va-greedy", r=2, kernel="relu", attn_mask=mask,
                                        return_weights=True)
    assert torch.equal(out[0, 0, 0], torch.zeros(4, dtype=out.dtype))
    assert not bool(p_hat[1, ..., 7:].any())


def test_value_aware_beats_value_oblivious_on_outputs():
    q, k, v = ae.synthetic_qkv(batch=1, heads=2, length=14, head_dim=4, seed=1)
    rows = ae.compare_methods(q, k, v, kernel="softmax", methods=["topr", "va-greedy", "va-exact", "topk"],
                              rs=[1, 2, 5])
    err = {(r["method"], r["r"]): r["value_aware_error"] for r in rows}
    for r in (1, 2, 5):
        assert err[("va-greedy", r)] <= err[("topr", r)] + 1e-6
        assert err[("topk", r)] == pytest.approx(err[("topr", r)], rel=1e-4)
    assert err[("va-exact", 5)] < 1e-3  # Caratheodory: D + 1 = 5 keys reproduce the output
    assert err[("va-exact", 2)] <= err[("va-greedy", 2)] + 1e-6
    mass = {r["r"]: r["top_r_mass"] for r in rows if r["method"] == "topr"}
    assert mass[1] < mass[2] < mass[5] <= 1


def test_skip_reasons_and_budgets():
    q, k, v = ae.synthetic_qkv(batch=1, heads=1, length=16, head_dim=4)
    rows = ae.compare_methods(q, k, v, kernel="relu", methods=["performer", "nystrom", "va-exact", "elu-linear"],
                              rs=[2, 8], is_causal=True, va_exact_max_subsets=200)
    reasons = {(r["method"], r["r"]): r["skipped"] for r in rows}
    assert "does not support kernel 'relu'" in reasons[("performer", 2)]  # the records' refusals
    assert "does not support kernel 'relu'" in reasons[("nystrom", 8)]
    assert reasons[("va-exact", 2)] == "" and "infeasible" in reasons[("va-exact", 8)]
    assert [r["r"] for r in rows if r["method"] == "elu-linear"] == [2]  # no budget: one row
    assert "is_causal" in ae.skip_reason("nystrom", 2, kernel="softmax", is_causal=True, masked=False, L=8, S=8,
                                         D_v=4)
    assert ae.skip_reason("nystrom", 2, kernel="softmax", is_causal=False, masked=True, L=8, S=8, D_v=4)
    assert "r <= 8" in ae.skip_reason("nystrom", 9, kernel="softmax", is_causal=False, masked=False, L=8, S=8, D_v=4)
    assert ae.skip_reason("nystrom", 8, kernel="softmax", is_causal=False, masked=False, L=8, S=8, D_v=4) is None
    out, p_hat = ae.method_output("performer", 3, q, k, v, features_per_r=2)
    want = attnlab.approx.registry.approximate_attention(q, k, v, method="performer", num_features=6, seed=0)
    assert p_hat is None and torch.equal(out, want)


def test_bad_arguments_raise():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="r must be >= 1"):
        ae.oracle_attention(q, k, v, method="topr", r=0)
    with pytest.raises(ValueError, match="method must be one of"):
        ae.oracle_attention(q, k, v, method="top", r=1)
    with pytest.raises(ValueError, match="method must be one of"):
        ae.method_output("nope", 1, q, k, v)
    with pytest.raises(ValueError, match="checkpoint must be an 'attnlab train' run folder"):
        ae.load_trained_model("/nonexistent")


@pytest.mark.parametrize("argv, message", [
    (["--rs", "0"], "--rs must all be > 0"),
    (["--length", "4", "--rs", "8"], "--rs must be <= --length"),
    (["--kernels", "cosine"], "--kernels must be in"),
    (["--checkpoint", "a", "--hf-model", "b"], "at most one"),
    (["--heads", "0"], "--heads must be >= 1"),
])
def test_cli_rejects_bad_options(argv, message, capsys, tmp_path):
    assert ae.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_synthetic_writes_csv_report_and_plots(tmp_path):
    assert ae.main(["--out", str(tmp_path), "--rs", "1", "2", "--temperatures", "0.5", "1", "--length", "12",
                    "--head-dim", "4", "--kernels", "softmax", "squared", "--methods", "topr", "va-greedy",
                    "topk", "performer"]) == 0
    (run,) = tmp_path.iterdir()
    rows = read(run / "approx_error.csv")
    assert len(rows) == 2 * 2 * 4 * 2
    assert {"source", "kernel", "condition", "method", "r", "value_aware_error", "value_oblivious_error",
            "top_r_mass", "entropy", "skewness", "skipped"} <= set(rows[0])
    sq = {r["condition"]: float(r["skewness"]) for r in rows if r["kernel"] == "squared"}
    assert sq["T=0.5"] == pytest.approx(sq["T=1"], rel=1e-4)  # homogeneous kernel: temperature-free
    sm = {r["condition"]: float(r["skewness"]) for r in rows if r["kernel"] == "softmax"}
    assert sm["T=0.5"] > sm["T=1"]
    assert (run / "error-softmax-T1.png").is_file() and "![softmax T=1]" in (run / "report.md").read_text()


def test_cli_on_attnlab_checkpoint_and_hf_model(tmp_path):
    from attnlab.train import load_config, train

    cfg = load_config(None, ["model.n_layers=1", "model.d_model=8", "model.n_heads=2", "model.context=12",
                             "model.kernel=expressive", "data.max_bytes=20000", "train.steps=2",
                             "train.batch_size=2", "train.progress=false", f"train.out_dir={tmp_path / 'ck'}"])
    train(cfg)
    model, loaded = ae.load_trained_model(tmp_path / "ck")
    assert loaded.model.kernel == "expressive" and not model.training
    assert ae.main(["--out", str(tmp_path / "r1"), "--checkpoint", str(tmp_path / "ck"), "--rs", "1", "3",
                    "--batch", "2", "--methods", "topr", "va-greedy"]) == 0
    rows = read(next((tmp_path / "r1").iterdir()) / "approx_error.csv")
    assert {r["kernel"] for r in rows} == {"expressive"} and {r["condition"] for r in rows} == {"layer=0"}
    transformers = pytest.importorskip("transformers")
    gcfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=300, n_positions=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(gcfg).save_pretrained(tmp_path / "gpt2")
    assert ae.main(["--out", str(tmp_path / "r2"), "--hf-model", str(tmp_path / "gpt2"), "--rs", "1", "9",
                    "--length", "12", "--methods", "topr", "va-greedy"]) == 0
    rows = read(next((tmp_path / "r2").iterdir()) / "approx_error.csv")
    assert {r["condition"] for r in rows} == {"layer=0", "layer=1"}
    va9 = [float(r["value_aware_error"]) for r in rows if r["method"] == "va-greedy" and r["r"] == "9"]
    assert max(va9) < 0.05  # D + 1 = 9 keys (greedy: close to the Caratheodory zero)


def test_plot_series_styles_stops_and_missing_methods():
    """Issue 12: coinciding lines hid legend entries, va-exact's single point (r = 1) was drawn
    as a constant line over every r, and where a method stopped was not said."""
    q, k, v = ae.synthetic_qkv(batch=1, heads=1, length=12, head_dim=3)
    methods = ["topr", "topr-l2", "va-greedy", "va-exact", "topk", "performer", "elu-linear", "cosformer"]
    rows = ae.compare_methods(q, k, v, kernel="relu", methods=methods, rs=[1, 2, 4], va_exact_max_subsets=70)
    series, styles, notes, caption = ae.plot_series(rows, methods, [1, 2, 4])
    assert list(series) == [m for m in methods if m != "performer"]
    assert len(set(styles.values())) == len(styles) and styles["va-greedy"].startswith("--")
    assert not styles["topk"].startswith("--")
    # C(12, 2) = 66 <= 70 < C(12, 4): va-exact runs at r = 1, 2 only, and the plot says so
    assert series["va-exact"][0] == [1, 2]
    assert notes == {"va-exact": "stops at r=2: va-exact infeasible: C(12, 4) > 70 supports"}
    assert series["elu-linear"][0] == [1, 2, 4] and len(set(series["elu-linear"][1])) == 1  # no budget: constant
    assert caption == ("not shown: performer (kernel: method 'performer' does not support kernel 'relu' "
                       "(it takes ['softmax']))")


def test_cli_writes_no_empty_plot_and_says_why(tmp_path, capsys):
    """Issue 12: a nystrom-only causal run wrote an empty plot (and a matplotlib warning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ae.main(["--out", str(tmp_path), "--rs", "2", "4", "--temperatures", "1", "--length", "8",
                        "--head-dim", "4", "--kernels", "softmax", "--methods", "nystrom", "--causal"]) == 0
    (run,) = tmp_path.iterdir()
    assert not list(run.glob("*.png"))
    why = ("No plot for synthetic softmax T=1: no method applies (nystrom (is_causal: method 'nystrom' does not "
           "support is_causal=True)).")
    assert why in (run / "report.md").read_text() and why in capsys.readouterr().out


def test_approx_error_is_a_study_of_the_launcher(tmp_path):
    """`attnlab study approx-error --preset quick` (YAML) runs through the launcher and resumes."""
    import json

    from attnlab.studies import launcher

    small = {"rs": (1, 2), "temperatures": (0.5, 1.0), "kernels": ("softmax",), "methods": ("topr", "va-greedy"),
             "length": 8, "head_dim": 4}
    path = launcher.run_study("approx-error", "quick", out=tmp_path, overrides=small, progress=False)
    assert len(read(path / "approx_error.csv")) == 2 * 2 * 2 and (path / "report.md").is_file()
    assert launcher.run_study("approx-error", "quick", resume=path, progress=False) == path
    sessions = json.loads((path / "run.json").read_text())["sessions"]
    assert [s["cells_run"] for s in sessions] == [2, 0]  # one cell per (kernel, temperature), none twice


def test_the_renamed_linear_method_still_runs_with_a_warning():
    """`--methods linear` (elu+1 attention, now `elu-linear`) keeps working, with a FutureWarning."""
    from attnlab.studies.approx_error import ApproxErrorPreset, build_parser

    with pytest.warns(FutureWarning, match="'linear' is deprecated, use 'elu-linear'"):
        args = build_parser().parse_args(["--methods", "linear", "topr"])
    assert args.methods == ["elu-linear", "topr"]
    with pytest.warns(FutureWarning, match="'linear' is deprecated"):
        assert ApproxErrorPreset(methods=("linear",)).methods == ("elu-linear",)


def test_methods_with_their_own_kernel_run_at_any_temperature():
    """elu-linear and cosformer define their own kernel: the temperature's score scale is not theirs to
    take, and a scaled synthetic problem must still run them (it raised before)."""
    from attnlab.studies.approx_error import compare_methods, synthetic_qkv

    q, k, v = synthetic_qkv(length=16, head_dim=8)
    rows = compare_methods(q, k, v, kernel="softmax", methods=["elu-linear", "cosformer"], rs=[2], scale=0.7)
    assert [r["method"] for r in rows] == ["elu-linear", "cosformer"]
    assert all(r["skipped"] == "" and r["value_aware_error"] is not None for r in rows)
