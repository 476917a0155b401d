"""The sweep's verdict, what a reviewer reads first: which setting to ship, whether each
mitigation's reduction in forgetting is real, and forgetting the scores cannot see.

Every figure here comes from per-item scores paired with the base model's (or, for a
mitigation, with plain training of the same seed), and its interval from
:func:`stats.seeds_and_items`: items resampled (clusters where the task declares them) and,
where a setting was trained with several seeds, the seeds' spread too (with Student's t), so
an interval covers the noise of the evaluation items and of training.

- **Recommended**: among settings that pass the suite's release gate against the base model
  (its ``gate`` file, else gate.DEFAULT_GATE: no general task loses 2 points; one-sided tests,
  Holm), the one that learned the target most. When none passes, the closest, and whether
  the tasks are too small to show a loss under the gate's margins.
- **Mitigations**: each mitigated setting against plain training at the same lr, epochs and
  schedule, seed by seed: the reduction in mean forgetting over the general tasks, real when
  its interval excludes 0.
- **Hidden forgetting**: a point whose KL to the base (or held-out general loss) rose sharply
  in training while no general score dropped, in a suite with multiple-choice general tasks:
  log-likelihood scoring never generates, so a model that stopped answering well can keep
  (or raise) its MC score.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from forgetbench import compare, gate, stats
from forgetbench.config import Point, Suite
from forgetbench.errors import ForgetbenchError
from forgetbench.metrics import headline_metric

# KL(base ‖ model) per token on held-out general text, and the relative rise of the held-out
# general loss, from which a point's in-training change counts as sharp
KL_SHARP = 0.1
LOSS_SHARP = 0.10
RESAMPLES = 10_000

Scored = tuple[str, Point, dict]  # (point id, point, scores)


def _setting(point: Point) -> Point:
    """The point without its seed: replicates share it."""
    return point.model_copy(update={"seed": None})


def _seed(point: Point, suite: Suite) -> int:
    return suite.for_point(point).train.seed


@dataclass(frozen=True)
class _Task:
    name: str
    role: str
    metric: str
    higher_is_better: bool
    clustered: bool
    scale: int  # display units per unit of the metric: 100 (points) for a proportion, else 1


def _tasks(suite: Suite, baseline: dict) -> list[_Task]:
    out = []
    for task, role in suite.all_tasks():
        head = headline_metric(task.name, task.metric, baseline)
        better = bool(baseline["tasks"][task.name]["metrics"][head].get("higher_is_better", True))
        values = [s["values"].get(head) for s in baseline["tasks"][task.name].get("samples", [])]
        proportion = all(v is None or 0 <= v <= 1 for v in values)
        out.append(_Task(task.name, role, head, better, task.cluster is not None, 100 if proportion else 1))
    return out


def _deltas(task: _Task, pairs: Sequence[tuple[dict, dict]]) -> tuple[np.ndarray, np.ndarray | None]:
    """``task``'s headline deltas (second − first, in the metric's direction as stored) of each
    (reference, scores) pair, one row per pair [R, n], over the items every pair scored; and
    the items' cluster labels where the task declares clusters."""
    maps = []
    for reference, scores in pairs:
        paired = compare.pair_items(task.name, reference, scores, clustered=task.clustered)
        xs, ys, keep = paired.values(task.metric)
        labels = paired.clusters(keep)
        maps.append({(paired.base[i].get("doc_hash"), paired.base[i]["doc_id"]):
                     (y - x, None if labels is None else labels[j])
                     for j, (i, x, y) in enumerate(zip(keep, xs, ys))})
    common = sorted(set.intersection(*(set(m) for m in maps)), key=lambda k: k[1])
    if not common:
        raise ForgetbenchError(f"task {task.name}: no item has a per-item value of its headline metric "
                               f"{task.metric!r} in every evaluation; choose another metric (tasks.*.metric)")
    deltas = np.array([[m[k][0] for k in common] for m in maps])
    return deltas, (np.array([maps[0][k][1] for k in common], dtype=object) if task.clustered else None)


def _oriented_boot(task_deltas: list[np.ndarray], clusters: list[np.ndarray | None]) -> stats.Bootstrap:
    """Items (clusters) and, with several rows, the seeds: stats.seeds_and_items."""
    return stats.seeds_and_items(task_deltas, clusters, resamples=RESAMPLES)


def _interval(boot: stats.Bootstrap) -> list[float]:
    i = boot.interval()
    return [i.low * 100, i.high * 100]


def judge_settings(suite: Suite, baseline: dict, points: Sequence[Scored],
                   release: tuple[gate.Gate, str]) -> list[dict[str, Any]]:
    """Per setting (replicates together): learning and mean forgetting with intervals, and
    the release gate (``gate.suite_gate``'s: the gate and where it came from) against the
    base model."""
    tasks = _tasks(suite, baseline)
    rules_of, source = release
    groups: dict[Point, list[Scored]] = {}
    for item in points:
        groups.setdefault(_setting(item[1]), []).append(item)
    rows = []
    for setting, members in groups.items():
        boots, entries, per_role = {}, [], {"target": ([], []), "general": ([], [])}
        changes = []
        for task in tasks:
            # [seeds, items], after − before
            deltas, clusters = _deltas(task, [(baseline, scores) for _, _, scores in members])
            boot = boots[task.name, task.metric] = _oriented_boot([deltas], [clusters])
            n_eff = len(set(clusters)) if clusters is not None else deltas.shape[1]
            binary = bool(np.isin(deltas, (-1.0, 0.0, 1.0)).all())
            entries.append({"task": task.name, "headline": task.metric, "metrics": [
                {"metric": task.metric, "higher_is_better": task.higher_is_better, "scale": task.scale,
                 "mde": stats.min_detectable_effect(float(boot.samples.std(ddof=1)), n_eff, binary=binary)}]})
            sign = 1.0 if task.higher_is_better else -1.0
            per_role[task.role][0].append(sign * deltas)
            per_role[task.role][1].append(clusters)
            low, high = sorted(sign * x for x in _interval(boot))
            changes.append({"task": task.name, "role": task.role, "metric": task.metric,
                            "change": sign * boot.estimate * 100, "low": low, "high": high})
        learn = _oriented_boot(*per_role["target"])
        forget = _oriented_boot([-d for d in per_role["general"][0]], per_role["general"][1])
        rules = gate.judge(rules_of, suite, entries, boots, source)
        rows.append({"setting": setting, "label": setting.label(), "point_ids": [pid for pid, _, _ in members],
                     "seeds": len(members), "learning": learn.estimate * 100, "learning_ci": _interval(learn),
                     "forgetting": forget.estimate * 100, "forgetting_ci": _interval(forget),
                     "passes": all(r["passed"] for r in rules), "tasks": changes, "rules": rules,
                     "failed_tasks": [r["task"] for r in rules if not r["passed"]]})
    return rows


def setting_frames(verdict: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The verdict's settings as frames for the figures: one row per setting and task (its
    oriented change after − before in points, higher is better, with the interval) and one
    row per setting (mean learning and forgetting with intervals); the point's settings as
    columns, the seed left out."""
    per_task, per_setting = [], []
    for s in verdict["settings"]:
        fields = {k: v for k, v in s["setting"].model_dump().items() if k != "seed"}
        info = {**fields, "label": s["label"], "seeds": s["seeds"]}
        per_task += [{**info, **t} for t in s["tasks"]]
        per_setting.append({**info, "learning": s["learning"], "learning_low": s["learning_ci"][0],
                            "learning_high": s["learning_ci"][1], "forgetting": s["forgetting"],
                            "forgetting_low": s["forgetting_ci"][0], "forgetting_high": s["forgetting_ci"][1]})
    return pd.DataFrame(per_task), pd.DataFrame(per_setting)


def mitigation_effects(suite: Suite, baseline: dict, points: Sequence[Scored]) -> list[dict[str, Any]]:
    """Each mitigated setting against plain training at the same lr, epochs and schedule,
    paired seed by seed: the reduction in mean general forgetting and the learning given up,
    in points, with intervals over items and seeds."""
    tasks = _tasks(suite, baseline)
    plain: dict[tuple, dict[int, dict]] = {}
    for _, point, scores in points:
        if not point.describe():
            plain.setdefault((point.lr, point.epochs, point.schedule), {})[_seed(point, suite)] = scores
    groups: dict[Point, dict[int, dict]] = {}
    ids: dict[Point, dict[int, str]] = {}
    for pid, point, scores in points:
        if point.describe():
            groups.setdefault(_setting(point), {})[_seed(point, suite)] = scores
            ids.setdefault(_setting(point), {})[_seed(point, suite)] = pid
    rows = []
    for setting, by_seed in groups.items():
        counterpart = plain.get((setting.lr, setting.epochs, setting.schedule), {})
        seeds = sorted(set(by_seed) & set(counterpart))
        text = " + ".join(m.text for m in setting.describe())
        if not seeds:  # said in the verdict, not dropped
            rows.append({"setting": setting, "mitigation": text, "lr": setting.lr, "seeds": 0, "unpaired": True,
                         "point_ids": [ids[setting][x] for x in sorted(by_seed)]})
            continue
        reduced, reduced_clusters, cost, cost_clusters = [], [], [], []
        for task in tasks:
            sign = 1.0 if task.higher_is_better else -1.0
            # mitigated − plain of the same seed, item by item, oriented
            gain, clusters = _deltas(task, [(counterpart[s], by_seed[s]) for s in seeds])
            gain = sign * gain
            if task.role == "general":
                reduced.append(gain)
                reduced_clusters.append(clusters)
            else:
                cost.append(-gain)
                cost_clusters.append(clusters)
        r, c = _oriented_boot(reduced, reduced_clusters), _oriented_boot(cost, cost_clusters)
        low, high = _interval(r)
        # each seed's own reduction (mean over tasks and items): does the sign hold in every seed?
        per_seed = [float(np.mean([g[i].mean() for g in reduced])) * 100 for i in range(len(seeds))]
        rows.append({"setting": setting, "mitigation": text, "unpaired": False,
                     "lr": setting.lr, "seeds": len(seeds), "per_seed": per_seed,
                     "point_ids": [ids[setting][x] for x in seeds],
                     "reduced": r.estimate * 100, "reduced_ci": [low, high],
                     "cost": c.estimate * 100, "cost_ci": _interval(c),
                     "real": low > 0, "harmful": high < 0})
    return rows


def hidden_forgetting(suite: Suite, baseline: dict, points: Sequence[Scored],
                      logs: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """Points whose in-training KL to the base, or held-out general loss, rose sharply while
    no general score dropped (each interval reaches 0 or above: held, or rose, as the issue's
    chat model's multiple-choice score did while it stopped answering), in a suite with
    multiple-choice general tasks (scored by log-likelihood, they never see the model generate)."""
    general = [t for t in _tasks(suite, baseline) if t.role == "general"]
    mc = [t.name for t in general if baseline["tasks"][t.name].get("output_type") == "multiple_choice"]
    if not mc:
        return []
    out = []
    for pid, point, scores in points:
        evals = [r for r in logs.get(pid, []) if "general_loss" in r]
        if len(evals) < 2:
            continue
        first, last = evals[0], evals[-1]
        kl = last.get("kl")
        loss_rise = (last["general_loss"] - first["general_loss"]) / max(first["general_loss"], 1e-9)
        if not ((kl is not None and kl >= KL_SHARP) or loss_rise >= LOSS_SHARP):
            continue
        dropped = []
        for task in general:
            deltas, clusters = _deltas(task, [(baseline, scores)])
            sign = 1.0 if task.higher_is_better else -1.0
            if max(sign * x for x in _interval(_oriented_boot([deltas], [clusters]))) < 0:
                dropped.append(task.name)
        if not dropped:
            out.append({"point_id": pid, "label": point.label(), "kl": kl, "general_loss_rise": loss_rise * 100,
                        "mc_tasks": mc})
    return out


def sweep_verdict(suite: Suite, baseline: dict, points: Sequence[Scored],
                  logs: dict[str, list[dict]]) -> dict[str, Any]:
    """Everything the report's verdict section and the terminal's last lines say."""
    release = gate.suite_gate(suite)
    settings = judge_settings(suite, baseline, points, release)
    passing = [s for s in settings if s["passes"]]
    best = max(passing, key=lambda s: s["learning"]) if passing else None
    generative = [t.name for t, role in suite.all_tasks() if role == "general"
                  and baseline["tasks"][t.name].get("output_type") not in (None, "multiple_choice")]
    return {"settings": settings, "recommended": best, "gate": release[1],
            "mitigations": mitigation_effects(suite, baseline, points),
            "hidden": hidden_forgetting(suite, baseline, points, logs), "generative_tasks": generative}


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    """The verdict in plain sentences, for the terminal and the top of report.html."""
    lines = []
    best, gate_name = verdict["recommended"], verdict["gate"]
    if best is None and verdict["settings"]:
        closest = min(verdict["settings"], key=lambda s: (len(s["failed_tasks"]), s["forgetting"]))
        failed = [r for r in closest["rules"] if not r["passed"]]
        weak = sorted({r["task"] for r in closest["rules"] if r["underpowered"]})
        lines.append(f"Recommended: none: no setting passes the release gate ({gate_name}). The closest, "
                     f"{closest['label']}, fails "
                     + "; ".join(f"{r['task']} ({r['text'].split(': ', 1)[1]}: delta {r['delta']:+.1f}, "
                                 f"bound {r['bound']:+.1f})" for r in failed)
                     + (f". Too few items to show a loss under the margin on {', '.join(weak)} (minimum "
                        "detectable effect above it): more items, or a wider margin in the gate." if weak else "."))
    elif best is not None:
        seeds = (f" ({best['seeds']} seeds)" if best["seeds"] > 1
                 else " (one seed: training noise not covered; sweep seed: [0, 1, 2] to cover it)")
        lines.append(f"Recommended: {best['label']}: learns {best['learning']:+.1f} "
                     f"[{best['learning_ci'][0]:+.1f}, {best['learning_ci'][1]:+.1f}] points on the target "
                     f"and passes the release gate ({gate_name}){seeds}.")
    for m in verdict["mitigations"]:
        if m["unpaired"]:
            lines.append(f"{m['mitigation']} at lr {m['lr']:g}: not judged: no plain point of the same lr, epochs, "
                         "schedule and seed to compare it with; add one to the sweep.")
            continue
        low, high = m["reduced_ci"]
        if m["real"]:
            what = "real"
        elif m["harmful"]:
            what = "harmful: it forgot more"
        else:
            what = "not distinguishable from 0"
        noise = "items and seeds" if m["seeds"] > 1 else "items only: one seed, training noise not covered"
        per_seed = m["per_seed"]
        flips = (f"; its sign flips with the seed (per seed: {', '.join(f'{x:+.1f}' for x in per_seed)})"
                 if len(per_seed) > 1 and min(per_seed) < 0 < max(per_seed) else "")
        lines.append(f"{m['mitigation']} at lr {m['lr']:g}: forgetting reduced {m['reduced']:+.1f} "
                     f"[{low:+.1f}, {high:+.1f}] for {m['cost']:+.1f} learning: {what} (CI over {noise}){flips}.")
    for h in verdict["hidden"]:
        kl = f"KL to the base rose to {h['kl']:.2f}" if h["kl"] is not None else ""
        loss = f"held-out general loss {h['general_loss_rise']:+.0f}%"
        lines.append(f"Hidden forgetting? {h['label']}: {', '.join(x for x in (kl, loss) if x)} in training while "
                     f"no general score dropped; its multiple-choice ones ({', '.join(h['mc_tasks'])}) are scored by "
                     "log-likelihood and never see it generate. "
                     + (f"Its generative tasks ({', '.join(verdict['generative_tasks'])}) held too: read its answers "
                        "(report: items that changed) before shipping it."
                        if verdict["generative_tasks"] else "Add a generative general task to see it."))
    return lines


# items listed per point and task in report.html: a sweep of many points over large tasks
# would otherwise embed megabytes; the counts are in the page either way
FLIPS_PER_TASK = 300


def point_flips(suite: Suite, baseline: dict, points: Sequence[Scored]) -> tuple[list[dict[str, Any]], int]:
    """Every point's items that changed against the base model (headline metrics), each
    tagged with its point id, for the report's item table: the worse ones first, at most
    FLIPS_PER_TASK per point and task; and how many were left out."""
    out, left_out = [], 0
    for task in _tasks(suite, baseline):
        for pid, _, scores in points:
            paired = compare.pair_items(task.name, baseline, scores, clustered=task.clustered)
            flips = compare.flipped_items(paired, task.metric, higher_is_better=task.higher_is_better)
            flips.sort(key=lambda f: f["direction"] != "worse")
            out += [{**f, "point": pid} for f in flips[:FLIPS_PER_TASK]]
            left_out += max(0, len(flips) - FLIPS_PER_TASK)
    return out, left_out
