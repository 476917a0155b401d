"""The run directory: atomic file writes and an append-only journal replayed to status.

Layout of ``runs/<suite>/``::

    suite.yaml                 the resolved suite of the latest sweep
    journal.jsonl              one JSON line per state change, appended under a lock, fsynced
    baseline/<model hash>-<eval key>.json   scores of the base model
    points/<id>/point.json     the point's resolved training config
    points/<id>/train_log.jsonl, points/<id>/model/, points/<id>/scores/<eval key>.json
    points/<id>/point.log      what the point's job printed; heartbeat: touched while it runs
    results.csv, report.html
    sweep.lock                 held (flock) by the sweep running on the directory, naming it
    sweep.log                  every sweep's progress lines, with their date and time

Files are written to a temporary name and renamed, so a reader never sees half a file. The
journal is appended only after the file it reports exists, so it never claims a result that
is not there. A torn last line (a crash mid-append) is skipped on replay. A stored result that
no longer parses (a truncated or damaged file) is set aside by the next sweep, which
recomputes it (:func:`reuse_result`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from forgetbench.errors import ForgetbenchError


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; others may need to read results
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(folder: Path, what: str) -> None:
    """Refuse, in one line naming ``what`` (the flag that chose ``folder``), a folder where
    nothing can be written: a path through a file, or a folder (its nearest existing parent,
    when it is still to be made) that refuses a new file. Tried, not read from the mode bits,
    which root ignores (a read-only file system refuses root too). Leaves nothing."""
    folder = Path(os.path.abspath(folder))
    existing = folder
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        raise ForgetbenchError(f"{what} {folder}: {existing} is not a folder; give a folder "
                               "(or a path to one to create)")
    try:
        with tempfile.TemporaryFile(dir=existing):  # (unnamed where the file system allows)
            pass
    except OSError as exc:
        raise ForgetbenchError(f"{what} {folder}: cannot write in {existing} ({exc.strerror or exc}); "
                               "give a folder you can write to") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_digest(path: Path | None) -> str | None:
    """A file's content hash (16 hex digits); None for no file. Read once per process while
    the file is unchanged (size and mtime are part of the cache key): a sweep hashes the
    same replay file for many points."""
    if path is None:
        return None
    stat = path.stat()
    return _file_digest(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def json_digest(obj: Any) -> str:
    """The sha256 (hex) of ``obj`` as canonical JSON: how ids and cache keys are made."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_result(path: Path) -> Any:
    """A stored result (a baseline's or a point's scores); a corrupt one, e.g. truncated by a
    full disk or damaged by a copy, is a ForgetbenchError naming it."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise ForgetbenchError(f"{path}: stored result not found; run `forgetbench sweep` on its suite "
                               "again to compute it") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ForgetbenchError(f"{path}: stored result is corrupt ({exc}); run `forgetbench sweep` "
                               "on its suite again: it sets the file aside and recomputes it") from None


def reuse_result(path: Path, warn: Callable[[str], None]) -> Any | None:
    """A stored result for a sweep to reuse, or None to recompute it: when it is missing, or
    corrupt. A corrupt file is renamed ``<name>.corrupt-<time>``, kept for a look, with a
    warning; left in place it would fail every later sweep and report."""
    if not path.exists():
        return None
    try:
        return read_result(path)
    except ForgetbenchError:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        warn(f"warning: {path} is corrupt; set aside as {aside.name}, recomputing it")
        return None


@contextlib.contextmanager
def fresh_dir(final: Path) -> Iterator[Path]:
    """A private directory that replaces ``final`` only if the block succeeds (e.g. a model export)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        # mkdtemp makes 0700, and safetensors (so save_pretrained) writes its files 0600 through
        # a temporary file: give the export the modes every other file of the run has
        umask = current_umask()
        for folder, _, files in os.walk(tmp):
            os.chmod(folder, 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~umask)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a torn line (a crash mid-append) is skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn line from a crash mid-append
    return out


class Event(str, Enum):
    """The journal's event names: what ``RunStore.append`` writes and ``states`` replays."""

    BASELINE_EVALUATED = "baseline_evaluated"
    POINT_STARTED = "point_started"
    POINT_PAUSED = "point_paused"      # stopped at a checkpoint; the next run resumes
    POINT_TRAINED = "point_trained"
    POINT_EVALUATED = "point_evaluated"
    POINT_FAILED = "point_failed"
    POINT_INTERRUPTED = "point_interrupted"  # stopped by Ctrl-C or its sweep's end: resumed, not failed
    MODEL_DELETED = "model_deleted"  # its exported model removed (keep_models); its scores stay
    JOB_SUBMITTED = "job_submitted"  # a cluster job (key: a point's id, or the base model) and its id
    SWEEP_FINISHED = "sweep_finished"


@dataclass
class PointState:
    # pending -> running [-> paused | interrupted] -> trained -> evaluated, or failed
    status: str = "pending"
    eval_keys: set[str] = field(default_factory=set)
    error: str | None = None
    failed_at: float | None = None  # the journal time of the failure
    train: dict[str, Any] = field(default_factory=dict)
    model_deleted: bool = False  # by keep_models, after its evaluation
    job: str | None = None  # its latest cluster job ("slurm job 1234_5"), if it was submitted as one


class RunStore:
    """Paths and state of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.journal = self.root / "journal.jsonl"

    # --- paths
    def point_dir(self, point_id: str) -> Path:
        return self.root / "points" / point_id

    def model_dir(self, point_id: str) -> Path:
        return self.point_dir(point_id) / "model"

    def scores_path(self, point_id: str, eval_key: str) -> Path:
        return self.point_dir(point_id) / "scores" / f"{eval_key}.json"

    def baseline_path(self, model_hash: str, eval_key: str) -> Path:
        """The run's copy of its base model's scores (the evaluation store keeps the first)."""
        return self.root / "baseline" / f"{model_hash}-{eval_key}.json"

    def train_log(self, point_id: str) -> list[dict]:
        """A point's ``train_log.jsonl`` (one record per optimizer step, step 0 the base
        model's held-out evaluation); empty when it has none. A torn last line is skipped."""
        path = self.point_dir(point_id) / "train_log.jsonl"
        return read_jsonl(path) if path.exists() else []

    # --- writes
    def save_suite(self, resolved: dict) -> None:
        atomic_write_text(self.root / "suite.yaml", yaml.safe_dump(resolved, sort_keys=False))

    def append(self, event: Event, **fields: Any) -> None:
        """Append one event to the journal: locked against other writers, fsynced."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": round(time.time(), 3), "event": Event(event).value, **fields},
                          sort_keys=True).encode() + b"\n"
        with open(self.journal, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                # after a crash mid-append the file may end inside a line: end that torn line
                # first, or this event would be glued onto it and lost on replay
                if fh.seek(0, os.SEEK_END) > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        line = b"\n" + line
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- replay
    def latest_sweep(self) -> dict:
        """The journal's last finished sweep: its eval key, baseline file, point ids and suite."""
        finished = [e for e in self.events() if e["event"] == Event.SWEEP_FINISHED]
        if not finished:
            raise ForgetbenchError(f"{self.root}: no finished sweep recorded in journal.jsonl; "
                                   "run `forgetbench sweep SUITE` first")
        return finished[-1]

    def events(self) -> list[dict]:
        return read_jsonl(self.journal) if self.journal.exists() else []

    def submitted_jobs(self) -> dict[str, dict]:
        """The latest cluster job of each job key (a point's id, or the base model's key), as
        its ``job_submitted`` event records it (executor, job_id, folder)."""
        return {e["key"]: e for e in self.events() if e["event"] == Event.JOB_SUBMITTED}

    def states(self) -> dict[str, PointState]:
        """Each point's state, from the journal alone."""
        states: dict[str, PointState] = {}
        for ev in self.events():
            pid = ev.get("point")
            if pid is None:
                continue
            st = states.setdefault(pid, PointState())
            kind = ev["event"]
            if kind == Event.POINT_STARTED:  # (re)training: evaluations of an older model go
                st.status, st.error, st.eval_keys, st.model_deleted = "running", None, set(), False
            elif kind == Event.POINT_TRAINED:
                st.status, st.train = "trained", ev.get("summary", {})
            elif kind == Event.POINT_EVALUATED:
                st.status = "evaluated"
                st.eval_keys.add(ev["eval_key"])
            elif kind == Event.POINT_PAUSED:
                st.status = "paused"
            elif kind == Event.POINT_FAILED:
                st.status, st.error, st.failed_at = "failed", ev.get("error"), ev.get("time")
            elif kind == Event.POINT_INTERRUPTED:
                st.status, st.error = "interrupted", ev.get("error")
            elif kind == Event.MODEL_DELETED:
                st.model_deleted = True
            elif kind == Event.JOB_SUBMITTED:
                st.job = f"{ev.get('executor')} job {ev.get('job_id')}"
        return states


# the temporary names of atomic_write_text and fresh_dir: "." + final name + "." + 8 characters
_PARTIAL = re.compile(r"^\..+\.[a-z0-9_]{8}$")


def remove_partial_files(root: Path, keep: Iterable[Path] = ()) -> list[Path]:
    """Remove what a killed writer left under ``root``: the temporary files and directories of
    :func:`atomic_write_text` and :func:`fresh_dir` (a half-exported model). Only for a
    directory no one else is writing (a sweep holding its :class:`SweepLock`), except the
    folders ``keep`` (those of cluster jobs still running). Returns them."""
    removed = []
    keep = [Path(k) for k in keep]
    for path in sorted(root.rglob(".*")):
        if any(path.is_relative_to(k) for k in keep):
            continue
        if _PARTIAL.match(path.name) and not any(_PARTIAL.match(p.name) for p in path.relative_to(root).parents
                                                 if p.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class SweepLock:
    """One sweep at a time per run directory: ``sweep.lock``, flock-ed for the sweep's life and
    naming its holder (host, pid, start, lanes). The kernel releases a flock when its holder
    dies, kill -9 included, so a lock whose holder is gone is free: it is taken over, with a
    warning naming the holder it had (a holder that ended cleanly empties the file)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / "sweep.lock"
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now, or None when no sweep does."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read(fd) or {}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _read(fd: int) -> dict[str, Any] | None:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode(errors="replace").strip()
        try:
            found = json.loads(text) if text else None
        except json.JSONDecodeError:
            return {"note": text[:200]}
        return found if isinstance(found, dict) else None

    @staticmethod
    def describe(holder: dict[str, Any]) -> str:
        started = holder.get("started")
        since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
                 if isinstance(started, (int, float)) else "?")
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since}"

    def acquire(self, warn: Callable[[str], None], **info: Any) -> SweepLock:
        """Take the lock (``info``: more about this sweep, for ``status``) or refuse, naming
        its holder; use as ``with SweepLock(root).acquire(warn): ...``."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd) or {}
            os.close(fd)
            raise ForgetbenchError(
                f"{self.root}: another sweep is running on this run directory ({self.describe(holder)}); "
                "wait for it to finish (`forgetbench status` follows it), or stop it and run this again"
            ) from None
        previous = self._read(fd)
        if previous:
            warn(f"warning: {self.root}: the sweep that held it ({self.describe(previous)}) is gone; "
                 "taking it over and resuming its points")
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": round(time.time(), 3), **info}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file: released cleanly
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SweepLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
