"""Learning, forgetting, retention, paired standard errors and the Pareto front: pure functions.

Definitions (scores are "higher is better" metrics such as accuracy):
    delta      = after − before
    learning   = after − before        on target tasks
    forgetting = before − after        on general tasks (positive: it forgot)
    retention  = after / before        (undefined when before = 0)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from forgetbench.errors import ForgetbenchError, shown


def delta(before: float, after: float) -> float:
    return after - before


def forgetting(before: float, after: float) -> float:
    return before - after


def retention(before: float, after: float) -> float | None:
    return after / before if before else None


def paired_stderr(before: Sequence[float], after: Sequence[float]) -> float | None:
    """Standard error of the mean paired difference: sd(d_i) / √n with d_i = after_i − before_i
    (sample sd, n − 1). Pairing removes the between-item variance that two independent
    stderrs would count twice, so it is the right error bar for a before/after delta."""
    n = len(before)
    if n != len(after):
        raise ValueError("paired samples must have the same length")
    if n < 2:
        return None
    d = [a - b for a, b in zip(after, before)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return math.sqrt(var / n)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (learning, forgetting) pairs no other pair beats: none has at least as
    much learning and at most as much forgetting, and strictly better in one of them."""
    front = []
    for i, (li, fi) in enumerate(points):
        dominated = any((lj >= li and fj <= fi) and (lj > li or fj < fi)
                        for j, (lj, fj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def headline_metric(task_name: str, declared: str | None, scores: dict) -> str:
    """The metric a task is judged by: the suite's choice, else the task's first metric."""
    available = list(scores["tasks"][task_name]["metrics"])
    if declared:
        if declared not in available:
            raise ForgetbenchError(f"tasks: {task_name}.metric {shown(declared)} is not reported by "
                                   f"lm-eval for this task; available: {', '.join(available)}")
        return declared
    return available[0]


def learning_and_forgetting(tasks: Sequence[tuple[str, str | None, str]], before: dict,
                            after: dict) -> tuple[float, float]:
    """Mean learning on the target tasks and mean forgetting on the general ones (``tasks``:
    name, declared metric, role), headline metrics, from two score records: what the
    summary table computes for a point, without its intervals (a lower-is-better metric is
    flipped, so forgetting is always a loss). NaN for a role with no value."""
    by_role: dict[str, list[float]] = {"target": [], "general": []}
    for name, declared, role in tasks:
        head = headline_metric(name, declared, before)
        b, a = before["tasks"][name]["metrics"][head], after["tasks"][name]["metrics"].get(head)
        if a is None or b["value"] is None or a["value"] is None:
            continue
        sign = 1.0 if b.get("higher_is_better", True) else -1.0
        by_role[role].append(sign * forgetting(b["value"], a["value"]))
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return -mean(by_role["target"]), mean(by_role["general"])
