"""Tests of attnlab.data.tasks: determinism, ground truth by plain loops, ladder, validation."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.data import tasks as T

LEVELS = range(1, 7)  # every task has these; recurrence and mixture go on to 7


def full_rows(batch: T.TaskBatch) -> list[list[int]]:
    """The un-shifted sequences, after checking that targets are inputs shifted by one."""
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    return [[*row, last] for row, last in zip(batch.inputs.tolist(),
                                              batch.targets[:, -1].tolist(), strict=True)]


def recurrence_truth(cfg: T.RecurrenceConfig, seq: list[int], offset: int = 0) -> dict[int, int]:
    """{target position t: value} computed with a plain loop; seq[offset] is x_0."""
    coeffs, delays = T.recurrence_rule(cfg)
    out = {}
    for i in range(cfg.max_delay, len(seq) - offset):
        value = 0
        for c, tau in zip(coeffs, delays, strict=True):
            value += c * seq[offset + i - tau]
        out[offset + i - 1] = value % cfg.vocab_size
    return out


def recall_truth(cfg: T.RecallConfig, seq: list[int]) -> dict[int, int]:
    k = cfg.num_pairs
    table = {}
    for i in range(k):
        table[seq[2 * i]] = seq[2 * i + 1]
    return {p: table[seq[p]] for p in range(2 * k, len(seq) - 1, 2)}


def truth(cfg, batch: T.TaskBatch) -> list[dict[int, int]]:
    """Per row, the predictable positions and their targets, derived independently."""
    rows = full_rows(batch)
    if isinstance(cfg, T.RecurrenceConfig):
        return [recurrence_truth(cfg, r) for r in rows]
    if isinstance(cfg, T.RecallConfig):
        return [recall_truth(cfg, r) for r in rows]
    base = max(c.vocab_size for c in cfg.components)
    return [recurrence_truth(cfg.components[r[0] - base], r, offset=1) for r in rows]


def oracle(cfg, batch: T.TaskBatch) -> torch.Tensor:
    pred = torch.zeros_like(batch.targets)
    for b, row in enumerate(truth(cfg, batch)):
        for t, v in row.items():
            pred[b, t] = v
    return pred


def check_ground_truth(cfg, batch: T.TaskBatch) -> None:
    for b, row in enumerate(truth(cfg, batch)):
        assert sorted(row) == batch.predictable[b].nonzero().flatten().tolist()
        for t, v in row.items():
            assert batch.targets[b, t].item() == v


ALL = [(name, c) for name in ["recurrence", "recall", "mixture"] for c in sorted(T.get_task(name).ladder)]


@pytest.mark.parametrize(("name", "level"), ALL, ids=[f"{n}-{c}" for n, c in ALL])
def test_ground_truth_shapes_and_oracle(name, level):
    cfg = T.task_config(name, level, seed=3)
    batch = T.sample(cfg, 6, seed=1)
    shape = (6, cfg.seq_len)
    for t in (batch.inputs, batch.targets):
        assert t.shape == shape and t.dtype == torch.long
        assert 0 <= t.min() and t.max() < cfg.vocab_size
    assert batch.predictable.shape == shape and batch.predictable.dtype == torch.bool
    check_ground_truth(cfg, batch)
    assert T.accuracy(oracle(cfg, batch), batch) == 1.0
    constant = torch.full_like(batch.targets, batch.targets[batch.predictable].mode().values)
    assert T.accuracy(constant, batch) < 0.6


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), extra=st.integers(0, 4), v=st.integers(2, 11),
       length_extra=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_recurrence_ground_truth_any_config(n, extra, v, length_extra, seed):
    cfg = T.RecurrenceConfig(n, n + extra, v, n + extra + length_extra, seed)
    coeffs, delays = T.recurrence_rule(cfg)
    assert len(set(delays)) == n and max(delays) == cfg.max_delay and min(delays) >= 1
    assert all(1 <= c < v and math.gcd(c, v) == 1 for c in coeffs)
    check_ground_truth(cfg, T.sample(cfg, 3, seed))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 6), q=st.integers(1, 6), v=st.integers(12, 40), seed=st.integers(0, 99))
def test_recall_ground_truth_any_config(k, q, v, seed):
    cfg = T.RecallConfig(k, v, min(q, k))
    batch = T.sample(cfg, 3, seed)
    check_ground_truth(cfg, batch)
    for row in full_rows(batch):
        keys, values = row[0 : 2 * k : 2], row[1 : 2 * k : 2]
        assert len(set(keys)) == k and all(0 <= x < v // 2 <= y < v for x in keys for y in values)


def test_mixture_uses_every_task_token_and_distinct_rules():
    cfg = T.task_config("mixture", 6, length=12)
    rules = {T.recurrence_rule(c) for c in cfg.components}
    assert len(rules) == len(cfg.components) == 4
    batch = T.sample(cfg, 64, seed=0)
    base = max(c.vocab_size for c in cfg.components)
    assert set(batch.inputs[:, 0].tolist()) == {base + i for i in range(4)}
    assert cfg.vocab_size == base + 4


@pytest.mark.parametrize("name", ["recurrence", "recall", "mixture"])
def test_determinism_and_splits(name):
    cfg = T.task_config(name, 2)
    a = T.sample(cfg, 8, seed=5)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    b = T.sample(cfg, 8, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert all(torch.equal(x, y) for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b),
                                                 strict=True))
    assert not torch.equal(a.inputs, T.sample(cfg, 8, seed=6).inputs)
    assert not torch.equal(a.inputs, T.sample(cfg, 8, seed=5, split="validation").inputs)


def test_config_seed_selects_the_rule():
    rules = {T.recurrence_rule(T.task_config("recurrence", 4, seed=s)) for s in range(10)}
    assert len(rules) > 1
    cfg = T.task_config("recurrence", 4, seed=7)
    assert T.recurrence_rule(cfg) == T.recurrence_rule(dataclasses.replace(cfg))


def knobs(cfg) -> tuple[int, ...]:
    if isinstance(cfg, T.RecurrenceConfig):
        return (cfg.num_terms, cfg.max_delay, cfg.vocab_size, cfg.weighted)
    if isinstance(cfg, T.RecallConfig):
        return (cfg.num_pairs, cfg.vocab_size, cfg.queries)
    return (len(cfg.components), *knobs(cfg.components[0]))


@pytest.mark.parametrize("name", ["recurrence", "recall", "mixture"])
def test_ladder_is_monotone(name):
    levels = sorted(T.get_task(name).ladder)
    assert levels == list(range(1, len(levels) + 1))  # consecutive from 1
    ladder = [knobs(T.task_config(name, c)) for c in levels]
    for lo, hi in itertools.pairwise(ladder):
        assert all(a <= b for a, b in zip(lo, hi, strict=True)) and lo != hi


PLAIN = [lv for lv, k in T.get_task("recurrence").ladder.items() if k["weighted"] == 0]


def test_recurrence_ladder_starts_with_plain_delayed_addition():
    ladder = T.get_task("recurrence").ladder
    assert PLAIN == list(range(1, len(PLAIN) + 1)) and len(PLAIN) >= 2  # the first rungs, then weighted
    assert all(ladder[lv]["num_terms"] >= 2 for lv in PLAIN)  # N = 1 would be a copy task
    assert [ladder[lv]["weighted"] for lv in sorted(ladder)][len(PLAIN):] == [1] * (len(ladder) - len(PLAIN))
    grows = [(ladder[lv]["num_terms"], ladder[lv]["max_delay"]) for lv in PLAIN]
    assert grows[0] < grows[-1] and grows[0][0] < grows[-1][0] and grows[0][1] < grows[-1][1]


@pytest.mark.parametrize("level", PLAIN)
@pytest.mark.parametrize("seed", [0, 5])
def test_plain_rungs_are_delayed_addition(level, seed):
    """x_t = (x_{t-tau_1} + ... + x_{t-tau_N}) mod V on every predictable position, checked by a
    loop that does not use the rule's coefficients, with largest delay exactly T."""
    cfg = T.task_config("recurrence", level, seed=seed)
    assert cfg.weighted == 0
    coeffs, delays = T.recurrence_rule(cfg)
    assert coeffs == (1,) * cfg.num_terms
    assert max(delays) == cfg.max_delay == T.get_task("recurrence").ladder[level]["max_delay"]
    assert len(set(delays)) == cfg.num_terms and min(delays) >= 1
    batch = T.sample(cfg, 16, seed=seed + 1)
    for row in full_rows(batch):
        for t in range(cfg.max_delay, len(row)):
            assert row[t] == sum(row[t - d] for d in delays) % cfg.vocab_size
    assert batch.predictable[:, cfg.max_delay - 1:].all() and not batch.predictable[:, : cfg.max_delay - 1].any()
    # uniform marginals also for even V with c = 1 (c_T = 1 is a unit: the state map is a bijection)
    counts = torch.bincount(T.sample(cfg, 512, seed=9).targets[:, cfg.max_delay:].flatten(), minlength=cfg.vocab_size)
    assert counts.min() > 0.7 * counts.float().mean()


def test_plain_and_weighted_share_delays_and_old_rules_are_kept():
    cfg = T.RecurrenceConfig(3, 6, 16, 64, seed=4)
    plain = dataclasses.replace(cfg, weighted=0)
    assert T.recurrence_rule(plain)[1] == T.recurrence_rule(cfg)[1]
    assert T.recurrence_rule(plain)[0] == (1, 1, 1)
    assert T.recurrence_rule(T.task_config("recurrence", 5, seed=4)) == T.recurrence_rule(cfg)
    with pytest.raises(ValueError, match="weighted must be in"):
        T.RecurrenceConfig(weighted=2)


def test_mixture_mixes_plain_rules_at_low_levels():
    for level in (1, 2, 3, 4):
        cfg = T.task_config("mixture", level, seed=0)
        assert all(c.weighted == 0 for c in cfg.components)
        assert len({T.recurrence_rule(c) for c in cfg.components}) == len(cfg.components)


def test_recall_is_labelled_as_attnlabs_own():
    import attnlab.data.tasks.recall as recall_module

    assert "not a task of Gros" in recall_module.__doc__


def test_registry_and_overrides():
    assert T.available_tasks() == ["mixture", "recall", "recurrence"]
    assert T.get_task("recall").config_class is T.RecallConfig
    cfg = T.task_config("recurrence", 3, seed=2, length=20)
    assert (cfg.length, cfg.seed, cfg.seq_len) == (20, 2, 20)


def test_accuracy_with_logits_ignores_unpredictable_positions():
    cfg = T.task_config("recurrence", 2)
    batch = T.sample(cfg, 4, seed=0)
    pred = oracle(cfg, batch)
    pred[~batch.predictable] = (batch.targets[~batch.predictable] + 1) % cfg.vocab_size
    logits = torch.nn.functional.one_hot(pred, cfg.vocab_size).float()
    assert T.accuracy(logits, batch) == 1.0
    pred[0, -1] = (batch.targets[0, -1] + 1) % cfg.vocab_size
    assert T.accuracy(pred, batch) == pytest.approx(1 - 1 / batch.predictable.sum().item())


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: T.RecurrenceConfig(num_terms=0), ValueError, "num_terms must be >= 1"),
        (lambda: T.RecurrenceConfig(num_terms=3, max_delay=2), ValueError, "max_delay must be >="),
        (lambda: T.RecurrenceConfig(vocab_size=1), ValueError, "vocab_size must be >= 2"),
        (lambda: T.RecurrenceConfig(max_delay=5, length=5), ValueError, "length must be >= 6"),
        (lambda: T.RecurrenceConfig(seed=-1), ValueError, "seed must be >= 0"),
        (lambda: T.RecurrenceConfig(num_terms=2.0), TypeError, "num_terms must be an int"),
        (lambda: T.RecallConfig(num_pairs=9, vocab_size=16), ValueError, "num_pairs must be <="),
        (lambda: T.RecallConfig(num_queries=5, num_pairs=4), ValueError, "num_queries must be <="),
        (lambda: T.MixtureConfig(()), ValueError, "components must be a non-empty"),
        (lambda: T.MixtureConfig((T.RecallConfig(),)), TypeError, "components must contain"),
        (lambda: T.MixtureConfig((T.RecurrenceConfig(length=9), T.RecurrenceConfig())),
         ValueError, "components must share one length"),
        (lambda: T.get_task("copy"), ValueError, "name must be one of"),
        (lambda: T.task_config("recall", 7), ValueError, "complexity must be in 1..6"),
        (lambda: T.task_config("recall", 0), ValueError, "complexity must be >= 1"),
        (lambda: T.task_config("recall", 1, lenght=3), ValueError, "overrides must be fields"),
        (lambda: T.task_config("mixture", 1, max_delay=2), ValueError, "distinct rules"),
        (lambda: T.sample("recall", 2, 0), TypeError, "cfg must be one of the task configs"),
        (lambda: T.sample(T.RecallConfig(), 0, 0), ValueError, "n must be >= 1"),
        (lambda: T.sample(T.RecallConfig(), 2, -3), ValueError, "seed must be >= 0"),
        (lambda: T.sample(T.RecallConfig(), 2, 0, split="dev"), ValueError, "split must be"),
    ],
)
def test_validation_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_accuracy_errors():
    batch = T.sample(T.RecallConfig(num_pairs=2, vocab_size=8), 2, 0)
    with pytest.raises(ValueError, match="logits_or_predictions must be"):
        T.accuracy(torch.zeros(2, 3, dtype=torch.long), batch)
    with pytest.raises(ValueError, match="logits_or_predictions must be"):
        T.accuracy(torch.zeros(2, batch.targets.shape[1]), batch)
    empty = T.TaskBatch(batch.inputs, batch.targets, torch.zeros_like(batch.predictable))
    with pytest.raises(ValueError, match="at least one predictable"):
        T.accuracy(batch.targets, empty)


def test_register_task():
    spec = T.get_task("recall")
    copy = T.TaskSpec("recall-copy", spec.config_class, spec.sampler, {1: dict(num_pairs=2, vocab_size=8)})
    try:
        assert T.register_task(copy) is copy and "recall-copy" in T.available_tasks()
        assert T.task_config("recall-copy", 1) == T.RecallConfig(num_pairs=2, vocab_size=8)
        with pytest.raises(ValueError, match="task 'recall-copy' is already registered"):
            T.register_task(copy)
    finally:
        T.unregister_task("recall-copy")
    with pytest.raises(TypeError, match="spec must be a TaskSpec"):
        T.register_task("recall")
    with pytest.raises(ValueError, match=r"spec\.ladder must hold at least one level"):
        T.register_task(T.TaskSpec("empty", spec.config_class, spec.sampler, {}))
    with pytest.raises(ValueError, match="name must be one of"):
        T.get_task("nope")
