"""Hugging Face integration: attnlab attention inside real transformers models (built offline)."""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import pytest
import torch

import attnlab
from attnlab.integrations import hf
from attnlab.testing import max_error

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def registered():
    hf.register()


pytestmark = pytest.mark.usefixtures("one_thread")


def build(kind: str, impl: str, **kw):
    """A small randomly initialized model (seeded; the global RNG state is restored)."""
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, bos_token_id=0,
                                      eos_token_id=0, **kw)
        cls = transformers.GPT2LMHeadModel
    elif kind == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0, **kw)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                      num_attention_heads=4, vocab_size=100, **kw)
        cls = transformers.BertForMaskedLM
    cfg._attn_implementation = impl
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls(cfg).eval()


def inputs(pad_left: bool):
    idx = torch.randint(1, 100, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 10, dtype=torch.long)
    if pad_left:
        mask[1, :4] = 0
    else:
        mask[1, 6:] = 0
    return idx, mask


@pytest.mark.parametrize("kind, pad_left", [("gpt2", True), ("llama", True), ("bert", False)])
def test_softmax_equals_eager(kind, pad_left):
    model = build(kind, "eager")
    idx, mask = inputs(pad_left)
    with torch.no_grad():
        eager = model(idx, attention_mask=mask).logits
        plain = model(idx).logits
        model.set_attn_implementation("attnlab-softmax")
        assert model.config._attn_implementation == "attnlab-softmax"
        ours = model(idx, attention_mask=mask).logits
        ours_plain = model(idx).logits
    real = mask.bool()  # padded query rows are arbitrary in every implementation
    assert max_error(ours[real], eager[real]) < 1e-5
    assert max_error(ours_plain, plain) < 1e-5
    # the padding mask reached attnlab: without it the real tokens of row 1 would see the pads
    assert not torch.allclose(ours[1][real[1]], ours_plain[1][real[1]])


def test_llama_cached_greedy_generation_matches_eager():
    idx = torch.randint(1, 100, (2, 5), generator=torch.Generator().manual_seed(1))
    out = {}
    for impl in ("eager", "attnlab-softmax"):
        model = build("llama", impl)
        out[impl] = model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=6,
                                   do_sample=False, pad_token_id=0)
    assert torch.equal(out["eager"], out["attnlab-softmax"])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_expressive_forward_backward(kind):
    extra = {"attn_pdrop": 0.0} if kind == "gpt2" else ({"attention_probs_dropout_prob": 0.0}
                                                         if kind == "bert" else {})
    model = build(kind, "attnlab-expressive", **extra).train()
    idx, mask = inputs(pad_left=kind != "bert")
    logits = model(idx, attention_mask=mask).logits
    softmax_model = build(kind, "attnlab-softmax", **extra)
    assert not torch.allclose(logits, softmax_model(idx, attention_mask=mask).logits)  # kernel in use
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


#: Attention dropout 0.1 (the models' default) and no other dropout, so that a change between
#: two training passes can only come from attnlab's attention dropout.
ATTENTION_DROPOUT_ONLY = {
    "gpt2": {"attn_pdrop": 0.1, "resid_pdrop": 0.0, "embd_pdrop": 0.0},
    "llama": {"attention_dropout": 0.1},
    "bert": {"attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.0},
}


@pytest.mark.parametrize("impl", ["attnlab-expressive", "attnlab-softmax"])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_fine_tuning_in_train_mode_with_attention_dropout(kind, impl):
    model = build(kind, impl, **ATTENTION_DROPOUT_ONLY[kind]).train()
    idx, mask = inputs(pad_left=kind != "bert")
    labels = idx.masked_fill(mask == 0, -100)
    logits = {}
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        logits.setdefault(seed, []).append(model(idx, attention_mask=mask).logits.detach())
    assert torch.equal(*logits[0])  # reproducible under torch.manual_seed
    assert not torch.allclose(logits[0][0], logits[1][0])  # the attention dropout is applied
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        torch.manual_seed(step)
        loss = model(idx, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    model.eval()  # no dropout: deterministic
    with torch.no_grad():
        assert torch.equal(model(idx, attention_mask=mask).logits, model(idx, attention_mask=mask).logits)


def test_dropout_reaches_attention_fn_only_when_nonzero():
    seen = []

    def fn(q, k, v, **kw):
        seen.append(kw.get("dropout_p"))
        return q

    q = torch.zeros(1, 1, 2, 4)
    for dropout in (0.0, 0.25):
        hf.attention_forward(torch.nn.Module(), q, q, q, None, dropout=dropout, attention_fn=fn)
    assert seen == [None, 0.25]
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        hf.attention_forward(torch.nn.Module(), q, q, q, None, dropout=1.5)


def test_attention_forward_against_float64_reference():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 8, generator=g)
    k, v = torch.randn(2, 2, 2, 7, 8, generator=g).unbind(0)
    allowed = torch.rand(2, 1, 7, 7, generator=g) > 0.3
    additive = torch.zeros(2, 1, 7, 7).masked_fill(~allowed, torch.finfo(torch.float32).min)

    class Module(torch.nn.Module):
        is_causal = True

    for mask in (allowed, additive, None):
        out, weights = hf.attention_forward(Module(), q, k, v, mask, scaling=0.3,
                                            attention_fn=lambda *a, **kw: attnlab.attention(
                                                *a, kernel="expressive", **kw))
        ref = attnlab.attention(q.double(), k.double(), v.double(), kernel="expressive", scale=0.3,
                                attn_mask=None if mask is None else allowed, is_causal=mask is None,
                                enable_gqa=True, backend="reference")
        assert weights is None and out.shape == (2, 7, 4, 8)
        attnlab.testing.assert_close(out, ref.transpose(1, 2))


def test_hf_mask_to_bool():
    m = torch.tensor([[0.0, float("-inf")], [torch.finfo(torch.float32).min, 0.0]])
    assert torch.equal(hf.hf_mask_to_bool(m), torch.tensor([[True, False], [False, True]]))
    assert hf.hf_mask_to_bool(None) is None
    b = torch.tensor([True, False])
    assert hf.hf_mask_to_bool(b) is b
    with pytest.raises(ValueError, match="additive biases other than 0 and -inf/min"):
        hf.hf_mask_to_bool(torch.tensor([0.0, -1.5]))
    with pytest.raises(TypeError, match="attention_mask must be bool or an additive float mask"):
        hf.hf_mask_to_bool(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="attention_mask must be a tensor or None"):
        hf.hf_mask_to_bool([0.0])


def test_unsupported_kwargs_and_names():
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="softcap is not supported"):
        hf.attention_forward(torch.nn.Module(), q, q, q, None, softcap=30.0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        hf.register(["cosine"])


def test_approximation_with_all_keys_equals_exact():
    name = hf.register_approximate_attention("all10", "topk", top_k=10, kernel="expressive")
    assert name == "attnlab-approx-all10"
    idx, mask = inputs(pad_left=True)
    model = build("llama", "attnlab-expressive")
    with torch.no_grad():
        exact = model(idx, attention_mask=mask).logits
        model.set_attn_implementation(name)
        approx = model(idx, attention_mask=mask).logits
        few = hf.register_approximate_attention("top2", "topk", top_k=2, kernel="expressive")
        model.set_attn_implementation(few)
        sparse = model(idx, attention_mask=mask).logits
    real = mask.bool()
    assert max_error(approx[real], exact[real]) < 1e-5
    assert max_error(sparse[real], exact[real]) > 1e-4  # a real approximation changes the result
    with pytest.raises(ValueError):
        hf.register_approximate_attention("x", "no-such-method")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        hf.register_approximate_attention("", "topk")


def test_register_approximation_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="register_approximate_attention"):
        name = hf.register_approximation("old5", "topk", top_k=5)
    assert name == "attnlab-approx-old5"
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="name must be a non-empty str"):
        hf.register_approximation("", "topk")


def test_import_attnlab_does_not_import_transformers():
    code = ("import sys, attnlab, attnlab.models, attnlab.train, attnlab.integrations.hf; "
            "print('transformers' in sys.modules, 'yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("kind, pad_left", [("gpt2", True), ("bert", False)])
def test_output_attentions_returns_the_weights(kind, pad_left):
    """output_attentions=True gives one (B, H, L, S) weight tensor per layer, as eager does
    (GPT-2 asks through transformers' output hooks, BERT also passes output_attentions)."""
    model = build(kind, "eager")
    idx, mask = inputs(pad_left)
    with torch.no_grad():
        eager = model(idx, attention_mask=mask, output_attentions=True).attentions
        model.set_attn_implementation("attnlab-softmax")
        ours = model(idx, attention_mask=mask, output_attentions=True).attentions
        assert not model(idx, attention_mask=mask).attentions  # not asked: none materialized
        model.set_attn_implementation("attnlab-expressive")
        expressive = model(idx, attention_mask=mask, output_attentions=True).attentions
    real = mask.bool()  # padded query rows are arbitrary in every implementation
    assert len(ours) == len(eager) == len(expressive) == 2
    for got, want, ea in zip(ours, eager, expressive, strict=True):
        assert got.shape == want.shape == ea.shape == (3, 4, 10, 10)
        assert max_error(got.transpose(1, 2)[real], want.transpose(1, 2)[real]) < 1e-5
        sums = ea.transpose(1, 2)[real].sum(-1)  # sum / (sum + eps) per real query and head
        assert (sums <= 1).all() and (sums > 0).all()
        assert (ea[1][..., ~real[1]] == 0).all()  # no weight on padding keys


def test_attention_forward_returns_the_reference_weights_when_asked():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
    fn = functools.partial(attnlab.attention, kernel="expressive")
    out, weights = hf.attention_forward(torch.nn.Module(), q, k, v, mask, attention_fn=fn, output_attentions=True)
    want_out, want_weights = attnlab.attention(q, k, v, kernel="expressive", attn_mask=mask, return_weights=True,
                                               backend="reference")
    assert torch.equal(weights, want_weights) and torch.equal(out, want_out.transpose(1, 2))
    assert hf.attention_forward(torch.nn.Module(), q, k, v, mask, attention_fn=fn)[1] is None


def test_output_attentions_from_an_approximation_is_refused():
    name = hf.register_approximate_attention("top3", "topk", top_k=3, kernel="expressive")
    model = build("gpt2", name)
    idx, mask = inputs(pad_left=True)
    with torch.no_grad(), pytest.raises(ValueError, match="method 'topk' cannot return attention weights"):
        model(idx, attention_mask=mask, output_attentions=True)
