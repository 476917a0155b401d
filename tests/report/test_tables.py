import pytest

from forgetbench.config import Point, load_suite
from forgetbench.report.tables import results_frame, summary_frame
from tests.conftest import suite_dict


def scores(values: dict[str, tuple[str, float, bool]]) -> dict:
    """{task: (metric, value, higher_is_better)} -> a stored-scores record with 2 items."""
    return {"tasks": {t: {"metrics": {m: {"value": v, "stderr": 0.01, "higher_is_better": hib}},
                          "n": 2,
                          "samples": [{"doc_id": i, "doc_hash": str(i), "values": {m: v}} for i in range(2)]}
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
