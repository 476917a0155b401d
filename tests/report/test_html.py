"""report.html and the other outputs of a run, written from a run directory made here: a
figure that cannot be drawn is said so on the page, and never costs the tables."""
import numpy as np
import pandas as pd

from forgetbench.config import Point, load_suite
from forgetbench.report import plots, write_outputs
from forgetbench.store import Event, RunStore, atomic_write_json
from tests.conftest import suite_dict
from tests.test_compare import record

N = 60
PLAIN = dict(epochs=4, mix_ratio=0.0, regularizer="none", lam=0.0)


def scores(suite, p_target: float, p_general: float, seed: int = 0) -> dict:
    """0/1 items for every task of ``suite``, about ``p`` of them correct."""
    rng = np.random.default_rng(seed)
    values = {t.name: [float(v) for v in rng.random(N) < (p_target if role == "target" else p_general)]
              for t, role in suite.all_tasks()}
    return record(values, metric={t.name: t.metric for t, _ in suite.all_tasks()})


def write_run(root, suite) -> RunStore:
    """A finished sweep of two plain points, as the sweep leaves its run directory."""
    store = RunStore(root)
    atomic_write_json(root / "baseline.json", scores(suite, 0.1, 0.9))
    points = {"low": Point(lr=1e-4, **PLAIN), "high": Point(lr=3e-3, **PLAIN)}
    for i, (pid, point) in enumerate(points.items()):
        atomic_write_json(store.point_dir(pid) / "point.json",
                          {"id": pid, "point": point.model_dump(), "suite": suite.resolved()})
        atomic_write_json(store.scores_path(pid, "k"), scores(suite, 0.3 + 0.4 * i, 0.9 - 0.5 * i, seed=i + 1))
        store.append(Event.POINT_EVALUATED, point=pid, eval_key="k")
    store.append(Event.SWEEP_FINISHED, eval_key="k", baseline="baseline.json", points=list(points),
                 suite=suite.resolved())
    return store


def suite_with_general_task(write_suite, name: str):
    raw = suite_dict()
    raw["tasks"]["general"][0]["name"] = name
    return load_suite(write_suite(raw))


def test_a_task_name_with_dollar_signs_is_drawn_as_written(tmp_path, write_suite):
    suite = suite_with_general_task(write_suite, "$x^$")  # mathtext would parse it, and fail
    store = write_run(tmp_path / "run", suite)
    write_outputs(store, suite, store.latest_sweep())
    page = (store.root / "report.html").read_text()
    assert "could not be drawn" not in page and page.count("<img ") >= 2
    assert "$x^$" in set(pd.read_csv(store.root / "results.csv")["task"])


def test_a_figure_that_cannot_be_drawn_leaves_the_tables_and_the_page(tmp_path, write_suite, monkeypatch):
    suite = suite_with_general_task(write_suite, "fb_capitals")

    def broken(changes):
        raise RuntimeError("a bug in a figure")

    monkeypatch.setattr(plots, "change_vs_lr", broken)
    store = write_run(tmp_path / "run", suite)
    write_outputs(store, suite, store.latest_sweep())
    for name in ("results.csv", "summary.csv", "summary.md"):
        assert (store.root / name).stat().st_size > 0
    page = (store.root / "report.html").read_text()
    assert ("The figure (learning and forgetting vs learning rate) could not be drawn</b>: "
            "RuntimeError: a bug in a figure") in page
    assert page.count("<img ") == 1  # the other figure is there
    assert len(pd.read_csv(store.root / "summary.csv")) == 2
