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
a job (submitit's ``--signal``). submitit's handler calls :meth:`CommandJob.checkpoint`, which
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
# signal's delay less 60 s: up to 20 s to end it if it has not stopped, the rest to requeue)
WATCH_ENV = "FORGETBENCH_JOB_PID"  # a job's command ends when this process (the job) does
RESEND_S = 5.0  # the signal again, every this many seconds, until the job stops (it may not listen yet)


def _command(argv: Iterable[str]) -> list[str]:
    return [sys.executable, "-m", "forgetbench", *argv]


class CommandJob:
    """What submitit runs on a node for one job (a point's, or the base model's evaluation):
    the command ``forgetbench ARGV`` in a process group of its own, output appended to the
    job's log, a heartbeat while it runs; returns its exit status.
    submitit calls :meth:`checkpoint` on the preemption signal (this is a submitit
    Checkpointable by its methods). The command's process ends with this one, however this
    one ends (it watches this pid), so a killed job leaves nothing training."""

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
            # the command starts with the preemption signal blocked, pending until the point
            # installs its handler (Slurm may signal every process of the job); here it is
            # pending until the process is known, so checkpoint() always has it
            env = {**os.environ, **self.env, WATCH_ENV: str(os.getpid())}
            with preempt.blocked():
                proc = subprocess.Popen(_command(self.argv), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
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
        except BaseException:  # requeued (SystemExit), interrupted, cancelled: nothing trains on
            self._end(term_s=10.0)
            raise
        finally:
            if self.log:
                log.close()

    def _reap(self) -> int | None:
        """The process's exit status once it has ended (reaped here), else None."""
        if self._status is None and self._pid is not None:
            try:
                pid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:  # reaped already (by the frame this handler interrupted)
                self._status = 0 if self._status is None else self._status
                return self._status
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
        return self._status

    def _end(self, term_s: float) -> None:
        """End the command if it still runs: SIGTERM to its group (torchrun passes it on to its
        workers), then, after ``term_s``, SIGKILL to every process it started (torchrun's
        workers are in sessions of their own)."""
        if self._pid is None or self._reap() is not None:
            return
        import psutil

        with contextlib.suppress(psutil.Error):
            tree = [psutil.Process(self._pid), *psutil.Process(self._pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pid, signal.SIGTERM)
        until = time.monotonic() + term_s
        while self._reap() is None and time.monotonic() < until:
            time.sleep(0.2)
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self._reap()

    def checkpoint(self, *args: Any, **kwargs: Any):
        """The preemption signal came: have the point stop with a checkpoint, then requeue.
        The signal goes to the point process (which passes it to torchrun's workers) again
        every RESEND_S seconds until it ends, for ``grace_s``; then it is ended. A job that is
        not a point (the base model's evaluation) cannot checkpoint: it is ended at once, and
        evaluates again when requeued."""
        import submitit

        sig = preempt.preempt_signal()
        signal.signal(sig, signal.SIG_IGN)  # a second signal must not start this again
        if self._pid is not None and self._reap() is None and self.argv[:1] == ("point",):
            deadline = time.monotonic() + self.grace_s
            while self._reap() is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, sig)
                until = min(time.monotonic() + RESEND_S, deadline)
                while self._reap() is None and time.monotonic() < until:
                    time.sleep(0.2)
        self._end(term_s=20.0)
        # a point that finished meanwhile is requeued too: its job then finds it done at once
        return submitit.helpers.DelayedSubmission(CommandJob(self.key, self.argv, self.log, self.heartbeat,
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
        if spec.sbatch:  # (false: the option is left out)
            params["additional_parameters"] = {k: v for k, v in spec.sbatch.items() if v is not False}
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
    array = len(jobs) > 1  # (submitit submits a single job as a plain job)
    what = ("Slurm job array" if array else "Slurm job") if kind == "slurm" else "set of local processes"
    lines = [f"{len(jobs)} job(s) as one {what}, job files in {folder}:"]
    if kind == "slurm":
        from submitit.slurm.slurm import _make_sbatch_string

        params = _parameters(kind, spec, gpus, name)
        script = _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {folder}",
                                     folder=folder, map_count=len(jobs) if array else None, **params)
        lines += ["  " + line for line in script.splitlines() if line.strip()]
    lines.append("each array task runs one command:" if array else "it runs:")
    lines += [f"  [{i}] {shlex.join(['forgetbench', *job.argv])}" for i, job in enumerate(jobs)]
    return lines


# what Slurm calls a job that may still run (PREEMPTED: until it is requeued). UNKNOWN is what
# submitit reports before sacct knows a job, and when sacct cannot tell (accounting off, a
# purged job): active only for UNKNOWN_S after its submission, so such a job is not waited
# for, nor refused, forever
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED",
           "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED", "READY"}
UNKNOWN_S = 600.0


def _result_file(folder: Path, job_id: str) -> Path:
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id, task_id=0).result_pickle


def _local_alive(job_id: str) -> bool:
    """A submitit-local job's controller (its id is the controller's pid) is still running."""
    import psutil

    with contextlib.suppress(psutil.Error, ValueError):
        return "submitit.local._local" in " ".join(psutil.Process(int(job_id)).cmdline())
    return False


def _slurm_active(folder: Path, job_id: str, state: str, submitted_at: float) -> bool:
    if _result_file(folder, job_id).exists():
        return False  # it returned (a requeued job writes its result only at its end)
    state = state.split(" ")[0].upper()
    return state in _ACTIVE or (state == "UNKNOWN" and time.time() - submitted_at < UNKNOWN_S)


def active_jobs(submitted: dict[str, dict]) -> dict[str, dict]:
    """Of the ``job_submitted`` events (by job key), those whose job is still queued or running:
    for Slurm from one ``sacct`` call for them all, for submitit-local from their controllers."""
    slurm = {key: ev for key, ev in submitted.items() if ev["executor"] == "slurm"}
    states: dict[str, str] = {}
    if slurm:
        import submitit

        watcher = submitit.SlurmJob.watcher
        for ev in slurm.values():
            watcher.register_job(ev["job_id"])
        watcher.update()
        states = {key: watcher.get_state(ev["job_id"], mode="cache") for key, ev in slurm.items()}
    return {key: ev for key, ev in submitted.items()
            if (_slurm_active(Path(ev["folder"]), ev["job_id"], states[key], ev["time"]) if key in slurm
                else _local_alive(ev["job_id"]))}


@dataclass
class _Handle:
    job: Job
    sub: Any  # submitit's Job
    start: float
    submitted_at: float  # (epoch seconds)


@contextlib.contextmanager
def _no_interrupt():
    """Ctrl-C waits until the jobs submitted are in the journal (or they run unrecorded, and
    the next sweep submits them again)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


class SubmititExecutor:
    """Jobs as cluster jobs through submitit (see the module's docstring). ``wait=False``:
    :meth:`run` returns once the jobs are submitted."""

    def __init__(self, kind: str, folder: Path, spec: ClusterSpec, *, gpus: int, name: str,
                 wait: bool = True, poll_s: float | None = None):
        if kind not in KINDS:
            raise ForgetbenchError(f"--executor {kind}: not an executor; use local, {', '.join(KINDS)}")
        if kind == "submitit-local":
            import torch

            if torch.cuda.is_available():  # every job at once, each on every GPU: out of memory
                raise ForgetbenchError("--executor submitit-local starts every job at once and is meant to try "
                                       "the job path on a CPU; on GPUs use --executor local --jobs N (a point "
                                       "per train.nproc GPUs)")
            gpus = 0
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

    def _submit(self, jobs: list[Job]) -> list[Any]:
        """One array of ``jobs``; a submission the cluster refuses is one line (sbatch's error)."""
        import submitit

        self.folder.mkdir(parents=True, exist_ok=True)
        ex = make_executor(self.kind, self.folder, self.spec, self.gpus, self.name)
        # submitit's local executor starts every job at once: each gets its share of the
        # cores (torch's default, all of them in each, slows every one of them many times)
        env = {"OMP_NUM_THREADS": str(max(1, cpu_cores() // len(jobs)))} if self.kind == "submitit-local" else {}
        subs = []
        try:
            with ex.batch():
                for job in jobs:
                    subs.append(ex.submit(CommandJob(job.key, job.argv, str(job.log) if job.log else None,
                                                   str(job.heartbeat) if job.heartbeat else None,
                                                   grace_s=max(self.spec.signal_delay_s - 60.0, 10.0), env=env)))
        except (submitit.core.utils.FailedJobError, OSError, subprocess.CalledProcessError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            why = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
            raise ForgetbenchError(f"--executor {self.kind}: the cluster refused the jobs: {why[:300]}; check the "
                                   "suite's cluster: section (partition, account, time, gpus_per_node)") from None
        return subs

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job, Lane], None] = lambda job, lane: None,
            on_done: Callable[[Done], bool | None] = lambda done: None, timeout: float | None = None,
            following: dict[str, tuple[str, float]] | None = None) -> None:
        """Submit ``jobs`` (one array), except those in ``following`` (job key -> (id, time of
        submission) of a job still queued or running from an earlier sweep), which are
        followed instead; then, unless ``wait`` is off, report each as it ends. ``timeout``
        does not apply: the cluster's time limit (``cluster.time``) does, and a job at it
        requeues. Any error while following cancels the jobs (a sweep that stops leaves
        nothing queued); Ctrl-C only stops the following of Slurm jobs."""
        jobs = list(jobs)
        following = following or {}
        new = [j for j in jobs if j.key not in following]
        for job in new:
            if not job.argv:
                raise ForgetbenchError(f"job {job.key}: has no command, so it cannot run on a cluster")
        handles: list[_Handle] = []
        if new:
            with _no_interrupt():
                subs = self._submit(new)
                for job, sub in zip(new, subs):
                    self.submitted[job.key] = sub.job_id
                    handles.append(_Handle(job, sub, time.monotonic(), time.time()))
                    on_start(job, Lane(where=f"{self.kind} job {sub.job_id}"))
        for job in jobs:
            if job.key in following:
                job_id, at = following[job.key]
                handles.append(_Handle(job, self.follow(job.key, job_id), time.monotonic(), at))
                on_start(job, Lane(where=f"{self.kind} job {job_id}, submitted earlier"))
        if not self.wait:
            return
        try:
            while handles:
                for h in list(handles):
                    if not self._done(h):
                        continue
                    handles.remove(h)
                    code, why = self._outcome(h)
                    if on_done(Done(h.job, code, time.monotonic() - h.start, detail=why)) is False:
                        self._cancel(handles)  # a user error every other job would meet too
                        return
                if handles:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            if self.kind == "slurm":
                raise  # the jobs run on: the same sweep command follows them again
            self._cancel(handles)  # (their controllers got the Ctrl-C too)
            raise
        except BaseException:
            self._cancel(handles)
            raise

    def _cancel(self, handles: list[_Handle]) -> None:
        for h in handles:
            with contextlib.suppress(Exception):
                h.sub.cancel(check=False)

    def _done(self, h: _Handle) -> bool:
        if self.kind == "submitit-local":
            proc = getattr(h.sub, "_process", None)
            return proc.poll() is not None if proc is not None else not _local_alive(h.sub.job_id)
        # (submitit's watcher: one sacct call for every job, at its own pace)
        return not _slurm_active(self.folder, h.sub.job_id, h.sub.state, h.submitted_at)

    def _outcome(self, h: _Handle) -> tuple[int, str | None]:
        """A finished job's exit status, and why, when it did not return one."""
        where = f"{self.kind} job {h.sub.job_id}"
        if not _result_file(self.folder, h.sub.job_id).exists():
            state = "its controller ended" if self.kind == "submitit-local" else h.sub.state.split(" ")[0]
            return 1, f"{where} ended ({state}) without a result; its log: {h.sub.paths.stdout}"
        try:
            return int(h.sub.result() or 0), None
        except Exception as exc:  # failed in the job, or out of requeues
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            return 1, f"{where} failed: {first[:300]}; its log: {h.sub.paths.stdout}"
