"""Value-aware and value-oblivious r-sparse oracles against float64 brute force and sklearn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.approx.oracles import approximate_output, available_oracles, get_oracle
from attnlab.approx.sparse import SparseApprox, omp, project_simplex, topr, topr_l2
from attnlab.approx.value_aware import va_exact, va_greedy, va_swap

F64 = torch.float64
VA = ["va-greedy", "va-swap", "va-exact"]


def _problem(seed, rows=4, n=8, d=3, temp=1.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(rows, n, generator=g, dtype=dtype) * temp, -1)
    return p, torch.randn(n, d, generator=g, dtype=dtype)


def _face_fit(W: np.ndarray, max_size: int | None = None) -> float:
    """min ||b^T W||^2 over the simplex, by enumerating faces: on each face the affine
    minimizer (KKT by least squares); the optimum is the best feasible one (float64). With
    ``max_size``: the optimum over the b with at most that many nonzeros (faces up to that size)."""
    best = np.inf
    for s in range(1, min(len(W), W.shape[1] + 1, max_size or len(W)) + 1):
        for face in itertools.combinations(range(len(W)), s):
            M = W[list(face)] @ W[list(face)].T
            K = np.block([[2 * M, np.ones((s, 1))], [np.ones((1, s)), np.zeros((1, 1))]])
            b = np.linalg.lstsq(K, np.r_[np.zeros(s), 1.0], rcond=None)[0][:s]
            if (b >= -1e-12).all():
                best = min(best, float(b @ M @ b))
    return best


def _brute(p_row, V, r, vis_row=None) -> float:
    """The r-sparse value-aware optimum of one query, by enumerating every support."""
    V = V.numpy()
    keys = [j for j in range(len(V)) if vis_row is None or bool(vis_row[j])]
    o = p_row.numpy()[keys] @ V[keys]
    size = min(r, V.shape[1] + 1, len(keys))
    return min(_face_fit(V[list(S)] - o) for S in itertools.combinations(keys, size))


def _err2(out, p, V):
    return ((out - p @ V) ** 2).sum(-1)


@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("temp", [0.3, 3.0], ids=["flat", "peaked"])
def test_exact_equals_brute_force_and_heuristics_never_beat_it(r, temp):
    gaps = []
    for seed in range(3):
        p, V = _problem(seed, temp=temp)
        ref = torch.tensor([_brute(p[i], V, r) for i in range(len(p))], dtype=F64)
        exact = _err2(va_exact(p, V, r).output, p, V)
        torch.testing.assert_close(exact, ref, atol=1e-10, rtol=0)
        for solver in (va_greedy, va_swap):
            e = _err2(solver(p, V, r).output, p, V)
            assert (e >= ref - 1e-9).all()
            gaps.append(float((e - ref).max()))
    print(f"r={r} temp={temp}: worst greedy/swap squared-error gap {max(gaps):.3g}")


@pytest.mark.parametrize("solver", [va_greedy, va_swap, va_exact])
def test_refit_is_the_exact_simplex_optimum_on_its_support(solver):
    p, V = _problem(7, rows=5, n=9, d=4)
    res = solver(p, V, 4, return_support=True)
    assert (res.weights >= 0).all()
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(5, dtype=F64))
    o = p @ V
    for i in range(5):
        S = res.support[i][res.support[i] >= 0].tolist()
        ref = _face_fit((V[S] - o[i]).numpy())
        assert abs(float(_err2(res.output[i], p[i], V)) - ref) < 1e-10


def test_swap_result_is_a_one_swap_local_optimum():
    p, V = _problem(3, rows=4, n=7, d=3, temp=0.5)
    res = va_swap(p, V, 3, return_support=True)
    o = p @ V
    for i in range(4):
        S = res.support[i].tolist()
        mine = float(_err2(res.output[i], p[i], V))
        for out_key, in_key in itertools.product(S, set(range(7)) - set(S)):
            T = [in_key if k == out_key else k for k in S]
            assert _face_fit((V[T] - o[i]).numpy()) >= mine - 1e-9


@pytest.mark.parametrize("method", VA)
def test_orthogonal_equal_norm_values_give_the_top_r_support(method):
    g = torch.Generator().manual_seed(0)
    V = 2.0 * torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))[0][:6]  # 6 keys
    p = torch.softmax(torch.randn(5, 6, generator=g, dtype=F64) * 2, -1)
    res = get_oracle(method)(p, V, 3, return_support=True)
    top = p.topk(3, dim=-1).indices
    assert (res.support.sort(-1).values == top.sort(-1).values).all()


@pytest.mark.parametrize("r", [4, 5])
def test_caratheodory_r_at_least_dv_plus_one_gives_zero_error(r):
    p, V = _problem(1, rows=6, n=9, d=3, temp=0.2)
    for solver in (va_exact, va_swap):
        err = _err2(solver(p, V, r).output, p, V)
        assert (err < 1e-12 * (p @ V).square().sum(-1).clamp_min(1)).all()


@pytest.mark.parametrize("method", VA)
def test_r1_picks_the_value_nearest_to_the_output(method):
    p, V = _problem(2, rows=6, n=10, d=4)
    res = get_oracle(method)(p, V, 1, return_support=True)
    nearest = torch.cdist(p @ V, V).argmin(-1)
    assert (res.support[:, 0] == nearest).all()
    torch.testing.assert_close(res.output, V[nearest])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 7), d=st.integers(1, 4),
       r=st.integers(1, 4), temp=st.sampled_from([0.1, 1.0, 5.0]))
def test_value_aware_error_never_exceeds_value_oblivious(seed, n, d, r, temp):
    r = min(r, n)
    p, V = _problem(seed, rows=3, n=n, d=d, temp=temp)
    oblivious = torch.minimum(_err2(topr(p, V, r).output, p, V), _err2(topr_l2(p, V, r).output, p, V))
    for method in VA:
        assert (_err2(approximate_output(p, V, r, method), p, V) <= oblivious + 1e-12).all()


@pytest.mark.parametrize("seed", range(4))
def test_omp_matches_sklearn_orthogonal_mp_gram(seed):
    sk = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(seed)
    n, d, r = 30 + seed, 12, 1 + 2 * seed
    V = torch.randn(n, d, generator=g, dtype=F64) * torch.rand(n, 1, generator=g, dtype=F64)
    p = torch.softmax(torch.randn(5, n, generator=g, dtype=F64) * 2, -1)
    res = omp(p, V, r, return_support=True)
    o = p @ V
    coef = sk.orthogonal_mp_gram((V @ V.T).numpy(), (V @ o.T).numpy(), n_nonzero_coefs=r).T
    np.testing.assert_allclose(res.dense_weights(n).numpy(), coef, atol=1e-6, rtol=0)
    for i in range(5):
        assert set(res.support[i].tolist()) == set(np.flatnonzero(coef[i]).tolist())
    torch.testing.assert_close(res.output, torch.from_numpy(coef) @ V)


def test_omp_with_mask_matches_sklearn_on_the_visible_keys():
    sk = pytest.importorskip("sklearn.linear_model")
    p, V = _problem(5, rows=1, n=20, d=6)
    vis = torch.rand(20, generator=torch.Generator().manual_seed(1)) < 0.6
    keys = torch.nonzero(vis).squeeze(-1)
    res = omp(p[0], V, 3, visible=vis, return_support=True)
    o = p[0, keys] @ V[keys]
    Vk = V[keys]
    coef = sk.orthogonal_mp_gram((Vk @ Vk.T).numpy(), (Vk @ o).numpy(), n_nonzero_coefs=3)
    np.testing.assert_allclose(res.dense_weights(20)[keys].numpy(), coef, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", available_oracles())
def test_causal_masks_never_select_invisible_keys_and_batched_equals_loop(method):
    g = torch.Generator().manual_seed(0)
    B, H, L, n, d, r = 2, 2, 7, 7, 3, 2
    vis = torch.ones(L, n, dtype=torch.bool).tril()
    vis[:, 0] = False  # a masked key too: row 1 then sees exactly one key, so start at row 2
    vis, L = vis[2:], L - 2
    s = torch.randn(B, H, L, n, generator=g, dtype=F64).masked_fill(~vis, float("-inf"))
    p = torch.softmax(s, -1)
    V = torch.randn(B, H, 1, n, d, generator=g, dtype=F64)
    res = get_oracle(method)(p, V, r, visible=vis, return_support=True)
    assert res.output.shape == (B, H, L, d) and res.support.shape == (B, H, L, r)
    used = res.support >= 0
    assert vis.expand(B, H, L, n).gather(-1, res.support.clamp_min(0))[used].all()
    for b, h, i in itertools.product(range(B), range(H), range(L)):
        one = get_oracle(method)(p[b, h, i], V[b, h, 0], r, visible=vis[i])
        torch.testing.assert_close(res.output[b, h, i], one.output, atol=1e-10, rtol=0)
    expanded = get_oracle(method)(p, V.expand(B, H, L, n, d), r, visible=vis)
    torch.testing.assert_close(expanded.output, res.output, atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", available_oracles())
def test_float32_follows_float64(method):
    p, V = _problem(4, rows=6, n=12, d=8, temp=2.0)
    e64 = _err2(approximate_output(p, V, 3, method), p, V)
    p32, V32 = p.float(), V.float()
    out32 = approximate_output(p32, V32, 3, method)
    assert out32.dtype == torch.float32
    e32 = _err2(out32.double(), p, V)
    torch.testing.assert_close(e32, e64, atol=1e-5, rtol=1e-3)


def test_topr_weights_and_simplex_projection():
    p, V = _problem(6, rows=3, n=10, d=4, temp=0.5)
    a, b = topr(p, V, 4, return_support=True), topr_l2(p, V, 4, return_support=True)
    val = p.topk(4, dim=-1).values
    torch.testing.assert_close(a.weights, val / val.sum(-1, keepdim=True))
    assert (b.support == a.support).all()
    # projection by bisection on theta: sum max(x - theta, 0) = 1
    lo, hi = val.min(-1, keepdim=True).values - 1, val.max(-1, keepdim=True).values
    for _ in range(200):
        mid = (lo + hi) / 2
        big = (val - mid).clamp_min(0).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    torch.testing.assert_close(b.weights, (val - lo).clamp_min(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(project_simplex(torch.tensor([[0.2, 0.1, 5.0]], dtype=F64)),
                               torch.tensor([[0.0, 0.0, 1.0]], dtype=F64))
    torch.testing.assert_close(b.dense_weights(10).sum(-1), torch.ones(3, dtype=F64))


def test_registry_lists_all_oracles_and_returns_dataclass():
    assert available_oracles() == ["topr", "topr-l2", "va-greedy", "va-swap", "va-exact", "omp"]
    p, V = _problem(0)
    res = get_oracle("va-greedy")(p, V, 2)
    assert isinstance(res, SparseApprox) and res.support is None and res.weights is None
    torch.testing.assert_close(approximate_output(p, V, 2, "va-greedy"), res.output)


def _call(**kw):
    p, V = _problem(0, rows=2, n=5, d=2)
    args = {"p": p, "v": V, "r": 2, "visible": None} | kw
    return va_greedy(args["p"], args["v"], args["r"], visible=args["visible"])


@pytest.mark.parametrize(("kw", "err", "match"), [
    ({"r": 0}, ValueError, "r must be >= 1"),
    ({"r": 2.0}, TypeError, "r must be an int"),
    ({"r": True}, TypeError, "r must be an int"),
    ({"r": 6}, ValueError, r"r=6 exceeds the number of visible keys"),
    ({"r": 3, "visible": torch.tensor([True, True, False, False, False])}, ValueError,
     r"r=3 exceeds the number of visible keys of some row \(2\)"),
    ({"p": torch.ones(2, 4, dtype=F64) / 4}, ValueError, "p has n=4 keys but v has 5"),
    ({"v": torch.ones(3, 5, 2, dtype=F64)}, ValueError, "leading dims of p"),
    ({"v": torch.ones(5, dtype=F64)}, ValueError, r"v \(..., n, D_v\)"),
    ({"p": torch.ones(2, 5, dtype=torch.int64)}, TypeError, "p must be float32 or float64"),
    ({"p": torch.ones(2, 5, dtype=torch.float16)}, TypeError, "p must be float32 or float64"),
    ({"v": torch.ones(5, 2)}, TypeError, "p and v must have the same dtype"),
    ({"p": [[0.2] * 5]}, TypeError, "p must be a torch.Tensor"),
    ({"p": -torch.ones(2, 5, dtype=F64)}, ValueError, "p must be non-negative"),
    ({"visible": torch.ones(5)}, TypeError, "visible must be a bool tensor"),
    ({"visible": torch.ones(3, 5, dtype=torch.bool)}, ValueError, "visible must broadcast"),
])
def test_bad_input_raises(kw, err, match):
    with pytest.raises(err, match=match):
        _call(**kw)


def test_bad_method_and_oversized_exact_and_swap_arguments_raise():
    p, V = _problem(0, rows=1, n=40, d=6)
    with pytest.raises(ValueError, match=r"method must be one of \['topr'"):
        approximate_output(p, V, 2, "va-magic")
    with pytest.raises(TypeError, match="method must be a str"):
        get_oracle(3)
    with pytest.raises(ValueError, match=r"C\(n=40, min\(r, D_v \+ 1\)=7\) = 18643560 .*"
                                         r"max_subsets=100000"):
        va_exact(p, V, 7)
    with pytest.raises(ValueError, match="max_iter must be >= 0 and chunk >= 1"):
        va_swap(p, V, 2, max_iter=-1)
    with pytest.raises(ValueError, match="dense_weights needs support and weights"):
        topr(p, V, 2).dense_weights(40)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["va-greedy", "va-swap", "va-exact"])
def test_repeated_values_equal_to_the_output_stay_finite(method, dtype):
    """Two identical value rows (a repeated token) with the output equal to them: the simplex
    fit's Gram matrix is zero. Found inside a trained LM, where it produced NaN outputs."""
    from attnlab.approx.oracles import approximate_output

    v = torch.tensor([[0.3, -1.2, 0.5], [0.3, -1.2, 0.5], [1.0, 2.0, -0.5]], dtype=dtype)
    p = torch.tensor([[0.5128, 0.4872, 0.0], [0.2, 0.3, 0.5]], dtype=dtype)
    out = approximate_output(p, v, 2, method)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, p @ v)


@pytest.mark.parametrize("method", available_oracles())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("arg", ["p", "v"])
def test_non_finite_p_or_v_is_rejected_by_every_oracle(method, bad, arg):
    """Issue 12: NaN in p gave NaN (topr, topr-l2, va-greedy, va-swap) or a finite, wrong output
    (va-exact, omp: [[0, 0, 0]] for the repro below)."""
    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=F64)
    v = torch.eye(3, dtype=F64)
    if arg == "p":
        p[0, 1] = bad
    else:
        v[1, 2] = bad
    with pytest.raises(ValueError, match=f"{arg} must be finite"):
        approximate_output(p, v, 1, method)
    with pytest.raises(ValueError, match=f"{arg} must be finite"):
        get_oracle(method)(p, v, 2, return_support=True)


@pytest.mark.parametrize(("n", "r", "d"), [(12, 9, 12), (9, 8, 12), (12, 9, 8)])
def test_exact_enumerates_only_the_c_n_s_supports(n, r, d):
    """Issue 12: torch.combinations allocated n^s index rows for the C(n, s) supports: n=12,
    r=9 asked for 41 GB (220 supports) and n=9, r=8 took 9 s and 1 GB (9 supports). The
    reference is the best face of at most r keys among all n, enumerated in numpy."""
    p, V = _problem(n + r, rows=2, n=n, d=d)
    res = va_exact(p, V, r, return_support=True)
    exact = _err2(res.output, p, V)
    o = (p @ V).numpy()
    ref = torch.tensor([_face_fit(V.numpy() - o[i], max_size=r) for i in range(2)], dtype=F64)
    torch.testing.assert_close(exact, ref, atol=1e-10, rtol=0)
    assert (exact <= _err2(va_swap(p, V, r).output, p, V) + 1e-12).all()
    assert int((res.support >= 0).sum(-1).max()) <= min(r, d + 1)
    count = math.comb(n, min(r, d + 1))
    with pytest.raises(ValueError, match=rf"= {count} supports .*max_subsets={count - 1}"):
        va_exact(p, V, r, max_subsets=count - 1)


@pytest.mark.parametrize(("value", "err"), [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_exact_rejects_a_bad_max_subsets(value, err):
    p, V = _problem(0)
    with pytest.raises(err, match="max_subsets must be"):
        va_exact(p, V, 2, max_subsets=value)


def test_greedy_is_exact_at_r_dv_plus_one_in_the_readme_setup():
    """Issue 12: the README's claim (r = 17 = D_v + 1: zero value-aware error) held for va-exact
    only; va-greedy left up to 1.4e-2 relative error on 18 of 256 queries. Float32 as in the
    README; float64 with p renormalized to sum 1 exactly (attention's eps moves o off the hull
    of the values by ~1e-7), where the tolerance is 1e-9."""
    import attnlab

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 4, 64, 16).unbind(0)
    _, p = attnlab.attention(q, k, v, kernel="expressive", is_causal=True, return_weights=True)
    for dtype, rtol in ((torch.float32, 1e-4), (F64, 1e-9)):
        pp = p.to(dtype) if dtype == torch.float32 else p.to(dtype) / p.to(dtype).sum(-1, keepdim=True)
        vv = v.to(dtype).unsqueeze(2)
        o = (pp.unsqueeze(-2) @ vv).squeeze(-2)
        for method in ("va-greedy", "va-swap") if dtype == torch.float32 else ("va-greedy",):
            out = approximate_output(pp, vv, 17, method)
            rel = (out - o).norm(dim=-1) / o.norm(dim=-1)
            assert float(rel.max()) < rtol, (dtype, method, float(rel.max()))
        top = approximate_output(pp, vv, 17, "topr")
        assert ((out - o).norm(dim=-1) <= (top - o).norm(dim=-1) + rtol * o.norm(dim=-1)).all()


@pytest.mark.parametrize("seed", range(6))
def test_greedy_at_r_at_least_dv_plus_one_reproduces_the_output(seed):
    """Random problems, flat to peaked, with masks (some rows see few keys, some weights are
    zero): at r >= D_v + 1 the support is valid (visible, distinct keys, simplex weights) and
    the output exact whenever the visible p sum to 1."""
    g = torch.Generator().manual_seed(seed)
    n, d = [(10, 2), (40, 5), (33, 7), (60, 3), (25, 8), (18, 1)][seed]
    rows = 12
    vis = torch.rand(rows, n, generator=g) < 0.7
    vis[:, : d + 3] = True  # every row sees at least r keys
    s = torch.randn(rows, n, generator=g, dtype=F64) * (0.3, 1.0, 4.0)[seed % 3]
    p = torch.softmax(s.masked_fill(~vis, -torch.inf), -1)
    p[0, 0] = 0.0  # a zero weight on a visible key
    p = p / p.sum(-1, keepdim=True)
    V = torch.randn(n, d, generator=g, dtype=F64) * torch.rand(n, 1, generator=g, dtype=F64)
    o = p @ V
    for r in (d + 1, d + 3):
        res = va_greedy(p, V, r, visible=vis, return_support=True)
        assert ((res.output - o).norm(dim=-1) <= 1e-9 * o.norm(dim=-1).clamp_min(1e-3)).all()
        assert (res.support >= 0).all() and vis.gather(-1, res.support).all()
        assert all(len(set(row.tolist())) == r for row in res.support)
        assert (res.weights >= 0).all()
        torch.testing.assert_close(res.weights.sum(-1), torch.ones(rows, dtype=F64))
        for dtype in (torch.float32,):
            out32 = va_greedy(p.to(dtype), V.to(dtype), r, visible=vis).output.double()
            assert ((out32 - o).norm(dim=-1) <= 1e-4 * o.norm(dim=-1).clamp_min(1e-2)).all()
