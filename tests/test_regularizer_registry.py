"""A regulariser registered from outside the package (here, this test module) through the
same registry as L2-SP and EWC reaches the suite schema, point ids, the recipe, the results,
the planner and the mitigation table, with no package file edited for it."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from forgetbench import planner, regularizers
from forgetbench.cli import main
from forgetbench.config import Point, load_suite
from forgetbench.executor import InlineExecutor
from forgetbench.report import plots
from forgetbench.report.tables import mitigation_frame, summary_frame
from forgetbench.store import RunStore
from forgetbench.sweep import plan, run_sweep, train_one
from forgetbench.train import distributed
from tests.conftest import suite_dict


@dataclass
class L1ToBase:
    """λ · Σ_i |θ_i − θ0_i|: its gradient λ·sign(θ − θ0) joins the data gradient."""

    params: list[torch.Tensor]
    dist: distributed.Dist
    summary: dict

    def __post_init__(self):
        self.anchor = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def penalty_(self, lam: float) -> float:
        total = 0.0
        for p, p0 in zip(self.params, self.anchor):
            diff = p.detach() - p0
            total += float(diff.abs().sum())
            p.grad.add_(lam * diff.sign())
        return lam * total


def l1_to_base(setup) -> L1ToBase:
    return L1ToBase(setup.params, setup.dist, {"l1_built_for": setup.point.regularizer})


@pytest.fixture
def l1():
    entry = regularizers.register(regularizers.Regularizer(
        name="l1", title="L1-SP", state_bytes=4, component=l1_to_base))
    yield entry
    regularizers.unregister("l1")


def test_a_suite_refuses_an_unregistered_regulariser(write_suite, capsys):
    raw = suite_dict(**{"sweep.regularizer": ["l1"]})
    assert main(["sweep", str(write_suite(raw)), "--dry-run"]) == 2
    assert "sweep.regularizer[0]" in capsys.readouterr().err


def test_a_suite_refuses_a_form_the_regulariser_does_not_implement(l1, write_suite, capsys):
    # its component has penalty_ only: the default form, decoupled, is refused in one line
    raw = suite_dict(**{"sweep.regularizer": ["l1"], "sweep.lam": [0.1]})
    assert main(["sweep", str(write_suite(raw)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "sweep.regularizer_form decoupled: regulariser l1 has no decoupled form" in err
    assert "set sweep.regularizer_form to [coupled]" in err and len(err.strip().splitlines()) == 1


def test_a_regulariser_registered_outside_the_package_trains_and_is_reported(
        l1, write_suite, tiny_model_dir, tmp_path):
    raw = suite_dict(model=str(tiny_model_dir), **{"train.max_seq_len": 32, "eval.limit": 16})
    raw["sweep"] = [{"lr": [3e-3], "epochs": [0.25]},
                    {"lr": [3e-3], "epochs": [0.25], "regularizer": ["l1"], "lam": [1e-4, 1e-2],
                     "regularizer_form": ["coupled"]}]
    suite = load_suite(write_suite(raw))
    planned = plan(suite)
    assert [pp.point.regularizer for pp in planned] == ["none", "l1", "l1"]
    assert len({pp.id for pp in planned}) == 3

    # the recipe builds the component and adds its penalty, in this process
    runs = tmp_path / "runs"
    for pp in planned:
        summary = train_one(suite, pp, RunStore(runs / suite.name))
        if pp.point.regularizer == "l1":
            assert summary["l1_built_for"] == "l1"  # the component's summary reached the journal
            log = [json.loads(line) for line in
                   (runs / "medical" / "points" / pp.id / "train_log.jsonl").read_text().splitlines()]
            penalties = [r["penalty"] for r in log if "penalty" in r]
            assert penalties[0] == 0 and penalties[-1] > 0  # θ moved away from θ0 and was charged

    # trained points are only evaluated: the results, the summary and the mitigation table.
    # In this process: a regulariser registered at run time exists only where it was registered
    outcome = run_sweep(suite, runs, echo=lambda _: None, executor=InlineExecutor())
    assert not outcome.failed and len(outcome.evaluated) == 3
    summary, mitigations, _ = outcome.tables  # the sweep wrote its tables and report
    results = pd.read_csv(outcome.store.root / "results.csv")
    assert sorted(results["regularizer"].unique()) == ["l1", "none"]
    assert set(results.loc[results["regularizer"] == "l1", "lam"]) == {1e-4, 1e-2}
    assert list(summary["regularizer"]) == ["none", "l1", "l1"]  # plain first, then as registered
    assert sorted(mitigations["mitigation"]) == ["L1-SP λ=0.0001 (coupled)", "L1-SP λ=0.01 (coupled)"]
    assert mitigations["best_lam"].sum() == 1
    assert mitigation_frame(summary_frame(results)).shape[0] == 2
    assert "L1-SP λ=0.01 (coupled)" in (outcome.store.root / "report.html").read_text()

    # the planner counts its state: one fp32 copy per parameter, as L2-SP's θ0
    with_l1 = planner.suite_plan(suite, 80.0)
    as_l2 = planner.suite_plan(load_suite(write_suite({**raw, "sweep": {**raw["sweep"][1], "regularizer": ["l2"]}},
                                                      "l2.yaml")), 80.0)
    assert with_l1.basis.endswith("regulariser l1") and with_l1.anchors_gb == as_l2.anchors_gb > 0


def test_the_planner_command_and_figures_take_a_registered_regulariser(l1, capsys):
    assert main(["plan", "--params", "7e9", "--hidden", "4096", "--layers", "32", "--seq-len", "2048",
                 "--regularizer", "l1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["anchors_gb"] == pytest.approx(4 * 7e9 / 1e9)
    point = Point(lr=1e-3, epochs=1, mix_ratio=0.0, regularizer="l1", lam=0.1)
    assert [(m.kind, m.strength, m.text) for m in point.describe()] == [("l1", 0.1, "L1-SP λ=0.1 (coupled)")]
    log = [{"step": 0, "general_loss": 1.0}, {"step": 5, "general_loss": 2.0}]
    assert plots.training_curves([(point, log, {}), (point.model_copy(update={"regularizer": "none"}), log, {})])
