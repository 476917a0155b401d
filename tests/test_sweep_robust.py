"""A sweep survives what happens to real runs: kill -9 at any moment, a second sweep on the
same run directory, a lock left by a dead sweep, a diverging point, and tells the truth
about it in `forgetbench status`."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from forgetbench.cli import main
from forgetbench.store import Event, RunStore, SweepLock, remove_partial_files
from tests.conftest import REPO
from tests.test_sweep import tiny_suite

SWEEP = [sys.executable, "-m", "forgetbench", "sweep"]


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid``: a sweep started in a session of its own, with its fork
    server and every job (each job is a process group of its own, in the same session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the command: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def kill_session(sid: int) -> None:
    for _ in range(5):  # a process may fork while we kill: until none is left
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def scores(runs: Path) -> pd.DataFrame:
    df = pd.read_csv(runs / "medical" / "results.csv")
    return df[["point_id", "task", "metric", "before", "after"]].sort_values(["point_id", "task", "metric"],
                                                                            ignore_index=True)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_results(write_suite, tiny_model_dir, tmp_path):
    path = write_suite(tiny_suite(tiny_model_dir))
    whole = tmp_path / "whole"
    start = time.monotonic()
    subprocess.run([*SWEEP, str(path), "--runs-dir", str(whole), "--jobs", "2"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    duration = time.monotonic() - start

    runs, rng, kills = tmp_path / "killed", random.Random(0), 0
    for _ in range(4):  # several kills in one run directory, each at a random moment of the sweep
        sweep = subprocess.Popen([*SWEEP, str(path), "--runs-dir", str(runs), "--jobs", "2"], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            # within the first half of a whole run's time: every attempt starts up again (imports,
            # checks), so the first two at least are killed with work left, on any machine
            sweep.wait(timeout=rng.uniform(0.1, 0.5) * duration)
        except subprocess.TimeoutExpired:
            kills += 1
        kill_session(sweep.pid)  # the sweep, its fork server and its jobs, all at once
        sweep.wait()
        if (runs / "medical").exists():
            assert any("no sweep running" in line for line in status(runs))
    assert kills >= 2, "the sweep finished before most kills: kill earlier"

    done = subprocess.run([*SWEEP, str(path), "--runs-dir", str(runs), "--jobs", "2"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    pd.testing.assert_frame_equal(scores(runs), scores(whole))
    root = runs / "medical"
    assert not remove_partial_files(root), "half-written files left behind"
    assert not list(root.rglob("*.corrupt-*"))
    assert status(runs)[-1] == f"{scores(runs)['point_id'].nunique()} evaluated"


@pytest.mark.slow
def test_sigterm_ends_a_sweep_as_ctrl_c_does(write_suite, tiny_model_dir, tmp_path):
    """kill PID (a CI job cancelled, systemd stopping a unit): the running point recorded
    interrupted, the lock released, one line, exit 143 (128 + SIGTERM), nothing left running."""
    raw = tiny_suite(tiny_model_dir)
    raw["sweep"].update(lr=[1e-3, 2e-3], epochs=[4])  # a point trains for seconds: long enough
    path, runs = write_suite(raw), tmp_path / "runs"
    store = RunStore(runs / "medical")
    sweep = subprocess.Popen([*SWEEP, str(path), "--runs-dir", str(runs)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        end = time.monotonic() + 180
        while not any(e["event"] == Event.POINT_STARTED for e in store.events()):
            assert sweep.poll() is None and time.monotonic() < end, "no point started training"
            time.sleep(0.1)
        sweep.send_signal(signal.SIGTERM)  # the sweep alone: it ends its jobs
        _, err = sweep.communicate(timeout=120)
        end = time.monotonic() + 30  # its fork server ends once it is gone
        while session_pids(sweep.pid) and time.monotonic() < end:
            time.sleep(0.1)
        assert not session_pids(sweep.pid), "a process of the sweep outlived it"
    finally:
        kill_session(sweep.pid)
    assert sweep.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.splitlines()[-1] == "forgetbench: stopped by SIGTERM; run the same command again to resume"
    assert "Traceback" not in err
    assert "interrupted" in {state.status for state in store.states().values()}
    assert SweepLock(store.root).holder() is None and (store.root / "sweep.lock").read_text() == ""  # released


def status(runs: Path) -> list[str]:
    from forgetbench.status import status_lines

    return status_lines(runs / "medical")


@pytest.mark.slow
def test_a_second_sweep_on_a_run_directory_in_use_is_refused(write_suite, tiny_model_dir, tmp_path, capsys):
    raw = tiny_suite(tiny_model_dir)
    raw["sweep"].update(lr=[1e-3, 2e-3, 3e-3, 4e-3], epochs=[2])  # one point at a time: long enough
    path, runs = write_suite(raw), tmp_path / "runs"
    first = subprocess.Popen([*SWEEP, str(path), "--runs-dir", str(runs)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = SweepLock(runs / "medical")
        end = time.monotonic() + 120
        # the lock, then the suite it runs (written once it has planned its points: a moment later)
        while lock.holder() is None or not (runs / "medical" / "suite.yaml").exists():
            assert first.poll() is None and time.monotonic() < end, "the first sweep never took the lock"
            time.sleep(0.1)
        suite_file = (runs / "medical" / "suite.yaml").read_text()
        other = write_suite(tiny_suite(tiny_model_dir, **{"train.weight_decay": 0.1}), "other.yaml")
        assert main(["sweep", str(other), "--runs-dir", str(runs)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another sweep is running on this run directory" in err
        assert f"pid {first.pid} on " in err
        assert (runs / "medical" / "suite.yaml").read_text() == suite_file  # the first one's, untouched
        # status tells it is running, with the sweep's pid
        capsys.readouterr()
        assert main(["status", str(runs / "medical")]) == 0
        assert f"sweep running: pid {first.pid}" in capsys.readouterr().out
    finally:
        kill_session(first.pid)
        first.wait()


def test_a_lock_whose_sweep_is_gone_is_taken_over_with_a_warning(tmp_path):
    root = tmp_path / "medical"
    root.mkdir()
    (root / "sweep.lock").write_text(json.dumps({"host": "node7", "pid": 4242, "started": 0}))
    said = []
    with SweepLock(root).acquire(said.append, jobs=1) as lock:
        assert said == [f"warning: {root}: the sweep that held it (pid 4242 on node7, since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(0))}) is gone; "
                        "taking it over and resuming its points"]
        assert lock.holder()["pid"] == os.getpid()
        with pytest.raises(Exception, match="another sweep is running on this run directory"):
            SweepLock(root).acquire(said.append)
    assert SweepLock(root).holder() is None
    said.clear()
    SweepLock(root).acquire(said.append).release()  # a clean release leaves nothing to warn about
    assert said == []


def test_status_tells_a_running_point_from_one_whose_sweep_is_gone(tmp_path):
    from forgetbench.status import status_lines

    root = tmp_path / "medical"
    store = RunStore(root)
    (root / "suite.yaml").parent.mkdir(parents=True)
    (root / "suite.yaml").write_text("name: medical\n")
    # killed during the baseline: a run directory all the same
    assert status_lines(root)[:2] == ["no sweep running", "base model: not evaluated (the sweep stopped first; "
                                      "`forgetbench sweep` resumes)"]
    store.append(Event.BASELINE_EVALUATED, eval_key="k", path="baseline/x.json")
    for pid in ("aaa", "bbb"):
        store.append(Event.POINT_STARTED, point=pid, world_size=1)
        store.point_dir(pid).mkdir(parents=True)
        (store.point_dir(pid) / "train_log.jsonl").write_text(json.dumps({"step": 7}) + "\n")
        (store.point_dir(pid) / "heartbeat").write_text("{}")
    store.append(Event.POINT_FAILED, point="bbb", error="non-finite gradient norm at step 3 (lr 10.0)")
    now = time.time()
    lines = status_lines(root, now)
    assert "aaa  interrupted  step 7; its sweep is gone (`forgetbench sweep` resumes it)" in lines
    assert "bbb  failed  non-finite gradient norm at step 3 (lr 10.0)" in lines
    with SweepLock(root).acquire(lambda _: None, jobs=2):
        lines = status_lines(root, now)
        assert lines[0].startswith(f"sweep running: pid {os.getpid()}") and "2 point(s) at a time" in lines[0]
        assert "aaa  running  step 7, alive 0 s ago" in lines
        assert "aaa  hung?  step 7, no sign of life for 60 min" in status_lines(root, now + 3600)


@pytest.mark.slow
def test_a_diverging_point_fails_alone_and_is_retried_only_when_asked(write_suite, tiny_model_dir, tmp_path, capsys):
    raw = tiny_suite(tiny_model_dir)
    raw["sweep"]["lr"] = [1e-3, 1e30]  # 1e30: the first update overflows the activations to inf, then NaN
    path, runs = write_suite(raw), tmp_path / "runs"
    assert main(["sweep", str(path), "--runs-dir", str(runs), "--jobs", "2"]) == 1
    out = capsys.readouterr().out
    [line] = [s for s in out.splitlines() if "FAILED" in s]
    assert "non-finite" in line and "lower the learning rate" in line and "point.log" in line
    assert "Traceback" not in out
    store = RunStore(runs / "medical")
    [bad] = [pid for pid, st in store.states().items() if st.status == "failed"]
    assert "FloatingPointError" in (store.point_dir(bad) / "point.log").read_text()  # the traceback is there
    assert "non-finite" in (store.root / "report.html").read_text()  # the report lists it, with why

    assert main(["sweep", str(path), "--runs-dir", str(runs)]) == 1  # not run again
    out = capsys.readouterr().out
    assert "1 of them failed in an earlier sweep and were not run again; --retry-failed runs them" in out
    assert len([e for e in store.events() if e["event"] == Event.POINT_STARTED and e["point"] == bad]) == 1
    assert main(["sweep", str(path), "--runs-dir", str(runs), "--retry-failed"]) == 1
    assert len([e for e in store.events() if e["event"] == Event.POINT_STARTED and e["point"] == bad]) == 2


def test_out_of_memory_names_the_plan_and_the_fixes(write_suite, tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from forgetbench import sweep
    from forgetbench.config import load_suite
    from forgetbench.train import recipe

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(recipe, "train_point", oom)
    suite = load_suite(write_suite(tiny_suite(tiny_model_dir)))
    pp = sweep.plan(suite)[0]
    store = RunStore(tmp_path / "runs" / suite.name)
    with pytest.raises(torch.OutOfMemoryError):
        sweep.train_one(suite, pp, store)
    error = store.states()[pp.id].error
    assert error.startswith("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); the planner "
                            "expected ") and " GB per GPU of " in error
    assert "train.batch_size" in error and "activation_checkpointing" in error and "train.nproc" in error
