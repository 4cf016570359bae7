"""attnlab.metrics against direct float64 numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.metrics import (
    entropy,
    skewness,
    top_r_mass,
    value_aware_error,
    value_oblivious_error,
)

F64 = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_value_aware_error_frobenius_and_per_query():
    O, Oh = _rand(2, 3, 4), _rand(2, 3, 4, seed=1)
    a, b = O.numpy(), Oh.numpy()
    assert float(value_aware_error(O, Oh)) == pytest.approx(
        np.linalg.norm(a - b) / np.linalg.norm(a), rel=1e-12)
    per = value_aware_error(O, Oh, per_query=True)
    ref = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)
    np.testing.assert_allclose(per.numpy(), ref, rtol=1e-12)
    assert per.shape == (2, 3)


def test_value_aware_error_zero_over_zero_is_zero():
    O = torch.zeros(3, 2, dtype=F64)
    Oh = O.clone()
    Oh[0, 0] = 1.0
    assert torch.equal(value_aware_error(O, O), torch.tensor(0.0, dtype=F64))
    per = value_aware_error(O, Oh, per_query=True)
    assert per[0] == math.inf and per[1] == 0 and per[2] == 0


def test_value_oblivious_error_default_l1_mean_and_l2():
    p = torch.softmax(_rand(5, 6), -1)
    ph = torch.softmax(_rand(5, 6, seed=2), -1)
    d = (p - ph).numpy()
    assert float(value_oblivious_error(p, ph)) == pytest.approx(np.abs(d).sum(-1).mean())
    np.testing.assert_allclose(value_oblivious_error(p, ph, ord=2, per_query=True).numpy(),
                               np.linalg.norm(d, axis=-1))
    assert float(value_oblivious_error(p, p)) == 0.0


def test_top_r_mass_with_and_without_mask():
    p = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.4, 0.3, 0.2, 0.1]], dtype=F64)
    torch.testing.assert_close(top_r_mass(p, 2), torch.tensor([0.75, 0.7], dtype=F64))
    vis = torch.tensor([[True, False, True, True], [True, True, False, False]])
    torch.testing.assert_close(top_r_mass(p, 3, visible=vis), torch.tensor([0.5, 0.7], dtype=F64))


def test_entropy_zero_log_zero_and_mask():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=F64)
    torch.testing.assert_close(entropy(p), torch.tensor([math.log(2), math.log(4)], dtype=F64))
    vis = torch.tensor([True, True, True, False])
    torch.testing.assert_close(entropy(p, visible=vis)[1], torch.tensor(0.75 * math.log(4), dtype=F64))
    assert torch.isfinite(entropy(torch.zeros(3, dtype=F64)))


def test_skewness_uniform_one_hot_and_length_invariance():
    uni = torch.full((2, 8), 1 / 8, dtype=F64)
    torch.testing.assert_close(skewness(uni), torch.zeros(2, dtype=F64))
    one_hot = torch.eye(8, dtype=F64)[:3]
    torch.testing.assert_close(skewness(one_hot), torch.ones(3, dtype=F64))
    # causal prefixes: uniform over the visible prefix is 0 at every length; one key is 1
    vis = torch.ones(8, 8, dtype=torch.bool).tril()
    p = vis.to(F64) / vis.sum(-1, keepdim=True)
    torch.testing.assert_close(skewness(p, visible=vis), torch.tensor([1.0] + [0.0] * 7, dtype=F64))
    assert torch.equal(skewness(torch.ones(2, 1, dtype=F64)), torch.ones(2, dtype=F64))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 12), temp=st.floats(0.1, 10.0))
def test_skewness_in_unit_interval_and_sharper_is_more_skewed(seed, n, temp):
    s = _rand(3, n, seed=seed)
    sk = skewness(torch.softmax(s * temp, -1))
    assert ((sk >= -1e-12) & (sk <= 1 + 1e-12)).all()
    assert (skewness(torch.softmax(s * temp * 2, -1)) >= sk - 1e-9).all()


@pytest.mark.parametrize(("call", "err", "match"), [
    (lambda: value_aware_error(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError,
     r"out and out_hat must have the same shape, got \(2, 3\) and \(2, 4\)"),
    (lambda: value_aware_error([1.0], torch.zeros(1)), TypeError, "out must be a torch.Tensor"),
    (lambda: value_aware_error(torch.zeros(2, dtype=torch.long), torch.zeros(2)), TypeError,
     "out must be a floating-point tensor"),
    (lambda: value_oblivious_error(torch.zeros(2, 3), torch.zeros(3, 2)), ValueError,
     "p and p_hat must have the same shape"),
    (lambda: value_oblivious_error(torch.zeros(2, 3), torch.zeros(2, 3), ord=0.5), ValueError,
     "ord must be a number >= 1"),
    (lambda: top_r_mass(torch.zeros(2, 3), 4), ValueError, r"r must be in \[1, 3\], got 4"),
    (lambda: top_r_mass(torch.zeros(2, 3), 0), ValueError, r"r must be in \[1, 3\], got 0"),
    (lambda: top_r_mass(torch.zeros(2, 3), 1.5), TypeError, "r must be an int"),
    (lambda: entropy(torch.zeros(2, 3), visible=torch.ones(2, 3)), TypeError,
     "visible must be a bool tensor"),
    (lambda: entropy(torch.zeros(2, 3), visible=torch.ones(3, 3, dtype=torch.bool)), ValueError,
     r"visible must broadcast to p's shape \(2, 3\)"),
    (lambda: skewness(torch.tensor(1.0)), ValueError, "p must have at least one dim"),
    (lambda: skewness(torch.ones(2, 3, dtype=torch.int32)), TypeError,
     "p must be a floating-point tensor"),
])
def test_bad_input_raises(call, err, match):
    with pytest.raises(err, match=match):
        call()
