"""``report.html``: one self-contained page (figures inlined) that a reviewer reads."""
from __future__ import annotations

import base64
import html
import json
import time
from importlib import resources
from string import Template

import pandas as pd

from forgetbench.config import Suite
from forgetbench.report import plots


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(frame: pd.DataFrame, *, pareto: bool = False) -> str:
    shown = frame.copy()
    if "lr" in shown:
        shown["lr"] = shown["lr"].map(lambda v: f"{v:g}")
    if pareto and "pareto" in shown:
        shown["pareto"] = shown["pareto"].map(lambda v: "★" if v else "")
    return shown.to_html(index=False, border=0, classes="t", na_rep="–",
                         float_format=lambda v: f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.2f}")


def render(suite: Suite, baseline: dict, results: pd.DataFrame, summary: pd.DataFrame,
           *, failed: dict[str, str]) -> str:
    base_rows = []
    for task, role in suite.all_tasks():
        for metric, v in baseline["tasks"][task.name]["metrics"].items():
            base_rows.append({"task": task.name, "role": role, "category": task.category or role,
                              "metric": metric, "score": v["value"], "stderr": v["stderr"],
                              "n": baseline["tasks"][task.name]["n"]})
    if results.empty:
        figures = "<p>No point has been evaluated yet.</p>"
    else:
        figures = (_img(plots.change_vs_lr(results), "learning and forgetting vs learning rate")
                   + _img(plots.learning_vs_forgetting(summary), "learning vs forgetting"))
    failures = "".join(f"<li><code>{html.escape(pid)}</code>: {html.escape(msg)}</li>"
                       for pid, msg in failed.items())
    template = Template(resources.files("forgetbench.report").joinpath("template.html").read_text())
    return template.substitute(
        title=html.escape(f"forgetbench: {suite.name}"),
        suite=html.escape(suite.name), model=html.escape(suite.model),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        n_points=len(summary), n_failed=len(failed),
        failures=f"<h2>Failed points</h2><ul>{failures}</ul>" if failures else "",
        baseline=_table(pd.DataFrame(base_rows)),
        figures=figures,
        summary=_table(summary, pareto=True) if not summary.empty else "<p>–</p>",
        results=_table(results) if not results.empty else "<p>–</p>",
        settings=html.escape(json.dumps({"eval": baseline["settings"],
                                         "train": suite.train.model_dump(mode="json"),
                                         "sweep": [g.model_dump(mode="json") for g in suite.grids]},
                                        indent=2)),
    )
