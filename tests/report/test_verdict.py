"""The sweep verdict on written records: the recommended setting passes the gate, a
mitigation's reduction is real only when its interval over seeds and items excludes 0, and
a sharp KL rise under unmoved multiple-choice scores is flagged."""
import numpy as np
import pytest

from forgetbench.config import Point, load_suite
from forgetbench.report import plots
from forgetbench.report.verdict import setting_frames, sweep_verdict, verdict_lines
from tests.conftest import SUITES
from tests.test_compare import METRIC, record

N = 120
PLAIN = dict(epochs=4, mix_ratio=0.0, regularizer="none", lam=0.0)
L2 = dict(regularizer="l2", lam=0.1, regularizer_form="decoupled")  # as a suite makes it by default


def items(p: float, rng: np.random.Generator, noise: float = 0.0) -> list[float]:
    """N 0/1 values, about ``p`` of them correct, drawn per item (so seeds differ)."""
    q = float(np.clip(p + rng.normal(0, noise), 0, 1))
    return [float(v) for v in (rng.random(N) < q)]


def scores(rng, *, target, capitals, addition, code, noise=0.0) -> dict:
    rec = record({"fb_medical": items(target, rng, noise), "fb_capitals": items(capitals, rng, noise),
                  "fb_addition": items(addition, rng, noise), "fb_code": items(code, rng, noise)}, metric=METRIC)
    rec["tasks"]["fb_capitals"]["output_type"] = rec["tasks"]["fb_medical"]["output_type"] = "multiple_choice"
    rec["tasks"]["fb_addition"]["output_type"] = rec["tasks"]["fb_code"]["output_type"] = "generate_until"
    return rec


@pytest.fixture
def suite():
    return load_suite(SUITES / "medical.yaml")


def base_scores() -> dict:
    rec = record({t: [1.0] * N if t != "fb_medical" else [0.0] * N for t in METRIC}, metric=METRIC)
    rec["tasks"]["fb_capitals"]["output_type"] = rec["tasks"]["fb_medical"]["output_type"] = "multiple_choice"
    rec["tasks"]["fb_addition"]["output_type"] = rec["tasks"]["fb_code"]["output_type"] = "generate_until"
    return rec


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_verdict_recommends_a_passing_setting_and_judges_mitigations(suite, seed):
    rng = np.random.default_rng(seed)
    points = []
    for s in (None, 1, 2):
        points.append((f"plain{s}", Point(lr=3e-3, seed=s, **PLAIN),
                       scores(rng, target=0.7, capitals=0.4, addition=0.1, code=0.1)))
        # L2-SP halves the forgetting in every seed: real
        points.append((f"l2{s}", Point(lr=3e-3, seed=s, **{**PLAIN, **L2}),
                       scores(rng, target=0.6, capitals=0.7, addition=0.55, code=0.55)))
        # replay's effect is noise: the same distribution as plain training
        points.append((f"mix{s}", Point(lr=3e-3, seed=s, **{**PLAIN, "mix_ratio": 0.1}),
                       scores(rng, target=0.7, capitals=0.4, addition=0.1, code=0.1, noise=0.02)))
    # a low learning rate that forgets nothing and learns a little: the one to ship
    points.append(("low", Point(lr=1e-4, **PLAIN), scores(rng, target=0.2, capitals=1.0, addition=1.0, code=1.0)))
    verdict = sweep_verdict(suite, base_scores(), points, {})
    assert verdict["recommended"]["point_ids"] == ["low"]
    by = {m["mitigation"]: m for m in verdict["mitigations"]}
    assert by["L2-SP λ=0.1"]["real"] and by["L2-SP λ=0.1"]["seeds"] == 3
    assert by["L2-SP λ=0.1"]["reduced_ci"][0] > 20
    assert not by["replay mix 0.1"]["real"]
    assert by["replay mix 0.1"]["reduced_ci"][0] < 0 < by["replay mix 0.1"]["reduced_ci"][1]
    lines = verdict_lines(verdict)
    assert lines[0].startswith("Recommended: lr 0.0001")
    assert any("L2-SP λ=0.1 at lr 0.003" in line and ": real (CI over items and seeds)" in line for line in lines)
    changes, settings = setting_frames(verdict)
    assert len(settings) == 4 and set(changes["task"]) == set(METRIC)
    assert (changes["low"] <= changes["change"]).all() and (changes["change"] <= changes["high"]).all()
    # the figures draw these intervals; a line whose settings have 3 seeds at one lr says where
    assert plots.change_vs_lr(changes).startswith(b"\x89PNG") and plots.learning_vs_forgetting(settings)
    plain = changes[(changes["regularizer"] == "none") & (changes["mix_ratio"] == 0)]
    assert plots._seeds_note(plain) == " (3 seeds at lr 0.003)"


def test_no_setting_passes_when_every_one_forgets(suite):
    rng = np.random.default_rng(0)
    points = [("plain", Point(lr=3e-3, **PLAIN), scores(rng, target=0.7, capitals=0.9, addition=0.1, code=0.9))]
    verdict = sweep_verdict(suite, base_scores(), points, {})
    assert verdict["recommended"] is None
    assert verdict["settings"][0]["failed_tasks"] == ["fb_capitals", "fb_addition", "fb_code"]
    assert verdict_lines(verdict)[0].startswith("Recommended: none: no setting passes the release gate (")


def test_a_sharp_kl_rise_with_unmoved_multiple_choice_scores_is_flagged(suite):
    rng = np.random.default_rng(0)
    unmoved = scores(rng, target=0.5, capitals=1.0, addition=1.0, code=1.0)
    points = [("quiet", Point(lr=1e-4, **PLAIN), unmoved), ("calm", Point(lr=5e-5, **PLAIN), unmoved)]
    logs = {"quiet": [{"step": 0, "general_loss": 1.0, "kl": 0.0}, {"step": 78, "general_loss": 1.05, "kl": 0.31}],
            "calm": [{"step": 0, "general_loss": 1.0, "kl": 0.0}, {"step": 78, "general_loss": 1.01, "kl": 0.02}]}
    # the chat model: its multiple-choice score even rose while it stopped answering
    rose = base_scores()
    rose["tasks"]["fb_capitals"]["samples"] = [{**x, "values": {"acc": 0.0 if i < 30 else 1.0}}
                                               for i, x in enumerate(rose["tasks"]["fb_capitals"]["samples"])]
    points.append(("rose", Point(lr=2e-4, **PLAIN), unmoved))
    logs["rose"] = logs["quiet"]
    verdict = sweep_verdict(suite, rose, points, logs)
    assert [h["point_id"] for h in verdict["hidden"]] == ["quiet", "rose"]
    line = next(x for x in verdict_lines(verdict) if x.startswith("Hidden forgetting?"))
    assert "KL to the base rose to 0.31" in line and "fb_capitals" in line and "fb_addition, fb_code" in line


def test_a_mitigation_without_plain_training_to_compare_with_is_said_not_dropped(suite):
    rng = np.random.default_rng(0)
    points = [("l2", Point(lr=3e-3, **{**PLAIN, **L2}),
               scores(rng, target=0.6, capitals=0.7, addition=0.55, code=0.55)),
              ("plain", Point(lr=1e-3, **PLAIN), scores(rng, target=0.6, capitals=0.7, addition=0.55, code=0.55))]
    lines = verdict_lines(sweep_verdict(suite, base_scores(), points, {}))
    assert any(line.startswith("L2-SP λ=0.1 at lr 0.003: not judged: no plain point") for line in lines)


def test_forgetting_vs_epochs_is_drawn_for_the_settings_trained_for_several_epoch_counts(suite):
    rng = np.random.default_rng(0)
    points = [("lr-only", Point(lr=1e-3, **PLAIN), scores(rng, target=0.5, capitals=0.9, addition=0.8, code=0.8))]
    verdict = sweep_verdict(suite, base_scores(), points, {})
    assert plots.change_vs_epochs(setting_frames(verdict)[0]) is None  # no epochs swept: no figure
    for epochs, forget in ((1, 0.95), (2, 0.7)):
        points.append((f"e{epochs}", Point(lr=1e-3, **{**PLAIN, "epochs": epochs}),
                       scores(rng, target=0.3 * epochs, capitals=forget, addition=forget, code=forget)))
    changes = setting_frames(sweep_verdict(suite, base_scores(), points, {}))[0]
    assert plots.change_vs_epochs(changes).startswith(b"\x89PNG")
    assert plots._group_label(changes[changes["epochs"] == 1], "epochs") == "lr 0.001, mix 0"
