"""The release gate: rules that judge a candidate against a base, item by item.

A gate is a list of rules over tasks (one task, a category or a role), each a one-sided
test on the delta of a task's headline metric, oriented so that higher is better:

    non_inferior, margin m:  H0 delta <= -m   (pass: the candidate lost less than m points)
    superior,     margin m:  H0 delta <= m    (pass: it gained more than m points)

Each (rule, task) is one hypothesis with a bootstrap p-value; Holm's correction across all
of them keeps the chance of passing any false one below ``alpha``. With one hypothesis and
``alpha`` 0.025, "non_inferior" passes exactly when the two-sided 95% interval's lower bound
is above -m. Margins are in points (hundredths of the metric: 2 points of accuracy = 0.02)
for a metric on a 0-1 scale, in the metric's own units for any other. ``forgetbench
compare`` and the sweep's verdict both judge by it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgetbench import stats
from forgetbench.config import Suite, TasksSpec, read_yaml_mapping, validation_message
from forgetbench.errors import ForgetbenchError, shown


class GateRule(BaseModel):
    """One rule: a test on the headline metric (or ``metric``) of each task it selects."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: str | None = None        # one task by name
    category: str | None = None    # the tasks of one category (qa, math, code ...)
    role: Literal["target", "general"] | None = None  # every target or general task
    test: Literal["non_inferior", "superior"] = "non_inferior"
    margin: Annotated[float, Field(ge=0)] = 2.0  # points
    metric: str | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> GateRule:
        chosen = [k for k in ("task", "category", "role") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("a rule selects its tasks by exactly one of task, category or role "
                             f"(got {', '.join(chosen) or 'none'})")
        return self

    def text(self) -> str:
        which = (f"task {self.task}" if self.task else f"category {self.category}" if self.category
                 else f"{self.role} tasks")
        test = "non-inferior" if self.test == "non_inferior" else "superior"
        return f"{which}: {test}, margin {self.margin:g}"


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # family-wise error rate of the one-sided tests (0.025: a single rule is judged by the
    # two-sided 95% interval)
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.025
    rules: Annotated[list[GateRule], Field(min_length=1)]


# Without a gate file: no general task may lose 2 points or more. (The target is what the
# fine-tuning is for; a gate file adds rules on it, e.g. superior by some margin.)
DEFAULT_GATE = Gate(rules=[GateRule(role="general", test="non_inferior", margin=2.0)])


def load_gate(path: Path) -> Gate:
    raw = read_yaml_mapping(path, "gate file", "alpha, rules")
    try:
        return Gate.model_validate(raw)
    except ValidationError as exc:
        raise ForgetbenchError(validation_message(str(path), exc, Gate)) from None


# the suite's tasks -> each task's metric names as known before it is evaluated (None: only
# its results tell)
Reported = Callable[[TasksSpec], Mapping[str, Sequence[str] | None]]


def suite_gate(suite: Suite, reported: Reported | None = None, *,
               headline_only: bool = False) -> tuple[Gate, str]:
    """The suite's release gate (its ``gate`` file, checked against its tasks as
    :func:`check_gate` checks it), else the default; and where it came from, for messages."""
    if suite.gate is None:
        return DEFAULT_GATE, "the default gate"
    gate = load_gate(suite.gate)
    source = str(suite.gate.relative_to(Path.cwd()) if suite.gate.is_relative_to(Path.cwd()) else suite.gate)
    check_gate(gate, suite, source, reported, headline_only=headline_only)
    return gate, source


def check_gate(gate: Gate, suite: Suite, source: str, reported: Reported | None = None, *,
               headline_only: bool = False) -> None:
    """Refuse a rule that selects no task of the suite (a typo would pass silently); with
    ``reported`` (harness.declared_metrics, called only when a rule names a metric: it may read
    lm-eval's task index), also a rule's ``metric`` that a task it selects will not have, which
    :func:`judge` would find only once everything is evaluated. ``headline_only``: the judge
    will have each task's headline metric alone (a sweep's verdict)."""
    for i, rule in enumerate(gate.rules):
        if not _selected(rule, suite):
            what = ("task " + shown(rule.task) if rule.task else "category " + shown(rule.category)
                    if rule.category else f"role {rule.role}")
            tasks = ", ".join(f"{t.name} ({role}{', ' + t.category if t.category else ''})"
                              for t, role in suite.all_tasks())
            raise ForgetbenchError(f"{source}: rules[{i}]: {what} matches no task of suite "
                                   f"{shown(suite.name)}; its tasks: {tasks}")
    named = [(i, rule) for i, rule in enumerate(gate.rules) if rule.metric is not None]
    if reported is None or not named:
        return
    metrics = reported(suite.tasks)
    where = {t.name: (t, f"tasks.{role}[{k}]") for role, listed in (
        ("target", suite.tasks.target), ("general", suite.tasks.general)) for k, t in enumerate(listed)}
    for i, rule in named:
        for name in _selected(rule, suite):
            have, (task, field) = metrics.get(name), where[name]
            if have is not None and rule.metric not in have:
                raise ForgetbenchError(f"{source}: rules[{i}].metric: task {name} reports no metric "
                                       f"{shown(rule.metric)}; it reports {', '.join(have)}")
            if headline_only and task.metric is not None and rule.metric != task.metric:
                raise ForgetbenchError(
                    f"{source}: rules[{i}].metric: the sweep's verdict tests task {name} by its headline metric "
                    f"{task.metric} ({field}.metric) alone, not {shown(rule.metric)}; drop metric from the rule, "
                    f"or make {shown(rule.metric)} the headline")


def _selected(rule: GateRule, suite: Suite) -> list[str]:
    return [t.name for t, role in suite.all_tasks()
            if (rule.task and t.name == rule.task) or (rule.role and role == rule.role)
            or (rule.category and t.category == rule.category)]


def judge(gate: Gate, suite: Suite, tasks: list[dict], boots: dict, source: str = "the gate") -> list[dict[str, Any]]:
    """One row per (rule, task) hypothesis: its one-sided p, Holm-adjusted p and verdict, in
    the metric's display units (points for a proportion). ``bound`` is the lower bound of the
    interval at the hypothesis' own Holm level, α / (m − rank), so "bound > threshold" and
    "passed" agree (but for Holm's rule that a test after a failed one fails too);
    ``underpowered``: its minimum detectable effect exceeds the margin, and it passed (which
    then says little) or failed with an estimate within the margin (inconclusive)."""
    by_name = {t["task"]: t for t in tasks}
    rows, oriented = [], []
    for i, rule in enumerate(gate.rules):
        for name in _selected(rule, suite):
            entry = by_name[name]
            metric = rule.metric or entry["headline"]
            m = next((m for m in entry["metrics"] if m["metric"] == metric), None)
            if m is None:
                have = ", ".join(x["metric"] for x in entry["metrics"])
                raise ForgetbenchError(f"{source}: rules[{i}].metric: task {name} has no per-item metric "
                                       f"{shown(metric)} to test; it has {have}")
            sign, scale = (1.0 if m["higher_is_better"] else -1.0), m.get("scale", 100)
            boot = boots[name, metric]
            oriented.append(stats.Bootstrap(sign * boot.estimate, sign * boot.samples))
            threshold = (-rule.margin if rule.test == "non_inferior" else rule.margin) / scale
            rows.append({"rule": i, "text": rule.text(), "task": name, "metric": metric, "test": rule.test,
                         "margin": rule.margin, "scale": scale, "delta": oriented[-1].estimate * scale,
                         "threshold": threshold * scale, "p": oriented[-1].p_at_most(threshold),
                         "weak": "mde" in m and m["mde"] * scale > rule.margin})
    ranks = sorted(range(len(rows)), key=lambda k: rows[k]["p"])
    for rank, k in enumerate(ranks):
        level = gate.alpha / (len(rows) - rank)
        rows[k]["bound"] = oriented[k].interval(1 - 2 * level).low * rows[k]["scale"]
    for row, adjusted in zip(rows, stats.holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
        row["passed"] = adjusted < gate.alpha
        # too few items for this margin: a pass says little (no flips make a [0, 0] interval),
        # a fail whose estimate is within the margin is inconclusive, not a loss
        row["underpowered"] = row.pop("weak") and (row["passed"] or row["delta"] > row["threshold"])
    return rows
