"""Synthetic autoregressive tasks with a complexity knob (the ladder of DESIGN.md section 3).

Every task is a pure function of ``(config, seed)``: :func:`sample` draws a :class:`TaskBatch`
from a local ``torch.Generator`` and never touches the global RNG. ``config.seed`` fixes the
*task instance* (a recurrence's coefficients and delays); the ``seed`` given to :func:`sample`
fixes the *data*, and ``split`` derives a distinct stream per split, so train and eval data of
one task instance come from different generators.

Batches use the next-token shift: ``targets[:, t]`` is the token to predict after reading
``inputs[:, : t + 1]``. ``predictable[:, t]`` is True where that target is a function of the
context and the task's fixed rule, so a perfect model scores 100% there; :func:`accuracy`
counts only those positions.

Tasks by name (:func:`get_task`, :func:`available_tasks`, :func:`task_config`):
``recurrence`` (:class:`RecurrenceConfig`), ``recall`` (:class:`RecallConfig`) and ``mixture``
(:class:`MixtureConfig`). Each config has ``vocab_size`` and ``seq_len`` properties.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int
from ..registry import Registry

__all__ = [
    "MixtureConfig",
    "RecallConfig",
    "RecurrenceConfig",
    "TaskBatch",
    "TaskSpec",
    "accuracy",
    "available_tasks",
    "get_task",
    "recurrence_rule",
    "register_task",
    "sample",
    "task_config",
]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskBatch:
    """A batch of a task: ``inputs``, ``targets`` (next-token shift) and the ``predictable`` mask.

    Attributes:
        inputs: LongTensor (B, L).
        targets: LongTensor (B, L); ``targets[:, t]`` follows ``inputs[:, : t + 1]``.
        predictable: BoolTensor (B, L); True where the target is determined by the context.
    """

    inputs: Tensor
    targets: Tensor
    predictable: Tensor


@dataclass(frozen=True)
class RecurrenceConfig:
    """``x_t = (sum_{j<N} c_j * x_{t - tau_j}) mod V``, one fixed rule per task instance.

    The rule (coefficients ``c_j`` coprime to ``V`` and ``N`` distinct delays in ``1..T`` whose
    largest is exactly ``T``) is drawn from ``seed`` (:func:`recurrence_rule`), so the model
    must infer it from training data, as in Gros (2024). The first ``T`` tokens of each sequence
    are uniform random seeds and are masked out; every later target is predictable. As
    ``c_T`` is a unit mod ``V`` the state map is a bijection: sequences never collapse to a
    constant and every ``x_t`` stays uniform on ``0..V-1``, so guessing scores about ``1/V``.
    Example (N=1, T=2, V=5, c=(2,), tau=(2,): x_t = 2 x_{t-2} mod 5)::

        inputs       3 1 1 2 2 4 4 3
        targets      1 1 2 2 4 4 3 3
        predictable  . T T T T T T T

    Args:
        num_terms: N >= 1. max_delay: T >= N. vocab_size: V >= 2.
        length: L > T, the sequence length. seed: fixes the rule.
    """

    num_terms: int = 2
    max_delay: int = 3
    vocab_size: int = 8
    length: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("num_terms", self.num_terms, 1)
        check_int("max_delay", self.max_delay, self.num_terms)
        check_int("vocab_size", self.vocab_size, 2)
        check_int("length", self.length, self.max_delay + 1)
        check_int("seed", self.seed, 0)

    @property
    def seq_len(self) -> int:
        return self.length


@dataclass(frozen=True)
class RecallConfig:
    """Multi-query associative recall: ``K`` key-value pairs, then ``Q`` queried keys.

    Keys are distinct tokens in ``[0, V/2)``, values any tokens in ``[V/2, V)``; the queries are
    ``Q`` distinct keys from the context, each followed by its value. Only the targets after a
    query key (its value) are predictable. Sequence length ``2(K + Q) - 1``.
    Example (K=2, Q=2, V=8)::

        inputs       1 6 3 5 3 5 1
        targets      6 3 5 3 5 1 6
        predictable  . . . . T . T

    Args:
        num_pairs: K >= 1. num_queries: 1 <= Q <= K (default K). vocab_size: V with K <= V // 2.
        seed: identifies the instance (the rule is the data itself, so it draws nothing).
    """

    num_pairs: int = 4
    vocab_size: int = 32
    num_queries: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("num_pairs", self.num_pairs, 1)
        check_int("vocab_size", self.vocab_size, 2)
        if self.num_pairs > self.vocab_size // 2:
            raise ValueError(
                f"num_pairs must be <= vocab_size // 2 = {self.vocab_size // 2} (distinct keys), "
                f"got {self.num_pairs}"
            )
        if self.num_queries is not None:
            check_int("num_queries", self.num_queries, 1)
            if self.num_queries > self.num_pairs:
                raise ValueError(f"num_queries must be <= num_pairs, got {self.num_queries}")
        check_int("seed", self.seed, 0)

    @property
    def queries(self) -> int:
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def seq_len(self) -> int:
        return 2 * (self.num_pairs + self.queries) - 1


@dataclass(frozen=True)
class MixtureConfig:
    """Several recurrences interleaved: each sequence opens with the token ``V + i`` of its task.

    Sequence ``i`` is ``[V + i, x_0, x_1, ...]`` with ``x`` from ``components[i]`` and
    ``V = max(c.vocab_size)``; which rule applies is read off the first token, so every target
    after the component's seeds is predictable. Example (two tasks, V=5, task 1 shown)::

        inputs       6 3 1 1 2 2 4 4
        targets      3 1 1 2 2 4 4 3
        predictable  . . T T T T T T

    Args:
        components: at least one :class:`RecurrenceConfig`, all with the same ``length``.
    """

    components: tuple[RecurrenceConfig, ...] = ()

    def __post_init__(self) -> None:
        comps = self.components
        if not isinstance(comps, tuple) or not comps:
            raise ValueError("components must be a non-empty tuple of RecurrenceConfig")
        if not all(isinstance(c, RecurrenceConfig) for c in comps):
            raise TypeError("components must contain only RecurrenceConfig instances")
        if len({c.length for c in comps}) != 1:
            raise ValueError(f"components must share one length, got {[c.length for c in comps]}")

    @property
    def vocab_size(self) -> int:
        return max(c.vocab_size for c in self.components) + len(self.components)

    @property
    def seq_len(self) -> int:
        return self.components[0].length


TaskConfig = RecurrenceConfig | RecallConfig | MixtureConfig


def recurrence_rule(cfg: RecurrenceConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The fixed rule of a recurrence instance: ``(coefficients, delays)``, delays ascending.

    Drawn from ``cfg.seed`` (and the knobs) with a local generator; ``max(delays) == T`` and
    every coefficient is coprime to ``V``.
    """
    g = torch.Generator().manual_seed(_derive_seed("rule", cfg.seed, cfg.num_terms,
                                                   cfg.max_delay, cfg.vocab_size))
    others = torch.randperm(cfg.max_delay - 1, generator=g)[: cfg.num_terms - 1] + 1
    delays = tuple(sorted([*others.tolist(), cfg.max_delay]))
    units = [c for c in range(1, cfg.vocab_size) if math.gcd(c, cfg.vocab_size) == 1]
    picks = torch.randint(0, len(units), (cfg.num_terms,), generator=g).tolist()
    return tuple(units[i] for i in picks), delays


def _derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _run_recurrence(cfg: RecurrenceConfig, n: int, steps: int, g: torch.Generator) -> Tensor:
    coeffs, delays = recurrence_rule(cfg)
    x = torch.empty(n, steps, dtype=torch.long)
    x[:, : cfg.max_delay] = torch.randint(0, cfg.vocab_size, (n, cfg.max_delay), generator=g)
    for t in range(cfg.max_delay, steps):
        acc = torch.zeros(n, dtype=torch.long)
        for c, tau in zip(coeffs, delays, strict=True):
            acc += c * x[:, t - tau]
        x[:, t] = acc % cfg.vocab_size
    return x


def _sample_recurrence(cfg: RecurrenceConfig, n: int, g: torch.Generator) -> TaskBatch:
    x = _run_recurrence(cfg, n, cfg.length + 1, g)
    pred = (torch.arange(cfg.length) + 1 >= cfg.max_delay).expand(n, -1)
    return TaskBatch(x[:, :-1].clone(), x[:, 1:].clone(), pred.clone())


def _sample_recall(cfg: RecallConfig, n: int, g: torch.Generator) -> TaskBatch:
    k, q, half = cfg.num_pairs, cfg.queries, cfg.vocab_size // 2
    keys = torch.rand(n, half, generator=g).argsort(dim=1)[:, :k]
    values = torch.randint(half, cfg.vocab_size, (n, k), generator=g)
    which = torch.rand(n, k, generator=g).argsort(dim=1)[:, :q]
    seq = torch.empty(n, 2 * (k + q), dtype=torch.long)
    seq[:, 0 : 2 * k : 2], seq[:, 1 : 2 * k : 2] = keys, values
    seq[:, 2 * k :: 2] = keys.gather(1, which)
    seq[:, 2 * k + 1 :: 2] = values.gather(1, which)
    pred = torch.zeros(n, cfg.seq_len, dtype=torch.bool)
    pred[:, 2 * k :: 2] = True
    return TaskBatch(seq[:, :-1].clone(), seq[:, 1:].clone(), pred)


def _sample_mixture(cfg: MixtureConfig, n: int, g: torch.Generator) -> TaskBatch:
    base, length = max(c.vocab_size for c in cfg.components), cfg.seq_len
    task = torch.randint(0, len(cfg.components), (n,), generator=g)
    seq = torch.empty(n, length + 1, dtype=torch.long)
    pred = torch.zeros(n, length, dtype=torch.bool)
    seq[:, 0] = base + task
    for i, comp in enumerate(cfg.components):
        rows = (task == i).nonzero().flatten()
        seq[rows, 1:] = _run_recurrence(comp, len(rows), length, g)
        pred[rows] = torch.arange(length) >= comp.max_delay
    return TaskBatch(seq[:, :-1].clone(), seq[:, 1:].clone(), pred)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its config class, sampler and complexity ladder (level -> knobs)."""

    name: str
    config_class: type
    sampler: Callable[..., TaskBatch]
    ladder: dict[int, dict[str, int]]


_TASKS: Registry[TaskSpec] = Registry("task", entry="spec", entry_type=TaskSpec)


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Register ``spec`` under ``spec.name`` (for :func:`task_config`, :func:`sample` and the
    ``task`` data source) and return it.

    Raises:
        TypeError: ``spec`` is not a :class:`TaskSpec`, or its name is not a non-empty str.
        ValueError: the name is taken and ``overwrite`` is False, or the ladder is empty.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"spec must be a TaskSpec, got {type(spec).__name__}")
    if not spec.ladder:
        raise ValueError(f"spec.ladder must hold at least one level, got {spec.ladder!r}")
    return _TASKS.register(spec.name, spec, overwrite=overwrite)


register_task(TaskSpec("recurrence", RecurrenceConfig, _sample_recurrence, {
    1: dict(num_terms=1, max_delay=2, vocab_size=8),
    2: dict(num_terms=2, max_delay=3, vocab_size=8),
    3: dict(num_terms=2, max_delay=4, vocab_size=16),
    4: dict(num_terms=3, max_delay=6, vocab_size=16),
    5: dict(num_terms=3, max_delay=8, vocab_size=32),
    6: dict(num_terms=4, max_delay=12, vocab_size=32),
}))
register_task(TaskSpec("recall", RecallConfig, _sample_recall, {
    1: dict(num_pairs=2, vocab_size=16),
    2: dict(num_pairs=4, vocab_size=32),
    3: dict(num_pairs=8, vocab_size=64),
    4: dict(num_pairs=16, vocab_size=128),
    5: dict(num_pairs=32, vocab_size=256),
    6: dict(num_pairs=64, vocab_size=512),
}))
register_task(TaskSpec("mixture", MixtureConfig, _sample_mixture, {
    1: dict(num_tasks=2, recurrence_level=1),
    2: dict(num_tasks=2, recurrence_level=2),
    3: dict(num_tasks=3, recurrence_level=2),
    4: dict(num_tasks=3, recurrence_level=3),
    5: dict(num_tasks=4, recurrence_level=3),
    6: dict(num_tasks=4, recurrence_level=4),
}))


def available_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS.names())


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` registered under ``name``.

    Raises:
        ValueError: if ``name`` is not a registered task.
    """
    return _TASKS.get(name)


def task_config(name: str, complexity: int, seed: int = 0, **overrides: int) -> TaskConfig:
    """The config of task ``name`` at ladder level ``complexity`` (1 = easiest .. 6).

    ====  ==================  =====================  ===========================
    lvl   recurrence N, T, V  recall K, V (Q = K)    mixture tasks x recurrence
    ====  ==================  =====================  ===========================
    1     1, 2, 8             2, 16                  2 x level 1
    2     2, 3, 8             4, 32                  2 x level 2
    3     2, 4, 16            8, 64                  3 x level 2
    4     3, 6, 16            16, 128                3 x level 3
    5     3, 8, 32            32, 256                4 x level 3
    6     4, 12, 32           64, 512                4 x level 4
    ====  ==================  =====================  ===========================

    Every knob is non-decreasing along the ladder and each level raises at least one. Sequence
    length: 64 for recurrence and mixture, ``4K - 1`` for recall. Mixture components are
    recurrences with distinct rules, the first found among seeds ``seed, seed + 1, ...``.
    ``overrides`` replace fields of the level's config (for a mixture, of each component),
    e.g. ``task_config("recurrence", 3, length=128)``.

    Raises:
        ValueError: unknown ``name``, a ``complexity`` off the ladder, or an unknown override.
    """
    spec = get_task(name)
    check_int("complexity", complexity, 1)
    if complexity not in spec.ladder:
        raise ValueError(f"complexity must be in 1..{max(spec.ladder)}, got {complexity}")
    cls = RecurrenceConfig if name == "mixture" else spec.config_class
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in fields or key == "seed":
            raise ValueError(f"overrides must be fields of {cls.__name__}, got {key!r}")
    knobs = spec.ladder[complexity]
    if name != "mixture":
        return cls(**{**knobs, **overrides}, seed=seed)
    comps: list[RecurrenceConfig] = []
    rules: set[tuple] = set()
    for candidate in range(seed, seed + 1000):
        if len(comps) == knobs["num_tasks"]:
            break
        comp = task_config("recurrence", knobs["recurrence_level"], candidate, **overrides)
        if recurrence_rule(comp) not in rules:
            rules.add(recurrence_rule(comp))
            comps.append(comp)
    if len(comps) < knobs["num_tasks"]:
        raise ValueError(f"overrides leave fewer than {knobs['num_tasks']} distinct rules")
    return MixtureConfig(tuple(comps))


def sample(cfg: TaskConfig, n: int, seed: int, split: str = "train") -> TaskBatch:
    """Draw ``n`` sequences of task ``cfg``; a pure function of ``(cfg, n, seed, split)``.

    Raises:
        TypeError: if ``cfg`` is not a task config.
        ValueError: if ``n < 1``, ``seed < 0`` or ``split`` is not train/validation/test.
    """
    spec = next((s for s in _TASKS.values() if isinstance(cfg, s.config_class)), None)
    if spec is None:
        raise TypeError(f"cfg must be one of the task configs, got {type(cfg).__name__}")
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    g = torch.Generator().manual_seed(_derive_seed("data", spec.name, seed, split))
    return spec.sampler(cfg, n, g)


def accuracy(logits_or_predictions: Tensor, batch: TaskBatch) -> float:
    """Fraction of predictable positions where the prediction equals the target.

    Args:
        logits_or_predictions: logits (B, L, V) (argmax taken) or integer predictions (B, L).
        batch: the :class:`TaskBatch` they predict.

    Raises:
        ValueError: if the shape does not match ``batch`` or no position is predictable.

    The count is :func:`attnlab.models.objectives.masked_accuracy`'s, as in training evaluation.
    """
    from ..models.objectives import masked_accuracy

    if not batch.predictable.any():
        raise ValueError("batch must have at least one predictable position")
    return masked_accuracy(logits_or_predictions, batch.targets, batch.predictable)
