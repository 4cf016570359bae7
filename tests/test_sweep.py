"""The sweep is driven by the records (attnlab.methods.MethodRecord): what it enrols and refuses.

Backends: every (backend, kernel, dtype, device) a record accepts is compared with the float64
reference in test_attention.py and test_edge_cases.py; here, every kernel, dtype and device a record
does not list is refused with the record's reason. Approximations: every registered one runs on
every case its record takes, raises its record's reason on every other, and where the record gives
an exact limit (``topk``: top_k >= S) equals exact attention there, with gradients. Oracles: at
their exact limit (r >= S) they give the exact output, and every value-aware oracle's error is at
most top-r's on every query. docs/examples/window_attention.py (CONTRIBUTING.md's worked example)
is loaded here, so it is swept like any other method.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab import backends
from attnlab.approx import (
    approximate_attention,
    approximate_output,
    available_approximations,
    available_oracles,
    get_oracle_record,
    get_record,
    oracle_attention,
    oracle_family,
)
from attnlab.backends import Backend, available_backends, get_backend, register_backend
from attnlab.methods import ALL_DTYPES, Budget, MethodRecord
from attnlab.problem import build_problem
from attnlab.testing import assert_close
from cases import Case, backend_kernel_pairs, devices_here

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "window_attention.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("attnlab_window_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if "window" not in available_approximations():
    _load_example()

KERNELS = attnlab.available_kernels()


# --- backends ----------------------------------------------------------------------------------


def test_registering_a_backend_enrols_it_from_its_record(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", backends._REGISTRY.copy())
    from attnlab.backends.chunked import chunked_attention

    register_backend(Backend("toy", chunked_attention, kernels=("expressive",), dtypes=(torch.float64,)))
    pairs = backend_kernel_pairs()
    assert ("toy", "expressive") in pairs and ("toy", "softmax") not in pairs
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match=r"backend 'toy' does not support float32 \(it takes float64\)"):
        attnlab.attention(q, q, q, kernel="expressive", backend="toy")
    assert attnlab.attention(q.double(), q.double(), q.double(), kernel="expressive", backend="toy").shape == q.shape
    with pytest.raises(ValueError, match="backend name 'auto' is reserved"):
        register_backend(Backend("auto", chunked_attention))
    with pytest.raises(TypeError, match=r"backend must be an attnlab\.backends\.Backend"):
        register_backend(MethodRecord("x", chunked_attention))


def _small(dtype: torch.dtype, device: str):
    q, k, v, _ = Case(B=1, H=2, L=5, S=6, D=4).make(dtype, device=device)
    return q, k, v


REFUSED_KERNELS = [(b, k) for b in available_backends() for k in KERNELS if (b, k) not in backend_kernel_pairs()]


@pytest.mark.parametrize(("backend", "kernel"), REFUSED_KERNELS, ids=lambda x: x)
def test_every_kernel_a_record_does_not_list_is_refused(backend, kernel):
    q, k, v = _small(torch.float32, devices_here()[0])
    reason = get_backend(backend).refusal(build_problem(q, k, v, kernel=kernel))
    assert reason is not None and f"does not support kernel {kernel!r}" in reason
    with pytest.raises(ValueError, match=re.escape(reason)):
        attnlab.attention(q, k, v, kernel=kernel, backend=backend)


GRID = [(b, d, dev) for b in available_backends() for d in ALL_DTYPES for dev in devices_here()
        if d not in get_backend(b).dtypes or dev not in get_backend(b).devices]


@pytest.mark.parametrize(("backend", "dtype", "device"), GRID, ids=lambda x: str(x).replace("torch.", ""))
def test_every_dtype_and_device_a_record_does_not_list_is_refused(backend, dtype, device):
    record = get_backend(backend)
    kernel = record.kernel_names()[0]
    q, k, v = _small(dtype, device)
    reason = record.refusal(build_problem(q, k, v, kernel=kernel))
    assert reason is not None
    with pytest.raises(ValueError, match=re.escape(reason)):
        attnlab.attention(q, k, v, kernel=kernel, backend=backend)


# --- approximations ------------------------------------------------------------------------------


def _takes(name: str, option: str) -> bool:
    return option in inspect.signature(get_record(name).run).parameters


def _kernels(name: str) -> list[str | None]:
    """The kernels to sweep a method on: those its record lists, or None (its own kernel)."""
    return get_record(name).kernel_names() if _takes(name, "kernel") else [None]


ENROLLED = [(m, k) for m in available_approximations() for k in _kernels(m)]
APPROX_CASES = [
    Case(B=1, H=2, L=12, D=8),
    Case(B=1, H=2, L=12, D=8, causal=True),
    Case(B=2, H=2, L=10, S=13, D=8, mask="padding"),
    Case(B=1, H=2, L=12, D=8, mask="random"),
    Case(B=1, H=4, Hkv=2, L=12, D=8, causal=True),
]


def _call(method: str, kernel: str | None, q, k, v, mask, case: Case, **options):
    if kernel is not None:
        options["kernel"] = kernel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated aliases (method 'linear')
        return approximate_attention(q, k, v, method=method, attn_mask=mask, is_causal=case.causal,
                                     enable_gqa=case.gqa, **options)


def test_the_sweep_enrols_every_approximation_and_the_worked_example():
    assert {m for m, _ in ENROLLED} == set(available_approximations())
    assert ("window", "expressive") in ENROLLED and ("topk", "relu2") in ENROLLED
    assert ("performer", "softmax") in ENROLLED and ("performer", "expressive") not in ENROLLED


@pytest.mark.parametrize("case", APPROX_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(("method", "kernel"), ENROLLED, ids=lambda x: str(x))
def test_approximation_runs_or_refuses_and_is_exact_at_its_limit(method, kernel, case):
    record = get_record(method)
    dtype = torch.float64 if torch.float64 in record.dtypes else torch.float32
    q, k, v, mask = case.make(dtype, requires_grad=record.differentiable)
    problem = build_problem(q, k, v, kernel=kernel or "softmax", attn_mask=mask, is_causal=case.causal,
                            enable_gqa=case.gqa)
    reason = record.refusal(problem)
    if (case.causal and not record.causal) or (mask is not None and record.masks == "none"):
        assert reason is not None  # what the record declares, it refuses
    if reason is not None:
        with pytest.raises(ValueError, match=re.escape(reason)):
            _call(method, kernel, q, k, v, mask, case)
        return
    budget = {} if record.budget is None or record.budget.value_for(problem) is None else {
        record.budget.option: record.budget.value_for(problem)}
    out = _call(method, kernel, q, k, v, mask, case, **budget)
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and out.dtype == dtype
    assert torch.isfinite(out).all()
    if record.exact_options is None:
        return
    exact = _call(method, kernel, q, k, v, mask, case, **record.exact_options(problem))
    ref = attnlab.attention(q, k, v, kernel=kernel or "softmax", attn_mask=mask, is_causal=case.causal,
                            enable_gqa=case.gqa, backend="reference")
    assert_close(exact, ref)
    if record.differentiable:
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
        for name, got, want in zip("qkv", torch.autograd.grad(exact, (q, k, v), g),
                                   torch.autograd.grad(ref, (q, k, v), g), strict=True):
            assert_close(got, want, what=f"d{name}")


REFUSED_APPROX_KERNELS = [(m, kern) for m in available_approximations() if _takes(m, "kernel")
                          for kern in KERNELS if kern not in _kernels(m)]


@pytest.mark.parametrize(("method", "kernel"), REFUSED_APPROX_KERNELS, ids=lambda x: str(x))
def test_every_kernel_an_approximation_record_does_not_list_is_refused(method, kernel):
    q, k, v, _ = Case(B=1, H=1, L=6, D=4).make()
    reason = get_record(method).refusal(build_problem(q, k, v, kernel=kernel))
    assert reason is not None and reason.startswith(f"kernel: method {method!r}")
    with pytest.raises(ValueError, match=re.escape(reason)):
        approximate_attention(q, k, v, method=method, kernel=kernel)


def test_records_name_their_budget():
    assert get_record("topk").budget == Budget("top_k", 32)
    assert get_record("nystrom").budget.option == "num_landmarks"
    assert get_record("window").budget == Budget("window", 16)
    for name in available_approximations():
        budget = get_record(name).budget
        assert budget is None or _takes(name, budget.option), name


# --- oracles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", available_oracles())
def test_oracle_is_exact_at_its_limit(method):
    record = get_oracle_record(method)
    q, k, v, mask = Case(B=1, H=2, L=6, S=6, D=4, causal=True, mask="padding").make()
    problem = build_problem(q, k, v, attn_mask=mask, is_causal=True)
    out = oracle_attention(q, k, v, method=method, attn_mask=mask, is_causal=True, **record.exact_options(problem))
    ref = attnlab.attention(q, k, v, attn_mask=mask, is_causal=True, backend="reference")
    assert_close(out, ref)


VALUE_AWARE = [m for m in available_oracles() if oracle_family(m) == "value-aware"]


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("method", VALUE_AWARE)
def test_value_aware_oracle_is_at_most_top_r_on_every_query(method, r):
    g = torch.Generator().manual_seed(r)
    p = torch.softmax(torch.randn(40, 7, generator=g, dtype=torch.float64) * 2, -1)
    V = torch.randn(7, 3, generator=g, dtype=torch.float64)
    o = p @ V

    def err(name):
        return (approximate_output(p, V, r, name) - o).square().sum(-1)

    oblivious = torch.minimum(err("topr"), err("topr-l2"))
    assert (err(method) <= oblivious + 1e-12).all()


def test_every_oracle_has_a_family():
    assert set(VALUE_AWARE) >= {"va-greedy", "va-swap", "va-exact"}
    assert oracle_family("topr") == "value-oblivious" and oracle_family("omp") == "unconstrained"


def test_the_old_names_still_work_with_a_deprecation_path():
    from attnlab.backends import Problem
    from attnlab.functional import canonicalize
    from attnlab.problem import AttentionProblem

    assert Problem is AttentionProblem
    q = torch.randn(1, 1, 3, 4)
    problem, shape = canonicalize(q, q, q, None, True, None, False, 1e-6, attnlab.get_kernel("relu"))
    assert shape == (1, 1, 3, 4) and problem.out_shape == shape and problem.is_causal
    with pytest.warns(DeprecationWarning, match=r"use \.refusal\(problem\)"):
        assert get_backend("sdpa").accepts(problem) == get_backend("sdpa").refusal(problem)
