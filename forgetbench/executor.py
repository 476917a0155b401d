"""Where a sweep's work runs. The sweep (the parent) plans, launches and collects; every job,
the base model's evaluation and each point's training then evaluation, runs in a process of
its own, so a crash, an out-of-memory kill or a hung collective stays in that job, and the
parent never holds a model (on a GPU it would keep its memory while the next point trains).

:class:`LocalExecutor` runs up to ``jobs`` of them at once on this machine, each in a *lane*
with its own share of it: ``train.nproc`` GPUs (``CUDA_VISIBLE_DEVICES``), or on a CPU an
equal share of the cores (its threads). Its processes are forked from a server process that
has imported torch, transformers and lm-eval once (Python's ``forkserver`` with a preload):
a point of the embedded model trains in ~10 s, and importing those libraries afresh costs
~8 s per process on 2 cores. The server never computes, so forking it is safe (forking a
process whose OpenMP or CUDA runtime is running is not). A job gets the sweep's environment
as it is when the job starts (a library that read a variable when the server imported it
keeps what it read then). Its stdout and stderr go to its log file; the parent prints one
line per job.

Each job is a process group of its own, ended with SIGTERM (raised in the job as
:class:`Terminated`, so it records why and removes its unfinished files) when the sweep is
interrupted, and ended as well when the sweep process ends by any means, kill -9 included:
a job watches it through a pidfd.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetbench.errors import ForgetbenchError
from forgetbench.models import resolve_model

# What every job needs, imported once by the server its processes are forked from (a name
# that fails to import is skipped there and imported by the job itself, as usual).
PRELOAD = (
    "torch", "torch.distributed.tensor", "transformers", "transformers.modeling_utils",
    "transformers.generation", "datasets", "lm_eval", "lm_eval.evaluator", "lm_eval.tasks",
    "lm_eval.models.huggingface", "forgetbench.sweep", "forgetbench.eval.harness",
    "forgetbench.train.recipe", "forgetbench.train.regularizers", "forgetbench.evalstore",
)


def model_modules(model: str) -> list[str]:
    """The transformers module of ``model``'s architecture (imported on first use, ~3 s on
    2 cores), to preload with the rest; none when its config is not a local file."""
    try:
        config = json.loads((Path(resolve_model(model)) / "config.json").read_text())
        kind = str(config["model_type"]).replace("-", "_")
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [f"transformers.models.{kind}.modeling_{kind}"]


@dataclass(frozen=True)
class Job:
    """One unit of work: ``target(*args)`` in a process of its own. ``target`` is a module-level
    function (it is pickled by reference); it returns an exit status (None: 0) or raises:
    a ForgetbenchError exits with its code (2: a user error), anything else with 1."""

    key: str
    target: Callable[..., int | None]
    args: tuple[Any, ...] = ()
    log: Path | None = None  # the job's stdout and stderr, appended
    heartbeat: Path | None = None  # written when the job starts (host, pid), touched while it runs
    argv: tuple[str, ...] = ()  # the same work as the command `forgetbench ARGV` (for cluster executors)


@dataclass(frozen=True)
class Done:
    job: Job
    exitcode: int  # negative: killed by that signal
    seconds: float
    timed_out: bool = False  # ended by the executor at its time limit
    detail: str | None = None  # why, in the executor's words (a cluster job that returned nothing)

    def reason(self) -> str:
        """Why a job that left no reason of its own ended, in words."""
        if self.detail:
            return self.detail
        if self.timed_out:
            return f"timed out: still running after {self.seconds:.0f} s (the limit: --point-timeout)"
        if self.exitcode < 0:
            with contextlib.suppress(ValueError):
                name = signal.Signals(-self.exitcode).name
                hint = " (the out-of-memory killer sends this)" if name == "SIGKILL" else ""
                return f"process killed by {name}{hint}"
        return f"process exited with status {self.exitcode}"


@dataclass(frozen=True)
class Lane:
    """What one running job gets of the machine."""

    env: dict[str, str] = field(default_factory=dict)
    threads: int | None = None  # torch's intra-op threads (CPU lanes)
    where: str | None = None  # a job on another machine: which (e.g. "slurm job 1234_0")

    def describe(self) -> str:
        if self.where:
            return self.where
        if "CUDA_VISIBLE_DEVICES" in self.env:
            return f"GPU {self.env['CUDA_VISIBLE_DEVICES']}"
        return f"{self.threads} thread{'s' * (self.threads != 1)}" if self.threads else "this machine"


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def lanes(jobs: int, nproc: int, device_type: str) -> list[Lane]:
    """``jobs`` lanes of ``nproc`` processes each: on CUDA, ``nproc`` GPUs per lane (refused when
    the machine has fewer than ``jobs · nproc``); on a CPU, each process a 1/(jobs · nproc)
    share of the cores as its threads."""
    if jobs < 1:
        raise ForgetbenchError(f"--jobs {jobs}: run at least one point at a time")
    if device_type == "cuda":
        gpus = _visible_gpus()
        if jobs * nproc > len(gpus):
            fits = len(gpus) // nproc
            raise ForgetbenchError(
                f"--jobs {jobs}: {jobs} points at once of train.nproc {nproc} GPU(s) each need "
                f"{jobs * nproc} GPUs, and this machine shows {len(gpus)}; use --jobs {max(fits, 1)}"
                + ("" if fits else " with a smaller train.nproc"))
        return [Lane(env={"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * nproc:(i + 1) * nproc])})
                for i in range(jobs)]
    threads = max(1, cpu_cores() // (jobs * nproc))
    return [Lane(env={"OMP_NUM_THREADS": str(threads)}, threads=threads) for _ in range(jobs)]


class Terminated(BaseException):
    """Raised in a job on SIGTERM (the sweep interrupted, or gone), so what it was doing ends
    as on Ctrl-C: its journal records why, its unfinished files are removed."""


def _terminated(signum, frame) -> None:
    raise Terminated("stopped by SIGTERM (its sweep interrupted or ended, a cancelled job)")


def _watch(parent: int) -> None:
    """End this job's process group when the sweep process ``parent`` ends, however it ends
    (kill -9 included): a job must not train on, racing the next sweep, nor a torchrun
    launched by it. Blocks on a pidfd (Linux); elsewhere, checks every second."""
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:
        fd = None  # already gone
    except (AttributeError, OSError):  # no pidfd here: poll
        while True:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                break
            time.sleep(1.0)
    else:
        select.select([fd], [], [])  # readable once the process has ended
    os.killpg(os.getpgid(0), signal.SIGTERM)


def watch_in_background(parent: int) -> None:
    """End this process's group when process ``parent`` ends, however it ends (see _watch)."""
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="forgetbench-watch").start()


HEARTBEAT_S = 10.0  # how often a running job touches its heartbeat file


def _beat(path: Path) -> None:
    """Say this job is alive: its host and pid in ``path``, whose time is renewed every
    HEARTBEAT_S seconds (``forgetbench status`` reads how long ago)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}))
    while True:
        time.sleep(HEARTBEAT_S)
        with contextlib.suppress(OSError):
            os.utime(path)


def _exit_status(job: Job) -> int:
    """Run ``job`` here; its exit status (see :class:`Job`)."""
    try:
        return int(job.target(*job.args) or 0)
    except ForgetbenchError as exc:
        print(f"forgetbench: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Terminated as exc:
        print(f"forgetbench: {exc}", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    except Exception:
        traceback.print_exc()
        return 1


def _child(job: Job, lane: Lane, environ: dict[str, str], parent: int) -> None:
    """The body of a job's process: a process group of its own (which the sweep ends with
    SIGTERM, and which ends when the sweep ``parent`` does), the sweep's environment as it
    is when the job starts (not as it was when the server started), its lane's share of the
    machine, its log, its exit status."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (the server ignores it: see start)
    watch_in_background(parent)
    if job.heartbeat is not None:
        threading.Thread(target=_beat, args=(job.heartbeat,), daemon=True, name="forgetbench-beat").start()
    os.environ.clear()
    os.environ.update({**environ, **lane.env})
    if job.log is not None:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(job.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} job {job.key} on {lane.describe()}", flush=True)
    if lane.threads:
        import torch

        torch.set_num_threads(lane.threads)
    status = _exit_status(job)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(status)


def _signal(proc: multiprocessing.process.BaseProcess, sig: int) -> None:
    """Signal a job's process group: the job and what it started (torchrun and its workers);
    just the job if it has not made its group yet."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


class LocalExecutor:
    """Jobs in processes on this machine, at most ``len(lanes)`` at a time."""

    def __init__(self, lanes: list[Lane], preload: Iterable[str] = ()):
        self.lanes = lanes
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([*PRELOAD, *preload])

    def start(self) -> None:
        """Start the fork server now, so its imports overlap the parent's own work (they take
        seconds); returns at once. It starts with SIGINT ignored (an ignored signal stays so
        through exec), as it is once it has imported: Ctrl-C reaches the terminal's whole
        process group, the sweep ends the jobs, and the server, importing, would print a
        traceback of its imports."""
        default = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, default)

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job, Lane], None] = lambda job, lane: None,
            on_done: Callable[[Done], bool | None] = lambda done: None, timeout: float | None = None) -> None:
        """Run ``jobs`` in order, each as soon as a lane is free. ``on_done`` is called as each
        ends; when it returns False no further job starts (the running ones finish). A job
        still running ``timeout`` seconds after it started is ended (SIGTERM, then SIGKILL
        30 s later) and reported ``timed_out``. Any exception here (Ctrl-C included)
        terminates the running jobs before it propagates."""
        self.start()  # (if not yet started)
        queue = iter(jobs)
        free = list(range(len(self.lanes)))
        running: dict[Any, _Running] = {}  # by the process's sentinel
        more = True
        try:
            while True:
                while more and free:
                    job = next(queue, None)
                    if job is None:
                        more = False
                        break
                    lane = free.pop(0)
                    on_start(job, self.lanes[lane])
                    proc = self._ctx.Process(target=_child, name=f"forgetbench-{job.key}", daemon=False,
                                             args=(job, self.lanes[lane], dict(os.environ), os.getpid()))
                    proc.start()
                    running[proc.sentinel] = _Running(proc, job, lane, time.monotonic())
                if not running:
                    return
                now = time.monotonic()
                for r in running.values():  # past its time: SIGTERM, then SIGKILL
                    if timeout is not None and not r.timed_out and now - r.start > timeout:
                        r.timed_out, r.killed_at = True, now + 30
                        _signal(r.proc, signal.SIGTERM)
                    elif r.timed_out and now > r.killed_at:
                        _signal(r.proc, signal.SIGKILL)
                wake = [r.killed_at if r.timed_out else r.start + timeout for r in running.values()
                        if timeout is not None]
                wait = max(min(wake) - now, 0.05) if wake else None
                for sentinel in multiprocessing.connection.wait(list(running), timeout=wait):
                    r = running.pop(sentinel)
                    r.proc.join()
                    free.append(r.lane)
                    free.sort()
                    ended = Done(r.job, r.proc.exitcode, time.monotonic() - r.start, timed_out=r.timed_out)
                    if on_done(ended) is False:
                        more = False
        except BaseException:
            for r in running.values():
                _signal(r.proc, signal.SIGTERM)
            for r in running.values():
                r.proc.join(timeout=30)
                if r.proc.exitcode is None:
                    _signal(r.proc, signal.SIGKILL)
                    r.proc.join()
            raise


@dataclass
class _Running:
    proc: Any
    job: Job
    lane: int
    start: float
    timed_out: bool = False
    killed_at: float = 0.0


class InlineExecutor:
    """Jobs one after another in this process: no isolation, no parallelism. For tests that
    replace a function the jobs call, and for stepping through a job in a debugger."""

    lanes = [Lane()]

    def start(self) -> None:
        pass

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job, Lane], None] = lambda job, lane: None,
            on_done: Callable[[Done], bool | None] = lambda done: None, timeout: float | None = None) -> None:
        for job in jobs:  # (no time limit: a job here is this process)
            on_start(job, self.lanes[0])
            started = time.monotonic()
            if on_done(Done(job, _exit_status(job), time.monotonic() - started)) is False:
                return
