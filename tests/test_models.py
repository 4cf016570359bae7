"""Models: configs that refuse bad input, float64 reference agreement, cached decoding, hooks."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab.approx import registry
from attnlab.models import (
    CausalLM,
    MaskedLM,
    ModelConfig,
    apply_overrides,
    build_model,
    from_dict,
    masked_accuracy,
    masked_cross_entropy,
    mlm_mask,
)
from attnlab.testing import max_error

V = 37


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=V, context=24, n_layers=2, d_model=32, n_heads=4)
    base.update(kw)
    return ModelConfig(**base)


def tokens(B=2, L=11, seed=0, vocab=V):
    return torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(seed))


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data, exc, match", [
    ({"n_layer": 2}, ValueError, "unknown key 'n_layer'"),
    ({"d_model": 30, "n_heads": 4}, ValueError, r"d_model \(30\) must be divisible by n_heads \(4\)"),
    ({"n_heads": 4, "n_kv_heads": 3}, ValueError, r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
    ({"kernel": "cosine"}, ValueError, "kernel must be one of"),
    ({"norm": "batchnorm"}, ValueError, "norm must be one of"),
    ({"positions": "alibi"}, ValueError, "positions must be one of"),
    ({"kind": "seq2seq"}, ValueError, "kind must be one of"),
    ({"n_layers": 0}, ValueError, "n_layers must be >= 1"),
    ({"mlp_ratio": 0}, ValueError, "mlp_ratio must be > 0"),
    ({"attn_eps": -1.0}, ValueError, "attn_eps must be >= 0"),
    ({"d_model": 24, "n_heads": 8}, ValueError, "must be even for rotary"),
    ({"n_layers": "2"}, TypeError, "n_layers must be int"),
    ({"n_layers": True}, TypeError, "n_layers must be int, got bool"),
    ({"tie_embeddings": 1}, TypeError, "tie_embeddings must be bool"),
])
def test_config_refuses_bad_values(data, exc, match):
    with pytest.raises(exc, match=match):
        from_dict(ModelConfig, data)


def test_config_accepts_int_for_float_and_odd_head_dim_with_learned_positions():
    c = from_dict(ModelConfig, {"mlp_ratio": 2, "d_model": 24, "n_heads": 8, "positions": "learned"})
    assert c.mlp_ratio == 2.0 and isinstance(c.mlp_ratio, float) and c.head_dim == 3


def test_overrides_parse_types_and_reject_malformed():
    data = apply_overrides({"model": {"n_layers": 2}}, ["model.n_layers=4", "model.kernel=expressive",
                                                       "train.lr=1e-3", "train.compile=true"])
    assert data == {"model": {"n_layers": 4, "kernel": "expressive"}, "train": {"lr": 1e-3, "compile": True}}
    with pytest.raises(ValueError, match=r"override must look like 'section.key=value'"):
        apply_overrides({}, ["model.n_layers"])
    with pytest.raises(ValueError, match="is not a section"):
        apply_overrides({"model": 3}, ["model.n_layers=2"])


def test_model_constructor_errors():
    with pytest.raises(ValueError, match=r"config.vocab_size must be set"):
        CausalLM(ModelConfig())
    with pytest.raises(ValueError, match=r"config.kind must be 'masked' for MaskedLM"):
        MaskedLM(cfg())
    with pytest.raises(TypeError, match=r"config must be an attnlab.models.ModelConfig"):
        build_model({"vocab_size": 3})
    m = CausalLM(cfg())
    with pytest.raises(TypeError, match=r"idx must be a LongTensor \(B, L\)"):
        m(tokens().float())
    with pytest.raises(ValueError, match="sequence length 25 exceeds context 24"):
        m(tokens(L=25))
    with pytest.raises(ValueError, match="attention_mask must be bool"):
        m(tokens(), attention_mask=torch.ones(2, 11))


# --- construction and reference agreement ----------------------------------------------------


def test_init_is_seeded_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a, b, c = CausalLM(cfg(seed=3)), CausalLM(cfg(seed=3)), CausalLM(cfg(seed=4))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.tok_emb.weight, c.tok_emb.weight)


def test_tied_head_and_masked_lm_vocab():
    m = MaskedLM(cfg(kind="masked"))
    assert m.head is None and m.tok_emb.weight.shape[0] == V + 1 and m.mask_token_id == V
    idx = tokens()
    idx[:, 3] = m.mask_token_id
    h, _ = m.hidden(idx)
    torch.testing.assert_close(m(idx), h @ m.tok_emb.weight[:V].T)
    untied = CausalLM(cfg(tie_embeddings=False))
    assert untied.head.weight.shape == (V, 32)


CASES = [
    dict(kernel="softmax"),
    dict(kernel="expressive", n_kv_heads=2),
    dict(kernel="expressive", norm="layernorm", positions="learned", bias=True),
    dict(kernel="squared", n_kv_heads=1),
    dict(kernel="relu2", kind="masked"),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_model_matches_float64_reference_with_grads(kw):
    """The dispatched backends (sdpa / chunked) in fp32 against the reference backend in fp64.

    The whole model in fp32 carries rounding error of its own (norms, embeddings), so the bound
    is FlashAttention's rule: the fast model's error at most twice that of the same model run
    through the reference backend in fp32, both against fp64.
    """
    fast = build_model(cfg(**kw))
    plain = build_model(cfg(**kw, backend="reference"))
    ref = build_model(cfg(**kw, backend="reference")).double()
    plain.load_state_dict(fast.state_dict())
    ref.load_state_dict(fast.state_dict())
    idx = tokens()
    up = torch.randn(2, 11, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs = []
    for m in (fast, plain, ref):
        out = m(idx)
        out.backward(up.to(out.dtype))
        outs.append(out)
    assert max_error(outs[0], outs[2]) <= 2 * max_error(outs[1], outs[2]) + 1e-6
    assert max_error(outs[0], outs[2]) < 1e-4
    for (name, p), p_plain, p_ref in zip(fast.named_parameters(), plain.parameters(), ref.parameters(),
                                         strict=True):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        bound = 2 * max_error(p_plain.grad, p_ref.grad) + 1e-6 * float(p_ref.grad.abs().max())
        assert max_error(p.grad, p_ref.grad) <= bound, name


def test_causal_model_does_not_look_ahead_and_masked_model_does():
    idx = tokens()
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % V
    causal = CausalLM(cfg(kernel="expressive"))
    torch.testing.assert_close(causal(idx)[:, :7], causal(changed)[:, :7])
    masked = MaskedLM(cfg(kind="masked", kernel="expressive"))
    assert not torch.allclose(masked(idx)[:, :7], masked(changed)[:, :7])


@pytest.mark.parametrize("kernel", ["softmax", "expressive"])
def test_padding_mask_equals_unpadded_sequence(kernel):
    m = MaskedLM(cfg(kind="masked", kernel=kernel))
    short = tokens(B=1, L=7)
    padded = torch.cat((short, torch.zeros(1, 4, dtype=torch.long)), dim=1)
    real = torch.arange(11)[None] < 7
    torch.testing.assert_close(m(padded, attention_mask=real)[:, :7], m(short), atol=1e-5, rtol=1e-5)


# --- KV cache and generation -----------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(kernel="softmax"), dict(kernel="expressive", n_kv_heads=2),
                                dict(kernel="expressive", positions="learned")], ids=str)
def test_cached_decoding_equals_full_forward(kw):
    m = CausalLM(cfg(**kw))
    idx = tokens(L=13)
    full = m(idx)
    pieces, cache = [], None
    for a, b in [(0, 5), (5, 6), (6, 10), (10, 13)]:  # a prefill, one token, then chunks
        h, cache = m.hidden(idx[:, a:b], cache=cache)
        pieces.append(m.logits(h))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_generate_greedy_equals_uncached_argmax_and_sampling_is_seeded():
    m = CausalLM(cfg(kernel="expressive"))
    prompt = tokens(L=5)
    out = m.generate(prompt, 6)
    seq = prompt
    for _ in range(6):
        seq = torch.cat((seq, m(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq)

    def sample(seed, **kw):
        return m.generate(prompt, 8, temperature=1.5, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    assert torch.equal(sample(0, top_k=1), m.generate(prompt, 8))  # top-1 sampling is greedy


@pytest.mark.parametrize("kw, match", [
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
    (dict(max_new_tokens=2, temperature=-1.0), "temperature must be >= 0"),
    (dict(max_new_tokens=2, top_k=0), "top_k must be >= 1"),
    (dict(max_new_tokens=2, temperature=1.0), "generator must be a torch.Generator"),
    (dict(max_new_tokens=20), "exceeds context 24"),
])
def test_generate_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        CausalLM(cfg()).generate(tokens(L=5), **kw)


# --- attention hooks -------------------------------------------------------------------------


def test_set_attention_replaces_and_restores():
    m = CausalLM(cfg(kernel="expressive", n_kv_heads=2))
    idx = tokens()
    exact = m(idx)
    same = functools.partial(attnlab.attention, kernel="expressive", backend="reference")
    m.set_attention(same)
    torch.testing.assert_close(m(idx), exact, atol=1e-5, rtol=1e-5)
    calls = []

    def softmax_fn(q, k, v, *, is_causal, attn_mask, scale, enable_gqa):
        calls.append(enable_gqa)
        return attnlab.attention(q, k, v, is_causal=is_causal, attn_mask=attn_mask, scale=scale,
                                 enable_gqa=enable_gqa)

    m.set_attention(softmax_fn, layers=[1])
    changed = m(idx)
    assert calls == [True] and not torch.allclose(changed, exact)
    assert m.blocks[0].attn.attention_fn is same  # layer 0 keeps its earlier replacement
    m.set_attention(None)
    torch.testing.assert_close(m(idx), exact)


def test_set_attention_on_chosen_heads_only():
    m = CausalLM(cfg())
    seen = {}
    m.blocks[0].attn.out.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    m(tokens())
    exact_heads = seen["x"].view(2, 11, 4, 8)
    m.set_attention(lambda q, k, v, **kw: torch.full_like(q, 7.0), layers=[0], heads=[1, 3])
    m(tokens())
    heads = seen["x"].view(2, 11, 4, 8)
    assert (heads[:, :, [1, 3]] == 7.0).all()
    torch.testing.assert_close(heads[:, :, [0, 2]], exact_heads[:, :, [0, 2]])


def test_build_model_picks_the_class_and_refuses_non_configs():
    assert type(build_model(cfg())) is CausalLM and type(build_model(cfg(kind="masked"))) is MaskedLM
    with pytest.raises(TypeError, match=r"config must be an attnlab\.models\.ModelConfig, got dict"):
        build_model({"kind": "causal"})


def test_set_attention_errors():
    m = CausalLM(cfg())
    with pytest.raises(TypeError, match="fn must be callable or None"):
        m.set_attention("topk")
    with pytest.raises(ValueError, match=r"layers must be ints in \[0, 2\)"):
        m.set_attention(attnlab.attention, layers=[2])
    with pytest.raises(ValueError, match=r"heads must be ints in \[0, 4\)"):
        m.set_attention(attnlab.attention, heads=[4])


@pytest.mark.parametrize("deprecated", [False, True])
def test_record_attention_reproduces_the_layer_output(deprecated):
    m = CausalLM(cfg(kernel="expressive", n_kv_heads=2))
    seen = {}
    m.blocks[1].attn.out.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    if deprecated:  # the old context manager, now on record_attention
        with pytest.warns(DeprecationWarning, match="capture_qkv is deprecated"), m.capture_qkv(layers=[1]) as qkv:
            m(tokens())
    else:
        qkv = {}
        with m.record_attention(lambda layer, q, k, v, kw: qkv.update({layer: (q, k, v)}), layers=[1]):
            m(tokens())
    assert list(qkv) == [1] and m.blocks[1].attn.recorder is None
    q, k, v = qkv[1]
    assert q.shape == (2, 4, 11, 8) and k.shape == v.shape == (2, 2, 11, 8)
    again = attnlab.attention(q.double(), k.double(), v.double(), kernel="expressive",
                              is_causal=True, enable_gqa=True)
    torch.testing.assert_close(seen["x"].double(), again.transpose(1, 2).reshape(2, 11, 32),
                               atol=1e-5, rtol=1e-5)


# --- objectives ------------------------------------------------------------------------------


def test_mlm_mask_statistics_and_reproducibility():
    x = torch.randint(0, 50, (64, 128), generator=torch.Generator().manual_seed(0))
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[:, -8:] = False

    def run(seed):
        return mlm_mask(x, mask_token_id=50, vocab_size=50, generator=torch.Generator().manual_seed(seed),
                        maskable=keep)

    inp, tgt, sel = run(0)
    assert torch.equal(tgt, x) and torch.equal(inp[~sel], x[~sel]) and not sel[:, -8:].any()
    n = int(sel.sum())
    assert abs(n / keep.sum() - 0.15) < 0.01
    masked = int((inp[sel] == 50).sum())
    unchanged = int((inp[sel] == x[sel]).sum())
    assert abs(masked / n - 0.8) < 0.03 and 0.07 < unchanged / n < 0.14  # 10% + chance collisions
    assert all(torch.equal(a, b) for a, b in zip(run(0), run(0), strict=True))
    assert not torch.equal(run(0)[2], run(1)[2])


@pytest.mark.parametrize("kw, exc, match", [
    (dict(tokens=torch.zeros(2, 3)), TypeError, "tokens must be a LongTensor"),
    (dict(generator=0), TypeError, "generator must be a torch.Generator"),
    (dict(mask_prob=0.0), ValueError, r"mask_prob must be in \(0, 1\]"),
    (dict(maskable=torch.ones(2, 4, dtype=torch.bool)), ValueError, "maskable must be bool"),
])
def test_mlm_mask_errors(kw, exc, match):
    args = dict(tokens=torch.zeros(2, 3, dtype=torch.long), mask_token_id=5, vocab_size=5,
                generator=torch.Generator())
    args.update(kw)
    with pytest.raises(exc, match=match):
        mlm_mask(args.pop("tokens"), **args)


def test_masked_cross_entropy_matches_ignore_index():
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = tokens(3, 5, vocab=7)
    m = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    ref = F.cross_entropy(logits.flatten(0, 1), y.masked_fill(~m, -100).flatten())
    torch.testing.assert_close(masked_cross_entropy(logits, y, m).double(), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(masked_cross_entropy(logits, y, m, denominator=2 * m.sum()).double(),
                               ref / 2, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"logits .* and targets .* must match"):
        masked_cross_entropy(logits, y[:, :4])
    with pytest.raises(ValueError, match="loss_mask must be bool"):
        masked_cross_entropy(logits, y, m.long())


def test_masked_accuracy_counts_selected_positions_only():
    y = torch.tensor([[1, 2, 3, 4]])
    pred = torch.tensor([[1, 0, 3, 0]])
    m = torch.tensor([[True, True, True, False]])
    assert masked_accuracy(pred, y, m) == pytest.approx(2 / 3) and masked_accuracy(pred, y) == 0.5
    logits = F.one_hot(y, 5).double()
    assert masked_accuracy(logits, y, m) == 1.0
    with pytest.raises(ValueError, match="logits_or_predictions must be logits"):
        masked_accuracy(pred[:, :3], y)
    with pytest.raises(ValueError, match="logits_or_predictions must be logits"):
        masked_accuracy(pred.double(), y)
    with pytest.raises(ValueError, match="mask must be bool"):
        masked_accuracy(pred, y, m.long())
    with pytest.raises(ValueError, match="mask must select at least one position"):
        masked_accuracy(pred, y, torch.zeros_like(m))


def test_dataclass_config_roundtrip():
    c = cfg(kernel="expressive")
    assert from_dict(ModelConfig, dataclasses.asdict(c)) == c


def test_set_attention_with_a_registered_approximation():
    m = CausalLM(cfg(kernel="expressive", n_kv_heads=2))
    idx = tokens()
    exact = m(idx)
    m.set_attention(functools.partial(registry.approximate_attention, method="topk", top_k=11,
                                      kernel="expressive"))
    torch.testing.assert_close(m(idx), exact, atol=1e-5, rtol=1e-5)  # k = L keeps every key
    m.set_attention(functools.partial(registry.approximate_attention, method="topk", top_k=2,
                                      kernel="expressive"), layers=[0])
    assert max_error(m(idx), exact) > 1e-4
