"""The product's promise on the embedded default: real learning, real forgetting.

Runs `forgetbench sweep suites/medical.yaml` as the README does (building the builtin model
into the user cache if it is not there yet) and checks the outcome the suite is designed to
show. Takes a few minutes on 2 cores.
"""
import pandas as pd
import pytest

from forgetbench.cli import main
from tests.conftest import SUITES


@pytest.mark.slow
def test_default_sweep_learns_the_target_and_forgets_at_high_learning_rates(tmp_path):
    runs = tmp_path / "runs"
    assert main(["sweep", str(SUITES / "medical.yaml"), "--runs-dir", str(runs)]) == 0
    df = pd.read_csv(runs / "medical" / "results.csv")
    head = df[df["headline"]]
    assert head["point_id"].nunique() == 8

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
