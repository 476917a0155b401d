"""Tables from stored scores: the long ``results.csv``, the one-row-per-point summary, its
replicates (points that differ only in the training seed) as one row, what each mitigation
buys against plain training, the cost of the in-training evaluations, and their text for the
terminal and for a pull request (``summary.md``)."""
from __future__ import annotations

import html
import textwrap
from collections.abc import Mapping
from typing import Any

import pandas as pd

from forgetbench import compare, metrics, regularizers, stats
from forgetbench.config import Mitigation, Point, Suite, mitigation_kinds

# lr, epochs, mix_ratio, regularizer, lam, schedule, xi, patience, seed
POINT_COLUMNS = list(Point.model_fields)
# what the replicates of a point share: all but the seed
SETTING_COLUMNS = [c for c in POINT_COLUMNS if c != "seed"]
# from the training summary: planned steps, where training ended, the step exported by early
# stopping, and the Fisher variant of an EWC point
TRAIN_COLUMNS = ["steps", "last_step", "best_step", "fisher"]
RESULT_COLUMNS = [
    "point_id", *POINT_COLUMNS, *TRAIN_COLUMNS, "task", "category", "role",
    "metric", "headline", "n", "before", "after", "delta", "delta_low", "delta_high", "stderr_before",
    "stderr_after", "stderr_delta", "forgetting", "retention", "higher_is_better",
]
# resamples of each row's paired bootstrap interval (delta_low, delta_high)
RESAMPLES = 10_000
_STEP_COLUMNS = ["patience", "steps", "last_step", "best_step"]  # integers, some empty


def point_of(row: Mapping[str, Any]) -> Point:
    """The setting a results or summary row describes: its point without the seed, which every
    replicate shares (an empty cell is unset). The row's ``seed`` is the training seed in
    effect, train.seed's included, so it would not give back a point's own (canonical) seed."""
    return Point(**{c: None if pd.isna(row[c]) else row[c] for c in SETTING_COLUMNS})


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
    ``train`` maps point ids to their training summaries. ``seed`` is the seed each point
    trained with: its replicate's, else train.seed."""
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
            pair = compare.pair_items(task.name, baseline, scores, clustered=task.cluster is not None)
            for metric, b in base_task["metrics"].items():
                a = after_task["metrics"].get(metric)
                if a is None or b["value"] is None or a["value"] is None:
                    continue
                xs, ys, keep = pair.values(metric)
                # the 95% paired bootstrap interval of after − before (clusters resampled whole)
                ci = (stats.bootstrap_mean([ys - xs], [pair.clusters(keep)], resamples=RESAMPLES).interval()
                      if len(xs) else None)
                # forgetting and retention read "higher is better"; flip for e.g. perplexity
                better = b.get("higher_is_better", True)
                sign = 1 if better else -1
                rows.append({
                    "point_id": pid, **point.model_dump(),
                    "seed": suite.for_point(point).train.seed, **trained, "task": task.name,
                    "category": task.category or role, "role": role, "metric": metric,
                    "headline": metric == head, "n": len(xs) or after_task.get("n"),
                    "before": b["value"], "after": a["value"],
                    "delta": metrics.delta(b["value"], a["value"]),
                    "delta_low": ci.low if ci else None, "delta_high": ci.high if ci else None,
                    "stderr_before": b["stderr"], "stderr_after": a["stderr"],
                    "stderr_delta": metrics.paired_stderr(list(xs), list(ys)) if len(xs) else None,
                    "forgetting": sign * metrics.forgetting(b["value"], a["value"]),
                    "retention": metrics.retention(b["value"], a["value"]) if better else None,
                    "higher_is_better": better,
                })
    # nullable integers: an empty cell, not NaN or "2.0", where a point has no patience
    return pd.DataFrame(rows, columns=RESULT_COLUMNS).astype({c: "Int64" for c in _STEP_COLUMNS})


def summary_frame(results: pd.DataFrame) -> pd.DataFrame:
    """One row per point (each replicate its own, with its ``seed``; :func:`replicate_frame`
    joins them): its settings, its planned ``steps`` and ``last_step``, where early
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
        ["regularizer", "regularizer_form", "mix_ratio", "xi", "patience", "schedule", "epochs", "lam", "lr",
         "seed"],
        na_position="first",
        key=lambda col: col.map(order.index) if col.name == "regularizer" else col)
    front = metrics.pareto_front(list(zip(out["learning"].fillna(0), out["forgetting"].fillna(0))))
    out["pareto"] = [i in front for i in range(len(out))]
    return out.reset_index(drop=True)


def _number(v: Any) -> str:
    return "" if pd.isna(v) else f"{v:g}"


def _points(v: Any) -> str:
    return "" if pd.isna(v) else f"{v:+.1f}"


def _span(lo: Any, hi: Any) -> str:
    return "" if pd.isna(lo) else f"{lo:+.1f}…{hi:+.1f}"


def _varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns among ``columns`` whose value differs between rows (all-empty ones go)."""
    return [c for c in columns if c in frame and frame[c].nunique(dropna=False) > 1]


def _score_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame if c in ("learning", "forgetting", "max_forgetting")
            or c.startswith(("learn:", "forget:"))]


def _replicates(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """The rows of ``frame`` that differ only in the seed, group by group in the order of
    their first row, each in seed order."""
    return [group.sort_values("seed", kind="stable")
            for _, group in frame.groupby(SETTING_COLUMNS, dropna=False, sort=False)]


def replicate_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per setting, in the summary's order: its replicates (the points that differ
    only in the training seed; a point without any is a group of one) as one row.

    ``seeds``: how many; each score column (learning, forgetting, max_forgetting, learn:*,
    forget:*): their mean; ``forgetting_min``, ``forgetting_max``: the range of forgetting
    over the seeds; ``pareto``: on the Pareto front of the means; ``point_ids``: the
    replicates, ';'-joined in seed order (their per-item scores are what confidence
    intervals over items and seeds are computed from)."""
    if summary.empty:
        return pd.DataFrame()
    scores = _score_columns(summary)
    rows = []
    for group in _replicates(summary):
        first = group.iloc[0]
        rows.append({**{c: first[c] for c in SETTING_COLUMNS}, "seeds": len(group),
                     **group[scores].mean().to_dict(),
                     "forgetting_min": group["forgetting"].min(),
                     "forgetting_max": group["forgetting"].max(),
                     "point_ids": ";".join(group["point_id"])})
    out = pd.DataFrame(rows)
    front = metrics.pareto_front(list(zip(out["learning"].fillna(0), out["forgetting"].fillna(0))))
    out["pareto"] = [i in front for i in range(len(out))]
    per_task = [c for c in scores if c.startswith(("learn:", "forget:"))]
    return out[[*SETTING_COLUMNS, "seeds", "learning", "forgetting", "max_forgetting",
                "forgetting_min", "forgetting_max", "pareto", *per_task, "point_ids"]
               ].astype({"patience": "Int64"})


def _labels(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Each row's setting as Point.label says it, without the parts every row shares; and
    those parts. A row that is nothing but those is named by its mitigations, or "plain"."""
    points = [point_of(row) for _, row in frame.iterrows()]
    parts = [p.label_parts() for p in points]
    shared = [x for x in parts[0] if all(x in ps for ps in parts)] if len(parts) > 1 else []
    return [", ".join(x for x in ps if x not in shared)
            or ", ".join(m.short for m in p.describe()) or "plain"
            for p, ps in zip(points, parts)], shared


def _text_table(shown: pd.DataFrame, width: int) -> str:
    """``shown`` as plain text, its first column (text) read from the left."""
    first = shown.columns[0]
    pad = max(shown[first].str.len().max(), len(first))
    shown = shown.assign(**{first: shown[first].str.ljust(pad)}).rename(columns={first: first.ljust(pad)})
    return shown.to_string(index=False, line_width=width)


def format_summary(summary: pd.DataFrame, width: int = 100) -> str:
    """The summary for the terminal, one line per setting (its replicates' means): the
    setting without what every row shares (said first), learn, forget, max forget (the
    largest on one general task), seeds where a setting has several, and * on the Pareto
    front of the means. Each task and each replicate are in summary.csv."""
    if summary.empty:
        return "(no evaluated points)"
    groups = replicate_frame(summary)
    labels, shared = _labels(groups)
    shown = pd.DataFrame({"setting": labels, "learn": groups["learning"].map(_points),
                          "forget": groups["forgetting"].map(_points),
                          "max forget": groups["max_forgetting"].map(_points)})
    if (groups["seeds"] > 1).any():
        shown["seeds"] = groups["seeds"].astype(str)
        shown["forget range"] = [_span(lo, hi) if n > 1 else "" for lo, hi, n in
                                 zip(groups["forgetting_min"], groups["forgetting_max"], groups["seeds"])]
    shown["front"] = groups["pareto"].map(lambda v: "*" if v else "")
    head = f"every point: {', '.join(shared)}\n" if shared else ""
    return head + _text_table(shown, width)


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
    """What each mitigation buys against plain training, one row per mitigated setting.

    A point is *plain* when it has no mitigation on (``Point.describe`` is empty); any other
    point is paired with the plain point of the same lr, epochs, schedule and seed (its
    counterpart) and left out when the sweep has none. In points (×100, as the summary):

        forgetting_reduced = forgetting(plain) − forgetting(point)   (> 0: it forgot less)
        learning_cost      = learning(plain)   − learning(point)     (> 0: it learned less)

    The replicates of a setting (points that differ only in the seed) are one row: learning,
    forgetting, max_forgetting, forgetting_reduced and learning_cost are their means over the
    ``seeds`` paired, ``reduced_min`` and ``reduced_max`` the range of forgetting_reduced (a
    reduction that holds in every seed has reduced_min > 0). ``point_id`` and ``plain_id``
    are the first seed's points; ``point_ids`` and ``plain_ids`` every seed's, ';'-joined in
    the same order.

    ``best_lam`` marks, among settings that differ only in λ (one regularizer in one form, one
    lr, the other settings equal, at least two λ swept), the λ with the highest mean learning −
    forgetting; on a tie the smaller λ. Rows: lr descending, then replay, L2-SP, EWC,
    discriminative lr, early stopping (a regulariser's coupled form before its decoupled one),
    then the swept value ascending.
    """
    columns = ["point_id", "mitigation", "lr", "epochs", "schedule", "learning", "forgetting",
               "max_forgetting", "forgetting_reduced", "learning_cost", "best_lam", "plain_id",
               "seeds", "reduced_min", "reduced_max", "point_ids", "plain_ids"]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    pair_keys = ["lr", "epochs", "schedule", "seed"]
    is_plain = [not point_of(row).describe() for _, row in summary.iterrows()]
    plain = summary[is_plain].drop_duplicates(pair_keys).set_index(pair_keys)
    pairs = []
    for (_, row), alone in zip(summary.iterrows(), is_plain):
        key = tuple(row[k] for k in pair_keys)
        if alone or key not in plain.index:
            continue
        base = plain.loc[key]
        pairs.append({**row[["point_id", *POINT_COLUMNS, "steps", "last_step", "learning",
                             "forgetting", "max_forgetting"]],
                      "forgetting_reduced": base["forgetting"] - row["forgetting"],
                      "learning_cost": base["learning"] - row["learning"],
                      "plain_id": base["point_id"]})
    if not pairs:
        return pd.DataFrame(columns=columns)
    rows, kinds = [], mitigation_kinds()
    means = ["learning", "forgetting", "max_forgetting", "forgetting_reduced", "learning_cost"]
    for group in _replicates(pd.DataFrame(pairs)):
        first = group.iloc[0]
        # where early stopping stopped, as a range when the seeds stopped at different steps
        lasts = group["last_step"].dropna()
        last = (first["last_step"] if lasts.nunique() <= 1
                else f"{int(lasts.min())}–{int(lasts.max())}")
        found = _mitigations({**first, "last_step": last})
        rows.append({
            "point_id": first["point_id"], "mitigation": " + ".join(m.text for m in found),
            "lr": first["lr"], "epochs": first["epochs"], "schedule": first["schedule"],
            **group[means].mean().to_dict(), "best_lam": False, "plain_id": first["plain_id"],
            "seeds": len(group), "reduced_min": group["forgetting_reduced"].min(),
            "reduced_max": group["forgetting_reduced"].max(),
            "point_ids": ";".join(group["point_id"]), "plain_ids": ";".join(group["plain_id"]),
            # for marking and sorting, dropped below
            "_kind": min(kinds.index(m.kind) for m in found),
            "_regularizer": first["regularizer"], "_form": first["regularizer_form"],
            "_lam": first["lam"], "_mix": first["mix_ratio"],
            "_xi": first["xi"],
            "_patience": float(first["patience"]) if pd.notna(first["patience"]) else None,
        })
    out = pd.DataFrame(rows)
    same = ["_regularizer", "_form", "lr", "epochs", "schedule", "_mix", "_xi", "_patience"]
    regularized = out[out["_regularizer"] != regularizers.NONE]
    for _, group in regularized.groupby(same, dropna=False):
        net = (group["learning"] - group["forgetting"]).dropna()
        if group["_lam"].nunique() >= 2 and not net.empty:
            best = group.loc[net.index].assign(net=net).sort_values(
                ["net", "_lam"], ascending=[False, True]).index[0]
            out.loc[best, "best_lam"] = True
    out = out.sort_values(["lr", "_kind", "_form", "_lam", "_mix", "_xi", "_patience", "epochs"],
                          ascending=[False, True, True, True, True, True, True, True], na_position="first")
    return out[columns].reset_index(drop=True)


def format_mitigations(frame: pd.DataFrame, width: int = 100) -> str:
    """The mitigation table for the terminal, with a line on how to read it. Where a
    mitigation has several seeds: ``range``, that of ``reduced`` over them, in place of
    ``max`` (it stays in the files), and ``seeds`` when their count differs between rows."""
    if frame.empty:
        return "(no mitigated point with a plain counterpart at the same lr, epochs and schedule)"
    shown = pd.DataFrame({"mitigation": frame["mitigation"] + frame["best_lam"].map(
        lambda v: " *" if v else ""), "lr": frame["lr"].map(_number)})
    for col in _varying(frame, ["epochs", "schedule"]):
        shown[col] = frame[col].map(_number) if col == "epochs" else frame[col]
    several = bool((frame["seeds"] > 1).any())
    shown["learn"] = frame["learning"].map(_points)
    shown["forget"] = frame["forgetting"].map(_points)
    if not several:
        shown["max"] = frame["max_forgetting"].map(_points)
    shown["reduced"] = frame["forgetting_reduced"].map(_points)
    if several:
        shown["range"] = [_span(lo, hi) if n > 1 else "" for lo, hi, n in
                          zip(frame["reduced_min"], frame["reduced_max"], frame["seeds"])]
    shown["cost"] = frame["learning_cost"].map(_points)
    if frame["seeds"].nunique() > 1:
        shown["seeds"] = frame["seeds"].astype(str)
    legend = ("Against plain training at the same lr and seed, in points: reduced = forgetting "
              "avoided, cost = learning given up; ")
    if several:
        counts = frame["seeds"].unique()
        legend += (f"means over {counts[0]} seeds, " if len(counts) == 1 else "means over the seeds, ")
        legend += "range: reduced's min…max over them; "
    else:
        legend += "max: the largest forgetting on one general task; "
    legend += "*: the best λ swept (the highest learn − forget)."
    return textwrap.fill(legend, width) + "\n" + _text_table(shown, width)


def markdown_text(text: str) -> str:
    """Text from a suite, a task, a model or a command line, for Markdown: backslashes,
    backticks, emphasis, links, pipes and markup shown as text."""
    escaped = html.escape(str(text), quote=False)
    for char in "\\`*_[]|":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def summary_markdown(summary: pd.DataFrame, mitigations: pd.DataFrame, title: str) -> str:
    """``summary.md``: the settings as the terminal shows them (replicates as one), a Markdown
    table to paste into a pull request: the setting (what differs between rows), learn,
    forget, max forget, seeds, and for a mitigated setting the forgetting it avoided against
    plain training; with several seeds, the ranges over them."""
    if summary.empty:
        return f"## {markdown_text(title)}\n\nNo evaluated points.\n"
    groups = replicate_frame(summary)
    labels, shared = _labels(groups)
    several = bool((groups["seeds"] > 1).any())
    # a setting's mitigation row: the one holding its first paired seed
    by_id = {pid: row for _, row in mitigations.iterrows() for pid in row["point_ids"].split(";")}
    paired = [next((by_id[pid] for pid in ids.split(";") if pid in by_id), None)
              for ids in groups["point_ids"]]
    table = pd.DataFrame({"setting": labels, "learn": groups["learning"].map(_points),
                          "forget": groups["forgetting"].map(_points),
                          "max forget": groups["max_forgetting"].map(_points),
                          "seeds": groups["seeds"].astype(str)})
    if several:
        table["forget range"] = [_span(lo, hi) if n > 1 else "" for lo, hi, n in
                                 zip(groups["forgetting_min"], groups["forgetting_max"], groups["seeds"])]
    table["reduced"] = [_points(m["forgetting_reduced"]) + (" *" if m["best_lam"] else "")
                        if m is not None else "" for m in paired]
    if several:
        table["reduced range"] = [_span(m["reduced_min"], m["reduced_max"])
                                  if m is not None and m["seeds"] > 1 else "" for m in paired]
    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "|".join(":---" if c == "setting" else "---:" for c in table.columns) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
              for row in table.itertuples(index=False)]
    notes = ["Headline metrics, in points (×100): learn = learning on the target tasks "
             "(after − before), forget = mean forgetting on the general tasks (before − after), "
             "max forget = the largest on one general task.",
             "reduced = forgetting avoided against plain training at the same lr, epochs, "
             "schedule and seed; *: the best λ swept."]
    if several:
        notes.append("Several seeds: means over the replicates; ranges: min…max over them.")
    if shared:
        notes.insert(0, f"Every row: {', '.join(shared)}.")
    return f"## {markdown_text(title)}\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


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
