"""A sweep's jobs on a Slurm cluster, through submitit: ``forgetbench sweep SUITE --executor slurm``.

Each job (the base model's evaluation, and each point) is one Slurm job of one node running
one command, the same as anywhere: ``forgetbench point POINT_JSON`` (train, under
``torchrun --standalone`` when ``train.nproc`` > 1, then evaluate), or ``forgetbench eval``
for the base model. They are submitted together as a job array (at most
``cluster.array_parallelism`` running at once) with the resources of the suite's
``cluster:`` section. The sweep then follows them, from the run's journal and the jobs'
states, until each is done; with ``--no-wait`` it returns once they are queued, and
``forgetbench status`` (or the same sweep command again, which submits only what is
neither done nor queued) follows them later.

Preemption and time limits: Slurm sends SIGUSR2 ``cluster.signal_delay_s`` before it stops
a job (submitit's ``--signal``). submitit's handler calls :meth:`PointJob.checkpoint`, which
passes the signal to the point's process; that saves a checkpoint at its next optimizer
step and exits (train/preempt.py), and submitit requeues the job, which resumes there. A
job that has not stopped within its grace period is ended with SIGTERM (its last periodic
checkpoint, if any, is where it resumes).

``--executor submitit-local`` runs the same job path on this machine through submitit's
local executor (processes, no queue): what CI tests, and a way to try a cluster setup.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetbench.config import ClusterSpec
from forgetbench.errors import ForgetbenchError
from forgetbench.executor import HEARTBEAT_S, Done, Job, Lane, cpu_cores
from forgetbench.train import preempt

KINDS = ("slurm", "submitit-local")
GRACE_S = 60.0  # how long a preempted job may take to stop with its checkpoint (a sweep gives the
# signal's delay less 30 s: the rest is for the requeue before Slurm stops the job)
RESEND_S = 5.0  # the signal again, every this many seconds, until the job stops (it may not listen yet)


def _command(argv: Iterable[str]) -> list[str]:
    return [sys.executable, "-m", "forgetbench", *argv]


class PointJob:
    """What submitit runs on a node for one job: ``forgetbench ARGV`` in a process group of its
    own, output appended to the job's log, a heartbeat while it runs; returns its exit status.
    submitit calls :meth:`checkpoint` on the preemption signal (this is a submitit
    Checkpointable by its methods)."""

    def __init__(self, key: str, argv: tuple[str, ...], log: str | None, heartbeat: str | None,
                 grace_s: float = GRACE_S, env: dict[str, str] | None = None):
        self.key, self.argv, self.log, self.heartbeat, self.grace_s = key, argv, log, heartbeat, grace_s
        self.env = dict(env or {})  # on top of the job's environment
        self._pid: int | None = None
        self._status: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": None, "_status": None}

    def _job_id(self) -> str:
        with contextlib.suppress(Exception):
            import submitit

            return submitit.JobEnvironment().job_id
        return "?"

    def __call__(self) -> int:
        log = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
        try:
            if self.log:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} job {self.key} on "
                          f"{socket.gethostname()} (job {self._job_id()})\n".encode())
                log.flush()
            # the point process installs its preemption handler itself; until then it ignores
            # the signal (Slurm may send it to every process of the job), and checkpoint()
            # sends it again
            with preempt.ignored():
                proc = subprocess.Popen(_command(self.argv), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, **self.env})
            self._pid = proc.pid
            beat = Path(self.heartbeat) if self.heartbeat else None
            if beat is not None:
                beat.parent.mkdir(parents=True, exist_ok=True)
                beat.write_text(json.dumps({"host": socket.gethostname(), "pid": proc.pid,
                                            "started": time.time(), "job": self._job_id()}))
            touched = time.monotonic()
            # waitpid by hand, not Popen.wait: submitit's signal handler runs in this thread,
            # and checkpoint() must reap the process without Popen's (held) lock
            while self._reap() is None:
                time.sleep(0.5)
                if beat is not None and time.monotonic() - touched > HEARTBEAT_S:
                    with contextlib.suppress(OSError):
                        os.utime(beat)
                    touched = time.monotonic()
            return self._status
        finally:
            if self.log:
                log.close()

    def _reap(self) -> int | None:
        """The process's exit status once it has ended (reaped here), else None."""
        if self._status is None and self._pid is not None:
            try:
                pid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                return self._status
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
        return self._status

    def checkpoint(self, *args: Any, **kwargs: Any):
        """The preemption signal came: have the point stop with a checkpoint, then requeue.
        The signal goes to the point process (which passes it to torchrun's workers) again
        every RESEND_S seconds until it ends; after ``grace_s`` its group gets SIGTERM."""
        import submitit

        if self._pid is not None and self._reap() is None:
            deadline, sig = time.monotonic() + self.grace_s, preempt.preempt_signal()
            while self._reap() is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, sig)
                until = min(time.monotonic() + RESEND_S, deadline)
                while self._reap() is None and time.monotonic() < until:
                    time.sleep(0.2)
            if self._reap() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._pid, signal.SIGTERM)
                until = time.monotonic() + 30
                while self._reap() is None and time.monotonic() < until:
                    time.sleep(0.2)
                if self._reap() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self._pid, signal.SIGKILL)
        # a point that finished meanwhile is requeued too: its job then finds it done at once
        return submitit.helpers.DelayedSubmission(PointJob(self.key, self.argv, self.log, self.heartbeat,
                                                           self.grace_s, self.env))


def _parameters(kind: str, spec: ClusterSpec, gpus: int, name: str) -> dict[str, Any]:
    if kind == "slurm":
        params: dict[str, Any] = {
            "job_name": f"forgetbench-{name}", "time": spec.time, "nodes": 1, "ntasks_per_node": 1,
            "cpus_per_task": spec.cpus_per_task, "signal_delay_s": spec.signal_delay_s,
            "array_parallelism": spec.array_parallelism, "stderr_to_stdout": True}
        if gpus:
            params["gpus_per_node"] = gpus
        for key in ("partition", "account", "qos"):
            if getattr(spec, key) is not None:
                params[key] = getattr(spec, key)
        if spec.mem_gb is not None:
            params["mem"] = f"{spec.mem_gb:g}GB"
        if spec.setup:
            params["setup"] = list(spec.setup)
        if spec.sbatch:
            params["additional_parameters"] = {k: v for k, v in spec.sbatch.items()}
        return params
    # (not cluster.setup: its lines are for the cluster's nodes, and this machine runs them as is)
    return {"timeout_min": spec.time, "gpus_per_node": gpus, "signal_delay_s": spec.signal_delay_s,
            "stderr_to_stdout": True}


def make_executor(kind: str, folder: Path, spec: ClusterSpec, gpus: int, name: str):
    """submitit's executor of ``kind`` writing its job files to ``folder``."""
    import submitit

    cls = submitit.SlurmExecutor if kind == "slurm" else submitit.LocalExecutor
    ex = cls(folder=folder, max_num_timeout=spec.max_timeouts)
    ex.update_parameters(**_parameters(kind, spec, gpus, name))
    return ex


def job_layout(kind: str, folder: Path, spec: ClusterSpec, gpus: int, name: str, jobs: list[Job]) -> list[str]:
    """What ``--executor slurm`` would submit for ``jobs``: the array's sbatch script and each
    task's command (``--dry-run``)."""
    lines = [f"{len(jobs)} job(s) as one {'Slurm job array' if kind == 'slurm' else 'set of local processes'}, "
             f"job files in {folder}:"]
    if kind == "slurm":
        from submitit.slurm.slurm import _make_sbatch_string

        params = _parameters(kind, spec, gpus, name)
        script = _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {folder}",
                                     folder=folder, map_count=len(jobs), **params)
        lines += ["  " + line for line in script.splitlines() if line.strip()]
    lines.append("each array task runs one command:")
    lines += [f"  [{i}] {shlex.join(['forgetbench', *job.argv])}" for i, job in enumerate(jobs)]
    return lines


# what Slurm calls a job that is neither done nor gone
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED",
           "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "STOPPED", "UNKNOWN"}


def job_active(kind: str, folder: Path, job_id: str) -> bool:
    """Whether a job submitted earlier (by another sweep process) is still queued or running."""
    if kind == "slurm":
        import submitit

        state = submitit.SlurmJob(folder=folder, job_id=job_id).state.split(" ")[0]
        return state in _ACTIVE
    import psutil  # a local job's id is its controller's pid

    with contextlib.suppress(psutil.Error, ValueError):
        proc = psutil.Process(int(job_id.split("_")[0]))
        return "submitit.local._local" in " ".join(proc.cmdline())
    return False


@dataclass
class _Handle:
    job: Job
    sub: Any  # submitit's Job
    start: float


def _outcome(sub: Any) -> tuple[int, str | None]:
    """A finished submitit job's exit status, and why, when it did not return one."""
    try:
        return int(sub.result() or 0), None
    except Exception as exc:  # failed, cancelled, killed, out of requeues
        text = " ".join(str(exc).split())
        return 1, f"job {sub.job_id} ended without a result: {text[-300:]}"


class SubmititExecutor:
    """Jobs as cluster jobs through submitit (see the module's docstring). ``wait=False``:
    :meth:`run` returns once the jobs are submitted."""

    def __init__(self, kind: str, folder: Path, spec: ClusterSpec, *, gpus: int, name: str,
                 wait: bool = True, poll_s: float | None = None):
        if kind not in KINDS:
            raise ForgetbenchError(f"--executor {kind}: not an executor; use local, {', '.join(KINDS)}")
        self.kind, self.folder, self.spec, self.gpus, self.name = kind, Path(folder), spec, gpus, name
        self.wait = wait
        self.poll_s = poll_s if poll_s is not None else (30.0 if kind == "slurm" else 1.0)
        self.lanes = [Lane(where=kind)] * spec.array_parallelism
        self.submitted: dict[str, str] = {}  # job key -> job id

    def start(self) -> None:
        pass

    def check(self) -> None:
        """Refuse, before anything is written, a machine that cannot submit."""
        if self.kind == "slurm" and shutil.which("sbatch") is None:
            raise ForgetbenchError("--executor slurm: sbatch is not found on this machine; run the sweep on a "
                                   "Slurm login node (--executor submitit-local tries the same job path here)")

    def layout(self, jobs: list[Job]) -> list[str]:
        return job_layout(self.kind, self.folder, self.spec, self.gpus, self.name, jobs)

    def follow(self, key: str, job_id: str) -> Any:
        """submitit's handle on a job submitted earlier, to follow it here."""
        import submitit

        cls = submitit.SlurmJob if self.kind == "slurm" else submitit.LocalJob
        return cls(folder=self.folder, job_id=job_id)

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job, Lane], None] = lambda job, lane: None,
            on_done: Callable[[Done], bool | None] = lambda done: None, timeout: float | None = None,
            following: dict[str, str] | None = None) -> None:
        """Submit ``jobs`` (one array), except those in ``following`` (job key -> the id of a job
        still queued or running from an earlier sweep), which are followed instead; then,
        unless ``wait`` is off, report each as it ends. ``timeout`` does not apply: the
        cluster's time limit (``cluster.time``) does, and a job at it requeues."""
        jobs = list(jobs)
        following = following or {}
        new = [j for j in jobs if j.key not in following]
        for job in new:
            if not job.argv:
                raise ForgetbenchError(f"job {job.key}: has no command, so it cannot run on a cluster")
        handles: list[_Handle] = []
        if new:
            self.folder.mkdir(parents=True, exist_ok=True)
            ex = make_executor(self.kind, self.folder, self.spec, self.gpus, self.name)
            # submitit's local executor starts every job at once: each gets its share of the
            # cores (torch's default, all of them in each, slows every one of them many times)
            env = ({"OMP_NUM_THREADS": str(max(1, cpu_cores() // len(new)))} if self.kind == "submitit-local"
                   else {})
            subs = []
            with ex.batch():
                for job in new:
                    subs.append(ex.submit(PointJob(job.key, job.argv, str(job.log) if job.log else None,
                                                   str(job.heartbeat) if job.heartbeat else None,
                                                   grace_s=max(self.spec.signal_delay_s - 30.0, 10.0), env=env)))
            for job, sub in zip(new, subs):
                self.submitted[job.key] = sub.job_id
                handles.append(_Handle(job, sub, time.monotonic()))
                on_start(job, Lane(where=f"{self.kind} job {sub.job_id}"))
        for job in jobs:
            if job.key in following:
                handles.append(_Handle(job, self.follow(job.key, following[job.key]), time.monotonic()))
                on_start(job, Lane(where=f"{self.kind} job {following[job.key]}, submitted earlier"))
        if not self.wait:
            return
        while handles:
            for h in list(handles):
                if not self._done(h):
                    continue
                handles.remove(h)
                code, why = _outcome(h.sub)
                if on_done(Done(h.job, code, time.monotonic() - h.start, detail=why)) is False:
                    # a user error every point would meet: stop the others, they would fail too
                    for other in handles:
                        with contextlib.suppress(Exception):
                            other.sub.cancel(check=False)
                    return
            if handles:
                time.sleep(self.poll_s)

    def _done(self, h: _Handle) -> bool:
        if self.kind == "submitit-local" and getattr(h.sub, "_process", None) is None:
            return not job_active(self.kind, self.folder, h.sub.job_id)  # followed: its controller is gone
        return h.sub.done()
