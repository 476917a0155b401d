"""Tables, figures and report.html, rebuilt from what the run directory stores."""
from __future__ import annotations

import pandas as pd

from forgetbench.config import Suite
from forgetbench.report import html
from forgetbench.report.tables import results_frame, summary_frame
from forgetbench.store import RunStore, atomic_write_text


def write_outputs(store: RunStore, suite: Suite, sweep: dict) -> pd.DataFrame:
    """Write results.csv and report.html for the sweep recorded in ``sweep``; returns the
    per-point summary."""
    from forgetbench.sweep import stored_results

    baseline, points = stored_results(store, sweep)
    results = results_frame(suite, baseline, points)
    summary = summary_frame(results)
    states = store.states()
    failed = {pid: states[pid].error or "failed" for pid, _, scores in points
              if scores is None and pid in states and states[pid].status == "failed"}
    atomic_write_text(store.root / "results.csv", results.to_csv(index=False))
    atomic_write_text(store.root / "report.html",
                      html.render(suite, baseline, results, summary, failed=failed))
    return summary
