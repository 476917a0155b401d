"""Tables from stored scores: the long ``results.csv``, the one-row-per-point summary, what
each mitigation buys against plain training, and the cost of the in-training evaluations."""
from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import pandas as pd

from forgetbench import metrics, regularizers
from forgetbench.config import Mitigation, Point, Suite, mitigation_kinds

# lr, epochs, mix_ratio, regularizer, lam, schedule, xi, patience
POINT_COLUMNS = list(Point.model_fields)
# from the training summary: planned steps, where training ended, the step exported by early
# stopping, and the Fisher variant of an EWC point
TRAIN_COLUMNS = ["steps", "last_step", "best_step", "fisher"]
RESULT_COLUMNS = [
    "point_id", *POINT_COLUMNS, *TRAIN_COLUMNS, "task", "category", "role",
    "metric", "headline", "n", "before", "after", "delta", "stderr_before", "stderr_after",
    "stderr_delta", "forgetting", "retention", "higher_is_better",
]
_STEP_COLUMNS = ["patience", "steps", "last_step", "best_step"]  # integers, some empty


def point_of(row: Mapping[str, Any]) -> Point:
    """The point a results or summary row describes (its point columns; an empty cell is unset)."""
    return Point(**{c: None if pd.isna(row[c]) else row[c] for c in POINT_COLUMNS})


def training_columns(point: Point, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """A point's training summary (the journal's ``point_trained``) as the results columns:
    best_step only for early-stopping points, fisher (its variant) where the training
    estimated one (EWC's)."""
    summary = summary or {}
    fisher = summary.get("fisher")
    return {"steps": summary.get("steps"), "last_step": summary.get("last_step"),
            "best_step": summary.get("best_step") if point.patience is not None else None,
            "fisher": fisher.get("variant") if isinstance(fisher, dict) else None}


def results_frame(suite: Suite, baseline: dict, points: list[tuple[str, Point, dict | None]],
                  train: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """One row per evaluated point and task metric (points without scores are left out);
    ``train`` maps point ids to their training summaries."""
    train = train or {}
    rows: list[dict[str, Any]] = []
    for task, role in suite.all_tasks():
        base_task = baseline["tasks"][task.name]
        head = metrics.headline_metric(task.name, task.metric, baseline)
        for pid, point, scores in points:
            if scores is None:
                continue
            after_task = scores["tasks"][task.name]
            trained = training_columns(point, train.get(pid))
            for metric, b in base_task["metrics"].items():
                a = after_task["metrics"].get(metric)
                if a is None or b["value"] is None or a["value"] is None:
                    continue
                xs, ys = metrics.paired(base_task["samples"], after_task["samples"], metric)
                # forgetting and retention read "higher is better"; flip for e.g. perplexity
                better = b.get("higher_is_better", True)
                sign = 1 if better else -1
                rows.append({
                    "point_id": pid, **point.model_dump(), **trained, "task": task.name,
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
    # nullable integers: an empty cell, not NaN or "2.0", where a point has no patience
    return pd.DataFrame(rows, columns=RESULT_COLUMNS).astype({c: "Int64" for c in _STEP_COLUMNS})


def summary_frame(results: pd.DataFrame) -> pd.DataFrame:
    """One row per point: its settings, its planned ``steps`` and ``last_step``, where early
    stopping stopped (``stopped``: "last step/planned steps" to read, and ``best_step``, the
    step exported), learning per target task and
    forgetting per general task (headline metrics, in points of the metric ×100), and the
    means of both."""
    # (the "points" unit suits 0-1 metrics such as accuracy; others are shown ×100 too)
    if results.empty:
        return pd.DataFrame()
    head = results[results["headline"]]
    # pivot on the id alone: pandas drops index rows holding NaN (patience None), so the
    # settings are joined back afterwards
    settings = (head.drop_duplicates("point_id").set_index("point_id")
                [[*POINT_COLUMNS, "steps", "last_step", "best_step"]])
    # learning is minus the oriented forgetting: after − before, flipped for lower-is-better
    learn = -head[head["role"] == "target"].pivot_table(index="point_id", columns="task",
                                                        values="forgetting")
    forget = head[head["role"] == "general"].pivot_table(index="point_id", columns="task",
                                                         values="forgetting")
    learn.columns = [f"learn:{c}" for c in learn.columns]
    forget.columns = [f"forget:{c}" for c in forget.columns]
    scores = (learn * 100).join(forget * 100, how="outer")
    scores["learning"] = learn.mean(axis=1) * 100
    scores["forgetting"] = forget.mean(axis=1) * 100
    scores["max_forgetting"] = forget.max(axis=1) * 100
    stopping = settings["patience"].notna() & settings["last_step"].notna()
    settings.insert(len(POINT_COLUMNS), "stopped", [
        f"{last}/{steps}" if stop else None
        for stop, last, steps in zip(stopping, settings["last_step"], settings["steps"])])
    out = settings.join(scores, how="inner")
    # plain training first (regularizers in the registry's order), patience unset before set
    order = regularizers.names()
    out = out.reset_index().sort_values(
        ["regularizer", "mix_ratio", "xi", "patience", "schedule", "epochs", "lam", "lr"],
        na_position="first",
        key=lambda col: col.map(order.index) if col.name == "regularizer" else col)
    front = metrics.pareto_front(list(zip(out["learning"].fillna(0), out["forgetting"].fillna(0))))
    out["pareto"] = [i in front for i in range(len(out))]
    return out.reset_index(drop=True)


def _number(v: Any) -> str:
    return "" if pd.isna(v) else f"{v:g}"


def _varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns among ``columns`` whose value differs between rows (all-empty ones go)."""
    return [c for c in columns if c in frame and frame[c].nunique(dropna=False) > 1]


def format_summary(summary: pd.DataFrame, width: int = 100) -> str:
    """The summary as a plain-text table for the terminal: settings that every point shares
    are left out (they are in results.csv), and the table wraps at ``width`` columns with
    the point id repeated, the means first."""
    if summary.empty:
        return "(no evaluated points)"
    settings = _varying(summary, POINT_COLUMNS + ["stopped", "best_step"])
    per_task = [c for c in summary if c.startswith(("learn:", "forget:"))]
    shown = summary[["point_id", *settings, "learning", "forgetting", "max_forgetting",
                     "pareto", *per_task]].copy()
    for col in ("lr", "epochs", "mix_ratio", "lam", "xi", "patience", "best_step"):
        if col in shown:
            shown[col] = shown[col].map(_number)
    shown["pareto"] = shown["pareto"].map(lambda v: "*" if v else "")
    shown = shown.fillna("").rename(columns={"point_id": "point", "mix_ratio": "mix",
                                             "regularizer": "reg", "best_step": "best",
                                             "max_forgetting": "max_forget"})
    return shown.set_index("point").to_string(
        float_format=lambda v: f"{v:+.1f}", line_width=width, index_names=False)


# ---------------------------------------------------------------- mitigations

def _mitigations(row: Mapping[str, Any]) -> list[Mitigation]:
    """The mitigations of a summary row's point; early stopping's says where it stopped
    (the step exported is the summary's best_step)."""
    def where(m: Mitigation) -> Mitigation:
        last, steps = row.get("last_step"), row.get("steps")
        if m.kind != "patience" or pd.isna(last) or pd.isna(steps):
            return m
        return m._replace(text=m.text + (f", stopped at {last}/{steps}" if last != steps
                                         else f", ran all {steps} steps"))

    return [where(m) for m in point_of(row).describe()]


def mitigation_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """What each mitigation buys against plain training, one row per mitigated point.

    A point is *plain* when it has no mitigation on (``Point.describe`` is empty); any other
    point is paired with the plain point of the same lr, epochs and schedule (its
    counterpart) and left out when the sweep has none. In points (×100, as the summary):

        forgetting_reduced = forgetting(plain) − forgetting(point)   (> 0: it forgot less)
        learning_cost      = learning(plain)   − learning(point)     (> 0: it learned less)

    ``best_lam`` marks, among points that differ only in λ (one regularizer, one lr, the
    other settings equal, at least two λ swept), the λ with the highest learning −
    forgetting; on a tie the smaller λ. Rows: lr descending, then replay, L2-SP, EWC,
    discriminative lr, early stopping, then the swept value ascending.
    """
    columns = ["point_id", "mitigation", "lr", "epochs", "schedule", "learning", "forgetting",
               "max_forgetting", "forgetting_reduced", "learning_cost", "best_lam", "plain_id"]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    pair_keys = ["lr", "epochs", "schedule"]
    described = [_mitigations(row) for _, row in summary.iterrows()]
    plain = summary[[not found for found in described]]
    plain = plain.drop_duplicates(pair_keys).set_index(pair_keys)
    rows, kinds = [], mitigation_kinds()
    for (_, row), found in zip(summary.iterrows(), described):
        key = tuple(row[k] for k in pair_keys)
        if not found or key not in plain.index:
            continue
        base = plain.loc[key]
        rows.append({
            "point_id": row["point_id"], "mitigation": " + ".join(m.text for m in found),
            "lr": row["lr"], "epochs": row["epochs"], "schedule": row["schedule"],
            "learning": row["learning"], "forgetting": row["forgetting"],
            "max_forgetting": row["max_forgetting"],
            "forgetting_reduced": base["forgetting"] - row["forgetting"],
            "learning_cost": base["learning"] - row["learning"],
            "best_lam": False, "plain_id": base["point_id"],
            # for marking and sorting, dropped below
            "_kind": min(kinds.index(m.kind) for m in found),
            "_regularizer": row["regularizer"], "_lam": row["lam"], "_mix": row["mix_ratio"],
            "_xi": row["xi"],
            "_patience": float(row["patience"]) if pd.notna(row["patience"]) else None,
        })
    out = pd.DataFrame(rows, columns=columns + ["_kind", "_regularizer", "_lam", "_mix",
                                                "_xi", "_patience"])
    if out.empty:
        return out[columns]
    same = ["_regularizer", "lr", "epochs", "schedule", "_mix", "_xi", "_patience"]
    regularized = out[out["_regularizer"] != regularizers.NONE]
    for _, group in regularized.groupby(same, dropna=False):
        net = (group["learning"] - group["forgetting"]).dropna()
        if group["_lam"].nunique() >= 2 and not net.empty:
            best = group.loc[net.index].assign(net=net).sort_values(
                ["net", "_lam"], ascending=[False, True]).index[0]
            out.loc[best, "best_lam"] = True
    out = out.sort_values(["lr", "_kind", "_lam", "_mix", "_xi", "_patience", "epochs"],
                          ascending=[False, True, True, True, True, True, True])
    return out[columns].reset_index(drop=True)


def format_mitigations(frame: pd.DataFrame, width: int = 100) -> str:
    """The mitigation table for the terminal, with a line on how to read it."""
    if frame.empty:
        return "(no mitigated point with a plain counterpart at the same lr, epochs and schedule)"
    shown = frame[["mitigation", "lr", *_varying(frame, ["epochs", "schedule"]),
                   "learning", "forgetting", "max_forgetting", "forgetting_reduced",
                   "learning_cost"]].copy()
    for col in ("lr", "epochs"):
        if col in shown:
            shown[col] = shown[col].map(_number)
    shown["mitigation"] += frame["best_lam"].map(lambda v: " *" if v else "")
    # text reads from the left: pad it and its header to the longest
    pad = max(shown["mitigation"].str.len().max(), len("mitigation"))
    shown["mitigation"] = shown["mitigation"].str.ljust(pad)
    shown = shown.rename(columns={"mitigation": "mitigation".ljust(pad),
                                  "learning": "learn", "forgetting": "forget",
                                  "max_forgetting": "max", "forgetting_reduced": "reduced",
                                  "learning_cost": "cost"})
    legend = ("Against plain training at the same lr, in points: reduced = forgetting avoided, "
              "cost = learning given up; max: the largest forgetting on one general task; "
              "*: the best λ swept (the highest learn − forget).")
    table = shown.to_string(index=False, float_format=lambda v: f"{v:+.1f}", line_width=width)
    return textwrap.fill(legend, width) + "\n" + table


# ---------------------------------------------------------------- training

def overhead_frame(points: list[tuple[str, Point, Mapping[str, Any] | None]]) -> pd.DataFrame:
    """The cost of the in-training evaluations per point: eval_share = eval_seconds /
    train_seconds, in percent (train_seconds is the wall time of the whole run, evaluations
    included). Points without an evaluation in training are left out."""
    rows = [{"point_id": pid, "point": point.label(), "last_step": summary.get("last_step"),
             "train_seconds": summary["train_seconds"], "eval_seconds": summary["eval_seconds"],
             "eval_share": 100 * summary["eval_seconds"] / summary["train_seconds"]}
            for pid, point, summary in points
            if summary and summary.get("eval_seconds") and summary.get("train_seconds")]
    return pd.DataFrame(rows, columns=["point_id", "point", "last_step", "train_seconds",
                                       "eval_seconds", "eval_share"])
