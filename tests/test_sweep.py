import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from forgetbench import sweep
from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.datafiles import read_rows
from forgetbench.executor import InlineExecutor
from forgetbench.report.tables import RESULT_COLUMNS
from forgetbench.store import RunStore
from tests.conftest import suite_dict


def tiny_suite(model_dir, **over):
    raw = suite_dict(**{"model": str(model_dir), "eval.limit": 16, "train.batch_size": 32, **over})
    raw["sweep"] = {"lr": [1e-3, 3e-3], "epochs": [1], "mix_ratio": [0.0]}
    return raw


def test_point_ids_hash_the_config_not_the_grid_position(write_suite, tiny_model_dir):
    one = load_suite(write_suite(tiny_suite(tiny_model_dir)))
    ids = {p.point.lr: p.id for p in sweep.plan(one)}
    raw = tiny_suite(tiny_model_dir)
    raw["sweep"]["lr"] = [3e-3, 5e-4, 1e-3]  # reordered, one added
    two = {p.point.lr: p.id for p in sweep.plan(load_suite(write_suite(raw, "b.yaml")))}
    assert two[1e-3] == ids[1e-3] and two[3e-3] == ids[3e-3]
    assert len(set(two.values())) == 3
    changed = load_suite(write_suite(tiny_suite(tiny_model_dir, **{"train.weight_decay": 0.1}), "c.yaml"))
    assert {p.id for p in sweep.plan(changed)}.isdisjoint(ids.values())


def test_a_regularisers_form_is_in_the_point_id_only_where_it_is_decoupled(write_suite, tiny_model_dir):
    from forgetbench.config import Point

    raw = tiny_suite(tiny_model_dir)
    raw["sweep"] = {"lr": [1e-3], "regularizer": ["none", "l2"], "lam": [0.1],
                    "regularizer_form": ["coupled", "decoupled"]}
    suite = load_suite(write_suite(raw))
    by = {(pp.point.regularizer, pp.point.regularizer_form): pp for pp in sweep.plan(suite)}
    assert list(by) == [("none", None), ("l2", "coupled"), ("l2", "decoupled")]  # plain once
    assert len({pp.id for pp in by.values()}) == 3
    # plain and coupled points hash what they hashed before the forms existed: their ids stay
    assert "regularizer_form" not in by["none", None].config["point"]
    assert "regularizer_form" not in by["l2", "coupled"].config["point"]
    assert by["l2", "decoupled"].config["point"]["regularizer_form"] == "decoupled"
    # a point.json written before the forms existed reads as the coupled point, with its id
    old = by["l2", "coupled"].point.model_dump(exclude={"regularizer_form"})
    assert sweep.planned(suite, Point(**old)).id == by["l2", "coupled"].id


def test_seed_replicates_have_their_own_ids_and_train_with_their_seed(
        write_suite, tiny_model_dir, tmp_path, monkeypatch):
    from forgetbench.train import recipe

    raw = tiny_suite(tiny_model_dir)
    unswept = {pp.point.lr: pp.id for pp in sweep.plan(load_suite(write_suite(raw)))}
    raw["sweep"]["seed"] = [0, 1, 2]  # train.seed is 0: the seed-0 replicate is the unswept point
    suite = load_suite(write_suite(raw, "seeds.yaml"))
    planned = sweep.plan(suite)
    assert len(planned) == 3 * len(unswept)
    ids = {(pp.point.lr, pp.point.seed): pp.id for pp in planned}
    for lr, pid in unswept.items():
        assert ids[lr, None] == pid
        assert len({ids[lr, None], ids[lr, 1], ids[lr, 2]}) == 3
    # a replicate trains as the unswept point of a suite whose train.seed is its seed, and
    # has its id
    one = load_suite(write_suite(tiny_suite(tiny_model_dir, **{"train.seed": 1}), "one.yaml"))
    assert {pp.id for pp in sweep.plan(one)} == {ids[lr, 1] for lr in unswept}

    received = []

    def train_point(suite, point, **kwargs):
        received.append((suite.train.seed, point.seed))
        return {"steps": 1, "last_step": 1}

    monkeypatch.setattr(recipe, "train_point", train_point)
    store = RunStore(tmp_path / "runs" / suite.name)
    pp = sweep.planned_point(suite, ids[1e-3, 1])
    sweep.train_one(suite, pp, store)
    # point.json holds the suite the point trains, and still hashes to its id
    recorded, again, _ = sweep.read_point(store.point_dir(pp.id))
    assert recorded.train.seed == 1 and again.id == pp.id and again.point.seed == 1
    sweep.train_one(recorded, again, store)  # what `forgetbench train POINT_JSON` runs
    sweep.train_one(suite, sweep.planned_point(suite, ids[1e-3, None]), store)
    assert received == [(1, 1), (1, 1), (0, None)]


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def trained_events(store):
    return [e for e in store.events() if e["event"] == "point_trained"]


@pytest.mark.slow
def test_sweep_end_to_end_on_a_local_model_directory(write_suite, tiny_model_dir, tmp_path, capsys):
    path = write_suite(tiny_suite(tiny_model_dir))
    runs = tmp_path / "runs"
    assert main(["sweep", str(path), "--runs-dir", str(runs), "--jobs", "2"]) == 0  # both points at once
    out = capsys.readouterr().out
    store = RunStore(runs / "medical")
    assert "2 points, 2 at a time (1 thread each)" in out and out.count(": done (") == 2
    # not a terminal: progress lines carry the time; the run's sweep.log has them with the date
    assert re.search(r"^\d\d:\d\d:\d\d \[1/2\] point ", out, re.M)
    log = (store.root / "sweep.log").read_text().splitlines()
    assert sum(": done (" in line for line in log) == 2
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in log)
    # one compact line per point; the per-task scores are in the files it names
    assert "max forget" in out and "learn:fb_medical" not in out
    assert f"details in {store.root}" in out and "summary.md" in out
    assert (store.root / "suite.yaml").exists()
    summary = read_csv(store.root / "summary.csv")
    assert len(summary) == 2 and {"seed", "learn:fb_medical", "forget:fb_code"} <= set(summary[0])
    md = (store.root / "summary.md").read_text()
    assert md.count("\n| lr ") == 2 and "| setting | learn | forget | max forget | seeds |" in md

    rows = read_csv(store.root / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    # 2 points × (acc + acc_norm for 2 MC tasks, exact_match for 2 generation tasks)
    assert len(rows) == 2 * (2 + 2 + 1 + 1)
    assert {r["role"] for r in rows if r["task"] == "fb_medical"} == {"target"}
    assert {r["role"] for r in rows if r["task"] != "fb_medical"} == {"general"}
    for r in rows:
        assert float(r["delta"]) == pytest.approx(float(r["after"]) - float(r["before"]))
        assert r["n"] == "16"
    heads = [r for r in rows if r["headline"] == "True"]
    assert len(heads) == 2 * 4

    html = (store.root / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # incl. the in-training curves
    assert 'src="http' not in html and "<link" not in html  # self-contained
    for pid in {r["point_id"] for r in rows}:
        log = [json.loads(line) for line in
               (store.point_dir(pid) / "train_log.jsonl").read_text().splitlines()]
        # step 0 is the base model's held-out evaluation, then one line per optimizer step
        assert [r["step"] for r in log] == list(range(len(log)))
        assert "general_loss" in log[0] and "general_loss" in log[-1]
    # keep_models: pareto (the default): the points on the learning-forgetting front keep their
    # exported model, the others' is removed once evaluated, and the journal says so
    front = {r["point_id"] for r in summary if r["pareto"] == "True"}
    deleted = {e["point"] for e in store.events() if e["event"] == "model_deleted"}
    assert front and deleted == {r["point_id"] for r in summary} - front
    assert all((store.model_dir(pid) / "model.safetensors").exists() for pid in front)
    assert not any(store.model_dir(pid).exists() for pid in deleted)

    # a second sweep trains and evaluates nothing
    n_trained = len(trained_events(store))
    n_eval = len([e for e in store.events() if e["event"] == "point_evaluated"])
    assert main(["sweep", str(path), "--runs-dir", str(runs)]) == 0
    assert len(trained_events(store)) == n_trained
    assert len([e for e in store.events() if e["event"] == "point_evaluated"]) == n_eval
    assert read_csv(store.root / "results.csv") == rows

    # widening the grid trains only the new point; --dry-run says so first, with the time it
    # should take from the two points measured here and the disk its model takes
    wider = "sweep.lr=[1e-3,3e-3,5e-4]"
    capsys.readouterr()
    assert main(["sweep", str(path), "--runs-dir", str(runs), "--set", wider, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "to run: 1 to train and evaluate, 0 to evaluate" in plan and plan.count("[evaluated]") == 2
    assert "time: ~" in plan and "the 2 point(s) finished here took" in plan
    assert "disk: each point's exported model ~" in plan
    assert main(["sweep", str(path), "--runs-dir", str(runs), "--set", wider]) == 0
    assert len(trained_events(store)) == n_trained + 1
    assert len(read_csv(store.root / "results.csv")) == 3 * 6

    capsys.readouterr()
    assert main(["status", str(store.root)]) == 0
    assert "3 evaluated" in capsys.readouterr().out

    # one point's whole work is one command: its scores gone, `forgetbench point` evaluates
    # it again (its model is trained: no training) and the journal says so
    pid = next(r["point_id"] for r in read_csv(store.root / "summary.csv")
               if r["pareto"] == "True" and store.model_dir(r["point_id"]).exists())
    shutil.rmtree(store.point_dir(pid) / "scores")
    assert main(["point", str(store.point_dir(pid) / "point.json")]) == 0
    assert len(trained_events(store)) == n_trained + 1
    assert store.states()[pid].status == "evaluated" and any(store.point_dir(pid).glob("scores/*.json"))
    (store.root / "report.html").unlink()
    assert main(["report", str(store.root)]) == 0
    assert (store.root / "report.html").exists()


def abort_at_lr_3e3(point_file):
    """A point's job (run in its own process) that dies as an out-of-memory kill would, at lr 3e-3."""
    if json.loads(Path(point_file).read_text())["point"]["lr"] == 3e-3:
        os.abort()
    return sweep.run_point(point_file)


@pytest.mark.slow
def test_a_crashed_point_process_does_not_stop_the_sweep_and_is_retried(write_suite, tiny_model_dir, tmp_path):
    path = write_suite(tiny_suite(tiny_model_dir))
    suite = load_suite(path)
    [crashing] = [p.id for p in sweep.plan(suite) if p.point.lr == 3e-3]
    runs, said = tmp_path / "runs", []
    outcome = sweep.run_sweep(suite, runs, echo=said.append, work=abort_at_lr_3e3)
    store = outcome.store
    assert list(outcome.failed) == [crashing] and len(outcome.evaluated) == 1
    states = store.states()
    assert sorted(s.status for s in states.values()) == ["evaluated", "failed"]
    assert states[crashing].error == "process killed by SIGABRT"
    # one line for the failure, naming the point's log
    [line] = [s for s in said if "FAILED" in s]
    assert crashing in line and str(store.point_dir(crashing) / "point.log") in line and "\n" not in line
    assert len({r["point_id"] for r in read_csv(store.root / "results.csv")}) == 1
    assert "process killed by SIGABRT" in (store.root / "report.html").read_text()
    assert not store.model_dir(crashing).exists()  # no half-exported model

    assert main(["sweep", str(path), "--runs-dir", str(runs), "--retry-failed"]) == 0
    assert store.states()[crashing].status == "evaluated"
    assert len(trained_events(store)) == 2


def test_train_refuses_a_point_that_is_not_in_the_grid(write_suite, tiny_model_dir, tmp_path, capsys):
    path = write_suite(tiny_suite(tiny_model_dir))
    assert main(["train", str(path), "--point", "0123456789ab", "--runs-dir", str(tmp_path)]) == 2
    assert "not a point of suite 'medical'" in capsys.readouterr().err


def test_dry_run_lists_points_and_writes_nothing(write_suite, tiny_model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["sweep", str(write_suite(tiny_suite(tiny_model_dir))), "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 points" in out and out.count("[pending]") == 2
    assert "to run: 2 to train and evaluate" in out and "time: not known before a point of this run" in out
    assert not runs.exists()


def test_a_model_that_cannot_be_loaded_here_is_refused_before_anything_is_written(write_suite, tmp_path, capsys,
                                                                                   monkeypatch):
    """A hub id with no network and no cached copy, and a folder that holds no model: one
    line naming the suite file and field and the fix, exit code 2, no run directory."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # (read when imported: the env is too late)
    (tmp_path / "empty").mkdir()
    for model, expect in (("no-such-org/no-such-model", "hf download no-such-org/no-such-model"),
                          (str(tmp_path / "empty"), "folder written by save_pretrained")):
        path = write_suite(suite_dict(model=model))
        runs = tmp_path / "runs"
        for command in (["sweep", str(path), "--runs-dir", str(runs)], ["plan", str(path)],
                        ["train", str(path), "--point", "0" * 12, "--runs-dir", str(runs)]):
            err = refused(capsys, *command)
            assert f"{path}: model: cannot load {model}" in err and expect in err
        assert not runs.exists()


def refused(capsys, *argv) -> str:
    """The one stderr line of a command that must end in a user error (exit 2)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("forgetbench: error:") and "Traceback" not in err
    return err


@pytest.mark.parametrize("minutes", ["nan", "inf", "-1", "0"])
def test_a_point_timeout_not_a_positive_number_is_refused_before_anything_is_written(
        write_suite, tmp_path, capsys, minutes):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as stop:  # argparse's usage, then its one line
        main(["sweep", str(write_suite(suite_dict())), "--runs-dir", str(runs), "--point-timeout", minutes])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"forgetbench sweep: error: argument --point-timeout: '{minutes}': give a positive number of minutes, e.g. 90")
    assert not runs.exists()


def test_a_wrong_metric_is_refused_before_the_base_model_is_evaluated(write_suite, tiny_model_dir, tmp_path, capsys):
    raw = tiny_suite(tiny_model_dir)
    raw["tasks"]["general"][1]["metric"] = "accuracy"
    path, runs = write_suite(raw), tmp_path / "runs"
    err = refused(capsys, "sweep", str(path), "--runs-dir", str(runs))
    assert (f"{path}: tasks.general[1].metric: 'accuracy' is not a metric lm-eval reports for task "
            "'fb_addition'; valid: exact_match") in err
    assert not runs.exists()


def test_epochs_that_give_no_optimizer_step_are_refused_before_anything_is_written(
        write_suite, tiny_model_dir, tmp_path, capsys):
    raw = tiny_suite(tiny_model_dir)
    raw["sweep"]["epochs"] = [1, 0.001]
    path, runs = write_suite(raw), tmp_path / "runs"
    n_rows = len(read_rows(load_suite(path).data.target))
    for command in (["sweep", str(path), "--runs-dir", str(runs)],
                    ["train", str(path), "--point", "0" * 12, "--runs-dir", str(runs)]):
        err = refused(capsys, *command)
        assert (f"{path}: sweep.epochs: 0.001 epochs of the {n_rows} rows of data.target" in err
                and f"use at least {1 / n_rows:.3g}" in err)
    assert not runs.exists()
    # the value it suggests trains one example
    sweep.check_training(load_suite(path, [f"sweep.epochs=[{1 / n_rows:.3g}]"]), str(path))


def test_a_max_seq_len_the_prompts_fill_is_refused_before_anything_is_written(
        write_suite, tiny_model_dir, tmp_path, capsys):
    path, runs = write_suite(tiny_suite(tiny_model_dir, **{"train.max_seq_len": 3})), tmp_path / "runs"
    err = refused(capsys, "sweep", str(path), "--runs-dir", str(runs))
    assert f"{path}: train.max_seq_len: 3 tokens leave no completion token in any row of data.target" in err
    assert not runs.exists()
    longest = int(err.split("raise it above ")[1].split()[0])
    # the length it names leaves every row at least one completion token
    sweep.check_training(load_suite(path, [f"train.max_seq_len={longest + 1}"]), str(path))



def test_a_max_seq_len_above_the_models_context_is_refused_before_anything_is_written(
        write_suite, tiny_model_dir, tmp_path, capsys):
    context = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    path, runs = write_suite(tiny_suite(tiny_model_dir, **{"train.max_seq_len": context + 1})), tmp_path / "runs"
    assert refused(capsys, "sweep", str(path), "--runs-dir", str(runs), "--dry-run") == (
        f"forgetbench: error: {path}: train.max_seq_len: {context + 1} tokens is more than the context length of model "
        f"{tiny_model_dir} ({context} tokens); set it to {context} or less\n")
    assert not runs.exists()
    sweep.check_training(load_suite(path, [f"train.max_seq_len={context}"]), str(path))

def test_a_point_that_stops_on_a_user_error_is_recorded_failed_not_running(
        write_suite, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from forgetbench.errors import ForgetbenchError
    from forgetbench.train import recipe

    path, runs = write_suite(tiny_suite(tiny_model_dir)), tmp_path / "runs"
    suite = load_suite(path)
    first, second = (pp.id for pp in sweep.plan(suite))
    store = RunStore(runs / suite.name)

    # inside the training process, after point_started (e.g. the recipe's own checks)
    def refuse(*args, **kwargs):
        raise ForgetbenchError("train.max_seq_len: no completion token left")

    monkeypatch.setattr(recipe, "train_point", refuse)
    with pytest.raises(ForgetbenchError):
        sweep.train_one(suite, sweep.planned_point(suite, first), store)
    assert store.states()[first].status == "failed"
    assert store.states()[first].error == "train.max_seq_len: no completion token left"

    # a child that exits 2 after point_started without recording why
    code = (f"import sys; from forgetbench.store import RunStore; "
            f"RunStore({str(store.root)!r}).append('point_started', point={second!r}); sys.exit(2)")
    monkeypatch.setattr(sweep, "train_command", lambda *a: [sys.executable, "-c", code])
    with pytest.raises(ForgetbenchError, match=f"point {second}: training stopped"):
        sweep.launch_training(store, second, 1)
    assert store.states()[second].status == "failed"
    capsys.readouterr()
    assert main(["status", str(store.root)]) == 0
    assert "  running" not in capsys.readouterr().out


def test_a_data_file_with_a_byte_that_is_not_utf8_is_one_line_naming_file_and_line(
        write_suite, tiny_model_dir, tmp_path, capsys):
    replay = tmp_path / "replay.jsonl"
    replay.write_bytes(b'{"text": "one"}\n{"text": "\xff"}\n')
    path, runs = write_suite(tiny_suite(tiny_model_dir, **{"data.replay": str(replay)})), tmp_path / "runs"
    err = refused(capsys, "sweep", str(path), "--runs-dir", str(runs))
    assert f"{replay}:2: not UTF-8 text" in err
    assert not runs.exists()


@pytest.fixture
def fake_work(monkeypatch):
    """A point's training and every evaluation, faked (both are tested elsewhere: tests/train,
    tests/eval); the models it evaluated, in order."""
    from forgetbench.eval import harness

    evaluated = []

    def evaluate(model_dir, tasks, spec, **kwargs):
        evaluated.append(str(model_dir))
        samples = [{"doc_id": i, "cluster": str(i), "values": {"acc": float(i % 2), "exact_match": 0.0}}
                   for i in range(4)]
        metric = {"value": 0.5, "stderr": 0.1, "higher_is_better": True}
        return {"settings": {}, "tasks": {t.name: {"metrics": {t.metric: metric}, "n": 4, "samples": samples}
                                          for t, _ in tasks.all()}}

    def train(suite, pp, store, stop_after=None):
        (store.model_dir(pp.id) / "config.json").parent.mkdir(parents=True)
        (store.model_dir(pp.id) / "config.json").write_text("{}")
        store.append("point_trained", point=pp.id, summary={"steps": 1, "last_step": 1})
        return {"steps": 1, "last_step": 1}

    monkeypatch.setattr(harness, "evaluate", evaluate)
    monkeypatch.setattr(sweep, "train_one", train)
    return evaluated


def test_a_corrupt_stored_result_fails_report_in_one_line_and_the_next_sweep_recomputes_it(
        write_suite, tiny_model_dir, tmp_path, fake_work, capsys):
    suite = load_suite(write_suite(tiny_suite(tiny_model_dir)))
    runs = tmp_path / "runs"
    store = RunStore(runs / suite.name)
    evaluated = fake_work
    outcome = sweep.run_sweep(suite, runs, echo=lambda msg: None, executor=InlineExecutor())
    assert len(evaluated) == 3 and len(outcome.evaluated) == 2
    first = outcome.evaluated[0]
    scores = store.scores_path(first, outcome.eval_key)
    [baseline] = (runs / "evals").glob("*.json")
    text = scores.read_text()
    scores.write_text(text[:len(text) // 2])  # truncated

    err = refused(capsys, "report", str(store.root))
    assert f"{scores}: stored result is corrupt" in err and "forgetbench sweep" in err
    baseline.write_bytes(b"\xff")

    said = []
    again = sweep.run_sweep(suite, runs, echo=said.append, executor=InlineExecutor())
    assert evaluated[3:] == [str(tiny_model_dir), str(store.model_dir(first))]  # the two, no more
    assert again.evaluated == [first] and len(again.skipped) == 1
    assert len(list(scores.parent.glob(f"{scores.name}.corrupt-*"))) == 1
    assert len(list(baseline.parent.glob(f"{baseline.name}.corrupt-*"))) == 1
    assert sum(line.startswith("warning:") and "is corrupt" in line for line in said) == 2
    assert main(["report", str(store.root)]) == 0


def test_a_torn_point_json_leaves_status_and_report_whole_and_the_next_sweep_rebuilds_it(
        write_suite, tiny_model_dir, tmp_path, fake_work, capsys):
    suite = load_suite(write_suite(tiny_suite(tiny_model_dir)))
    runs = tmp_path / "runs"
    outcome = sweep.run_sweep(suite, runs, echo=lambda msg: None, executor=InlineExecutor())
    store, first = outcome.store, outcome.evaluated[0]
    label = {pp.id: pp.point.label() for pp in sweep.plan(suite)}[first]
    point_file = store.point_dir(first) / "point.json"
    whole = point_file.read_text()
    point_file.write_text(whole[:len(whole) // 2])  # truncated, by a full disk or a copy cut short
    capsys.readouterr()

    assert main(["status", str(store.root)]) == 0  # the point as the journal recorded its plan
    assert f"{first}  evaluated  ({label})" in capsys.readouterr().out
    assert main(["report", str(store.root)]) == 0
    assert len(read_csv(store.root / "summary.csv")) == 2
    said = []
    again = sweep.run_sweep(suite, runs, echo=said.append, executor=InlineExecutor())
    assert sorted(again.skipped) == sorted(outcome.evaluated) and len(fake_work) == 3  # nothing run again
    assert json.loads(point_file.read_text()) == json.loads(whole)  # rebuilt from the plan
    [aside] = point_file.parent.glob("point.json.corrupt-*")
    assert aside.read_text() == whole[:len(whole) // 2]
    assert [line for line in said if "is corrupt" in line] == [
        f"warning: {point_file} is corrupt; set aside as {aside.name}, recomputing it"]


def test_a_disk_full_while_the_report_is_written_is_one_line_and_report_finishes_it(
        write_suite, tiny_model_dir, tmp_path, fake_work, monkeypatch, capsys):
    import errno

    from forgetbench import report

    suite = load_suite(write_suite(tiny_suite(tiny_model_dir)))
    outcome = sweep.run_sweep(suite, tmp_path / "runs", echo=lambda msg: None, executor=InlineExecutor())
    root = outcome.store.root
    written = {name: (root / name).read_text() for name in ("results.csv", "summary.csv", "summary.md")}
    (root / "summary.md").unlink()
    write = report.atomic_write_text

    def full_disk(path, text):
        if path.name == "summary.md":
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, text)

    monkeypatch.setattr(report, "atomic_write_text", full_disk)
    capsys.readouterr()
    err = refused(capsys, "report", str(root))
    assert err == (f"forgetbench: error: {root / 'summary.md'}: could not be written (No space left on device); "
                   "the scores are stored and no table is half-written; once that is fixed (a full disk: free "
                   f"some space), `forgetbench report {root}` writes the tables and report\n")
    assert not (root / "summary.md").exists() and (root / "results.csv").read_text() == written["results.csv"]
    monkeypatch.setattr(report, "atomic_write_text", write)
    assert main(["report", str(root)]) == 0
    assert {name: (root / name).read_text() for name in written} == written


def test_a_sweep_into_an_unusable_runs_dir_is_refused_before_anything_is_written(
        write_suite, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    path, runs = write_suite(tiny_suite(tiny_model_dir)), tmp_path / "file" / "runs"
    err = refused(capsys, "sweep", str(path), "--runs-dir", str(runs))
    assert err.startswith(f"forgetbench: error: --runs-dir {runs / 'medical'}: {tmp_path / 'file'} is not a folder")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize("keep", ["pareto", "all", "none"])
def test_keep_models_removes_the_models_not_kept_and_compare_still_reads_their_scores(
        write_suite, tiny_model_dir, tmp_path, monkeypatch, keep):
    from forgetbench.eval import harness

    raw = tiny_suite(tiny_model_dir, keep_models=keep)
    raw["sweep"]["lr"] = [1e-3, 2e-3, 3e-3]
    suite = load_suite(write_suite(raw))
    # the base model scores 1 on every item; the points, by lr: learning 0.5, 0.5, 0.75 and
    # forgetting 0.25, 0.5, 0.25: 3e-3 dominates the other two
    quality = {str(tiny_model_dir): (0.0, 1.0)}
    for pp in sweep.plan(suite):
        quality[str(RunStore(tmp_path / "runs" / suite.name).model_dir(pp.id))] = {
            1e-3: (0.5, 0.75), 2e-3: (0.5, 0.5), 3e-3: (0.75, 0.75)}[pp.point.lr]

    def evaluate(model_dir, tasks, spec, **kwargs):
        target, general = quality[str(model_dir)]
        out = {}
        for t, role in tasks.all():
            value = target if role == "target" else general
            samples = [{"doc_id": i, "cluster": str(i), "values": {t.metric: float(i < value * 4)}}
                       for i in range(4)]
            out[t.name] = {"metrics": {t.metric: {"value": value, "stderr": 0.1, "higher_is_better": True}},
                           "n": 4, "samples": samples}
        return {"settings": harness.eval_settings(tasks, spec), "tasks": out}

    def train(suite, pp, store, stop_after=None):
        store.model_dir(pp.id).mkdir(parents=True)
        (store.model_dir(pp.id) / "config.json").write_text("{}")
        store.append("point_trained", point=pp.id, summary={"steps": 1, "last_step": 1})
        return {"steps": 1, "last_step": 1}

    monkeypatch.setattr(harness, "evaluate", evaluate)
    monkeypatch.setattr(sweep, "train_one", train)
    outcome = sweep.run_sweep(suite, tmp_path / "runs", echo=lambda msg: None, executor=InlineExecutor())
    store = outcome.store
    kept = {pp.point.lr for pp in sweep.plan(suite) if store.model_dir(pp.id).exists()}
    assert kept == {"pareto": {3e-3}, "all": {1e-3, 2e-3, 3e-3}, "none": set()}[keep]
    deleted = [e["point"] for e in store.events() if e["event"] == "model_deleted"]
    assert len(deleted) == 3 - len(kept) and all(store.states()[p].model_deleted for p in deleted)
    # a second sweep trains nothing again, and compare reads a removed point's stored scores
    again = sweep.run_sweep(suite, tmp_path / "runs", echo=lambda msg: None, executor=InlineExecutor())
    assert not again.trained and len(again.skipped) == 3
    if deleted:
        from forgetbench import compare

        side = compare.resolve_side(f"{store.root}:{deleted[0]}")
        assert side.model is None and side.record == store.scores_path(deleted[0], outcome.eval_key)
