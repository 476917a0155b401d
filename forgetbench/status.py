"""What ``forgetbench status RUN_DIR`` says: whether a sweep is running on the directory, each
point's state with its last step, how long ago its job last signalled it was alive, why it
failed, and the sweep's ETA from the durations measured so far.

A point the journal calls running is *running* only while a sweep holds the directory's lock
and the point's heartbeat is fresh; otherwise its job is gone (the sweep was killed, the
machine rebooted) and it is *interrupted*: the next sweep resumes it.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetbench.config import Point
from forgetbench.executor import HEARTBEAT_S
from forgetbench.store import Event, PointState, RunStore, SweepLock, read_json, read_jsonl

STALE_S = 6 * HEARTBEAT_S  # a heartbeat older than this: the job is gone (or hung)


@dataclass
class PointView:
    id: str
    state: str
    label: str
    detail: str


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _last_step(store: RunStore, pid: str) -> dict[str, Any] | None:
    path = store.point_dir(pid) / "train_log.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    return rows[-1] if rows else None


def point_views(store: RunStore, states: dict[str, PointState], sweeping: bool, now: float) -> list[PointView]:
    """Every point the run has planned (a ``point.json``) or recorded, in id order."""
    ids = set(states) | {p.parent.name for p in (store.root / "points").glob("*/point.json")}
    out = []
    for pid in sorted(ids):
        st = states.get(pid, PointState())
        config = store.point_dir(pid) / "point.json"
        label = Point(**read_json(config)["point"]).label() if config.exists() else ""
        state, detail = st.status, ""
        if st.status == "running":
            beat = store.point_dir(pid) / "heartbeat"
            age = now - beat.stat().st_mtime if beat.exists() else None
            last = _last_step(store, pid)
            step = f"step {last['step']}" if last else "starting"
            if sweeping and age is not None and age <= STALE_S:
                detail = f"{step}, alive {_age(age)} ago"
            elif sweeping:
                state = "hung?"
                detail = f"{step}, no sign of life for {_age(age)}" if age is not None else step
            else:
                state = "interrupted"
                detail = f"{step}; its sweep is gone (`forgetbench sweep` resumes it)"
        elif st.status == "trained" and not sweeping:
            detail = "not evaluated yet (`forgetbench sweep` evaluates it)"
        elif st.status in ("failed", "interrupted") and st.error:
            detail = st.error
        elif st.train.get("stopped_early"):
            detail = f"stopped early at step {st.train['last_step']} of {st.train['steps']}"
        out.append(PointView(pid, state, label, detail))
    return out


def eta_seconds(store: RunStore, views: list[PointView], lanes: int, now: float) -> float | None:
    """Seconds until the running and pending points are done: each pending point as long as a
    finished point of this run took on average (start to evaluated), a running one that less
    its time so far, spread over ``lanes``; None before any point has finished."""
    started: dict[str, float] = {}
    took = []
    for e in store.events():
        pid = e.get("point")
        if e["event"] == Event.POINT_STARTED:
            started[pid] = e["time"]
        elif e["event"] == Event.POINT_EVALUATED and pid in started:
            took.append(e["time"] - started.pop(pid))
    if not took:
        return None
    each = statistics.mean(took)
    left = sum(max(each - (now - started[v.id]), 0.0) if v.id in started else each
               for v in views if v.state in ("running", "pending", "trained"))
    return left / max(lanes, 1)


def status_lines(root: Path, now: float | None = None) -> list[str]:
    store = RunStore(root)
    now = time.time() if now is None else now
    holder = SweepLock(store.root).holder()
    events = store.events()
    lines = []
    if holder is not None:
        lines.append(f"sweep running: {SweepLock.describe(holder)}, {holder.get('jobs', 1)} point(s) at a time")
    else:
        finished = [e["time"] for e in events if e["event"] == Event.SWEEP_FINISHED]
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(finished[-1])) if finished else None
        lines.append("no sweep running" + (f"; the last finished {last}" if last else ""))
    if not any(e["event"] == Event.BASELINE_EVALUATED for e in events) and not (store.root / "baseline").exists():
        lines.append("base model: " + ("being evaluated" if holder is not None
                                       else "not evaluated (the sweep stopped first; `forgetbench sweep` resumes)"))
    views = point_views(store, store.states(), holder is not None, now)
    counts: dict[str, int] = {}
    for v in views:
        counts[v.state] = counts.get(v.state, 0) + 1
        lines.append(f"{v.id}  {v.state}" + (f"  ({v.label})" if v.label else "")
                     + (f"  {v.detail}" if v.detail else ""))
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no points yet")
    if holder is not None:
        eta = eta_seconds(store, views, int(holder.get("jobs", 1)), now)
        lines.append(f"ETA: {_age(eta)}, from the points finished so far" if eta is not None
                     else "ETA: after the first point finishes")
    return lines
