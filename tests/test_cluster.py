"""Points as cluster jobs (submitit) and the preemption signal: a point stops at a checkpoint
on SIGUSR2, under torchrun too, and a job preempted through submitit is requeued and resumes
there. The real job path runs through submitit's local executor (processes, no queue)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.store import Event, RunStore, atomic_write_json
from forgetbench.sweep import plan
from forgetbench.train import checkpoint, preempt
from tests.conftest import REPO
from tests.test_sweep import tiny_suite

CLI = [sys.executable, "-m", "forgetbench"]


def long_suite(model_dir, lrs=(1e-3,), epochs=10, **over):
    """Points that train long enough (``epochs`` 10: 390 steps) to be signalled midway on any machine."""
    raw = tiny_suite(model_dir, **{"train.batch_size": 8, **over})
    raw["sweep"] = {"lr": list(lrs), "epochs": [epochs], "mix_ratio": [0.0]}
    raw["tasks"]["general"] = raw["tasks"]["general"][:1]
    return raw


@pytest.fixture(autouse=True)
def no_process_left(tmp_path):
    """Whatever a test leaves running under its folder (a failed test's jobs) is ended, so it
    does not slow the tests after it."""
    yield
    for proc in psutil.process_iter(["cmdline"]):
        if str(tmp_path) in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def wait_for_steps(store: RunStore, pid: str, steps: int, proc: subprocess.Popen | None = None,
                   timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(store.train_log(pid)) <= steps:
        assert proc is None or proc.poll() is None, "the point ended before it was signalled"
        assert time.monotonic() < deadline, f"no step {steps} within {timeout} s"
        time.sleep(0.2)


def events(store: RunStore, pid: str) -> list[str]:
    return [e["event"] for e in store.events() if e.get("point") == pid]


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_the_preemption_signal_stops_a_point_at_a_checkpoint_which_it_resumes_from(
        write_suite, tiny_model_dir, tmp_path, nproc):
    suite = load_suite(write_suite(long_suite(tiny_model_dir, **{"train.nproc": nproc})))
    [pp] = plan(suite)
    store = RunStore(tmp_path / "runs" / suite.name)
    point_file = store.point_dir(pp.id) / "point.json"
    atomic_write_json(point_file, pp.record(suite))
    log = open(tmp_path / "point.out", "w")
    proc = subprocess.Popen([*CLI, "point", str(point_file)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for_steps(store, pp.id, 5, proc)
    os.kill(proc.pid, signal.SIGUSR2)  # to the point process: under torchrun it passes it on
    assert proc.wait(timeout=120) == preempt.PAUSED_EXIT, (tmp_path / "point.out").read_text()[-2000:]
    out = (tmp_path / "point.out").read_text()
    assert "stopped at a checkpoint on the preemption signal" in out
    state = store.states()[pp.id]
    assert state.status == "paused"
    saved = checkpoint.latest(store.point_dir(pp.id) / "checkpoints")
    paused_at = int(saved.name.removeprefix("step_"))
    assert 5 <= paused_at < 390 and not store.model_dir(pp.id).exists()
    # torchrun ignored the signal and its workers stopped: nothing of the point is left running
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(point_file) in " ".join(p.info["cmdline"] or [])]
    if nproc == 2:
        assert "world_size\": 2" in json.dumps(store.events())
        return  # resuming a 2-process checkpoint is tests/train/test_checkpoint.py's
    done = subprocess.run([*CLI, "point", str(point_file)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from step {paused_at}" in done.stdout
    steps = [r["step"] for r in store.train_log(pp.id)]
    assert steps == list(range(0, 390 + 1))  # the steps after the checkpoint once, none lost
    assert events(store, pp.id)[-3:] == [Event.POINT_STARTED, Event.POINT_TRAINED, Event.POINT_EVALUATED]


def submitted_pid(store: RunStore, pid: str) -> int:
    """The submitit task process running point ``pid`` (the parent of the point's process, as
    its heartbeat names it): the process Slurm signals."""
    deadline = time.monotonic() + 60
    while not (store.point_dir(pid) / "heartbeat").exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    child = json.loads((store.point_dir(pid) / "heartbeat").read_text())["pid"]
    parent = psutil.Process(child).parent()
    assert "submitit.core._submit" in " ".join(parent.cmdline())
    return parent.pid


@pytest.mark.slow
def test_a_submitit_sweep_submits_follows_requeues_a_preempted_point_and_collects(
        write_suite, tiny_model_dir, tmp_path, capsys):
    raw = long_suite(tiny_model_dir, epochs=40)  # one long point (1560 steps) to preempt, one short
    raw["sweep"] = [raw["sweep"], {"lr": [3e-3], "epochs": [2], "mix_ratio": [0.0]}]
    path = write_suite(raw)
    runs = tmp_path / "runs"
    sweep = [*CLI, "sweep", str(path), "--runs-dir", str(runs), "--executor", "submitit-local"]
    # (to files: submitit's local jobs keep the sweep's stdout and stderr, and a pipe would stay open)
    with open(tmp_path / "queued.out", "w") as out:
        queued = subprocess.run([*sweep, "--no-wait"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    text = (tmp_path / "queued.out").read_text()
    assert queued.returncode == 0, text[-2000:]
    assert "3 job(s) queued or running" in text
    store = RunStore(runs / "medical")
    ids = [pp.id for pp in plan(load_suite(path))]
    jobs = store.submitted_jobs()
    assert set(jobs) == {"base model", *ids} and {e["executor"] for e in jobs.values()} == {"submitit-local"}
    assert not (store.root / "results.csv").exists()  # nothing is written before the jobs are done

    # the jobs run without a sweep (they have just started: importing takes seconds): status
    # tells, and a local sweep is refused (it would train the points again beside their jobs)
    assert main(["status", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "cluster job(s) queued or running (submitit-local)" in out and "submitit-local job" in out
    assert main(["sweep", str(path), "--runs-dir", str(runs)]) == 2
    assert "still queued or running as submitit-local job" in capsys.readouterr().err

    # the same sweep command follows the queued jobs; meanwhile the long point is preempted:
    # SIGUSR2 to its job's task, as Slurm sends it; submitit calls the job's checkpoint(), the
    # point stops at a checkpoint, and the job is requeued
    task = submitted_pid(store, ids[0])
    wait_for_steps(store, ids[0], 20)
    with open(tmp_path / "follow.out", "w") as out:
        follow = subprocess.Popen(sweep, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while f"{ids[0]} (lr 0.001, epochs 40, mix 0): following" not in (store.root / "sweep.log").read_text():
        assert follow.poll() is None and time.monotonic() < deadline, (tmp_path / "follow.out").read_text()[-2000:]
        time.sleep(0.2)
    assert store.train_log(ids[0])[-1]["step"] < store.train_log(ids[0])[-1]["total_steps"]  # still training
    os.kill(task, signal.SIGUSR2)
    follow.wait(timeout=900)
    text = (tmp_path / "follow.out").read_text()
    assert follow.returncode == 0, text[-3000:]
    assert "submitted as" not in text
    assert len([e for e in store.events() if e["event"] == Event.JOB_SUBMITTED]) == 3  # nothing twice
    paused = [e for e in store.events() if e["event"] == Event.POINT_PAUSED]
    assert [e["point"] for e in paused] == [ids[0]]
    assert events(store, ids[0])[:6] == [Event.JOB_SUBMITTED, Event.POINT_STARTED, Event.POINT_PAUSED,
                                         Event.POINT_STARTED, Event.POINT_TRAINED, Event.POINT_EVALUATED]
    trained = store.states()[ids[0]].train
    assert trained["resumed_from_step"] == paused[0]["step"] >= 20
    assert [r["step"] for r in store.train_log(ids[0])] == list(range(0, trained["steps"] + 1))
    log = (store.point_dir(ids[0]) / "point.log").read_text()
    assert log.count("--- ") == 2 and f"resumed from step {paused[0]['step']}" in log  # two attempts, one log
    df = pd.read_csv(store.root / "results.csv")
    assert set(df["point_id"]) == set(ids) and df["after"].notna().all()


def test_the_dry_run_shows_the_slurm_job_array_with_each_task_s_command(write_suite, tiny_model_dir, tmp_path,
                                                                           capsys):
    raw = tiny_suite(tiny_model_dir)
    raw["cluster"] = {"partition": "h100", "account": "ml", "time": 180, "setup": ["source /opt/venv/bin/activate"],
                      "sbatch": {"constraint": "80gb", "exclusive": True}}
    path = write_suite(raw)
    runs = tmp_path / "runs"
    assert main(["sweep", str(path), "--runs-dir", str(runs), "--executor", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=h100", "#SBATCH --account=ml",
                 "#SBATCH --time=180", "#SBATCH --signal=USR2@120", "#SBATCH --constraint=80gb",
                 "#SBATCH --exclusive", "#SBATCH --nodes=1", "source /opt/venv/bin/activate",
                 "-m submitit.core._submit"):
        assert line in out, line
    ids = [pp.id for pp in plan(load_suite(path))]
    run_dir = runs.resolve() / "medical"
    assert f"[0] forgetbench eval {tiny_model_dir} --suite {run_dir / 'suite.yaml'}" in out
    for i, pid in enumerate(ids, 1):
        assert f"[{i}] forgetbench point {run_dir / 'points' / pid / 'point.json'}" in out
    assert not runs.exists()  # a dry run writes nothing


def test_cluster_settings_errors_are_one_line_naming_file_and_field(write_suite, tiny_model_dir, tmp_path, capsys):
    path = write_suite(tiny_suite(tiny_model_dir))
    bad = tmp_path / "cluster.yaml"
    bad.write_text("partition: gpu\ntime: -5\n")
    assert main(["sweep", str(path), "--runs-dir", str(tmp_path), "--executor", "slurm", "--cluster", str(bad),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}: time:" in err
    assert main(["sweep", str(path), "--runs-dir", str(tmp_path), "--no-wait"]) == 2
    assert "--no-wait goes with --executor slurm" in capsys.readouterr().err
    if shutil.which("sbatch") is None:  # (CI's machines have no Slurm)
        assert main(["sweep", str(path), "--runs-dir", str(tmp_path), "--executor", "slurm"]) == 2
        assert "sbatch is not found on this machine; run the sweep on a Slurm login node" in capsys.readouterr().err
    assert not (tmp_path / "medical").exists()
