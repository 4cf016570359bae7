"""Sparse selectors under a KV budget (attnlab.approx.selectors, issue 14): every selector is
enrolled in the same checks (finite, budget in keys and bytes, exact at a full budget, masks,
seeds, refusals, bad budgets), plus method-specific checks of the formulas."""

from __future__ import annotations

import math

import pytest
import torch

import attnlab
from attnlab.approx import approximate_attention, available_approximations
from attnlab.approx.registry import BUDGET_OPTIONS
from attnlab.approx.selectors import REGISTERED, SELECTORS, compare, select
from attnlab.approx.topk import topk_attention

METHODS = list(SELECTORS)
SAMPLED = [m for m, e in SELECTORS.items() if e.sampled]
SOFTMAX_ONLY = [m for m, e in SELECTORS.items() if e.softmax_only]
KERNELS = ["softmax", "expressive", "squared", "relu"]


def _qkv(seed=0, B=1, H=2, Hkv=2, L=20, S=20, D=8, Dv=6, dtype=torch.float64, tau=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g, dtype=dtype) * tau
    k = torch.randn(B, Hkv, S, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, S, Dv, generator=g, dtype=dtype)
    return q, k, v


def _mask(L, S, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(L, S, generator=g) > 0.3


def _visible(L, S, mask, causal):
    vis = torch.ones(L, S, dtype=torch.bool)
    if mask is not None:
        vis &= mask
    if causal:
        vis &= torch.ones(L, S, dtype=torch.bool).tril()
    return vis


def _run(method, q, k, v, kernel="softmax", **kw):
    if method in SOFTMAX_ONLY and kernel != "softmax":
        pytest.skip(f"{method} is softmax-only")
    return select(q, k, v, method=method, kernel=kernel, **kw)


def test_every_selector_but_topk_is_a_registered_approximation_with_budget_top_k():
    assert set(REGISTERED) == set(METHODS) - {"topk"}
    q, k, v = _qkv(dtype=torch.float32)
    for name in REGISTERED:
        assert name in available_approximations()
        assert BUDGET_OPTIONS[name] == "top_k"
        out = approximate_attention(q, k, v, method=name, top_k=4, is_causal=True, seed=3)
        assert out.shape == (1, 2, 20, 6) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", ["softmax", "expressive"])
@pytest.mark.parametrize("method", METHODS)
def test_finite_and_budget_in_keys_and_bytes(method, kernel):
    q, k, v = _qkv(L=24, S=24)
    mask = _mask(24, 24)
    top_k = 5
    sel = _run(method, q, k, v, kernel, top_k=top_k, is_causal=True, attn_mask=mask)
    assert torch.isfinite(sel.output).all() and sel.output.shape == (1, 2, 24, 6)
    assert (sel.rows_used <= sel.rows_read).all() and (sel.rows_read <= top_k).all()
    assert ((sel.support >= 0).sum(-1) == sel.rows_used).all()
    n_vis = _visible(24, 24, mask, True).sum(-1).expand(1, 2, 24)
    D, Dv, item = 8, 6, 8
    bytes_ = sel.rows_read.double() * (D + Dv) * item + sel.summary_bytes
    if sel.oracle:
        bytes_ = bytes_ + (n_vis - sel.rows_read).double() * D * item
    assert torch.allclose(sel.bytes_read, bytes_)
    assert (sel.summary_bytes >= 0).all()
    w = sel.weights.sum(-1)
    assert torch.allclose(w[sel.rows_used > 0], torch.ones(()).double())


def test_bytes_are_counted_in_the_input_itemsize_and_summaries_add():
    q, k, v = _qkv(dtype=torch.float32, L=16, S=16)
    stream = select(q, k, v, method="streaming-llm", top_k=6)
    assert (stream.bytes_read == 6 * (8 + 6) * 4).all() and (stream.summary_bytes == 0).all()
    quest = select(q, k, v, method="quest", top_k=6, page_size=4)
    assert (quest.summary_bytes == 4 * 2 * 8 * 4).all()  # 4 pages of min/max keys
    topk = select(q, k, v, method="topk", top_k=6)
    assert (topk.bytes_read == 6 * (8 + 6) * 4 + 10 * 8 * 4).all()  # the other keys are scored


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method", METHODS)
def test_exact_attention_when_the_budget_covers_every_key(method, kernel):
    q, k, v = _qkv(H=4, Hkv=2, L=12, S=12)
    mask = _mask(12, 12)
    exact = attnlab.attention(q, k, v, kernel=kernel, is_causal=True, attn_mask=mask, enable_gqa=True)
    sel = _run(method, q, k, v, kernel, top_k=12, is_causal=True, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(sel.output, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_never_selects_an_invisible_key(method):
    q, k, v = _qkv(L=24, S=30)
    mask = _mask(24, 30, seed=5)
    vis = _visible(24, 30, mask, True).expand(1, 2, 24, 30)
    sel = _run(method, q, k, v, top_k=4, is_causal=True, attn_mask=mask)
    sup = sel.support
    assert vis.gather(-1, sup.clamp_min(0))[sup >= 0].all()
    hidden_value = v.clone()
    hidden_value[..., 25:, :] = 1e6  # keys 25.. are after every query: never visible
    again = _run(method, q, k, hidden_value, top_k=4, is_causal=True, attn_mask=mask)
    assert torch.isfinite(again.output).all() and again.output.abs().max() < 1e3


@pytest.mark.parametrize("method", SAMPLED)
def test_seeded_and_reproducible(method):
    q, k, v = _qkv(L=16, S=40)
    a = select(q, k, v, method=method, top_k=8, seed=11)
    b = select(q, k, v, method=method, top_k=8, seed=11)
    c = select(q, k, v, method=method, top_k=8, generator=torch.Generator().manual_seed(11))
    d = select(q, k, v, method=method, top_k=8, seed=12)
    assert torch.equal(a.output, b.output) and torch.equal(a.output, c.output)
    assert torch.equal(a.support, b.support)
    if method != "caote-est":  # its randomness (the sketch) rarely changes the choice
        assert not torch.equal(a.output, d.output)


@pytest.mark.parametrize("method", ["vattention", "magicpig"])
def test_sampled_numerator_and_denominator_are_unbiased(method):
    q, k, v = _qkv(H=1, Hkv=1, L=3, S=40, D=4, Dv=3, tau=2.0)
    s = (q @ k.transpose(-1, -2)) / 2.0  # scale 1 / sqrt(4)
    a = torch.exp(s - s.amax(-1, keepdim=True))
    num_exact, den_exact = a @ v, a.sum(-1)
    opts = {"bits": 2, "n_tables": 3} if method == "magicpig" else {}
    nums, dens = [], []
    for seed in range(400):
        sel = select(q, k, v, method=method, top_k=8, seed=seed, **opts)
        nums.append(sel.numerator)
        dens.append(sel.denominator)
    nums, dens = torch.stack(nums), torch.stack(dens)
    for est, exact in ((nums, num_exact), (dens, den_exact)):
        se = est.std(0) / math.sqrt(len(est))
        assert (est.std(0) > 0).any()  # it does sample
        assert ((est.mean(0) - exact).abs() <= 5 * se + 1e-9).all()


@pytest.mark.parametrize("method", SOFTMAX_ONLY)
@pytest.mark.parametrize("kernel", ["expressive", "relu"])
def test_softmax_only_methods_refuse_other_kernels_by_name(method, kernel):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=rf"{method}.*softmax.*{kernel}"):
        select(q, k, v, method=method, kernel=kernel, top_k=4)
    with pytest.raises(ValueError, match=rf"{method}.*{kernel}"):
        approximate_attention(q, k, v, method=method, kernel=kernel, top_k=4)


@pytest.mark.parametrize("method", METHODS)
def test_bad_budget_raises_naming_it(method):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        select(q, k, v, method=method, top_k=0)
    with pytest.raises(TypeError, match="top_k must be an int"):
        select(q, k, v, method=method, top_k=2.5)


@pytest.mark.parametrize(("method", "option", "value"), [
    ("quest", "page_size", 0), ("streaming-llm", "sinks", -1), ("h2o", "recent", -1),
    ("caote-est", "sketch_dim", 0), ("vattention", "sample_fraction", 1.5), ("magicpig", "bits", 0),
    ("expected-attention", "n_queries", 0), ("va-select", "design", "nope"), ("va-select", "sketch", "nope"),
])
def test_bad_option_raises_naming_it(method, option, value):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=option):
        select(q, k, v, method=method, top_k=4, **{option: value})
    with pytest.raises(ValueError, match="method must be one of"):
        select(q, k, v, method="nope", top_k=4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_harness_topk_is_the_registered_topk(kernel):
    q, k, v = _qkv(L=16, S=16)
    mask = _mask(16, 16)
    sel = select(q, k, v, method="topk", kernel=kernel, top_k=5, is_causal=True, attn_mask=mask)
    ref = topk_attention(q, k, v, kernel=kernel, top_k=5, is_causal=True, attn_mask=mask)
    torch.testing.assert_close(sel.output, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", ["softmax", "expressive", "relu"])
def test_quest_with_one_key_pages_is_topk(kernel):
    # a page of one key: min = max = k_j, so the bound is the score itself
    q, k, v = _qkv(L=10, S=16)
    quest = select(q, k, v, method="quest", kernel=kernel, top_k=4, page_size=1)
    topk = select(q, k, v, method="topk", kernel=kernel, top_k=4)
    torch.testing.assert_close(quest.output, topk.output)


def test_quest_loads_whole_pages_in_bound_order():
    q, k, v = _qkv(H=1, Hkv=1, L=1, S=32)
    sel = select(q, k, v, method="quest", top_k=8, page_size=4)
    sup = sel.support[0, 0, 0]
    pages = (sup // 4).unique()
    assert len(pages) == 2 and sorted(sup.tolist()) == sorted((pages[:, None] * 4 + torch.arange(4)).flatten().tolist())
    qs = q[0, 0, 0] / math.sqrt(8)
    kp = k[0, 0].reshape(8, 4, 8)
    bound = torch.maximum(qs * kp.amin(1), qs * kp.amax(1)).sum(-1)
    assert set(pages.tolist()) == set(bound.topk(2).indices.tolist())
    assert (bound[:, None] >= kp @ qs - 1e-12).all()


def test_streaming_llm_keeps_sinks_and_window():
    q, k, v = _qkv(H=1, Hkv=1, L=20, S=20)
    sel = select(q, k, v, method="streaming-llm", top_k=10, sinks=4, is_causal=True)
    assert sorted(sel.support[0, 0, 19].tolist()) == [0, 1, 2, 3, 14, 15, 16, 17, 18, 19]
    assert sorted(sel.support[0, 0, 12].tolist()) == [0, 1, 2, 3, 7, 8, 9, 10, 11, 12]


def test_h2o_keeps_the_recent_window_and_the_heaviest_accumulated_keys():
    q, k, v = _qkv(H=1, Hkv=1, L=20, S=20)
    sel = select(q, k, v, method="h2o", top_k=6, recent=2, is_causal=True)
    p = attnlab.attention(q, k, v, is_causal=True, return_weights=True)[1][0, 0]
    acc = p[:19].sum(0)  # queries before the last
    heavy = acc[:18].topk(4).indices.tolist()
    assert sorted(sel.support[0, 0, 19].tolist()) == sorted([18, 19, *heavy])


def test_caote_keeps_the_keys_whose_removal_moves_the_output_most():
    q, k, v = _qkv(H=1, Hkv=1, L=1, S=12)
    out, p = attnlab.attention(q, k, v, return_weights=True)
    p, o, vv = p[0, 0, 0], out[0, 0, 0], v[0, 0]
    change = torch.stack([(o - (o - p[j] * vv[j]) / (1 - p[j])).norm() for j in range(12)])
    sel = select(q, k, v, method="caote", top_k=5)
    assert set(sel.support[0, 0, 0].tolist()) == set(change.topk(5).indices.tolist())


def test_vatp_ranks_by_weight_times_value_l1_norm():
    q, k, v = _qkv(H=1, Hkv=1, L=1, S=12)
    p = attnlab.attention(q, k, v, return_weights=True)[1][0, 0, 0]
    score = p * v[0, 0].abs().sum(-1)
    sel = select(q, k, v, method="vatp", top_k=4)
    assert set(sel.support[0, 0, 0].tolist()) == set(score.topk(4).indices.tolist())


def test_expected_attention_with_one_query_is_weight_times_value_norm():
    q, k, v = _qkv(H=1, Hkv=1, L=1, S=12)
    p = attnlab.attention(q, k, v, return_weights=True)[1][0, 0, 0]
    score = p * v[0, 0].norm(dim=-1)
    sel = select(q, k, v, method="expected-attention", top_k=4, n_queries=1)
    assert set(sel.support[0, 0, 0].tolist()) == set(score.topk(4).indices.tolist())


def _lowrank(seed=0, tau=2.0, L=32, S=128, Dv=16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, L, 16, generator=g, dtype=torch.float64) * tau
    k = torch.randn(1, 2, S, 16, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, S, 3, generator=g, dtype=torch.float64) @ torch.randn(3, Dv, generator=g, dtype=torch.float64)
    return q, k, v + 0.2 * torch.randn(1, 2, S, Dv, generator=g, dtype=torch.float64) + 1.0


def _err(o, o_hat):
    return float(((o - o_hat).norm(dim=-1) / o.norm(dim=-1)).mean())


@pytest.mark.parametrize("design", ["auto", "refit", "greedy"])
def test_va_select_beats_topk_on_structured_values(design):
    q, k, v = _lowrank()
    exact = attnlab.attention(q, k, v)
    topk = select(q, k, v, method="topk", top_k=8)
    sel = select(q, k, v, method="va-select", top_k=8, design=design)
    assert (sel.rows_read <= 8).all()
    assert _err(exact, sel.output) < 0.8 * _err(exact, topk.output)


def test_va_select_never_reads_the_exact_output(monkeypatch):
    import attnlab.approx.oracles as oracles

    def forbidden(*args, **kwargs):
        raise AssertionError("va-select must not call an oracle")

    monkeypatch.setattr(oracles, "oracle_attention", forbidden)
    q, k, v = _lowrank(L=4, S=32)
    select(q, k, v, method="va-select", top_k=4)


def test_compare_reports_errors_and_gap_closed_per_method_and_budget():
    q, k, v = _lowrank(L=48, S=48)  # decode: the last query sees the whole cache
    records = compare(q, k, v, methods=["va-select", "streaming-llm"], budgets=[4, 8], mode="decode",
                      is_causal=True)
    assert [(r["method"], r["budget"]) for r in records] == [
        ("va-select", 4), ("streaming-llm", 4), ("va-select", 8), ("streaming-llm", 8)]
    for r in records:
        assert r["err_oracle"] <= r["err_topk"] + 1e-12
        gap = r["err_topk"] - r["err_oracle"]
        assert r["gap_closed"] == pytest.approx((r["err_topk"] - r["err"]) / gap)
        assert r["rows_read"] <= r["budget"]
    with pytest.raises(ValueError, match="mode must be"):
        compare(q, k, v, methods=["topk"], budgets=[4], mode="train")


def test_registered_approximation_lists_and_checks_the_method_options():
    import inspect

    from attnlab.approx.registry import approximate_attention as front
    from attnlab.approx.registry import get_approximation

    params = inspect.signature(get_approximation("quest")).parameters
    assert "page_size" in params and "top_k" in params and "seed" in params
    assert "``quest``" in front.__doc__ and "page_size=16" in front.__doc__
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="'page_size' is not accepted by method 'h2o'"):
        front(q, k, v, method="h2o", top_k=4, page_size=4)
    a = front(q, k, v, method="vattention", top_k=4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, select(q, k, v, method="vattention", top_k=4, seed=2).output)


def _take_reference(crit, allowed, count):
    """The count largest by a stable full sort (ties by lower index): what take promises."""
    masked = torch.where(allowed, crit, -torch.inf)
    order = masked.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(crit.shape[-1]).expand_as(order).contiguous())
    count = torch.as_tensor(count)
    return allowed & (rank < (count.unsqueeze(-1) if count.ndim else count))


def test_take_is_a_stable_top_count_with_ties_by_lower_index():
    from attnlab.approx.selectors.blocks import take

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        S = int(torch.randint(1, 30, (1,), generator=g))
        crit = torch.randint(-2, 3, (3, 5, S), generator=g).double()  # many ties
        if trial % 3 == 0:
            crit = torch.randn(3, 5, S, generator=g, dtype=torch.float64)
        allowed = torch.rand(3, 5, S, generator=g) < 0.7
        count = int(torch.randint(0, S + 3, (1,), generator=g)) if trial % 2 else torch.randint(0, S + 3, (3, 5),
                                                                                                  generator=g)
        assert torch.equal(take(crit, allowed, count), _take_reference(crit, allowed, count)), trial


def test_project_simplex_is_the_euclidean_projection():
    from attnlab.approx.simplex import _project_simplex

    g = torch.Generator().manual_seed(0)
    y = torch.randn(200, 7, generator=g, dtype=torch.float64) * 2
    x = _project_simplex(y)
    assert (x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(200, dtype=torch.float64))
    # optimality: x = max(y - theta, 0) for one theta per row (KKT of the projection)
    for r in range(200):
        pos = x[r] > 0
        th = (y[r] - x[r])[pos]
        assert torch.allclose(th, th[0].expand_as(th))
        assert (y[r][~pos] <= th[0] + 1e-12).all()
    p = torch.softmax(y, -1)
    torch.testing.assert_close(_project_simplex(p), p)  # a point of the simplex is its own projection


def test_pg_refit_stays_feasible_never_loses_to_its_start_and_reaches_the_exact_optimum():
    from attnlab.approx.simplex import _pg_refit, _refit

    g = torch.Generator().manual_seed(3)
    W = torch.randn(64, 40, 6, generator=g, dtype=torch.float64) + 0.4
    b0 = torch.softmax(torch.randn(64, 40, generator=g, dtype=torch.float64), -1)
    f0 = (torch.einsum("rk,rkd->rd", b0, W) ** 2).sum(-1)
    _, _, f_exact = _refit(W, b0)
    for iters in (1, 5, 30):
        b, e, f = _pg_refit(W, b0, iters)
        assert (b >= 0).all() and torch.allclose(b.sum(-1), torch.ones(64, dtype=torch.float64))
        torch.testing.assert_close(e, torch.einsum("rk,rkd->rd", b, W))
        assert (f <= f0 + 1e-12).all() and (f >= f_exact - 1e-9).all()
    _, _, f_long = _pg_refit(W, b0, 3000)  # converges: within 0.1% of the gain from b0 to the optimum
    assert ((f_long - f_exact) <= 1e-3 * (f0 - f_exact) + 1e-12).all()


def test_va_select_sketch_is_built_apart_and_a_prebuilt_one_gives_the_same_selection():
    import inspect

    from attnlab.approx.registry import get_approximation
    from attnlab.approx.selectors import timed_select
    from attnlab.approx.selectors.harness import _context
    from attnlab.approx.selectors.va_select import va_select, va_sketch
    from attnlab.kernels import get_kernel

    q, k, v = _lowrank(L=24, S=48)
    sel, seconds = timed_select(q, k, v, method="va-select", top_k=6)
    assert sel.build_seconds > 0 and seconds > 0
    assert select(q, k, v, method="topk", top_k=6).build_seconds == 0
    ctx = _context(q, k, v, get_kernel("softmax"), None, False, None, False, 1e-6, None, 0)[0]
    built = va_select(ctx, 6, sketch_dim=3)
    given = va_select(ctx, 6, sketch_dim=3, summary=va_sketch(ctx, sketch_dim=3))
    assert torch.equal(built.used, given.used) and torch.equal(built.coef, given.coef)
    assert "summary" not in inspect.signature(get_approximation("va-select")).parameters


@pytest.mark.parametrize("top_k", [6, 40])  # the greedy design (exact refits) and the refit design (PG)
def test_va_select_fast_solvers_stay_close_to_the_exact_ones(top_k):
    q, k, v = _lowrank(L=24, S=64)
    exact = attnlab.attention(q, k, v)
    slow = select(q, k, v, method="va-select", top_k=top_k, corrective=True, refit_iters=None)
    fast = select(q, k, v, method="va-select", top_k=top_k)
    topk = select(q, k, v, method="topk", top_k=top_k)
    e_slow, e_fast, e_topk = (_err(exact, s.output) for s in (slow, fast, topk))
    assert e_fast < e_topk
    assert e_fast <= e_slow + 0.25 * (e_topk - e_slow)  # keeps at least 3/4 of the exact solver's gain


@pytest.mark.parametrize(("option", "value", "error"), [
    ("refit_iters", 0, ValueError), ("refit_iters", 2.5, TypeError), ("corrective", 1, TypeError)])
def test_va_select_solver_options_are_checked_by_name(option, value, error):
    q, k, v = _qkv()
    with pytest.raises(error, match=option):
        select(q, k, v, method="va-select", top_k=4, **{option: value})


def test_va_select_auto_takes_the_greedy_design_where_k_is_a_small_share_of_the_visible_keys():
    from attnlab.approx.selectors.harness import _context
    from attnlab.approx.selectors.va_select import va_select
    from attnlab.kernels import get_kernel

    q, k, v = _lowrank(L=8, S=200)
    ctx = _context(q, k, v, get_kernel("softmax"), None, False, None, False, 1e-6, None, 0)[0]
    auto, greedy, refit = (va_select(ctx, 40, design=d) for d in ("auto", "greedy", "refit"))
    assert torch.equal(auto.used, greedy.used) and not torch.equal(auto.used, refit.used)  # 40 <= 200 / 4
    narrow = (va_select(ctx, 40, design=d, greedy_share=0.1) for d in ("auto", "refit"))
    assert torch.equal(*(p.used for p in narrow))  # 40 > 0.1 * 200: refit
    with pytest.raises(ValueError, match="greedy_share"):
        va_select(ctx, 40, greedy_share=1.5)
