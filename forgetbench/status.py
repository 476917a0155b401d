"""What ``forgetbench status RUN_DIR`` says: whether a sweep is running on the directory, each
point's state with its last step, how long ago its job last signalled it was alive, why it
failed, and the sweep's ETA from the durations measured so far.

A point the journal calls running is *running* only while a sweep holds the directory's lock
and the point's heartbeat is fresh; otherwise its job is gone (the sweep was killed, the
machine rebooted) and it is *interrupted*: the next sweep resumes it.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetbench import cluster, planner
from forgetbench.config import Point, Suite
from forgetbench.devices import resolve_device
from forgetbench.errors import ForgetbenchError
from forgetbench.executor import HEARTBEAT_S
from forgetbench.models import resolve_model
from forgetbench.store import Event, PointState, RunStore, SweepLock, point_problem, read_jsonl, read_result
from forgetbench.sweep import BASE_JOB, PlannedPoint

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


def _planned_points(store: RunStore) -> dict[str, dict]:
    """Each point as its point.json holds it, else as the journal's last finished sweep planned
    it: a torn point.json (the next sweep sets it aside and rebuilds it) is left alone."""
    planned = {}
    for e in store.events():
        if e["event"] == Event.SWEEP_FINISHED:
            planned.update(e.get("planned", {}))
    for config in (store.root / "points").glob("*/point.json"):
        with contextlib.suppress(ForgetbenchError):
            planned[config.parent.name] = read_result(config, point_problem)["point"]
    return planned


def point_views(store: RunStore, states: dict[str, PointState], sweeping: bool, now: float,
                queued: frozenset[str] = frozenset()) -> list[PointView]:
    """Every point the run has planned (a ``point.json``) or recorded, in id order. ``queued``:
    the points whose cluster job is queued or running (alive without a sweep)."""
    ids = set(states) | {p.parent.name for p in (store.root / "points").glob("*/point.json")}
    planned = _planned_points(store)
    out = []
    for pid in sorted(ids):
        st = states.get(pid, PointState())
        point = planned.get(pid)
        label = Point(**point).label() if point is not None else ""
        state, detail = st.status, ""
        if pid in queued and st.status in ("pending", "paused", "interrupted", "failed"):
            state, detail = "queued", f"{st.job}" + {
                "pending": "", "failed": f" (run again; it failed before: {st.error})"}.get(
                    st.status, " (requeued: it resumes from its checkpoint)")
        elif pid in queued and st.status == "trained":
            state, detail = "evaluating", f"{st.job}"
        elif st.status == "running":
            beat = store.point_dir(pid) / "heartbeat"
            age = now - beat.stat().st_mtime if beat.exists() else None
            last = _last_step(store, pid)
            step = f"step {last['step']}" if last else "starting"
            if pid in queued and (age is None or age > STALE_S):  # between a preemption and its requeue
                state, detail = "queued", f"{step}; {st.job}"
            elif pid in queued:
                detail = f"{step}, alive {_age(age)} ago; {st.job}"
            elif sweeping and age is None:  # its job is starting: no heartbeat yet
                detail = step
            elif sweeping and age <= STALE_S:
                detail = f"{step}, alive {_age(age)} ago"
            elif sweeping:
                state = "hung?"
                detail = f"{step}, no sign of life for {_age(age)}"
            else:
                state = "interrupted"
                detail = f"{step}; its sweep is gone (`forgetbench sweep` resumes it)"
        elif st.status == "trained" and not sweeping:
            detail = "not evaluated yet (`forgetbench sweep` evaluates it)"
        elif st.status in ("failed", "interrupted") and st.error:
            detail = st.error
        elif st.train.get("stopped_early"):
            detail = f"stopped early at step {st.train['last_step']} of {st.train['steps']}"
        if st.status == "evaluated" and st.model_deleted:
            detail = (detail + "; " if detail else "") + "model removed (keep_models), scores kept"
        out.append(PointView(pid, state, label, detail))
    return out


def eta_seconds(store: RunStore, views: list[PointView], lanes: int, now: float) -> float | None:
    """Seconds until the running and pending points are done: each pending point as long as a
    finished point of this run took on average (start to evaluated), a running one that less
    its time so far, spread over ``lanes``; None before any point has finished."""
    took = point_seconds(store)
    if not took:
        return None
    each = statistics.mean(took)
    started = _started(store)
    left = [max(each - (now - started[v.id]), 0.0) if v.id in started else each
            for v in views if v.state in ("running", "pending", "trained", "queued", "evaluating")]
    # spread over the lanes the points left can fill, and never less than the longest of them
    return max(sum(left) / max(min(lanes, len(left)), 1), max(left, default=0.0))


def _started(store: RunStore) -> dict[str, float]:
    """Each point's latest start time."""
    return {e["point"]: e["time"] for e in store.events() if e["event"] == Event.POINT_STARTED}


def point_seconds(store: RunStore) -> list[float]:
    """How long each point of the run took, from its (last) start to its evaluation."""
    started: dict[str, float] = {}
    took = []
    for e in store.events():
        pid = e.get("point")
        if e["event"] == Event.POINT_STARTED:
            started[pid] = e["time"]
        elif e["event"] == Event.POINT_EVALUATED and pid in started:
            took.append(e["time"] - started.pop(pid))
    return took


def status_lines(root: Path, now: float | None = None) -> list[str]:
    store = RunStore(root)
    now = time.time() if now is None else now
    holder = SweepLock(store.root).holder()
    events = store.events()
    submitted = store.submitted_jobs()
    queued = cluster.active_jobs(submitted)
    lines = []
    if holder is not None:
        lines.append(f"sweep running: {SweepLock.describe(holder)}, up to {holder.get('jobs', 1)} point(s) at a time")
    else:
        finished = [e["time"] for e in events if e["event"] == Event.SWEEP_FINISHED]
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(finished[-1])) if finished else None
        lines.append("no sweep running" + (f"; the last finished {last}" if last else ""))
    if queued:
        kinds = sorted({ev["executor"] for ev in queued.values()})
        lines.append(f"{len(queued)} cluster job(s) queued or running ({', '.join(kinds)}); once they are done, "
                     f"`forgetbench sweep SUITE --executor {kinds[0]}` writes the report")
    if not any(e["event"] == Event.BASELINE_EVALUATED for e in events) and not (store.root / "baseline").exists():
        base_job, ended = queued.get(BASE_JOB), submitted.get(BASE_JOB)
        lines.append("base model: " + (
            f"being evaluated ({base_job['executor']} job {base_job['job_id']})" if base_job is not None
            else "being evaluated" if holder is not None
            else f"its {ended['executor']} job {ended['job_id']} has ended; the next `forgetbench sweep` "
                 "records its scores, or says why it has none (baseline.log)" if ended is not None
            else "not evaluated (the sweep stopped first; `forgetbench sweep` resumes)"))
    views = point_views(store, store.states(), holder is not None, now, frozenset(queued))
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


def plan_lines(suite: Suite, planned: list[PlannedPoint], runs_root: Path, key: str, jobs: int) -> list[str]:
    """What ``sweep --dry-run`` prints: each point and whether it is done, what is left to
    run, the disk its exported models take, and the time it should take from what this run
    has measured (nothing is estimated that was not measured)."""
    store = RunStore(runs_root / suite.name)
    states = store.states()
    sweeping = SweepLock(store.root).holder() is not None
    queued = cluster.active_jobs(store.submitted_jobs())
    lines = [f"suite {suite.name}: {len(planned)} points -> {store.root}"]
    todo = {"train": 0, "evaluate": 0}
    for pp in planned:
        st = states.get(pp.id)
        status = ("pending" if st is None else "evaluated" if key in st.eval_keys
                  else "trained" if st.train else st.status)
        if status == "running" and not sweeping and pp.id not in queued:
            status = "interrupted"
        if status in ("pending", "running", "interrupted", "paused"):
            todo["train"] += 1
        elif status == "trained":
            todo["evaluate"] += 1
        job = f"; its {st.job} is queued or running" if pp.id in queued and st is not None else ""
        lines.append(f"  {pp.id}  {pp.point.label()}  [{status}{job}]")
    failed = sum(1 for pp in planned if (states.get(pp.id) or PointState()).status == "failed")
    lines.append(f"to run: {todo['train']} to train and evaluate, {todo['evaluate']} to evaluate"
                 + (f"; {failed} failed earlier (run again with --retry-failed)" if failed else ""))
    shape = planner.shape_of(str(resolve_model(suite.model)), suite.trust_remote_code)
    each = shape.params * 4 / 1e9  # the export: fp32 weights (the tokenizer is small)
    kept = {"all": "every point's model is kept (keep_models: all)",
            "pareto": "only the points on the learning-forgetting front keep theirs (keep_models: pareto)",
            "none": "none is kept once evaluated (keep_models: none)"}[suite.keep_models]
    lines.append(f"disk: each point's exported model ~{each:.3g} GB (fp32): up to ~{each * todo['train']:.3g} GB "
                 f"for the points to train, and {kept}")
    if resolve_device(suite.train.device).type == "cuda":
        memory = planner.gpu_memory_gb() or 80.0
        p = planner.suite_plan(suite, memory)
        lines.append(f"memory: {p.total_gb:.1f} GB per GPU of {memory:.0f} on {p.gpus} GPU(s) per point "
                     "(`forgetbench plan SUITE` details it)")
    took = point_seconds(store)
    if not took:
        lines.append("time: not known before a point of this run has finished")
    else:
        left = (todo["train"] * statistics.mean(took)) / max(jobs, 1)
        lines.append(f"time: ~{_age(left)} at --jobs {jobs} (the {len(took)} point(s) finished here took "
                     f"{statistics.mean(took):.0f} s each on average, with the jobs they ran beside)")
    return lines
