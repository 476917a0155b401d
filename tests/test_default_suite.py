"""The product's promise on the embedded default: real learning, real forgetting, and
mitigations whose effect is measured.

Runs `forgetbench sweep suites/medical.yaml` as the README does and checks the outcome the
suite is designed to show. Takes a few minutes on 2 cores.

Every machine starts from the same shipped base model, but fine-tuning amplifies the float
rounding of CPU kernels and library versions, so the thresholds are set from the spread over
training seeds (`--set train.seed=N`: seeds 0-3 of the whole suite, 0-4 of its lowest learning rate): each
holds for every seed tried with a margin; the issue note lists the figures.
"""
import json

import pandas as pd
import pytest

from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.report import stored_results
from forgetbench.report.tables import mitigation_frame, summary_frame
from forgetbench.report.verdict import sweep_verdict
from forgetbench.store import RunStore
from tests.browser import browser_available, open_page
from tests.conftest import SUITES


@pytest.mark.slow
def test_default_sweep_learns_the_target_and_forgets_at_high_learning_rates(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["sweep", str(SUITES / "medical.yaml"), "--runs-dir", str(runs), "--jobs", "2"]) == 0
    df = pd.read_csv(runs / "medical" / "results.csv")
    head = df[df["headline"]]
    # 13 settings; plain training and each mitigation at the top lr over seeds 0-2
    assert head["point_id"].nunique() == 23
    assert (df["delta_low"] <= df["delta"] + 1e-9).all() and (df["delta"] <= df["delta_high"] + 1e-9).all()

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
    # the lowest learning rate forgets little: at most 5 points on average over the general
    # tasks (measured 1.2-2.2 over seeds 0-4), no task more than 10 (addition, the most
    # fragile, loses 3.5-6.5 points, as it does at 7e-5 and 1e-4 too, which learn half as
    # much)
    low = general[general["lr"] == general["lr"].min()]
    shown = low[["task", "mix_ratio", "forgetting"]]
    assert low["forgetting"].mean() <= 0.05, shown
    assert (low["forgetting"] <= 0.10).all(), shown
    # the epochs at the top learning rate: learning grows with them (measured +12.8, +41.9 and
    # +70.1 points after 1, 2 and 4), and forgetting is already large after one (77.9, 82.8, 86.4)
    at_top = head[(head["lr"] == head["lr"].max()) & (head["mix_ratio"] == 0) & (head["regularizer"] == "none")
                  & (head["xi"] == 1) & (head["seed"] == head["seed"].min())]
    learned = at_top[at_top["role"] == "target"].groupby("epochs")["delta"].mean()
    forgot = at_top[at_top["role"] == "general"].groupby("epochs")["forgetting"].mean()
    assert list(learned.index) == [1, 2, 4] and learned.is_monotonic_increasing, learned
    assert learned[4] - learned[1] >= 0.2 and forgot[1] >= 0.2, (learned, forgot)

    # the mitigations at the highest learning rate, against plain training there; over seeds
    # 0-2 the best (decoupled) EWC λ, 1e6, avoided 82.4-85.9 points of forgetting for 1.4 of
    # learning on average, the best L2-SP λ, 30, 73.1-78.9 for 4.8
    table = mitigation_frame(summary_frame(df))
    top = table[(table["lr"] == df["lr"].max()) & table["best_lam"]].set_index("mitigation")
    ewc = top[top.index.str.startswith("EWC")].iloc[0]
    assert ewc["forgetting_reduced"] >= 40 and ewc["learning_cost"] <= 15, ewc
    l2 = top[top.index.str.startswith("L2-SP")].iloc[0]
    assert l2["forgetting_reduced"] >= 30 and l2["learning_cost"] <= 20, l2

    # the verdict: replay, the best λ of each regulariser and discriminative lr reduce
    # forgetting for real at the top lr (their intervals over 3 seeds and the items exclude 0)
    store = RunStore(runs / "medical")
    baseline, points = stored_results(store, store.latest_sweep())
    verdict = sweep_verdict(load_suite(SUITES / "medical.yaml"), baseline, points, {})
    judged = {m["mitigation"]: m for m in verdict["mitigations"] if m["lr"] == df["lr"].max()}
    for name in ("replay mix 0.1", "EWC λ=1e+06", "L2-SP λ=30", "discriminative lr ξ=2.6"):
        assert judged[name]["real"] and judged[name]["seeds"] == 3, judged[name]

    # every point logged its forgetting curve, from the base model (step 0) to its last step
    for pid in df["point_id"].unique():
        log = [json.loads(line) for line in
               (runs / "medical" / "points" / pid / "train_log.jsonl").read_text().splitlines()]
        evals = [r for r in log if "general_loss" in r]
        assert evals[0]["step"] == 0 and evals[-1]["step"] == log[-1]["step"]

    # the release gate, on the same run: the base model against the point that forgot most
    # fails, naming the rules it failed; against itself it passes; an evaluation made with
    # another batch size is refused
    summary = summary_frame(df)
    worst = summary.sort_values("forgetting").iloc[-1]["point_id"]
    capsys.readouterr()
    assert main(["compare", "builtin:tiny-llama", f"{runs / 'medical'}:{worst}", "--runs-dir", str(runs),
                 "--out", str(tmp_path / "worst")]) == 1
    err = capsys.readouterr().err
    assert "gate failed" in err and "fb_addition" in err
    result = json.loads((tmp_path / "worst" / "compare.json").read_text())
    assert result["verdict"] == "FAIL" and not result["mismatch"]
    assert main(["compare", "builtin:tiny-llama", "builtin:tiny-llama", "--suite", str(SUITES / "medical.yaml"),
                 "--runs-dir", str(runs), "--out", str(tmp_path / "same")]) == 0
    assert main(["eval", "builtin:tiny-llama", "--suite", str(SUITES / "medical.yaml"), "--set", "eval.batch_size=32",
                 "--runs-dir", str(runs)]) == 0
    [other] = [p for p in (runs / "evals").glob("*.json")
               if json.loads(p.read_text())["settings"]["batch_size"] == 32]
    capsys.readouterr()
    assert main(["compare", str(other), f"{runs / 'medical'}:{worst}", "--runs-dir", str(runs),
                 "--out", str(tmp_path / "refused")]) == 2
    assert "batch_size 32 vs 64" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

    if browser_available():  # .ci/run installs chromium and chromedriver
        with open_page(runs / "medical" / "report.html") as page:
            assert page.console_errors == [] and page.failed_requests == [] and page.dialogs == []
            images = page.images()
            assert len(images) >= 3 and all(img["decoded"] for img in images)
            assert page.text("ul.verdict li").startswith("Recommended:")
            page.select("#flip-point", worst)
            one = page.visible_count("#flips tbody tr")
            page.select("#flip-point", "")
            assert 0 < one < page.visible_count("#flips tbody tr")
        with open_page(tmp_path / "worst" / "compare.html") as page:
            assert page.console_errors == [] and page.failed_requests == []
            assert page.text(".verdict").startswith("FAIL") and all(img["decoded"] for img in page.images())
