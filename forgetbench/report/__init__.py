"""Tables, figures and report.html, rebuilt from what the run directory stores."""
from __future__ import annotations

import pandas as pd

from forgetbench.config import Point, Suite
from forgetbench.errors import ForgetbenchError
from forgetbench.report import html, plots, verdict
from forgetbench.report.tables import (
    mitigation_frame,
    overhead_frame,
    results_frame,
    summary_frame,
    summary_markdown,
)
from forgetbench.store import RunStore, atomic_write_text, point_problem, read_result


def stored_results(store: RunStore, sweep: dict) -> tuple[dict, list[tuple[str, Point, dict | None]]]:
    """(baseline scores, [(point id, point, scores or None)]) as the sweep left them: each
    point as the journal recorded the sweep's plan (a sweep before that record: its point.json)."""
    baseline = read_result(store.root / sweep["baseline"])
    planned = sweep.get("planned", {})
    points = []
    for pid in sweep["points"]:
        point = (planned[pid] if pid in planned
                 else read_result(store.point_dir(pid) / "point.json", point_problem)["point"])
        path = store.scores_path(pid, sweep["eval_key"])
        points.append((pid, Point(**point), read_result(path) if path.exists() else None))
    return baseline, points


def write_outputs(store: RunStore, suite: Suite, sweep: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict | None]:
    """Write results.csv (one row per point and task metric), summary.csv (one per point),
    summary.md (one per setting, replicates joined) and report.html for the sweep recorded
    in ``sweep``; returns the per-point summary, the mitigation table and the verdict
    (None before any point is evaluated), what the CLI prints."""
    baseline, points = stored_results(store, sweep)
    states = store.states()
    # each point's training summary, from the journal's point_trained event
    train = {pid: states[pid].train for pid, _, _ in points if pid in states and states[pid].train}
    results = results_frame(suite, baseline, points, train)
    summary = summary_frame(results)
    failed = {pid: states[pid].error or "failed" for pid, _, scores in points
              if scores is None and pid in states and states[pid].status == "failed"}
    trained = [(pid, point, train[pid]) for pid, point, _ in points if pid in train]
    curves = html.figure(plots.training_curves, [(point, store.train_log(pid), info) for pid, point, info in trained],
                         alt="held-out losses during training")
    mitigations = mitigation_frame(summary)
    scored = [(pid, point, scores) for pid, point, scores in points if scores is not None]
    judged = (verdict.sweep_verdict(suite, baseline, scored, {pid: store.train_log(pid) for pid, _, _ in scored})
              if scored else None)
    flips, left_out = verdict.point_flips(suite, baseline, scored)
    # everything made before anything is written: a failure leaves the previous files whole
    made = {
        "results.csv": results.to_csv(index=False), "summary.csv": summary.to_csv(index=False),
        "summary.md": summary_markdown(summary, mitigations, f"forgetbench: {suite.name} ({suite.model})"),
        "report.html": html.render(suite, baseline, results, summary, failed=failed, mitigations=mitigations,
                                   curves=curves, overhead=overhead_frame(trained), verdict=judged, flips=flips,
                                   flips_left_out=left_out,
                                   labels={pid: point.label() for pid, point, _ in scored}),
    }
    for name, text in made.items():
        try:
            atomic_write_text(store.root / name, text)
        except OSError as exc:  # a full disk, a quota: each file is whole or as it was
            raise ForgetbenchError(
                f"{store.root / name}: could not be written ({exc.strerror or exc}); the scores are stored "
                f"and no table is half-written; once that is fixed (a full disk: free some space), "
                f"`forgetbench report {store.root}` writes the tables and report") from None
    return summary, mitigations, judged
