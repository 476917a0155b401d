"""Report figures as PNG bytes (matplotlib, no display needed)."""
from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
from matplotlib.lines import Line2D

from forgetbench.config import Point
from forgetbench.metrics import pareto_front
from forgetbench.report.tables import point_of

matplotlib.use("Agg")  # no display; pyplot picks its backend at the first figure, not at import

# Each figure function draws its text as written: a suite's or a task's name may hold a $,
# which mathtext would parse (and fail on), or a character LaTeX would (where a matplotlibrc
# sets usetex). Text reads these when it is made, tick labels as the figure is saved: the
# whole function runs under them.
plain_text = matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})

# the settings other than lr: one line (or marker colour) per combination of them
GROUP_KEYS = ["epochs", "mix_ratio", "regularizer", "regularizer_form", "lam", "schedule", "xi", "patience"]


def _group_label(rows: pd.DataFrame, x: str = "lr") -> str:
    """The label of a group of points that differ only in ``x`` (lr or epochs): the point's
    label without that part."""
    parts = point_of(rows.iloc[0]).label_parts()
    return ", ".join(parts[:_AXES[x]] + parts[_AXES[x] + 1:])


_AXES = {"lr": 0, "epochs": 1}  # where each is in Point.label_parts


def _enough_colours(ax, frame: pd.DataFrame) -> None:
    """tab20 when there are more groups than tab10 has colours, so no two share one."""
    if len(frame.groupby(GROUP_KEYS, dropna=False)) > 10:
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _seeds_note(group: pd.DataFrame) -> str:
    """" (3 seeds)" when every setting of a line has them, " (3 seeds at lr 0.003)" when some do."""
    most = group["seeds"].max()
    if most <= 1:
        return ""
    if group["seeds"].min() == most:
        return f" ({most} seeds)"
    lrs = sorted(set(group.loc[group["seeds"] == most, "lr"]))
    return f" ({most} seeds at lr {', '.join(f'{lr:g}' for lr in lrs)})"


def _yerr(frame: pd.DataFrame, value: str, low: str, high: str) -> list[list[float]]:
    """Asymmetric error bars from an interval's bounds."""
    return [list(frame[value] - frame[low]), list(frame[high] - frame[value])]


@plain_text
def change_vs_lr(changes: pd.DataFrame) -> bytes:
    """One panel per task: learning (target) or forgetting (general) against the learning
    rate, one line per combination of the other swept settings (replicates as their mean);
    error bars: the 95% paired bootstrap interval over items, and seeds where there are several.

    ``changes``: verdict.setting_frames' first frame (the change after − before, oriented so
    higher is better, with ``low`` and ``high``)."""
    return _change_vs(changes, "lr")


@plain_text
def change_vs_epochs(changes: pd.DataFrame) -> bytes | None:
    """As :func:`change_vs_lr`, against the epochs, for the settings trained for several
    epoch counts (the rest the same); None when the suite sweeps no epochs."""
    others = ["lr"] + [k for k in GROUP_KEYS if k != "epochs"]
    swept = changes.groupby(others, dropna=False)["epochs"].transform("nunique") > 1
    return _change_vs(changes[swept], "epochs") if swept.any() else None


def _change_vs(changes: pd.DataFrame, x: str) -> bytes:
    others = GROUP_KEYS if x == "lr" else ["lr"] + [k for k in GROUP_KEYS if k != x]
    tasks = list(dict.fromkeys(changes.sort_values("role", ascending=False, kind="stable")["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = changes[changes["task"] == task]
        _enough_colours(ax, rows)
        role, metric = rows["role"].iloc[0], rows["metric"].iloc[0]
        sign = 1 if role == "target" else -1  # learning = change; forgetting = −change
        for _, grp in rows.groupby(others, dropna=False):  # dropna: an unset patience is NaN
            grp = grp.sort_values(x).assign(y=lambda g: sign * g["change"],
                                            lo=lambda g: (sign * g[["low", "high"]]).min(axis=1),
                                            hi=lambda g: (sign * g[["low", "high"]]).max(axis=1))
            label = _group_label(grp, x) + _seeds_note(grp)
            ax.errorbar(grp[x], grp["y"], yerr=_yerr(grp, "y", "lo", "hi"), marker="o", capsize=3, label=label)
        ax.axhline(0, color="grey", lw=0.8)
        ticks = sorted(rows[x].unique())
        if x == "lr":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks], rotation=30 if x == "lr" else 0)
        ax.set_xlabel("learning rate" if x == "lr" else "epochs")
        ax.set_ylabel(("learning" if role == "target" else "forgetting") + f" ({metric}, points)")
        ax.set_title(f"{task} [{role}]")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    versus = "learning rate" if x == "lr" else "epochs"
    fig.suptitle(f"Learning on the target and forgetting on general tasks vs {versus} (95% paired intervals)",
                 y=1.04)
    return _png(fig)


@plain_text
def learning_vs_forgetting(settings: pd.DataFrame) -> bytes:
    """Each setting's mean learning against its mean forgetting with their 95% intervals
    (replicates joined); the Pareto front joined. ``settings``: verdict.setting_frames' second."""
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    _enough_colours(ax, settings)
    for _, grp in settings.groupby(GROUP_KEYS, dropna=False):
        ax.errorbar(grp["forgetting"], grp["learning"],
                    xerr=_yerr(grp, "forgetting", "forgetting_low", "forgetting_high"),
                    yerr=_yerr(grp, "learning", "learning_low", "learning_high"), fmt="o", ms=5, capsize=2,
                    label=_group_label(grp) + _seeds_note(grp))
        for _, row in grp.iterrows():
            ax.annotate(f"{row['lr']:g}", (row["forgetting"], row["learning"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    front_idx = pareto_front(list(zip(settings["learning"], settings["forgetting"])))
    front = settings.iloc[front_idx].sort_values("forgetting")
    ax.plot(front["forgetting"], front["learning"], color="black", lw=1, ls="--", label="Pareto front")
    ax.axvline(0, color="grey", lw=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("mean forgetting on general tasks (points)")
    ax.set_ylabel("mean learning on target tasks (points)")
    ax.set_title("Learning vs forgetting, one marker per setting (labels: lr)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


# what the in-training evaluations log (train_log.jsonl), in panel order
CURVE_METRICS = {
    "general_loss": "held-out general loss (forgetting)",
    "kl": "KL(base ‖ model) on general text",
    "val_loss": "target validation loss",
}
# a mitigation's colour family and line style; within a family the shade darkens with its
# strength (λ, mix, ξ, patience), then with lr; a regulariser registered beyond L2-SP and EWC
# takes the next free family
_KIND_STYLE = {"plain": ("Blues", "-"), "replay": ("Purples", "--"), "l2": ("Greens", ":"),
               "ewc": ("Reds", "-."), "xi": ("RdPu", (0, (5, 1.5))),
               "patience": ("Greys", (0, (3, 1, 1, 1, 1, 1))), "several": ("copper", (0, (1, 2)))}
_SPARE_STYLES = [("Oranges", (0, (4, 1, 1, 1))), ("YlGn", (0, (2, 1))), ("BuGn", (0, (6, 2))),
                 ("PuBu", (0, (1, 1)))]


def _kind(point: Point) -> str:
    kinds = point.mitigations()
    return "plain" if not kinds else kinds[0] if len(kinds) == 1 else "several"


def _styles(points: list[Point]) -> list[dict]:
    """Colour and line style per point: family by mitigation, shade by strength then lr."""
    order = sorted(range(len(points)), key=lambda i: (
        [m.strength for m in points[i].describe()], points[i].epochs, points[i].lr))
    kinds = [_kind(p) for p in points]
    families = dict(_KIND_STYLE)
    spare = iter(_SPARE_STYLES * (1 + len(kinds) // len(_SPARE_STYLES)))
    for kind in dict.fromkeys(kinds):
        families.setdefault(kind, next(spare))
    styles: list[dict] = [{} for _ in points]
    for kind, (cmap, ls) in families.items():
        members = [i for i in order if kinds[i] == kind]
        for rank, i in enumerate(members):
            shade = 0.5 + 0.45 * rank / max(len(members) - 1, 1) if len(members) > 1 else 0.75
            styles[i] = {"color": plt.get_cmap(cmap)(shade), "ls": ls, "lw": 1.4}
    return styles


def _short_labels(points: list[Point]) -> tuple[list[str], str]:
    """Each point's label without the parts every point shares (returned apart, as a title)."""
    parts = [p.label_parts() for p in points]
    shared = [x for x in parts[0] if all(x in ps for ps in parts)] if len(parts) > 1 else []
    return ([", ".join(x for x in ps if x not in shared) or "plain" for ps in parts],
            ", ".join(shared))


@plain_text
def training_curves(curves: list[tuple[Point, list[dict], dict | None]]) -> bytes | None:
    """The held-out losses logged during training against the optimizer step, one panel per
    metric (general loss, KL to the base model, target validation loss), one line per point.

    ``curves``: (point, train_log records, training summary) per point. A line's colour
    family and style say its mitigation (plain training blue and solid), the shade its
    strength and lr; early-stopping points get an ✕ where they stopped and a ★ at the step
    exported (``best_step``). None when no log has an evaluation line."""
    logged = [(point, [r for r in log if any(m in r for m in CURVE_METRICS)], summary or {})
              for point, log, summary in curves]
    logged = [c for c in logged if c[1]]
    metrics = [m for m in CURVE_METRICS if any(m in r for _, log, _ in logged for r in log)]
    if not metrics:
        return None
    points = [point for point, _, _ in logged]
    labels, shared = _short_labels(points)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8), squeeze=False)
    for (point, log, summary), label, style in zip(logged, labels, _styles(points)):
        for ax, metric in zip(axes[0], metrics):
            at = {r["step"]: r[metric] for r in log if r.get(metric) is not None}
            if not at:
                continue
            ax.plot(list(at), list(at.values()), label=label, **style)
            if point.patience is None:
                continue
            best = summary.get("best_step")
            if summary.get("stopped_early"):
                ax.plot([max(at)], [at[max(at)]], marker="X", ms=8, color=style["color"],
                        ls="none", markeredgecolor="black", markeredgewidth=0.6)
            if best in at:
                ax.plot([best], [at[best]], marker="*", ms=13, color=style["color"], ls="none",
                        markeredgecolor="black", markeredgewidth=0.6)
    for ax, metric in zip(axes[0], metrics):
        ax.set_title(CURVE_METRICS[metric], fontsize=10)
        ax.set_xlabel("optimizer step")
        if metric == "val_loss":
            ax.set_yscale("log")  # from the base model's loss down to the fitted one
        ax.grid(alpha=0.3)
    legend = {}  # one entry per point, whichever panels it appears in
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, names = list(legend.values()), list(legend)
    if any(p.patience is not None for p in points):
        handles += [Line2D([], [], marker="X", color="grey", ls="none", ms=8),
                    Line2D([], [], marker="*", color="grey", ls="none", ms=13,
                           markeredgecolor="black", markeredgewidth=0.6)]
        names += ["where early stopping stopped", "step exported (best validation loss)"]
    fig.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
               frameon=False, ncol=1 if len(names) <= 22 else 2,
               title=f"all points: {shared}" if shared else None, title_fontsize=8,
               alignment="left")
    fig.tight_layout()
    return _png(fig)
