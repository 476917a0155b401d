"""The local executor: jobs in processes of their own, some at once, each with its lane's share
of the machine; what a job's end says; and no job outliving the sweep that started it.

The job functions are module-level: a job is pickled by reference and runs in a process
forked from the executor's server, which imports this module by name."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from forgetbench.errors import ForgetbenchError
from forgetbench.executor import InlineExecutor, Job, Lane, LocalExecutor, lanes
from tests.conftest import REPO


def meet(mine: str, theirs: str, timeout: float = 60.0) -> int:
    """Create ``mine``, then wait for ``theirs``: two jobs both end 0 only if they ran at once."""
    Path(mine).write_text("here")
    end = time.monotonic() + timeout
    while not Path(theirs).exists():
        if time.monotonic() > end:
            return 1
        time.sleep(0.05)
    return 0


def report(out: str) -> None:
    import torch

    Path(out).write_text(json.dumps({"threads": torch.get_num_threads(), "pid": os.getpid(),
                                     "omp": os.environ.get("OMP_NUM_THREADS"),
                                     "mine": os.environ.get("FB_TEST_MARK")}))


def fail_as_user() -> None:
    raise ForgetbenchError("suite.yaml: train.lr: the fix")


def crash() -> None:
    raise RuntimeError("a bug")


def abort() -> None:
    os.abort()


def sleep_then_write(out: str, seconds: float, after: str | None = None) -> None:
    """Write this pid, sleep, write ``out``; with ``after``, only once that job has written its pid."""
    while after is not None and not Path(after + ".pid").exists():
        time.sleep(0.05)
    Path(out + ".pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(out).write_text("finished")


def test_cpu_lanes_share_the_cores_and_gpu_lanes_split_the_visible_gpus(monkeypatch):
    from forgetbench import executor

    monkeypatch.setattr(executor, "cpu_cores", lambda: 8)
    assert [lane.threads for lane in lanes(2, 1, "cpu")] == [4, 4]
    assert [lane.threads for lane in lanes(2, 2, "cpu")] == [2, 2]  # torchrun's processes share too
    assert [lane.env["OMP_NUM_THREADS"] for lane in lanes(3, 1, "cpu")] == ["2", "2", "2"]
    assert lanes(16, 1, "cpu")[0].threads == 1

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert [lane.env["CUDA_VISIBLE_DEVICES"] for lane in lanes(2, 2, "cuda")] == ["4,5", "6,7"]
    assert [lane.env["CUDA_VISIBLE_DEVICES"] for lane in lanes(4, 1, "cuda")] == ["4", "5", "6", "7"]
    with pytest.raises(ForgetbenchError, match=r"--jobs 3: .* need 6 GPUs, and this machine shows 4; use --jobs 2"):
        lanes(3, 2, "cuda")
    with pytest.raises(ForgetbenchError, match="at least one"):
        lanes(0, 1, "cpu")


def test_jobs_run_at_once_each_with_its_lane(tmp_path, monkeypatch):
    monkeypatch.setenv("FB_TEST_MARK", "set after the server started")
    ex = LocalExecutor([Lane({"OMP_NUM_THREADS": "1"}, threads=1), Lane({"OMP_NUM_THREADS": "1"}, threads=1)])
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    done = []
    ex.run([Job("a", meet, (a, b), tmp_path / "a.log"), Job("b", meet, (b, a), tmp_path / "b.log")],
           on_done=done.append)
    assert sorted((d.job.key, d.exitcode) for d in done) == [("a", 0), ("b", 0)]

    ex = LocalExecutor([Lane({"OMP_NUM_THREADS": "1"}, threads=1)])
    ex.run([Job("r", report, (str(tmp_path / "r.json"),))])
    seen = json.loads((tmp_path / "r.json").read_text())
    assert seen["threads"] == 1 and seen["omp"] == "1" and seen["pid"] != os.getpid()
    # the job sees the sweep's environment as it is when the job starts
    assert seen["mine"] == "set after the server started"
    assert "--- " in (tmp_path / "a.log").read_text()


@pytest.mark.parametrize("inline", [False, True])
def test_a_jobs_end_says_what_happened(tmp_path, inline):
    ex = InlineExecutor() if inline else LocalExecutor([Lane()])
    done = {}
    jobs = [Job("user", fail_as_user, (), tmp_path / "user.log"), Job("bug", crash, (), tmp_path / "bug.log")]
    if not inline:
        jobs.append(Job("abort", abort, (), tmp_path / "abort.log"))
    ex.run(jobs, on_done=lambda d: done.__setitem__(d.job.key, d))
    assert done["user"].exitcode == 2 and done["bug"].exitcode == 1
    if not inline:  # the job's output is in its log, not on the sweep's terminal
        assert "forgetbench: error: suite.yaml: train.lr: the fix" in (tmp_path / "user.log").read_text()
        assert "RuntimeError: a bug" in (tmp_path / "bug.log").read_text()
        assert done["abort"].exitcode == -signal.SIGABRT
        assert done["abort"].reason() == "process killed by SIGABRT"
    assert done["bug"].reason() == "process exited with status 1"


def test_a_false_from_on_done_starts_no_further_job(tmp_path):
    ran = []
    LocalExecutor([Lane()]).run(
        [Job(k, report, (str(tmp_path / k),)) for k in "abc"],
        on_start=lambda job, lane: ran.append(job.key), on_done=lambda d: d.job.key != "a")
    assert ran == ["a"] and not (tmp_path / "b").exists()


def test_an_error_while_collecting_ends_the_running_jobs(tmp_path):
    slow, fast = str(tmp_path / "slow"), str(tmp_path / "fast")

    def collect(done):
        raise ForgetbenchError("the base model's scores lack a metric")

    start = time.monotonic()
    with pytest.raises(ForgetbenchError):
        LocalExecutor([Lane(), Lane()]).run(
            [Job("slow", sleep_then_write, (slow, 120)), Job("fast", sleep_then_write, (fast, 0, slow))],
            on_done=collect)  # (fast ends once slow runs: on a loaded machine slow may start late)
    assert time.monotonic() - start < 60 and not Path(slow).exists()
    pid = int(Path(slow + ".pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_killed_sweep_leaves_no_job_running(tmp_path):
    """kill -9 of the process that started the jobs: its jobs end too (they would otherwise
    train on, racing the next sweep)."""
    out = str(tmp_path / "job")
    code = textwrap.dedent(f"""
        from forgetbench.executor import Job, Lane, LocalExecutor
        from tests.test_executor import sleep_then_write
        LocalExecutor([Lane()]).run([Job("j", sleep_then_write, ({out!r}, 120))])
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    try:
        end = time.monotonic() + 120
        while not Path(out + ".pid").exists():
            assert time.monotonic() < end and parent.poll() is None, "the job never started"
            time.sleep(0.1)
        pid = int(Path(out + ".pid").read_text())
        parent.kill()
        parent.wait()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the job outlived the sweep by 30 s")
        assert not Path(out).exists()
    finally:
        parent.kill()


def test_a_job_past_its_time_limit_is_ended_and_says_so(tmp_path):
    out = str(tmp_path / "slow")
    done = []
    start = time.monotonic()
    LocalExecutor([Lane()]).run([Job("slow", sleep_then_write, (out, 120))], on_done=done.append, timeout=2)
    assert time.monotonic() - start < 60 and not Path(out).exists()
    [d] = done
    assert d.timed_out and d.reason().startswith("timed out: still running after ")
    assert d.exitcode == 128 + signal.SIGTERM  # it ended on SIGTERM, as a job should


def test_ctrl_c_while_the_fork_server_imports_prints_no_traceback(tmp_path):
    """Ctrl-C reaches the terminal's whole process group, the fork server with it: in its
    first seconds, importing, it ignores it as it does once it has imported (the sweep ends
    the jobs, and the server ends with the sweep)."""
    importing = tmp_path / "importing"
    (tmp_path / "slow_import.py").write_text(f"import pathlib, time\npathlib.Path({str(importing)!r}).touch()\n"
                                             "time.sleep(3)\n")
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from forgetbench import executor
        executor.PRELOAD = ("slow_import",)  # imports that take seconds, as torch's do
        try:
            executor.LocalExecutor([executor.Lane()]).start()
            while not Path({str(importing)!r}).exists():
                time.sleep(0.02)
            os.killpg(0, signal.SIGINT)  # Ctrl-C
            time.sleep(60)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    # (its output is read to the end: until the server, which shares it, has ended too)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          start_new_session=True, timeout=120)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr[-3000:]
