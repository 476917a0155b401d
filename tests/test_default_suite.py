"""The product's promise on the embedded default: real learning, real forgetting, and
mitigations whose effect is measured.

Runs `forgetbench sweep suites/medical.yaml` as the README does (building the builtin model
into the user cache if it is not there yet) and checks the outcome the suite is designed to
show. Takes a few minutes on 2 cores.
"""
import json

import pandas as pd
import pytest

from forgetbench.cli import main
from forgetbench.report.tables import mitigation_frame, summary_frame
from tests.conftest import SUITES


@pytest.mark.slow
def test_default_sweep_learns_the_target_and_forgets_at_high_learning_rates(tmp_path):
    runs = tmp_path / "runs"
    assert main(["sweep", str(SUITES / "medical.yaml"), "--runs-dir", str(runs)]) == 0
    df = pd.read_csv(runs / "medical" / "results.csv")
    head = df[df["headline"]]
    assert head["point_id"].nunique() == 16

    # the base model knows the general tasks and not the target
    base = head.drop_duplicates("task").set_index("task")["before"]
    assert base["fb_medical"] < 0.4
    assert (base[["fb_capitals", "fb_addition", "fb_code"]] > 0.9).all()

    # every point learns the target
    target = head[head["role"] == "target"]
    assert (target["delta"] > 0).all(), target[["lr", "mix_ratio", "delta"]]

    general = head[head["role"] == "general"]
    plain = general[(general["mix_ratio"] == 0) & (general["regularizer"] == "none")]
    top = plain[plain["lr"] == plain["lr"].max()]
    assert top["forgetting"].max() >= 0.20, top[["task", "forgetting"]]
    low = general[general["lr"] == general["lr"].min()]
    assert (low["forgetting"] <= 0.05).all(), low[["task", "mix_ratio", "forgetting"]]

    # the mitigations at the highest learning rate, against plain training there; margins
    # are well inside what was measured (README: EWC λ=1000 forgets 2.5 points instead of
    # 86.5 for the same learning, L2-SP λ=0.1 11.2 for 7.7 points of learning)
    table = mitigation_frame(summary_frame(df))
    top = table[(table["lr"] == df["lr"].max()) & table["best_lam"]].set_index("mitigation")
    ewc = top[top.index.str.startswith("EWC")].iloc[0]
    assert ewc["forgetting_reduced"] >= 40 and ewc["learning_cost"] <= 10, ewc
    l2 = top[top.index.str.startswith("L2-SP")].iloc[0]
    assert l2["forgetting_reduced"] >= 30 and l2["learning_cost"] <= 20, l2

    # every point logged its forgetting curve, from the base model (step 0) to its last step
    for pid in df["point_id"].unique():
        log = [json.loads(line) for line in
               (runs / "medical" / "points" / pid / "train_log.jsonl").read_text().splitlines()]
        evals = [r for r in log if "general_loss" in r]
        assert evals[0]["step"] == 0 and evals[-1]["step"] == log[-1]["step"]
    stopped = df[df["patience"].notna()]
    assert not stopped.empty and stopped["best_step"].notna().all()
