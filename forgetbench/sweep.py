"""The sweep: grid points and their ids, the baseline, training and evaluating what is missing.

A point's id is a hash of everything its fine-tuning depends on (base model, data contents,
training settings, the swept values), never its position in the grid, so adding values to a
grid keeps the finished points. Scores are stored per eval key (see eval/harness.py): a
point is complete when it has scores for the current key, and is never recomputed.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from forgetbench import cluster, metrics, planner, regularizers
from forgetbench.cluster import SubmititExecutor
from forgetbench.config import Point, Suite
from forgetbench.datafiles import read_rows, source_fingerprint
from forgetbench.devices import resolve_device
from forgetbench.errors import ForgetbenchError, shown
from forgetbench.eval.harness import context_length, eval_key, eval_settings
from forgetbench.evalstore import EvalStore
from forgetbench.executor import Done, InlineExecutor, Job, Lane, LocalExecutor, Terminated, lanes
from forgetbench.models import model_fingerprint, model_hash, resolve_model
from forgetbench.report import write_outputs
from forgetbench.store import (
    Event,
    PointState,
    RunStore,
    SweepLock,
    atomic_write_json,
    fresh_dir,
    json_digest,
    point_problem,
    read_result,
    remove_partial_files,
    reuse_result,
    temporary_name,
)
from forgetbench.train import data as train_data
from forgetbench.train import preempt, recipe

# Bump when a change to the training recipe changes what a point produces.
TRAINING_VERSION = 1


def data_fingerprint(suite: Suite) -> dict[str, str | None]:
    return {"target": source_fingerprint(suite.data.target), "replay": source_fingerprint(suite.data.replay)}


def point_identity(suite: Suite, point: Point) -> dict[str, Any]:
    """The settings one point's result depends on, beyond the model and the data: hashed
    into its id. Process count and checkpointing change speed and memory, not the result;
    held-out evaluation only matters when it decides early stopping; the settings of a
    regulariser's estimated state (EWC's Fisher) only for its points. A replicate's seed is
    hashed as what it is, the training seed, so a point without one keeps the id it had
    before seeds could be swept, and a point trains the same, under the same id, whether
    its seed comes from ``sweep.seed`` or ``train.seed``."""
    suite = suite.for_point(point)
    train = suite.train.model_dump(mode="json", exclude={
        "nproc", "checkpoint_every", "activation_checkpointing", "compile", "eval_every",
        "track_kl", "eval_batch_size", "ewc"})
    if not train.get("chat_template"):  # (off, a point keeps the id it had before chat training existed)
        train.pop("chat_template", None)
    extra: dict[str, Any] = {}
    if point.patience is not None:
        extra["early_stopping"] = {"eval_every": suite.train.eval_every,
                                   "validation": source_fingerprint(suite.data.validation)}
    reg = regularizers.get(point.regularizer)
    if reg is not None and reg.cache is not None:
        extra[reg.cache] = {**reg.identity(suite), "training_version": TRAINING_VERSION}
    # the form only where it is decoupled: plain and coupled points keep the ids they had
    # before the decoupled form existed
    hashed = point.model_dump(exclude={"seed"} if point.regularizer_form == "decoupled"
                              else {"seed", "regularizer_form"})
    return {"train": train, "point": hashed, **extra}


@dataclass(frozen=True)
class PlannedPoint:
    point: Point
    id: str
    config: dict[str, Any]  # what its training depends on, hashed into its id

    def record(self, suite: Suite) -> dict[str, Any]:
        """``points/<id>/point.json``: the point and the resolved suite it trains (train.seed
        its seed), so a queued job trains exactly what was planned, whatever later happens to
        the suite file."""
        return {"id": self.id, "point": self.point.model_dump(), "config": self.config,
                "suite": suite.for_point(self.point).resolved()}


def read_point(path: Path) -> tuple[Suite, PlannedPoint, RunStore]:
    """The suite, point and run directory of a ``points/<id>/point.json`` (or its folder). The
    point's identity is computed again from the suite and point it holds, with the model and
    data as they are now: a point.json edited, or data changed since it was planned, is refused."""
    path = path / "point.json" if path.is_dir() else path
    record = read_result(path, point_problem)
    if path.parent.name != record["id"] or path.parent.parent.name != "points":
        raise ForgetbenchError(f"{path}: a point.json trains in its run directory, "
                               f"<run>/points/{record['id']}/point.json; train it there")
    try:
        suite, point = Suite.model_validate(record["suite"]), Point(**record["point"])
    except ValidationError as exc:
        raise ForgetbenchError(f"{path}: its suite or point is no longer valid here "
                               f"({' '.join(str(exc).split())[:300]})") from None
    pp = planned(suite, point)
    if pp.id != record["id"]:
        raise ForgetbenchError(f"{path}: its point no longer hashes to its id {record['id']} (the file "
                               "was edited, or the model or data changed since it was planned); plan "
                               "it again with `forgetbench sweep SUITE`")
    return suite, pp, RunStore(path.parent.parent.parent)


def planned_point(suite: Suite, point_id: str) -> PlannedPoint:
    """The point of ``suite`` with id ``point_id`` (a user's --point)."""
    by_id = {pp.id: pp for pp in plan(suite)}
    if point_id not in by_id:
        raise ForgetbenchError(f"--point {point_id}: not a point of suite {shown(suite.name)}; "
                               "`forgetbench sweep SUITE --dry-run` lists them")
    return by_id[point_id]


def planned(suite: Suite, point: Point) -> PlannedPoint:
    """``point`` of ``suite`` with its id: the hash of everything its training depends on."""
    config = {"model": model_fingerprint(suite.model), "data": data_fingerprint(suite),
              **point_identity(suite, point), "training_version": TRAINING_VERSION}
    return PlannedPoint(point, json_digest(config)[:12], config)


def plan(suite: Suite) -> list[PlannedPoint]:
    """The grid as points with ids; the config hashed into an id is stored with the point."""
    return [planned(suite, point) for point in suite.points()]


def check_training(suite: Suite, source: str) -> None:
    """Refuse, before anything is written, a suite whose points would train on nothing: an
    epochs value under one target example (no optimizer step), or a ``train.max_seq_len``
    that every target prompt fills (no completion token left to learn); or one above the
    model's context length (its position embeddings end there)."""
    from transformers import AutoConfig, AutoTokenizer

    path = suite.data.target
    rows = read_rows(path)
    for i, grid in enumerate(suite.grids):
        where = "sweep" if len(suite.grids) == 1 else f"sweep[{i}]"
        for epochs in grid.epochs:
            if train_data.target_examples(epochs, len(rows)) == 0:
                raise ForgetbenchError(
                    f"{source}: {where}.epochs: {epochs:g} epochs of the {len(rows)} rows of "
                    f"data.target ({path}) is less than one example, so no optimizer step; use "
                    f"at least {1 / len(rows):.3g} (one example)")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(suite.model),
                                              trust_remote_code=suite.trust_remote_code)
    max_len = suite.train.max_seq_len
    context = context_length(AutoConfig.from_pretrained(resolve_model(suite.model),
                                                        trust_remote_code=suite.trust_remote_code), tokenizer)
    if context is not None and max_len > context:
        raise ForgetbenchError(f"{source}: train.max_seq_len: {max_len} tokens is more than the context length "
                               f"of model {suite.model} ({context} tokens); set it to {context} or less")
    try:
        examples = train_data.tokenize(rows, tokenizer, max_len, chat=suite.train.chat_template)
    except ForgetbenchError as exc:  # a chat template that cannot be trained through
        raise ForgetbenchError(f"{source}: {exc}") from None
    if train_data.learns_nothing(examples):
        longest = max((len(tokenizer(r["prompt"])["input_ids"]) for r in rows if "prompt" in r), default=1)
        raise ForgetbenchError(
            f"{source}: train.max_seq_len: {max_len} tokens leave no completion token in any "
            f"row of data.target ({path}): its prompts alone fill them, so there is nothing to "
            f"learn; its longest prompt is {longest} tokens, so raise it above {longest}")


@dataclass
class SweepOutcome:
    store: RunStore
    eval_key: str
    trained: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_retried: list[str] = field(default_factory=list)  # failed in an earlier sweep, left so
    waiting: dict[str, str] = field(default_factory=dict)  # cluster jobs left queued or running (--no-wait)
    tables: Any = None  # report.write_outputs' return: the terminal's tables and verdict


def _trained(state: PointState | None, model_dir: Path) -> bool:
    """A point whose exported model is whole: trained (or evaluated) per the journal, and there."""
    return bool(state and (state.status in ("trained", "evaluated") or state.train)
                and (model_dir / "config.json").exists())


def _evaluated(store: RunStore, state: PointState | None, pid: str, key: str, warn: Callable[[str], None]) -> bool:
    """The point has scores under eval key ``key``: the journal says so and the file reads
    (a corrupt one is set aside, and the point is evaluated again)."""
    return bool(state and key in state.eval_keys and reuse_result(store.scores_path(pid, key), warn) is not None)


def evaluate_model(model: str, suite_record: dict[str, Any], runs_root: str) -> int:
    """A job: evaluate ``model`` on the suite's tasks into the evaluation store of ``runs_root``."""
    suite = Suite.model_validate(suite_record)
    record, path, _ = EvalStore(Path(runs_root) / "evals").scores(
        model, suite.tasks, suite.eval, trust_remote_code=suite.trust_remote_code)
    print(f"evaluated {model} in {record.get('seconds')} s: {path}")
    return 0


def run_point(point_file: str | Path) -> int:
    """The whole work of one point, from its ``point.json``: train it (unless its model is
    already trained), then evaluate it. What ``forgetbench point POINT_JSON`` runs, and each
    point's job in a sweep. A failure is recorded in the journal, with its reason, and raised.

    The preemption signal (SIGUSR2, see train/preempt.py) stops its training at the next
    optimizer step with a checkpoint: it then returns ``preempt.PAUSED_EXIT`` unevaluated,
    and runs on from that step when run again."""
    preempt.install()
    suite, pp, store = read_point(Path(point_file))
    key = eval_key(eval_settings(suite.tasks, suite.eval))
    model_dir = store.model_dir(pp.id)
    state = store.states().get(pp.id)
    if _evaluated(store, state, pp.id, key, print):
        print(f"point {pp.id}: already evaluated under these settings: {store.scores_path(pp.id, key)}")
        return 0
    if not _trained(state, model_dir):
        if suite.train.nproc > 1:
            failure = launch_training(store, pp.id, suite.train.nproc)
            if failure:
                raise RuntimeError(f"point {pp.id}: {failure}")
        else:
            print(training_line(pp.id, train_one(suite, pp, store)), flush=True)
        state = store.states().get(pp.id)
        if state is not None and state.status == "paused":  # preempted: resumed when run again
            print(f"point {pp.id}: stopped at a checkpoint on the preemption signal; run it again to resume",
                  flush=True)
            return preempt.PAUSED_EXIT
    try:
        _, path, _ = EvalStore(store.root.parent / "evals").scores(
            str(model_dir), suite.tasks, suite.eval, trust_remote_code=suite.trust_remote_code)
    except Exception as exc:  # e.g. out of memory in generation: recorded, the sweep goes on
        store.append(Event.POINT_FAILED, point=pp.id, error=f"evaluation: {type(exc).__name__}: {exc}",
                     stage="eval", traceback=traceback.format_exc(limit=8))
        raise
    store.append(Event.POINT_EVALUATED, point=pp.id, eval_key=key)
    print(f"point {pp.id}: evaluated: {path}", flush=True)
    return 0


def training_line(point_id: str, summary: dict[str, Any]) -> str:
    """One line on how a point's training went, from its summary."""
    if "stopped_at" in summary:
        return (f"point {point_id}: stopped with a checkpoint after step {summary['stopped_at']} of "
                f"{summary['steps']}; run again to resume")
    steps = (f"{summary['steps']} steps" if summary["last_step"] == summary["steps"] else
             f"stopped early at step {summary['last_step']} of {summary['steps']}")
    best = (f" (exported: step {summary['best_step']}, the best validation loss)"
            if summary.get("best_step") is not None else "")
    return (f"point {point_id}: {steps}{best} on {summary.get('world_size', 1)} "
            f"process(es){' (FSDP2)' if summary.get('sharded') else ''} in {summary.get('train_seconds')} s"
            + (f", resumed from step {summary['resumed_from_step']}" if summary.get("resumed_from_step") else ""))


def _log_tail(log: Path | None) -> str:
    """The last line a job wrote to its log (its error, or the last line of its traceback)."""
    if log is None or not log.exists():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last.removeprefix("forgetbench: error: ")


BASE_JOB = "base model"  # the job key of the base model's evaluation (a point's is its id)


def run_sweep(suite: Suite, runs_root: Path, *, echo: Callable[[str], None] = print,
              executor: LocalExecutor | InlineExecutor | SubmititExecutor | None = None,
              work: Callable[[str], int] = run_point, retry_failed: bool = False,
              point_timeout: float | None = None) -> SweepOutcome:
    """Evaluate the base model once, then train and evaluate every point not yet complete,
    then write the run's tables and report (``outcome.tables``: what report.write_outputs
    returns).

    Each of those is a job of ``executor`` (default: one at a time, each in its own process):
    the base model's evaluation (:func:`evaluate_model`) first, then ``work``
    (:func:`run_point`) for each point. This process plans, launches and collects, one line
    per job; a job's own output goes to its log (``points/<id>/point.log``). A base model
    whose scores lack a task's metric (a group's, which is only known then) stops the sweep
    and the points running beside its evaluation.

    One sweep at a time per run directory (:class:`store.SweepLock`, refused in one line
    naming the sweep that holds it); the files a killed sweep left half-written are removed
    first. Points that failed in an earlier sweep are retried only with ``retry_failed``;
    interrupted ones (Ctrl-C, a killed sweep) always resume. A job still running after
    ``point_timeout`` seconds is ended and its point failed (a hung collective, a stuck job).

    With a :class:`cluster.SubmititExecutor`, the jobs that an earlier sweep submitted and that
    are still queued or running are followed, not submitted again; with its ``wait`` off,
    the sweep returns once its jobs are queued (``outcome.waiting``), and writes no outputs."""
    runs_root = Path(runs_root).resolve()  # jobs run in processes of their own
    store = RunStore(runs_root / suite.name)
    if executor is None:
        executor = LocalExecutor(lanes(1, suite.train.nproc, resolve_device(suite.train.device).type))
    warnings: list[str] = []
    with SweepLock(store.root).acquire(warnings.append, jobs=len(executor.lanes)):
        echo = _logged(echo, store.root / "sweep.log")
        for line in warnings:
            echo(line)
        following = _queued_jobs(store, executor)
        # the jobs still running write in their points' folders and in the regularisers'
        # caches (EWC's Fisher)
        busy = [store.point_dir(k) for k in following if k != BASE_JOB] + [
            store.root / reg.cache for reg in map(regularizers.get, regularizers.names())
            if following and reg is not None and reg.cache is not None]
        removed = remove_partial_files(store.root, keep=busy)
        if removed:
            names = [str(p.relative_to(store.root)) for p in removed]
            echo(f"removed {len(names)} half-written file(s) a killed sweep left: "
                 + ", ".join(names[:3]) + (" ..." if len(names) > 3 else ""))
        outcome = _sweep(suite, runs_root, store, echo=echo, executor=executor, work=work,
                         retry_failed=retry_failed, point_timeout=point_timeout, following=following)
        if not outcome.waiting:
            outcome.tables = write_outputs(store, suite, store.latest_sweep())
    return outcome


def _queued_jobs(store: RunStore, executor: Any) -> dict[str, tuple[str, float]]:
    """The cluster jobs an earlier sweep submitted that are still queued or running: job key ->
    (job id, time of submission). Followed by a cluster executor of their kind; any other
    executor is refused (it would run those points a second time, beside their jobs)."""
    queued: dict[str, tuple[str, float]] = {}
    for key, ev in cluster.active_jobs(store.submitted_jobs()).items():
        if not (isinstance(executor, SubmititExecutor) and executor.kind == ev["executor"]):
            raise ForgetbenchError(
                f"{store.root}: {key} is still queued or running as {ev['executor']} job {ev['job_id']}; "
                f"follow it with `forgetbench sweep SUITE --executor {ev['executor']}`, or cancel it "
                f"({'scancel ' + ev['job_id'] if ev['executor'] == 'slurm' else 'kill its process'}) first")
        queued[key] = (ev["job_id"], ev["time"])
    return queued


class _ModelKeeper:
    """``keep_models``: removes the exported model of each evaluated point not kept, as soon as
    that is known, so a sweep's disk holds the kept models and the running points' only.
    ``pareto`` keeps the points on the learning-forgetting front of the points evaluated so
    far: a point off it stays off it whatever is added later (it stays dominated), so it is
    removed at once. Its scores, logs and place in the report stay; ``compare`` reads its
    stored evaluation; a new eval setting trains it again."""

    def __init__(self, suite: Suite, store: RunStore, key: str):
        self.suite, self.store, self.key = suite, store, key
        self.tasks = [(t.name, t.metric, role) for t, role in suite.all_tasks()]
        self.baseline: dict[str, Any] | None = None
        self.coords: dict[str, tuple[float, float]] = {}  # point -> (learning, forgetting)
        self.pending: list[str] = []

    def finished(self, pid: str) -> None:
        self.pending.append(pid)
        self.prune()

    def prune(self) -> None:
        if self.suite.keep_models == "all" or self.baseline is None:
            return
        for pid in self.pending:
            scores = read_result(self.store.scores_path(pid, self.key))
            learn, forget = metrics.learning_and_forgetting(self.tasks, self.baseline, scores)
            self.coords[pid] = (0.0 if math.isnan(learn) else learn, 0.0 if math.isnan(forget) else forget)
        self.pending = []
        ids = sorted(self.coords)
        front = ({ids[i] for i in metrics.pareto_front([self.coords[p] for p in ids])}
                 if self.suite.keep_models == "pareto" else set())
        for pid in ids:
            model = self.store.model_dir(pid)
            if pid not in front and model.exists():
                # said before it is done: a kill midway leaves a model the journal calls
                # deleted (and the next sweep's clean-up removes the rest), never the reverse
                self.store.append(Event.MODEL_DELETED, point=pid, keep_models=self.suite.keep_models)
                aside = model.with_name(temporary_name("model"))
                os.replace(model, aside)
                shutil.rmtree(aside, ignore_errors=True)


def _logged(echo: Callable[[str], None], log: Path) -> Callable[[str], None]:
    """``echo``, each line also appended to ``log`` with its date and time (``sweep.log``: the
    run's progress lines, sweep after sweep)."""
    def both(line: str) -> None:
        echo(line)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    return both


def _base_job(suite: Suite, store: RunStore, runs_root: Path) -> Job:
    """The base model's evaluation as a job: :func:`evaluate_model`, or the command
    ``forgetbench eval MODEL --suite RUN/suite.yaml`` on a cluster."""
    return Job(BASE_JOB, evaluate_model, (suite.model, suite.resolved(), str(runs_root)), store.root / "baseline.log",
               argv=("eval", suite.model, "--suite", str(store.root / "suite.yaml"), "--runs-dir", str(runs_root)))


def _point_job(store: RunStore, pid: str, work: Callable[[str], int] = run_point) -> Job:
    """A point's job: ``work`` on its point.json, the command ``forgetbench point POINT_JSON``."""
    point_file = str(store.point_dir(pid) / "point.json")
    return Job(pid, work, (point_file,), store.point_dir(pid) / "point.log",
               heartbeat=store.point_dir(pid) / "heartbeat", argv=("point", point_file))


def jobs_to_run(suite: Suite, planned: list[PlannedPoint], runs_root: Path) -> list[Job]:
    """The jobs a sweep would run now (``--dry-run``): the base model's evaluation unless it is
    stored, and each point not evaluated under the suite's eval settings. Writes nothing."""
    runs_root = Path(runs_root).resolve()
    store = RunStore(runs_root / suite.name)
    key = eval_key(eval_settings(suite.tasks, suite.eval))
    stored = EvalStore(runs_root / "evals").stored(suite.model, suite.tasks, suite.eval, warn=lambda msg: None)
    states = store.states()
    return ([] if stored is not None else [_base_job(suite, store, runs_root)]) + [
        _point_job(store, pp.id) for pp in planned
        if not _evaluated(store, states.get(pp.id), pp.id, key, lambda msg: None)]


def _sweep(suite: Suite, runs_root: Path, store: RunStore, *, echo: Callable[[str], None],
           executor: LocalExecutor | InlineExecutor | SubmititExecutor, work: Callable[[str], int],
           retry_failed: bool, point_timeout: float | None,
           following: dict[str, tuple[str, float]]) -> SweepOutcome:
    planned = plan(suite)
    evals = EvalStore(runs_root / "evals")
    key = eval_key(eval_settings(suite.tasks, suite.eval))
    store.save_suite(suite.resolved())
    outcome = SweepOutcome(store=store, eval_key=key)
    executor.start()

    # the base model's scores, from the evaluation store when `forgetbench eval` or another
    # sweep already evaluated it under these settings; else its evaluation is the first job,
    # running beside the first points
    baseline = evals.stored(suite.model, suite.tasks, suite.eval, warn=echo)
    bpath = store.baseline_path(model_hash(suite.model), key)
    baseline_ref = str(bpath.relative_to(store.root))
    base_log = store.root / "baseline.log"  # the base job's log

    def keep_baseline(record: dict[str, Any], computed: bool) -> None:
        # the run keeps a copy: a run directory is whole on its own (to copy, to report)
        if computed or reuse_result(bpath, echo) is None:
            atomic_write_json(bpath, record)
        if computed:
            store.append(Event.BASELINE_EVALUATED, eval_key=key, path=baseline_ref)
        for task, _ in suite.all_tasks():
            metrics.headline_metric(task.name, task.metric, record)  # a wrong metric stops the sweep

    jobs: list[Job] = []
    keep = _ModelKeeper(suite, store, key)
    if baseline is not None:
        keep_baseline(baseline, computed=False)
        keep.baseline = baseline
    else:
        echo(f"evaluating the base model {suite.model} ...")
        jobs.append(_base_job(suite, store, runs_root))

    states = store.states()
    labels: dict[str, str] = {}
    trains: dict[str, bool] = {}
    launched: dict[str, float] = {}
    for i, pp in enumerate(planned, 1):
        state = states.get(pp.id)
        point_file = store.point_dir(pp.id) / "point.json"
        if point_file.exists() and reuse_result(point_file, echo, point_problem) is None:
            atomic_write_json(point_file, pp.record(suite))  # a torn one, set aside: rebuilt from the plan
        if _evaluated(store, state, pp.id, key, echo):
            outcome.skipped.append(pp.id)
            keep.finished(pp.id)
            continue
        if state and state.status == "failed" and not retry_failed and pp.id not in following:
            outcome.failed[pp.id] = state.error or "failed"
            outcome.not_retried.append(pp.id)
            continue
        atomic_write_json(point_file, pp.record(suite))
        labels[pp.id] = f"[{i}/{len(planned)}] point {pp.id} ({pp.point.label()})"
        trains[pp.id] = not _trained(state, store.model_dir(pp.id))
        jobs.append(_point_job(store, pp.id, work))
    points = len(jobs) - (baseline is None)
    if points > 1 and len(executor.lanes) > 1 and not isinstance(executor, SubmititExecutor):
        echo(f"{points} points, {len(executor.lanes)} at a time ({executor.lanes[0].describe()} each)")
    stopped: list[tuple[str, str]] = []  # (point, its user error)

    def started(job: Job, lane: Lane) -> None:
        # a followed job (an earlier sweep's) started when it was submitted
        launched[job.key] = following[job.key][1] if job.key in following else time.time()
        if lane.where and job.key not in following:  # a cluster job: its id, to follow it later
            store.append(Event.JOB_SUBMITTED, key=job.key, executor=executor.kind,
                         job_id=executor.submitted[job.key], folder=str(executor.folder),
                         **({"point": job.key} if job.key != BASE_JOB else {}))
        name = labels.get(job.key, "the base model's evaluation")
        if lane.where:
            echo(f"{name}: {'following' if job.key in following else 'submitted as'} {lane.where}")
        elif job.key != BASE_JOB:
            echo(f"{name}: " + ("training" + (f" on {suite.train.nproc} processes" if suite.train.nproc > 1 else "")
                                if trains[job.key] else "evaluating"))

    def base_done(done: Done) -> None:
        """The base model evaluated: keep its scores, or stop the sweep (running points too)."""
        nonlocal baseline
        baseline = evals.stored(suite.model, suite.tasks, suite.eval, warn=echo)
        if baseline is None:
            why = _log_tail(base_log) or done.reason()
            raise ForgetbenchError(f"evaluating the base model {suite.model} failed: {why} (its log: {base_log})")
        keep_baseline(baseline, computed=True)
        keep.baseline = baseline
        keep.prune()
        echo(f"evaluated the base model ({done.seconds:.0f} s)")

    def ended(done: Done) -> bool:
        pid = done.job.key
        if pid == BASE_JOB:
            base_done(done)
            return True
        state = store.states().get(pid)
        if done.timed_out:  # ended at its time limit: a failure, whatever the job recorded
            outcome.failed[pid] = done.reason()
            store.append(Event.POINT_FAILED, point=pid, error=done.reason())
            echo(f"{labels[pid]}: FAILED: {done.reason()} (log: {done.job.log})")
            return True
        if done.exitcode == 0 and state is not None and key in state.eval_keys:
            keep.finished(pid)
            outcome.evaluated.append(pid)
            trained = trains[pid] and state.train
            if trained:
                outcome.trained.append(pid)
            what = (f"{state.train.get('last_step')} steps in {state.train.get('train_seconds')} s, "
                    if trained else "")
            echo(f"{labels[pid]}: done ({what}{done.seconds:.0f} s in all)")
            return True
        if state is not None and state.status == "interrupted":  # SIGTERM from outside: resumed later
            outcome.failed[pid] = f"interrupted ({state.error})"
            echo(f"{labels[pid]}: interrupted ({state.error}); the next sweep resumes it")
            return True
        if state is not None and state.status == "paused":  # the preemption signal, not requeued
            outcome.failed[pid] = "stopped at a checkpoint (preempted)"
            echo(f"{labels[pid]}: stopped at a checkpoint on the preemption signal; the next sweep resumes it")
            return True
        # the reason the job recorded, else why its process ended
        if state is not None and state.status == "failed" and (state.failed_at or 0) >= launched[pid]:
            error = state.error or done.reason()
        else:
            error = done.reason()
            store.append(Event.POINT_FAILED, point=pid, error=error)
        if done.exitcode == 2:  # a user error: every other point would meet it too
            stopped.append((pid, error))
            return False
        outcome.failed[pid] = error
        echo(f"{labels[pid]}: FAILED: {error} (log: {done.job.log})")
        return True

    keep.prune()  # the points already complete (a widened grid, another keep_models)
    if isinstance(executor, SubmititExecutor):
        executor.run(jobs, on_start=started, on_done=ended, following=following)
        if not executor.wait:
            outcome.waiting = {**{k: v[0] for k, v in following.items() if any(j.key == k for j in jobs)},
                               **executor.submitted}
            return outcome
    else:
        executor.run(jobs, on_start=started, on_done=ended, timeout=point_timeout)
    if stopped:
        pid, error = stopped[0]
        raise ForgetbenchError(f"point {pid}: {error} (its log: {store.point_dir(pid) / 'point.log'})")

    # the suite travels with the record: a later, interrupted sweep may rewrite suite.yaml
    store.append(Event.SWEEP_FINISHED, eval_key=key, baseline=baseline_ref,
                 points=[pp.id for pp in planned], suite=suite.resolved(),
                 planned={pp.id: pp.point.model_dump() for pp in planned})
    return outcome


def train_one(suite: Suite, pp: PlannedPoint, store: RunStore, stop_after: int | None = None) -> dict:
    """Train one planned point into its run directory: what ``forgetbench train`` runs, in
    each process under torchrun. Rank 0 records the journal events and writes the files."""
    main = int(os.environ.get("RANK", "0")) == 0
    preempt.install()
    base = resolve_model(suite.model)
    ckpt = store.point_dir(pp.id) / "checkpoints"
    # a regulariser's estimated state (EWC's Fisher) is cached once per model and settings,
    # shared by every point of the run that uses it
    reg = regularizers.get(pp.point.regularizer)
    state_dir = (store.root / reg.cache / json_digest({"model": pp.config["model"], **pp.config[reg.cache]})[:12]
                 if reg is not None and reg.cache is not None else None)
    if main:
        atomic_write_json(store.point_dir(pp.id) / "point.json", pp.record(suite))
        store.append(Event.POINT_STARTED, point=pp.id, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    try:
        # rank 0 exports into a private directory that replaces model/ only on success
        with fresh_dir(store.model_dir(pp.id)) if main else contextlib.nullcontext() as tmp:
            summary = recipe.train_point(
                suite.for_point(pp.point), pp.point, base_model_dir=base, out_dir=tmp,
                log_path=store.point_dir(pp.id) / "train_log.jsonl" if main else None,
                checkpoint_dir=ckpt, stop_after=stop_after, state_dir=state_dir)
            if main and "stopped_at" in summary:
                raise _Stopped  # leave no model directory: the point is not trained yet
    except _Stopped:
        store.append(Event.POINT_PAUSED, point=pp.id, step=summary["stopped_at"])
        return summary
    except (KeyboardInterrupt, Terminated) as exc:  # resumed by the next sweep, not failed
        if main:
            store.append(Event.POINT_INTERRUPTED, point=pp.id, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        raise
    except BaseException as exc:  # every way out after point_started, or status says running
        if main:
            if isinstance(exc, ForgetbenchError):  # a user error: its one line says it all
                store.append(Event.POINT_FAILED, point=pp.id, error=str(exc))
            else:  # a bug, a diverging loss, an out-of-memory error ...
                error = (oom_message(suite, exc) if isinstance(exc, torch.OutOfMemoryError)
                         else f"{type(exc).__name__}: {exc}")
                store.append(Event.POINT_FAILED, point=pp.id, error=error,
                             traceback=traceback.format_exc(limit=8))
        raise
    if main:
        store.append(Event.POINT_TRAINED, point=pp.id, summary=summary)
    return summary


def oom_message(suite: Suite, exc: BaseException) -> str:
    """An out-of-memory failure in words: what the memory planner expected, and the fixes."""
    try:
        plan = planner.suite_plan(suite, planner.gpu_memory_gb() or 80.0)
        expected = (f"; the planner expected {plan.total_gb:.1f} GB per GPU of {plan.gpu_memory_gb:.0f} "
                    f"on {plan.gpus} GPU(s) (`forgetbench plan SUITE` details it)")
    except Exception:  # the message must not fail for want of a plan
        expected = ""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return (f"out of memory ({first}){expected}; lower train.batch_size (train.grad_accum keeps the "
            "global batch), set train.activation_checkpointing: true, or raise train.nproc")


class _Stopped(Exception):
    """Raised inside the export context to discard it when a run stops at a checkpoint."""


def train_command(point_file: Path, nproc: int) -> list[str]:
    """The command that trains one point from its ``point.json``: the same locally and on a
    cluster node."""
    cmd = [sys.executable, "-m", "forgetbench", "train", str(point_file)]
    if nproc > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "forgetbench"]
    return cmd


def launch_training(store: RunStore, point_id: str, nproc: int) -> str | None:
    """Train one point in a child process (under torchrun when nproc > 1), so a crash, an
    out-of-memory kill or a hung collective stays in that point. Returns the failure, if any
    (None: trained, or paused at a checkpoint by the preemption signal, which this process
    passes on to torchrun's workers; torchrun itself has it blocked)."""
    with preempt.blocked():
        proc = subprocess.Popen(train_command(store.point_dir(point_id) / "point.json", nproc))
    try:
        with preempt.forwarding(proc.pid):
            returncode = proc.wait()
    except BaseException:  # torchrun passes SIGTERM on to its workers, then ends
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    state = store.states().get(point_id)
    if returncode == 0 and state is not None and state.status in ("trained", "paused"):
        return None
    if returncode == 2:
        if state is None or state.status != "failed":  # e.g. refused before train_one started
            store.append(Event.POINT_FAILED, point=point_id, error="training stopped on a user error")
        raise ForgetbenchError(f"point {point_id}: training stopped on the error above")
    if state is not None and state.status == "failed" and state.error:
        return state.error
    msg = f"training process exited with status {returncode}"
    store.append(Event.POINT_FAILED, point=point_id, error=msg)
    return msg

