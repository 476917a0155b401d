"""Preemption: a signal asks a running point to save a checkpoint at its next optimizer step
and stop, so the job that runs it can be requeued and resume there.

Slurm sends it ahead of a job's time limit or a preemption (``--signal=USR2@90``, what
submitit asks for); a user can send it too (``kill -USR2 PID`` to a ``forgetbench point``
process). The signal is SIGUSR2, or the one ``SUBMITIT_PREEMPT_SIGNAL`` names, as submitit
reads it: never SIGUSR1, which NCCL may take.

The handler only sets a flag. The training loop reads it after each optimizer step, agreed
across ranks (one rank may get the signal a step later than another, and all must save the
same step). Under torchrun the signal must reach the workers, not torchrun: torchrun does
not handle SIGUSR2, so the signal's default action would end it and orphan them. A point
process therefore starts torchrun with the signal blocked (:func:`blocked`: a child keeps
the mask across exec, and a process that installs the handler unblocks it, getting then a
signal that came meanwhile), and forwards it to the workers itself (:func:`forward_to`).
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

PAUSED_EXIT = 75  # a point's exit status when it stopped at a checkpoint to be resumed (EX_TEMPFAIL)

_requested = False
_forward: list[int] = []  # pids of processes whose descendants get the signal too (torchrun)


def preempt_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    try:
        return signal.Signals[f"SIG{name}"]
    except KeyError:
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={name}: not a signal; unset it (SIGUSR2)") from None


def _handler(signum, frame) -> None:
    global _requested
    _requested = True
    for pid in _forward:
        forward_to(pid, signum)


def install() -> None:
    """From now on, the preemption signal asks this process (and the workers of a torchrun it
    runs) to stop at its next optimizer step with a checkpoint. A signal that came while it
    was blocked (see :func:`blocked`) is taken now."""
    sig = preempt_signal()
    signal.signal(sig, _handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])


def requested() -> bool:
    return _requested


def forward_to(pid: int, signum: int) -> None:
    """Send ``signum`` to the children of ``pid`` (torchrun's workers), not to ``pid``, nor to
    the workers' own helpers (compile workers would die of it)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children():
            with contextlib.suppress(psutil.Error):
                child.send_signal(signum)


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Start processes inside this block with the preemption signal blocked: a child keeps the
    mask across exec, so it stays pending in the child until the child installs the handler
    (torchrun never does). Here it stays pending until the block ends: nothing is lost. Not
    ``preexec_fn``: that is unsafe in a process with threads."""
    sig = preempt_signal()
    signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])


@contextlib.contextmanager
def forwarding(pid: int) -> Iterator[None]:
    """While in this block, the signal this process gets goes on to ``pid``'s descendants,
    as soon as it comes and again if it came before."""
    _forward.append(pid)
    try:
        if _requested:
            forward_to(pid, preempt_signal())
        yield
    finally:
        _forward.remove(pid)
