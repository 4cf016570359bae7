"""attnlab.capture: Q/K/V recorded from attnlab and Hugging Face models replay their attention."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.capture import Captured, capture_qkv
from attnlab.models import CausalLM, MaskedLM, ModelConfig


def tiny(cls=CausalLM, **kw):
    cfg = dict(kind="causal" if cls is CausalLM else "masked", vocab_size=30, d_model=16, n_heads=2,
               n_layers=2, context=16, kernel="expressive")
    cfg.update(kw)
    return cls(ModelConfig(**cfg))


IDX = torch.randint(0, 30, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cls", [CausalLM, MaskedLM])
def test_attnlab_capture_matches_capture_context_and_replays(cls):
    model = tiny(cls, n_kv_heads=1)  # GQA
    ref = {}
    with model.record_attention(lambda layer, q, k, v, kw: ref.update({layer: (q, k, v)})):
        logits_ref = model(IDX)
    caps = capture_qkv(model, IDX)
    assert [c.layer for c in caps] == [0, 1]
    for c in caps:
        for got, want in zip((c.q, c.k, c.v), ref[c.layer], strict=True):
            assert torch.equal(got, want)
        assert c.is_causal is (cls is CausalLM)
        assert c.attn_mask is None and c.kernel == "expressive"
        assert c.scale == pytest.approx(1 / 8**0.5)
    # hooks restored: the model computes what it computed before
    assert torch.equal(model(IDX), logits_ref)
    # replaying layer 0 gives the layer's attention output (compared through the model's hook)
    outs = {}

    def spy(q, k, v, **kw):
        outs[len(outs)] = attnlab.attention(q, k, v, kernel="expressive", **kw)
        return outs[len(outs) - 1]

    model.set_attention(spy)
    model(IDX)
    model.set_attention(None)
    for c in caps:
        torch.testing.assert_close(c.exact(), outs[c.layer])


def test_attnlab_capture_keeps_replacement_and_padding_mask():
    model = tiny()
    calls = []

    def half(q, k, v, **kw):
        calls.append(1)
        return attnlab.attention(q, k, v, kernel="expressive", **kw) * 0.5

    model.set_attention(half, layers=[1], heads=[0])
    before = model(IDX)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    caps = capture_qkv(model, {"idx": IDX, "attention_mask": mask}, layers=[1])
    assert len(caps) == 1 and caps[0].layer == 1
    assert caps[0].attn_mask.shape == (2, 1, 1, 9) and not bool(caps[0].attn_mask[1, ..., 6:].any())
    assert model.blocks[1].attn.attention_fn is half  # restored
    assert torch.equal(model(IDX), before)
    assert len(calls) == 3


def test_attnlab_capture_does_not_change_outputs_under_replacement():
    model = tiny()
    model.set_attention(lambda q, k, v, **kw: attnlab.attention(q, k, v, kernel="relu", **kw), heads=[1])
    with torch.no_grad():
        want = model(IDX)
        capture_qkv(model, IDX)
        torch.testing.assert_close(model(IDX), want)
        model.set_attention(None)
        assert not torch.allclose(model(IDX), want)  # the replacement did change the model


def test_hf_gpt2_capture_replays_attention_and_restores_implementation():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(cfg).eval()
    idx = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=idx).logits
    caps = capture_qkv(model, idx)
    assert model.config._attn_implementation == "sdpa"
    assert [c.layer for c in caps] == [0, 1]
    assert caps[0].q.shape == (2, 4, 7, 8) and caps[0].k.shape == (2, 4, 7, 8)
    assert all(c.is_causal and c.attn_mask is None for c in caps)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=idx).logits, want)
    # the captured layer-0 inputs are GPT-2's own: recompute them from the embeddings
    with torch.no_grad():
        h = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(7))
        q, _, v = model.transformer.h[0].attn.c_attn(model.transformer.h[0].ln_1(h)).split(32, dim=2)
    torch.testing.assert_close(caps[0].q, q.view(2, 7, 4, 8).transpose(1, 2))
    torch.testing.assert_close(caps[0].v, v.view(2, 7, 4, 8).transpose(1, 2))
    # with a padding mask, the mask reaches the capture as bool (True = attend)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    caps = capture_qkv(model, {"input_ids": idx, "attention_mask": mask}, layers=[1])
    assert len(caps) == 1 and caps[0].attn_mask is not None and caps[0].attn_mask.dtype == torch.bool
    assert not bool(caps[0].attn_mask[1, ..., 6, 5:].any())


def test_captured_is_frozen():
    c = Captured(0, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), True, None)
    with pytest.raises(AttributeError):
        c.layer = 1


def test_capture_rejects_bad_arguments():
    model = tiny()
    with pytest.raises(TypeError, match="model must be an attnlab TransformerLM"):
        capture_qkv(torch.nn.Linear(2, 2), IDX)
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        capture_qkv(model, [1, 2, 3])
    with pytest.raises(ValueError, match=r"layers must be ints in \[0, 2\)"):
        capture_qkv(model, IDX, layers=[2])
    with pytest.raises(TypeError, match="layers must be a sequence"):
        capture_qkv(model, IDX, layers=3)
