"""Tables from stored scores: the long ``results.csv`` and the one-row-per-point summary."""
from __future__ import annotations

from typing import Any

import pandas as pd

from forgetbench import metrics
from forgetbench.config import Point, Suite

RESULT_COLUMNS = [
    "point_id", "lr", "epochs", "mix_ratio", "regularizer", "lam", "task", "category", "role",
    "metric", "headline", "n", "before", "after", "delta", "stderr_before", "stderr_after",
    "stderr_delta", "forgetting", "retention", "higher_is_better",
]


def headline_metric(task_name: str, declared: str | None, scores: dict) -> str:
    """The metric a task is judged by: the suite's choice, else the task's first metric."""
    available = list(scores["tasks"][task_name]["metrics"])
    if declared:
        if declared not in available:
            from forgetbench.errors import ForgetbenchError
            raise ForgetbenchError(f"tasks: {task_name}.metric {declared!r} is not reported by "
                                   f"lm-eval for this task; available: {', '.join(available)}")
        return declared
    return available[0]


def results_frame(suite: Suite, baseline: dict,
                  points: list[tuple[str, Point, dict | None]]) -> pd.DataFrame:
    """One row per evaluated point and task metric (points without scores are left out)."""
    rows: list[dict[str, Any]] = []
    for task, role in suite.all_tasks():
        base_task = baseline["tasks"][task.name]
        head = headline_metric(task.name, task.metric, baseline)
        for pid, point, scores in points:
            if scores is None:
                continue
            after_task = scores["tasks"][task.name]
            for metric, b in base_task["metrics"].items():
                a = after_task["metrics"].get(metric)
                if a is None or b["value"] is None or a["value"] is None:
                    continue
                xs, ys = metrics.paired(base_task["samples"], after_task["samples"], metric)
                # forgetting and retention read "higher is better"; flip for e.g. perplexity
                better = b.get("higher_is_better", True)
                sign = 1 if better else -1
                rows.append({
                    "point_id": pid, **point.model_dump(), "task": task.name,
                    "category": task.category or role, "role": role, "metric": metric,
                    "headline": metric == head, "n": len(xs) or after_task.get("n"),
                    "before": b["value"], "after": a["value"],
                    "delta": metrics.delta(b["value"], a["value"]),
                    "stderr_before": b["stderr"], "stderr_after": a["stderr"],
                    "stderr_delta": metrics.paired_stderr(xs, ys) if xs else None,
                    "forgetting": sign * metrics.forgetting(b["value"], a["value"]),
                    "retention": metrics.retention(b["value"], a["value"]) if better else None,
                    "higher_is_better": better,
                })
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summary_frame(results: pd.DataFrame) -> pd.DataFrame:
    """One row per point: its settings, learning per target task and forgetting per general
    task (headline metrics, in points of the metric ×100), and the means of both."""
    # (the "points" unit suits 0-1 metrics such as accuracy; others are shown ×100 too)
    if results.empty:
        return pd.DataFrame()
    head = results[results["headline"]]
    keys = ["point_id", "lr", "epochs", "mix_ratio", "regularizer", "lam"]
    # learning is minus the oriented forgetting: after − before, flipped for lower-is-better
    learn = -head[head["role"] == "target"].pivot_table(index=keys, columns="task",
                                                        values="forgetting")
    forget = head[head["role"] == "general"].pivot_table(index=keys, columns="task",
                                                         values="forgetting")
    learn.columns = [f"learn:{c}" for c in learn.columns]
    forget.columns = [f"forget:{c}" for c in forget.columns]
    out = (learn * 100).join(forget * 100, how="outer")
    out["learning"] = (learn.mean(axis=1) * 100)
    out["forgetting"] = (forget.mean(axis=1) * 100)
    out["max_forgetting"] = (forget.max(axis=1) * 100)
    out = out.reset_index().sort_values(["regularizer", "mix_ratio", "epochs", "lam", "lr"])
    front = metrics.pareto_front(list(zip(out["learning"].fillna(0), out["forgetting"].fillna(0))))
    out["pareto"] = [i in front for i in range(len(out))]
    return out.reset_index(drop=True)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a plain-text table for the terminal."""
    if summary.empty:
        return "(no evaluated points)"
    shown = summary.drop(columns=["pareto"]).copy()
    shown["lr"] = shown["lr"].map(lambda v: f"{v:g}")
    for col in ("epochs", "mix_ratio", "lam"):
        shown[col] = shown[col].map(lambda v: f"{v:g}")
    return shown.to_string(index=False, float_format=lambda v: f"{v:+.1f}")
