"""One evaluation per (model, eval settings), shared by `forgetbench eval`, sweeps and compare;
and a point trains from its point.json, whatever later happens to the suite file."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from forgetbench import sweep
from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.datafiles import read_rows
from forgetbench.errors import ForgetbenchError
from forgetbench.eval import harness
from forgetbench.evalstore import EvalStore
from forgetbench.executor import InlineExecutor
from forgetbench.store import RunStore
from tests.conftest import suite_dict


@pytest.fixture
def fake_evaluate(monkeypatch):
    """harness.evaluate without lm-eval (tested in tests/eval): records which models it ran on."""
    calls = []

    def evaluate(model_dir, tasks, spec, **kwargs):
        calls.append(str(model_dir))
        samples = [{"doc_id": i, "cluster": str(i), "values": {"acc": float(i % 2), "exact_match": 0.0}}
                   for i in range(4)]
        metric = {"value": 0.5, "stderr": 0.1, "higher_is_better": True}
        return {"settings": {}, "tasks": {t.name: {"metrics": {t.metric: metric}, "n": 4, "samples": samples}
                                          for t, _ in tasks.all()}}

    monkeypatch.setattr(harness, "evaluate", evaluate)
    return calls


def tiny(model_dir, **over):
    raw = suite_dict(**{"model": str(model_dir), "eval.limit": 16, "train.batch_size": 32, **over})
    raw["sweep"] = {"lr": [1e-3], "epochs": [1], "mix_ratio": [0.0]}
    return raw


def test_a_model_is_evaluated_once_per_eval_settings(fake_evaluate, write_suite, tiny_model_dir, tmp_path):
    model = str(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    suite = load_suite(write_suite(tiny(model)))
    store = EvalStore(tmp_path / "evals")
    first, path, computed = store.scores(model, suite.tasks, suite.eval)
    again, same, computed_again = store.scores(model, suite.tasks, suite.eval)
    assert computed and not computed_again and same == path and again == first
    assert fake_evaluate == [model]
    assert path.parent == tmp_path / "evals" and first["model"]["dir_content"]

    # other eval settings are another evaluation
    other = load_suite(write_suite(tiny(model, **{"eval.batch_size": 7}), "other.yaml"))
    assert store.scores(model, other.tasks, other.eval)[2]
    # the same folder with another chat template is another model: its stored scores are not reused
    (tmp_path / "model" / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert store.scores(model, suite.tasks, suite.eval)[2]
    assert len(fake_evaluate) == 3


@pytest.mark.parametrize("record", [[{"settings": {}, "tasks": {}}], {"settings": ["list"], "tasks": {}}])
def test_a_stored_record_of_another_shape_is_set_aside_and_evaluated_again(
        fake_evaluate, write_suite, tiny_model_dir, tmp_path, record):
    suite = load_suite(write_suite(tiny(tiny_model_dir)))
    store = EvalStore(tmp_path / "evals")
    path = store.scores(str(tiny_model_dir), suite.tasks, suite.eval)[1]
    path.write_text(json.dumps(record))
    said = []
    again, same, computed = store.scores(str(tiny_model_dir), suite.tasks, suite.eval, warn=said.append)
    assert computed and same == path and len(fake_evaluate) == 2 and json.loads(path.read_text()) == again
    assert len(said) == 1 and "is corrupt; set aside" in said[0]
    assert json.loads(next(path.parent.glob(f"{path.name}.corrupt-*")).read_text()) == record


@pytest.mark.parametrize("where", ["a file", "/sys"])
def test_eval_into_an_unusable_runs_dir_is_refused_before_it_evaluates(
        fake_evaluate, write_suite, tiny_model_dir, tmp_path, capsys, where):
    runs = tmp_path / "file" / "runs"
    (tmp_path / "file").write_text("not a folder")
    if where == "/sys":  # root writes through any mode bits, not into /sys
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no /sys here")
        runs = Path("/sys/forgetbench-runs")
    path = write_suite(tiny(tiny_model_dir))
    capsys.readouterr()
    assert main(["eval", str(tiny_model_dir), "--suite", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"forgetbench: error: --runs-dir {runs}: ") and err.count("\n") == 1, err
    assert fake_evaluate == []
    # and the evaluation store checks before it evaluates, whoever calls it
    with pytest.raises(ForgetbenchError, match=f"^the evaluation store {runs}/evals: "):
        EvalStore(runs / "evals").scores(str(tiny_model_dir), load_suite(path).tasks, load_suite(path).eval)
    assert fake_evaluate == []


def test_forgetbench_eval_stores_what_a_later_sweep_reuses_as_its_baseline(
        fake_evaluate, write_suite, tiny_model_dir, tmp_path, monkeypatch, capsys):
    path, runs = write_suite(tiny(tiny_model_dir)), tmp_path / "runs"
    assert main(["eval", str(tiny_model_dir), "--suite", str(path), "--runs-dir", str(runs)]) == 0
    assert fake_evaluate == [str(tiny_model_dir)]
    assert "evaluated:" in capsys.readouterr().err

    def train(suite, pp, store, stop_after=None):  # training is tested elsewhere: the base model as it is
        shutil.copytree(tiny_model_dir, store.model_dir(pp.id))
        summary = {"steps": 1, "last_step": 1}
        store.append("point_trained", point=pp.id, summary=summary)
        return summary

    monkeypatch.setattr(sweep, "train_one", train)
    # in this process, where the fakes are
    outcome = sweep.run_sweep(load_suite(path), runs, echo=lambda msg: None, executor=InlineExecutor())
    [pid] = outcome.evaluated
    assert fake_evaluate == [str(tiny_model_dir), str(outcome.store.model_dir(pid))]  # no second baseline
    # a point's model is stored with its point, and `forgetbench eval` finds it there
    assert main(["eval", str(outcome.store.model_dir(pid)), "--suite", str(path), "--runs-dir", str(runs)]) == 0
    assert len(fake_evaluate) == 2 and "stored scores: " + str(outcome.store.scores_path(pid, outcome.eval_key)) \
        in capsys.readouterr().err


@pytest.mark.slow
def test_a_point_trains_from_its_point_json_whatever_the_suite_file_says_later(
        write_suite, tiny_model_dir, tmp_path, capsys):
    raw = tiny(tiny_model_dir)
    path, runs = write_suite(raw), tmp_path / "runs"
    suite = load_suite(path)
    [pp] = sweep.plan(suite)
    store = RunStore(runs / suite.name)
    point_file = store.point_dir(pp.id) / "point.json"
    point_file.parent.mkdir(parents=True)
    point_file.write_text(json.dumps(pp.record(suite)))
    # the suite file changes after the point was planned (a later sweep, an edit)
    path.write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "batch_size": 8}}))

    assert main(["train", str(point_file)]) == 0
    assert f"point {pp.id}: " in capsys.readouterr().out
    [trained] = [e for e in store.events() if e["event"] == "point_trained"]
    n_rows = len(read_rows(suite.data.target))
    assert trained["summary"]["steps"] == -(-n_rows // 32)  # the planned batch size, not 8

    # an edited point.json no longer hashes to its id: refused in one line
    record = json.loads(point_file.read_text())
    record["point"]["lr"] = 1.0
    point_file.write_text(json.dumps(record))
    assert main(["train", str(point_file.parent)]) == 2
    assert "no longer hashes to its id" in capsys.readouterr().err
    elsewhere = tmp_path / "point.json"  # copied out of its run directory
    elsewhere.write_text(json.dumps(pp.record(suite)))
    assert main(["train", str(elsewhere)]) == 2
    assert "trains in its run directory" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nowhere.json")]) == 2
    assert main(["train", str(path)]) == 2  # a suite file needs --point
    assert "--point" in capsys.readouterr().err
