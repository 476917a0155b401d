import random

import pandas as pd
import pytest

from forgetbench.config import Point, load_suite
from forgetbench.report.tables import (
    RESULT_COLUMNS,
    format_mitigations,
    format_summary,
    mitigation_frame,
    overhead_frame,
    replicate_frame,
    results_frame,
    summary_frame,
    summary_markdown,
)
from tests.conftest import SUITES, suite_dict


def scores(values: dict[str, tuple[str, float, bool]]) -> dict:
    """{task: (metric, value, higher_is_better)} -> a stored-scores record with 2 items."""
    return {"tasks": {t: {"metrics": {m: {"value": v, "stderr": 0.01, "higher_is_better": hib}},
                          "n": 2,
                          "samples": [{"doc_id": i, "doc_hash": str(i), "cluster": str(i), "values": {m: v}}
                                      for i in range(2)]}
                      for t, (m, v, hib) in values.items()}}


def test_learning_and_forgetting_are_oriented_by_the_metric_direction(write_suite):
    raw = suite_dict()
    raw["tasks"]["general"] = [{"name": "fb_capitals", "category": "qa"},
                               {"name": "fb_code", "category": "code"}]
    raw["tasks"]["target"] = [{"name": "fb_medical"}]
    suite = load_suite(write_suite(raw))
    before = scores({"fb_medical": ("acc", 0.25, True), "fb_capitals": ("acc", 1.0, True),
                     "fb_code": ("perplexity", 10.0, False)})
    after = scores({"fb_medical": ("acc", 0.75, True), "fb_capitals": ("acc", 0.5, True),
                    "fb_code": ("perplexity", 30.0, False)})
    point = Point(lr=1e-3, epochs=1, mix_ratio=0, regularizer="none", lam=0)
    df = results_frame(suite, before, [("p", point, after)]).set_index("task")
    assert df.loc["fb_medical", "delta"] == pytest.approx(0.5)
    assert df.loc["fb_capitals", "forgetting"] == pytest.approx(0.5)
    assert df.loc["fb_capitals", "retention"] == pytest.approx(0.5)
    # perplexity went up: that is forgetting, positive, although delta is +20
    assert df.loc["fb_code", "delta"] == pytest.approx(20.0)
    assert df.loc["fb_code", "forgetting"] == pytest.approx(20.0)
    assert df.loc["fb_code", "retention"] is None or df.loc["fb_code", "retention"] != df.loc["fb_code", "retention"]
    summary = summary_frame(df.reset_index())
    assert summary.loc[0, "learn:fb_medical"] == pytest.approx(50.0)
    assert summary.loc[0, "forget:fb_capitals"] == pytest.approx(50.0)


def medical_suite(write_suite):
    """The default suite's tasks: fb_medical (target, acc), fb_capitals (acc), fb_addition
    and fb_code (exact_match)."""
    return load_suite(write_suite(suite_dict()))


def medical_scores(medical: float, general: float) -> dict:
    return scores({"fb_medical": ("acc", medical, True), "fb_capitals": ("acc", general, True),
                   "fb_addition": ("exact_match", general, True),
                   "fb_code": ("exact_match", general, True)})


PLAIN = {"lr": 3e-3, "epochs": 4, "mix_ratio": 0, "regularizer": "none", "lam": 0, "regularizer_form": None}


def test_results_carry_the_new_settings_and_the_training_summary(write_suite):
    suite = medical_suite(write_suite)
    plain, stopping = Point(**PLAIN), Point(**PLAIN, patience=2)
    ewc = Point(**{**PLAIN, "regularizer": "ewc", "lam": 100.0})
    train = {"plain": {"steps": 78, "last_step": 78, "train_seconds": 10, "eval_seconds": 1},
             "stop": {"steps": 78, "last_step": 39, "best_step": 30, "stopped_early": True},
             "ewc": {"steps": 78, "last_step": 78, "fisher": {"variant": "true", "mean": 1e-3}}}
    df = results_frame(suite, medical_scores(0.25, 1.0),
                       [("plain", plain, medical_scores(0.75, 0.5)),
                        ("stop", stopping, medical_scores(0.5, 0.9)),
                        ("ewc", ewc, medical_scores(0.7, 0.8)), ("failed", plain, None)], train)
    assert list(df.columns[:15]) == ["point_id", "lr", "epochs", "mix_ratio", "regularizer",
                                     "lam", "regularizer_form", "schedule", "xi", "patience", "seed",
                                     "steps", "last_step", "best_step", "fisher"]
    assert list(df.columns) == RESULT_COLUMNS
    by_point = df.drop_duplicates("point_id").set_index("point_id")
    assert set(by_point.index) == {"plain", "stop", "ewc"}
    assert by_point.loc["stop", "patience"] == 2 and pd.isna(by_point.loc["plain", "patience"])
    assert by_point.loc["stop", "last_step"] == 39 and by_point.loc["stop", "best_step"] == 30
    assert pd.isna(by_point.loc["plain", "best_step"]) and pd.isna(by_point.loc["ewc", "best_step"])
    assert by_point.loc["ewc", "fisher"] == "true" and pd.isna(by_point.loc["plain", "fisher"])
    assert by_point.loc["ewc", "regularizer_form"] == "coupled" and pd.isna(by_point.loc["plain", "regularizer_form"])
    assert by_point.loc["plain", "schedule"] == "cosine" and by_point.loc["plain", "xi"] == 1.0
    # integers stay integers in the CSV, and an unset patience is an empty cell
    header, plain_row = df.to_csv(index=False).splitlines()[:2]
    cells = dict(zip(header.split(","), plain_row.split(",")))
    assert (cells["patience"], cells["steps"], cells["best_step"]) == ("", "78", "")


def test_a_point_without_patience_survives_the_summary(write_suite):
    suite = medical_suite(write_suite)
    train = {"plain": {"steps": 78, "last_step": 78},
             "stop": {"steps": 78, "last_step": 39, "best_step": 30, "stopped_early": True}}
    df = results_frame(suite, medical_scores(0.25, 1.0),
                       [("plain", Point(**PLAIN), medical_scores(0.75, 0.5)),
                        ("stop", Point(**PLAIN, patience=2), medical_scores(0.5, 0.9))], train)
    summary = summary_frame(df).set_index("point_id")
    assert set(summary.index) == {"plain", "stop"}  # patience None is NaN: it used to vanish
    assert summary.loc["plain", "learning"] == pytest.approx(50.0)
    assert summary.loc["plain", "forgetting"] == pytest.approx(50.0)
    assert summary.loc["stop", "forgetting"] == pytest.approx(10.0)
    assert summary.loc["stop", "stopped"] == "39/78" and summary.loc["stop", "best_step"] == 30
    assert pd.isna(summary.loc["plain", "stopped"]) and pd.isna(summary.loc["plain", "best_step"])
    for col in ("schedule", "xi", "patience"):
        assert col in summary

    text = format_summary(summary_frame(df))
    assert all(len(line) <= 100 for line in text.splitlines())
    # one compact line per setting: the per-task columns are in summary.csv
    assert "learn:fb_medical" not in text and "max forget" in text
    assert "patience 2" in text and "+50.0" in text
    assert "seeds" not in text  # one seed each
    assert "cosine" not in text  # the same for every point


def summary_of(*rows: dict) -> pd.DataFrame:
    """A summary frame as summary_frame builds it, from settings and mean scores."""
    full = [{"point_id": f"p{i}", **PLAIN, "schedule": "cosine", "xi": 1.0, "patience": None, "seed": 0,
             "stopped": None, "steps": 78, "last_step": 78, "best_step": None, "max_forgetting": None,
             **row}
            for i, row in enumerate(rows)]
    for row in full:
        row["max_forgetting"] = row["max_forgetting"] or row["forgetting"]
        if row["regularizer"] != "none":  # as a suite makes it by default
            row["regularizer_form"] = row["regularizer_form"] or "decoupled"
    frame = pd.DataFrame(full)
    return frame.astype({"patience": "Int64", "best_step": "Int64"})


def test_mitigations_are_paired_with_plain_training_at_the_same_lr():
    summary = summary_of(
        {"learning": 60, "forgetting": 40},                                    # p0 plain
        {"lr": 1e-3, "learning": 50, "forgetting": 20},                        # p1 plain
        {"regularizer": "l2", "lam": 0.01, "learning": 62, "forgetting": 35},  # p2 net 27
        {"regularizer": "l2", "lam": 0.1, "learning": 55, "forgetting": 20},   # p3 net 35: best
        {"regularizer": "l2", "lam": 1.0, "learning": 30, "forgetting": 2},    # p4 net 28
        {"regularizer": "ewc", "lam": 100.0, "learning": 58, "forgetting": 10},  # p5 one λ
        {"mix_ratio": 0.1, "learning": 59, "forgetting": 15},                  # p6
        {"lr": 1e-3, "xi": 2.6, "learning": 40, "forgetting": 5},              # p7
        {"patience": 2, "steps": 78, "last_step": 39, "best_step": 30,
         "learning": 57, "forgetting": 25},                                    # p8
        {"lr": 1e-4, "mix_ratio": 0.1, "learning": 10, "forgetting": 1},       # p9: no plain
        {"epochs": 12, "patience": 2, "steps": 234, "last_step": 50, "best_step": 40,
         "learning": 60, "forgetting": 30},                                    # p10: no plain
    )
    m = mitigation_frame(summary).set_index("point_id")
    assert set(m.index) == {"p2", "p3", "p4", "p5", "p6", "p7", "p8"}
    assert (m["plain_id"] == ["p1" if pid == "p7" else "p0" for pid in m.index]).all()
    # reduced = plain − point forgetting; cost = plain − point learning
    assert m.loc["p3", "forgetting_reduced"] == pytest.approx(20)
    assert m.loc["p3", "learning_cost"] == pytest.approx(5)
    assert m.loc["p2", "learning_cost"] == pytest.approx(-2)  # it learned more than plain
    assert m.loc["p7", "forgetting_reduced"] == pytest.approx(15)
    assert m.loc["p7", "learning_cost"] == pytest.approx(10)
    # the best λ: highest learning − forgetting, not the least forgetting nor the most learning
    assert m.loc["p3", "best_lam"] and not m.loc["p2", "best_lam"] and not m.loc["p4", "best_lam"]
    assert not m.loc["p5", "best_lam"]  # a single λ is no choice
    assert not m.loc[["p6", "p7", "p8"], "best_lam"].any()
    assert m.loc["p2", "mitigation"] == "L2-SP λ=0.01"
    assert m.loc["p5", "mitigation"] == "EWC λ=100"
    assert m.loc["p6", "mitigation"] == "replay mix 0.1"
    assert m.loc["p7", "mitigation"] == "discriminative lr ξ=2.6"
    assert m.loc["p8", "mitigation"] == "early stopping (patience 2), stopped at 39/78"
    # lr descending, then replay, L2-SP, EWC, discriminative lr, early stopping; λ ascending
    assert list(m.index) == ["p6", "p2", "p3", "p4", "p5", "p8", "p7"]

    text = format_mitigations(mitigation_frame(summary))
    assert "L2-SP λ=0.1 *" in text and "L2-SP λ=1 *" not in text and "reduced" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_best_lambda_ties_go_to_the_weaker_regularizer_and_no_plain_means_no_rows():
    summary = summary_of({"learning": 60, "forgetting": 40},
                         {"regularizer": "ewc", "lam": 1000.0, "learning": 50, "forgetting": 10},
                         {"regularizer": "ewc", "lam": 10.0, "learning": 45, "forgetting": 5})
    m = mitigation_frame(summary).set_index("point_id")
    assert m["best_lam"].to_dict() == {"p2": True, "p1": False}
    assert mitigation_frame(summary.iloc[1:]).empty  # no plain point to compare with
    assert mitigation_frame(pd.DataFrame()).empty
    assert "no mitigated point" in format_mitigations(mitigation_frame(pd.DataFrame()))


def test_in_training_evaluation_overhead_is_eval_over_train_seconds():
    point = Point(**PLAIN)
    frame = overhead_frame([("a", point, {"train_seconds": 50.0, "eval_seconds": 4.0,
                                          "last_step": 78}),
                            ("b", point, {"train_seconds": 50.0, "eval_seconds": 0.0}),
                            ("c", point, None)])
    assert list(frame["point_id"]) == ["a"]
    assert frame.loc[0, "eval_share"] == pytest.approx(8.0)


def test_replicates_are_one_row_per_setting_with_their_mean_and_range(write_suite):
    raw = suite_dict()
    raw["sweep"] = {"lr": [3e-3], "epochs": [4], "regularizer": ["none", "l2"], "lam": [0.1],
                    "seed": [0, 1, 2]}
    raw["sweep"] = [raw["sweep"], {"lr": [1e-3], "epochs": [4]}]  # a point without replicates
    suite = load_suite(write_suite(raw))
    general = {(None, None): 0.5, (None, 1): 0.6, (None, 2): 0.4,     # plain: forgets 50, 40, 60
               ("l2", None): 0.9, ("l2", 1): 0.7, ("l2", 2): 0.95}   # L2-SP: 10, 30, 5
    points = []
    for i, p in enumerate(suite.points()):
        reg = None if p.regularizer == "none" else p.regularizer
        points.append((f"p{i}", p, medical_scores(0.75, general.get((reg, p.seed), 0.8))))
    summary = summary_frame(results_frame(suite, medical_scores(0.25, 1.0), points))
    assert len(summary) == 7  # each replicate its own row, with the seed it trained with
    assert sorted(summary.loc[summary["lr"] == 3e-3, "seed"]) == [0, 0, 1, 1, 2, 2]

    groups = replicate_frame(summary).set_index("regularizer")
    assert list(groups["seeds"]) == [1, 3, 3] and list(groups["lr"]) == [1e-3, 3e-3, 3e-3]
    plain = groups[groups["lr"] == 3e-3].loc["none"]
    assert plain["forgetting"] == pytest.approx(50)
    assert (plain["forgetting_min"], plain["forgetting_max"]) == pytest.approx((40, 60))
    assert plain["forget:fb_code"] == pytest.approx(50) and plain["learning"] == pytest.approx(50)
    by_seed = summary.set_index(["regularizer", "seed"])["point_id"]
    assert groups.loc["l2", "point_ids"] == ";".join(by_seed["l2"].loc[[0, 1, 2]])
    alone = groups[groups["lr"] == 1e-3].iloc[0]  # a group of one
    assert alone["forgetting_min"] == alone["forgetting_max"] == alone["forgetting"] == pytest.approx(50)
    assert alone["point_ids"] == summary.loc[summary["lr"] == 1e-3, "point_id"].item()
    # without the lr 1e-3 point every label part but L2-SP's is shared: plain training says so
    lines = format_summary(summary[summary["lr"] == 3e-3]).splitlines()
    assert lines[0] == "every point: lr 0.003, epochs 4, mix 0"
    assert [line[:len("L2-SP λ=0.1")].strip() for line in lines[2:]] == ["plain", "L2-SP λ=0.1"]

    # L2-SP against plain training of the same seed: 40, 10, 55 avoided; one row
    [m] = mitigation_frame(summary).to_dict("records")
    assert m["seeds"] == 3 and m["forgetting_reduced"] == pytest.approx(35)
    assert (m["reduced_min"], m["reduced_max"]) == pytest.approx((10, 55))
    assert m["forgetting"] == pytest.approx(15) and m["learning_cost"] == pytest.approx(0)
    assert m["point_ids"].split(";")[0] == m["point_id"] == groups.loc["l2", "point_ids"].split(";")[0]
    assert m["plain_ids"] == plain["point_ids"]


def test_best_lambda_is_judged_on_the_seed_means():
    seeds = [{"seed": s} for s in (0, 1)]
    summary = summary_of(
        *({**s, "learning": 60, "forgetting": 40} for s in seeds),
        # λ=0.1 is the best in seed 0 by a little, much worse in seed 1
        {"seed": 0, "regularizer": "l2", "lam": 0.1, "learning": 60, "forgetting": 10},
        {"seed": 1, "regularizer": "l2", "lam": 0.1, "learning": 30, "forgetting": 30},
        {"seed": 0, "regularizer": "l2", "lam": 1.0, "learning": 58, "forgetting": 10},
        {"seed": 1, "regularizer": "l2", "lam": 1.0, "learning": 58, "forgetting": 10},
    )
    m = mitigation_frame(summary).set_index("mitigation")
    assert list(m["seeds"]) == [2, 2]
    assert m["best_lam"].to_dict() == {"L2-SP λ=0.1": False, "L2-SP λ=1": True}
    assert m.loc["L2-SP λ=0.1", "forgetting_reduced"] == pytest.approx(20)
    assert (m.loc["L2-SP λ=0.1", "reduced_min"], m.loc["L2-SP λ=0.1", "reduced_max"]) == (10, 30)
    # a single seed keeps the single-seed columns: seeds 1, the range one value
    one = mitigation_frame(summary[summary["seed"] == 0]).set_index("mitigation")
    assert list(one["seeds"]) == [1, 1] and one["best_lam"].to_dict() == {"L2-SP λ=0.1": True,
                                                                          "L2-SP λ=1": False}
    assert (one["reduced_min"] == one["forgetting_reduced"]).all()


def test_each_form_of_a_regulariser_has_its_own_best_lambda_and_says_which_it_is():
    # λ means another thing in each form: the best λ is chosen within a form
    summary = summary_of(
        {"learning": 60, "forgetting": 40},
        {"regularizer": "l2", "lam": 0.1, "regularizer_form": "coupled", "learning": 55, "forgetting": 20},
        {"regularizer": "l2", "lam": 1.0, "regularizer_form": "coupled", "learning": 30, "forgetting": 2},
        {"regularizer": "l2", "lam": 100.0, "regularizer_form": "decoupled", "learning": 50, "forgetting": 30},
        {"regularizer": "l2", "lam": 1000.0, "regularizer_form": "decoupled", "learning": 50, "forgetting": 5},
    )
    m = mitigation_frame(summary).set_index("mitigation")
    assert list(m.index) == ["L2-SP λ=0.1 (coupled)", "L2-SP λ=1 (coupled)", "L2-SP λ=100", "L2-SP λ=1000"]
    assert m["best_lam"].to_dict() == {"L2-SP λ=0.1 (coupled)": True, "L2-SP λ=1 (coupled)": False,
                                       "L2-SP λ=100": False, "L2-SP λ=1000": True}


def test_a_mitigation_is_paired_with_plain_training_of_its_own_seed():
    summary = summary_of({"seed": 0, "learning": 60, "forgetting": 40},
                         {"seed": 1, "learning": 50, "forgetting": 20},
                         {"seed": 1, "mix_ratio": 0.1, "learning": 50, "forgetting": 15},
                         {"seed": 2, "mix_ratio": 0.1, "learning": 50, "forgetting": 5})  # no plain
    [m] = mitigation_frame(summary).to_dict("records")
    assert (m["plain_id"], m["point_id"], m["seeds"]) == ("p1", "p2", 1)
    assert m["forgetting_reduced"] == pytest.approx(5)


def default_suite_summary(*overrides: str) -> pd.DataFrame:
    """The summary of the default suite's points (with ``--set`` overrides), made-up scores
    as far apart as they get (learning and forgetting of ±100 points on some tasks)."""
    rng = random.Random(0)
    suite = load_suite(SUITES / "medical.yaml", list(overrides))
    points, train = [], {}
    for i, point in enumerate(suite.points()):
        values = [rng.choice([0.0, 0.003, 0.5, 1.0]) for _ in range(4)]
        points.append((f"{i:012x}", point, scores({
            "fb_medical": ("acc", values[0], True), "fb_capitals": ("acc", values[1], True),
            "fb_addition": ("exact_match", values[2], True), "fb_code": ("exact_match", values[3], True)})))
        train[f"{i:012x}"] = {"steps": 78, "last_step": rng.choice([39, 78] if point.patience else [78])}
    return summary_frame(results_frame(suite, medical_scores(0.5, 1.0), points, train))


@pytest.mark.parametrize("seeds", [0, 3], ids=["one seed", "three seeds"])
def test_the_terminal_tables_fit_100_columns_for_the_default_suite(seeds):
    grids = len(load_suite(SUITES / "medical.yaml").grids)
    summary = default_suite_summary(*(f"sweep.{i}.seed=[{','.join(map(str, range(seeds)))}]"
                                      for i in range(grids) if seeds))
    # as shipped: 13 settings, plain training and each mitigation at the top lr over 3 seeds
    assert len(summary) == (13 * seeds if seeds else 23)
    text = format_summary(summary)
    lines = text.splitlines()
    assert len(lines) == 1 + 13  # one line per setting, however many seeds
    assert "seeds" in lines[0] and "learn:" not in text
    assert lines[1].startswith("lr 0.003, epochs 1, mix 0 ")  # epochs vary: every label says them
    mitigations = format_mitigations(mitigation_frame(summary))
    assert "EWC λ=1e+06" in mitigations and "range" in mitigations
    for line in text.splitlines() + mitigations.splitlines():
        assert len(line) <= 100, line


def test_summary_markdown_is_a_table_of_settings_with_what_each_mitigation_avoided():
    grids = len(load_suite(SUITES / "medical.yaml").grids)
    summary = default_suite_summary(*(f"sweep.{i}.seed=[0,1]" for i in range(grids)))
    md = summary_markdown(summary, mitigation_frame(summary), "forgetbench: medical")
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert rows[0] == ("| setting | learn | forget | max forget | seeds | forget range | reduced "
                       "| reduced range |")
    assert len(rows) == 2 + 13
    plain = next(r for r in rows if r.startswith("| lr 0.003, epochs 4, mix 0 |"))
    ewc = next(r for r in rows if r.startswith("| lr 0.003, epochs 4, mix 0, EWC λ=1e+07 |"))
    assert plain.endswith("|  |  |") and "| 2 |" in plain  # no reduction for plain training
    assert "…" in ewc.split("|")[-2]
    assert "Every row:" not in md  # nothing is the same in every setting
    one = summary_markdown(summary[summary["seed"] == 0], mitigation_frame(summary), "t")
    assert "range" not in one.splitlines()[2]
