"""CONTRIBUTING.md's claims: its worked example (docs/examples/window_attention.py) is one file,
and registering it enrols it in approximate_attention, the sweep and approx-error's choices."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.approx import approximate_attention, available_approximations, get_record
from attnlab.methods import Budget

ROOT = Path(__file__).resolve().parents[1]


def test_the_worked_example_is_registered_and_runs():
    import test_sweep  # noqa: F401  (loads the example, as the sweep does)

    assert "window" in available_approximations()
    assert get_record("window").budget == Budget("window", 16)
    q, k, v = torch.randn(3, 1, 2, 9, 4, dtype=torch.float64).unbind(0)
    out = approximate_attention(q, k, v, method="window", window=9, kernel="expressive", is_causal=True)
    torch.testing.assert_close(out, attnlab.attention(q, k, v, kernel="expressive", is_causal=True))
    assert "``window``" in approximate_attention.__doc__ and "window=16" in approximate_attention.__doc__
    with pytest.raises(ValueError, match="window must be >= 1"):
        approximate_attention(q, k, v, method="window", window=0)


def test_the_worked_example_is_in_the_sweep():
    import test_sweep

    assert ("window", "softmax") in test_sweep.ENROLLED and ("window", "relu2") in test_sweep.ENROLLED


def test_the_worked_example_is_a_choice_of_approx_error():
    import test_sweep  # noqa: F401
    from attnlab.studies.approx_error import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "methods")
    assert "window" in action.choices


def test_nothing_outside_backends_imports_a_private_backends_module():
    offenders = []
    for path in sorted((ROOT / "src" / "attnlab").rglob("*.py")):
        if "backends" in path.relative_to(ROOT / "src" / "attnlab").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                dotted = [[*parts, a.name] for a in node.names] if parts[-1] == "backends" else [parts]
                for names in dotted:
                    after = names[names.index("backends") + 1:] if "backends" in names else []
                    if after and after[0].startswith("_") and not after[0].startswith("__"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
