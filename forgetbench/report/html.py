"""``report.html``: one self-contained page (figures inlined) that a reviewer reads."""
from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Callable
from importlib import resources
from string import Template

import pandas as pd

from forgetbench.config import Suite
from forgetbench.report import plots
from forgetbench.report.items import flips_section
from forgetbench.report.verdict import FLIPS_PER_TASK, setting_frames, verdict_lines


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def figure(draw: Callable[..., bytes | None], *args, alt: str) -> str | None:
    """The figure ``draw(*args)`` makes, as an image (None when it makes none); one that
    cannot be drawn is said so in its place, with why: the tables of its page are written
    all the same."""
    try:
        png = draw(*args)
    except Exception as exc:  # a figure is never worth the tables
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return f'<p class="caption"><b>The figure ({html.escape(alt)}) could not be drawn</b>: {html.escape(why)}</p>'
    return None if png is None else _img(png, alt)


def _table(frame: pd.DataFrame, *, pareto: bool = False) -> str:
    shown = frame.copy()
    for col in ("lr", "epochs", "mix_ratio", "lam", "xi"):  # settings as written in a suite
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v:g}")
    for col in shown.select_dtypes("Int64"):  # to_html writes <NA> whatever na_rep says
        shown[col] = shown[col].map(lambda v: "–" if pd.isna(v) else str(v))
    if pareto and "pareto" in shown:
        shown["pareto"] = shown["pareto"].map(lambda v: "★" if v else "")
    if "best_lam" in shown:
        shown["best_lam"] = shown["best_lam"].map(lambda v: "★" if v else "")
    return shown.to_html(index=False, border=0, classes="t", na_rep="–",
                         float_format=lambda v: f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.2f}")


def _mitigations(frame: pd.DataFrame | None, verdict: dict | None) -> str:
    """The mitigation table, with the verdict's interval of each reduction (items and seeds)
    in place of the point ids."""
    if frame is None or frame.empty:
        return ("<p>No point here differs from a plain point of the same learning rate, epochs "
                "and schedule only by a mitigation.</p>")
    intervals = {}
    for m in (verdict or {}).get("mitigations", []):
        if m["unpaired"]:
            continue
        low, high = m["reduced_ci"]
        intervals[m["point_ids"][0]] = f"[{low:+.1f}, {high:+.1f}] " + ("real" if m["real"] else "noise"
                                                                        if not m["harmful"] else "harmful")
    shown = frame.drop(columns=[c for c in ("epochs", "schedule") if frame[c].nunique() == 1]
                       + [c for c in ("point_ids", "plain_ids") if c in frame])
    shown.insert(shown.columns.get_loc("forgetting_reduced") + 1, "reduced_95ci",
                 [intervals.get(pid, "–") for pid in frame["point_id"]])
    return _table(shown)


def _training(curves: str | None, overhead: pd.DataFrame | None) -> str:
    if curves is None:
        return ("<p>No in-training evaluation was logged (set <code>train.eval_every</code> "
                "and <code>data.general_heldout</code> for the forgetting curve).</p>")
    out = (curves
           + "<p class=\"caption\">Loss on held-out general text during training: rising means "
           "forgetting as it happens. KL(base ‖ model) on the same text where "
           "<code>train.track_kl</code> is set; target validation loss where "
           "<code>data.validation</code> is set. One line per point: its colour family and line "
           "style say the mitigation (plain training: blue, solid), the shade its strength "
           "(λ, mix, ξ), then its learning rate, darker for higher; ✕ where early stopping "
           "stopped, ★ the step it exported.</p>")
    if overhead is not None and not overhead.empty:
        worst = overhead["eval_share"].max()
        out += ("<h3>Cost of these evaluations</h3>"
                "<p>eval_share = eval_seconds / train_seconds (the run's wall time, evaluations "
                f"included), in percent; the target is under 10% (here at most {worst:.0f}%). "
                "Raise <code>train.eval_every</code> or <code>train.eval_batch_size</code> to "
                "lower it.</p>" + _table(overhead))
    return out


def _verdict(verdict: dict | None) -> str:
    if verdict is None:
        return "<p>No point has been evaluated yet.</p>"
    lines = verdict_lines(verdict)
    first = ' class="recommended"' if verdict.get("recommended") else ""
    items = "".join(f"<li{first if i == 0 else ''}>{html.escape(line)}</li>" for i, line in enumerate(lines))
    return f'<ul class="verdict">{items}</ul>'


def _flips(flips: list[dict] | None, labels: dict[str, str], first: str, left_out: int) -> str:
    if not flips:
        return "<p>No item changed.</p>" if flips is not None else "<p>–</p>"
    note = (f"<p>{left_out} more changed items are left out (at most {FLIPS_PER_TASK} per point and task, the "
            "worse ones first); compare a point with the base model (<code>forgetbench compare</code>) for all "
            "of them.</p>" if left_out else "")
    return note + flips_section(flips, base="base model", candidate="point", points=labels, point=first)


def _recommended_point(verdict: dict | None) -> str:
    best = (verdict or {}).get("recommended")
    return best["point_ids"][0] if best else ""


def render(suite: Suite, baseline: dict, results: pd.DataFrame, summary: pd.DataFrame,
           *, failed: dict[str, str], mitigations: pd.DataFrame | None = None,
           curves: str | None = None, overhead: pd.DataFrame | None = None,
           verdict: dict | None = None, flips: list[dict] | None = None, flips_left_out: int = 0,
           labels: dict[str, str] | None = None) -> str:
    """The page; ``curves`` the training curves' :func:`figure`, ``verdict`` from
    verdict.sweep_verdict, ``flips`` from verdict.point_flips with ``labels`` (point id ->
    label) for its point filter."""
    base_rows = []
    for task, role in suite.all_tasks():
        for metric, v in baseline["tasks"][task.name]["metrics"].items():
            base_rows.append({"task": task.name, "role": role, "category": task.category or role,
                              "metric": metric, "score": v["value"], "stderr": v["stderr"],
                              "n": baseline["tasks"][task.name]["n"]})
    if verdict is None:
        figures = "<p>No point has been evaluated yet.</p>"
    else:
        changes, settings = setting_frames(verdict)
        figures = "".join(filter(None, (
            figure(plots.change_vs_lr, changes, alt="learning and forgetting vs learning rate"),
            figure(plots.change_vs_epochs, changes, alt="learning and forgetting vs epochs"),
            figure(plots.learning_vs_forgetting, settings, alt="learning vs forgetting"))))
    failures = "".join(f"<li><code>{html.escape(pid)}</code>: {html.escape(msg)}</li>"
                       for pid, msg in failed.items())
    template = Template(resources.files("forgetbench.report").joinpath("template.html").read_text())
    return template.substitute(
        title=html.escape(f"forgetbench: {suite.name}"),
        suite=html.escape(suite.name), model=html.escape(suite.model),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        n_points=len(summary), n_failed=len(failed),
        verdict=_verdict(verdict),
        flips=_flips(flips, labels or {}, _recommended_point(verdict), flips_left_out),
        failures=f"<h2>Failed points</h2><ul>{failures}</ul>" if failures else "",
        baseline=_table(pd.DataFrame(base_rows)),
        figures=figures,
        training=_training(curves, overhead),
        mitigations=_mitigations(mitigations, verdict),
        # "stopped" shows last_step/steps: the numbers stay in the frame, not twice on the page
        summary=(_table(summary.drop(columns=["steps", "last_step"]), pareto=True) if not summary.empty
                 else "<p>–</p>"),
        results=_table(results) if not results.empty else "<p>–</p>",
        settings=html.escape(json.dumps({"eval": baseline["settings"],
                                         "train": suite.train.model_dump(mode="json"),
                                         "sweep": [g.model_dump(mode="json") for g in suite.grids]},
                                        indent=2)),
    )
