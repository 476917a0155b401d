"""Report figures as PNG bytes (matplotlib, no display needed)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

GROUP_KEYS = ["epochs", "mix_ratio", "regularizer", "lam"]


def _group_label(epochs: float, mix: float, reg: str, lam: float) -> str:
    label = f"{epochs:g} ep, mix {mix:g}"
    return label + ("" if reg == "none" else f", {reg} λ={lam:g}")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def change_vs_lr(results: pd.DataFrame) -> bytes:
    """One panel per task: learning (target) or forgetting (general) against the learning
    rate, one line per combination of the other swept settings, paired-stderr error bars."""
    head = results[results["headline"]]
    tasks = list(dict.fromkeys(head.sort_values("role", ascending=False)["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = head[head["task"] == task]
        role, metric = rows["role"].iloc[0], rows["metric"].iloc[0]
        sign = -1 if role == "target" else 1  # learning = −forgetting, oriented per metric
        for key, grp in rows.groupby(GROUP_KEYS):
            grp = grp.sort_values("lr")
            ax.errorbar(grp["lr"], sign * grp["forgetting"] * 100, yerr=grp["stderr_delta"].fillna(0) * 100,
                        marker="o", capsize=3, label=_group_label(*key))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        lrs = sorted(rows["lr"].unique())
        ax.set_xticks(lrs, [f"{v:g}" for v in lrs], rotation=30)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("learning rate")
        ax.set_ylabel(("learning" if role == "target" else "forgetting") + f" ({metric}, points)")
        category = rows["category"].iloc[0]
        ax.set_title(f"{task} [{'target' if role == 'target' else category}]")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Learning on the target and forgetting on general tasks vs learning rate", y=1.04)
    return _png(fig)


def learning_vs_forgetting(summary: pd.DataFrame) -> bytes:
    """Each point's mean learning against its mean forgetting; the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for key, grp in summary.groupby(GROUP_KEYS):
        ax.scatter(grp["forgetting"], grp["learning"], s=40, label=_group_label(*key))
        for _, row in grp.iterrows():
            ax.annotate(f"{row['lr']:g}", (row["forgetting"], row["learning"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    front = summary[summary["pareto"]].sort_values("forgetting")
    ax.plot(front["forgetting"], front["learning"], color="black", lw=1, ls="--",
            label="Pareto front")
    ax.axvline(0, color="grey", lw=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("mean forgetting on general tasks (points)")
    ax.set_ylabel("mean learning on target tasks (points)")
    ax.set_title("Learning vs forgetting, one marker per point (labels: lr)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
