"""``forgetbench compare``: two checkpoints judged item by item against a release gate.

Both models are evaluated (or read from the evaluation store) on the suite's tasks under one
set of eval settings; items are paired by task and lm-eval's document hash. For every task
metric: both scores with an interval (Wilson for 0/1 metrics, else a bootstrap), the paired
delta with a paired bootstrap interval (resampling clusters when the task declares one), the
exact McNemar p and the items that flipped each way for 0/1 metrics, and the minimum
detectable effect at this number of items.

The gate that judges the comparison is forgetbench/gate.py's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from forgetbench import stats
from forgetbench.config import Suite
from forgetbench.errors import ForgetbenchError
from forgetbench.eval.harness import check_tasks, declared_metrics, eval_key, eval_settings
from forgetbench.evalstore import EvalStore
from forgetbench.gate import Gate, check_gate, judge, load_gate, suite_gate
from forgetbench.metrics import headline_metric
from forgetbench.models import check_model
from forgetbench.store import RunStore, json_digest, point_problem, read_result, scores_problem

RESAMPLES = 10_000
# settings that may differ between two comparable evaluations: where the model came from
_IGNORED_SETTINGS = {"model_dir", "model", "seconds"}


# ---------------------------------------------------------------- comparability

def differences(base: dict, candidate: dict, *, tokenization: bool = True) -> list[str]:
    """What differs between the settings (and, with ``tokenization``, the tokenizers) of two
    evaluations, one phrase each ("batch_size 64 vs 32"); empty when they are comparable."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else key)
        elif a != b:
            out.append(f"{where} {a!r} vs {b!r}")

    walk({k: v for k, v in base["settings"].items() if k not in _IGNORED_SETTINGS},
         {k: v for k, v in candidate["settings"].items() if k not in _IGNORED_SETTINGS}, "")
    if tokenization:
        walk(base.get("tokenization", {}), candidate.get("tokenization", {}), "tokenization")
    return out


# ---------------------------------------------------------------- pairing

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Paired:
    """One task's items present in both evaluations, in one order."""

    task: str
    base: list[dict]
    candidate: list[dict]
    clustered: bool  # the suite declares a cluster field for the task (tasks.*.cluster)

    def values(self, metric: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(base values, candidate values, positions) of the items where both have ``metric``."""
        keep = [i for i, (b, c) in enumerate(zip(self.base, self.candidate))
                if _finite(b["values"].get(metric)) and _finite(c["values"].get(metric))]
        return (np.array([self.base[i]["values"][metric] for i in keep], dtype=float),
                np.array([self.candidate[i]["values"][metric] for i in keep], dtype=float), keep)

    def clusters(self, keep: list[int]) -> np.ndarray | None:
        """The cluster label of each kept item; None when the task declares no cluster."""
        if not self.clustered:
            return None
        return np.array([self.base[i]["cluster"] for i in keep], dtype=object)


def pair_items(task: str, base: dict, candidate: dict, *, clustered: bool = False) -> Paired:
    """Match the two evaluations' items of ``task`` by lm-eval's document hash and document
    number (a dataset may hold the same document twice). The same document must have been
    asked with the same prompt and judged against the same target; a document only one side
    has means they evaluated different items."""
    records = []
    for side, record in (("base", base), ("candidate", candidate)):
        samples = record["tasks"][task].get("samples")
        if not isinstance(samples, list):
            raise ForgetbenchError(f"compare: the {side}'s evaluation of task {task} has no per-item results "
                                   "(samples); give the evaluation store's record, not `eval --json` output")
        records.append(samples)
    hashed = [all(s.get("doc_hash") for s in samples) for samples in records]
    if hashed[0] != hashed[1]:
        old = "base" if not hashed[0] else "candidate"
        raise ForgetbenchError(f"compare: task {task}: the {old}'s evaluation predates lm-eval's document "
                               "hashes, so its items cannot be matched; evaluate it again")

    def key(s: dict) -> Any:
        return s.get("doc_hash"), s["doc_id"]

    b = {key(s): s for s in records[0]}
    c = {key(s): s for s in records[1]}
    if set(b) != set(c):
        only = len(set(b) - set(c)), len(set(c) - set(b))
        raise ForgetbenchError(f"compare: task {task}: the evaluations hold different items "
                               f"({only[0]} only in the base's, {only[1]} only in the candidate's); "
                               "evaluate both with the same task version and eval.limit")
    for k in b:
        for field in ("prompt_hash", "target_hash"):
            if b[k].get(field) and c[k].get(field) and b[k][field] != c[k][field]:
                raise ForgetbenchError(
                    f"compare: task {task}: document {b[k]['doc_id']} was asked differently "
                    f"({field} differs): the two evaluations did not give the models the same "
                    "prompt and target; evaluate both with the same task and few-shot settings")
    if clustered and not all("cluster" in s for s in (*b.values(), *c.values())):
        raise ForgetbenchError(f"compare: task {task} declares a cluster field, but an evaluation has no "
                               "cluster per item (it was made before the field was set); evaluate it again")
    order = sorted(b, key=lambda k: b[k]["doc_id"])
    return Paired(task, [b[k] for k in order], [c[k] for k in order], clustered)


# ---------------------------------------------------------------- statistics per metric

def _binary(*arrays: np.ndarray) -> bool:
    return all(bool(np.isin(a, (0.0, 1.0)).all()) for a in arrays)


def _pair(interval: stats.Interval) -> list[float]:
    return [interval.low, interval.high]


def _score_interval(values: np.ndarray, clusters: np.ndarray | None, binary: bool) -> stats.Interval:
    if binary and clusters is None:
        return stats.wilson(int(values.sum()), len(values))
    return stats.bootstrap_mean([values], [clusters], resamples=RESAMPLES).interval()


def metric_comparison(paired: Paired, metric: str, *, higher_is_better: bool) -> dict[str, Any]:
    """The comparison of one task metric (values in the metric's units; "delta" is
    candidate − base), and its bootstrap (kept for the gate, not serialised)."""
    xs, ys, keep = paired.values(metric)
    clusters = paired.clusters(keep)
    binary = _binary(xs, ys)
    boot = stats.bootstrap_mean([ys - xs], [clusters], resamples=RESAMPLES)
    delta = boot.interval()
    n_eff = len(set(clusters)) if clusters is not None else len(xs)
    # points (×100) for a proportion; a metric on another scale (perplexity, 0-100 bleu)
    # is shown, and its gate margins read, in its own units
    proportion = bool(((xs >= 0) & (xs <= 1) & (ys >= 0) & (ys <= 1)).all())
    out: dict[str, Any] = {
        "metric": metric, "n": len(xs), "clusters": n_eff if clusters is not None else None,
        "binary": binary, "higher_is_better": higher_is_better, "scale": 100 if proportion else 1,
        "base": float(xs.mean()), "candidate": float(ys.mean()),
        "base_ci": _pair(_score_interval(xs, clusters, binary)),
        "candidate_ci": _pair(_score_interval(ys, clusters, binary)),
        "delta": boot.estimate, "delta_ci": [delta.low, delta.high],
        "mde": stats.min_detectable_effect(float(boot.samples.std(ddof=1)), n_eff, binary=binary),
        "worse": int(((ys < xs) if higher_is_better else (ys > xs)).sum()),
        "better": int(((ys > xs) if higher_is_better else (ys < xs)).sum()),
        "mcnemar_p": None,
    }
    if binary:  # items taken as independent, clusters or not (the interval resamples clusters)
        out["mcnemar_p"] = stats.mcnemar_exact(int(((xs == 1) & (ys == 0)).sum()),
                                               int(((xs == 0) & (ys == 1)).sum()))
    return {**out, "_bootstrap": boot}


def flipped_items(paired: Paired, metric: str, *, higher_is_better: bool) -> list[dict[str, Any]]:
    """The items whose ``metric`` changed: direction "worse" or "better" for the candidate,
    with the prompt, the gold answer and both models' answers."""
    xs, ys, keep = paired.values(metric)
    out = []
    for x, y, i in zip(xs, ys, keep):
        if x == y:
            continue
        b, c = paired.base[i], paired.candidate[i]
        worse = (y < x) if higher_is_better else (y > x)
        out.append({"task": paired.task, "doc_id": b["doc_id"], "direction": "worse" if worse else "better",
                    "prompt": b.get("prompt", ""), "target": b.get("target", ""),
                    "base_answer": _answer(b), "candidate_answer": _answer(c),
                    "base_value": float(x), "candidate_value": float(y)})
    return out


def _answer(sample: dict) -> str:
    responses = sample.get("responses") or {}
    return str(responses.get("none", next(iter(responses.values()), "")))


# ---------------------------------------------------------------- the comparison

def compare_scores(suite: Suite, base: dict, candidate: dict, gate: Gate, source: str = "the gate") -> dict[str, Any]:
    """Every task metric compared, the gate (read from ``source``) judged; a JSON-ready dict
    (see compare.json)."""
    tasks, flips, boots = [], [], {}
    for task, role in suite.all_tasks():
        for side, record in (("base", base), ("candidate", candidate)):
            if task.name not in record["tasks"]:
                raise ForgetbenchError(f"compare: the {side}'s evaluation has no task {task.name!r}; "
                                       "evaluate it with this suite's tasks")
        paired = pair_items(task.name, base, candidate, clustered=task.cluster is not None)
        head = headline_metric(task.name, task.metric, base)
        entry = {"task": task.name, "role": role, "category": task.category or role,
                 "headline": head, "metrics": []}
        for metric, info in base["tasks"][task.name]["metrics"].items():
            if metric not in candidate["tasks"][task.name]["metrics"]:
                continue
            if not paired.values(metric)[2]:  # a corpus-level metric (bleu, perplexity): no per-item values
                if metric == head:
                    raise ForgetbenchError(f"compare: task {task.name}: its headline metric {metric!r} has no "
                                           "per-item values to pair; set tasks.*.metric to a per-item metric")
                entry.setdefault("skipped", []).append(metric)
                continue
            better = bool(info.get("higher_is_better", True))
            m = metric_comparison(paired, metric, higher_is_better=better)
            boots[task.name, metric] = m.pop("_bootstrap")
            entry["metrics"].append(m)
            if metric == head:
                flips += flipped_items(paired, metric, higher_is_better=better)
        tasks.append(entry)
    rules = judge(gate, suite, tasks, boots, source)
    failed = [r for r in rules if not r["passed"]]
    return {"verdict": "FAIL" if failed else "PASS", "gate": gate.model_dump(mode="json"),
            "rules": rules, "tasks": tasks, "flips": flips}


# ---------------------------------------------------------------- what is compared

@dataclass(frozen=True)
class Side:
    """BASE or CANDIDATE as the user named it: a model to evaluate (or whose stored scores to
    reuse), or an evaluation record given as a file."""

    arg: str
    label: str                 # for the output folder's name
    model: str | None          # builtin:NAME, a folder or a hub id (a point's exported model)
    record: Path | None        # a scores file (an evaluation store record)
    suite: Suite | None        # a sweep point's suite, for when --suite is not given
    identity: str              # what it is in full: an absolute path (a point's folder), else the name


def _slug(text: str) -> str:
    """``text`` fit for a folder's name; its end, where checkpoints of one run differ."""
    return "".join(c if c.isalnum() or c in "._" else "-" for c in text).strip("-")[-60:].lstrip("-") or "model"


def _identity(arg: str) -> str:
    return str(Path(arg).resolve()) if Path(arg).exists() else arg


def output_name(base: Side, candidate: Side) -> str:
    """The default output folder's name: both sides' labels, to read, and a hash of both
    full identities, so that two comparisons share a folder only when they compare the same
    two things (a label alone is cut short: checkpoints under one long path would share it)."""
    return f"{base.label}-vs-{candidate.label}-{json_digest([base.identity, candidate.identity])[:8]}"


def _point_side(arg: str, point_dir: Path) -> Side:
    """A sweep point: its exported model, or, once keep_models removed it, its stored
    evaluation under the suite it trained with."""
    record = read_result(point_dir / "point.json", point_problem)
    try:
        suite = Suite.model_validate(record["suite"])
    except (KeyError, ValidationError):
        raise ForgetbenchError(f"{point_dir / 'point.json'}: not a point.json that `forgetbench sweep` "
                               "wrote; pass --suite") from None
    run = point_dir.parent.parent
    slug = _slug(f"{run.name}-{point_dir.name}")
    model, identity = point_dir / "model", str(point_dir.resolve())
    if (model / "config.json").exists():
        return Side(arg, slug, str(model), None, suite, identity)
    state = RunStore(run).states().get(point_dir.name)
    scores = point_dir / "scores" / f"{eval_key(eval_settings(suite.tasks, suite.eval))}.json"
    if state is not None and state.model_deleted and scores.exists():
        return Side(arg, slug, None, scores, suite, identity)
    raise ForgetbenchError(f"{arg}: point {point_dir.name} has no exported model yet; finish it with "
                           f"`forgetbench sweep` (or `forgetbench point {point_dir / 'point.json'}`)")


def resolve_side(arg: str) -> Side:
    """BASE/CANDIDATE: ``RUN:ID`` or a point's folder (its exported model, and the suite it
    trained with), a scores JSON file, or a model (``builtin:NAME``, a folder, a hub id)."""
    run, sep, pid = arg.rpartition(":")
    if sep and not arg.startswith("builtin:") and run and Path(run).is_dir():
        point_dir = Path(run) / "points" / pid
        if not (point_dir / "point.json").exists():
            raise ForgetbenchError(f"{arg}: run {run} has no point {pid!r}; "
                                   f"`forgetbench status {run}` lists its points")
        return _point_side(arg, point_dir)
    path = Path(arg)
    if path.is_dir() and (path / "point.json").exists():
        return _point_side(arg, path)
    if path.is_dir() and path.name == "model" and (path.parent / "point.json").exists():
        return _point_side(arg, path.parent)
    if path.is_file():
        if path.suffix != ".json":
            raise ForgetbenchError(f"{arg}: a file here must be a stored evaluation (.json from "
                                   "runs/evals or a point's scores/); a model is a folder")
        return Side(arg, _slug(arg.removesuffix(".json")), None, path, None, _identity(arg))
    return Side(arg, _slug(arg), arg, None, None, _identity(arg))


def side_scores(side: Side, suite: Suite, runs_dir: Path, *, say=print) -> tuple[dict, Path]:
    """The side's evaluation: a given record, else the evaluation store's (evaluated now if
    this model has none under the suite's eval settings)."""
    if side.record is not None:
        record = read_result(side.record, problem=None)
        why = scores_problem(record)
        if why is not None:
            raise ForgetbenchError(f"{side.record}: not an evaluation record ({why}); give a model, a point, "
                                   "or a file from runs/evals")
        return record, side.record
    record, path, _ = EvalStore(runs_dir / "evals").scores(
        side.model, suite.tasks, suite.eval, trust_remote_code=suite.trust_remote_code,
        warn=say, before=lambda: say(f"evaluating {side.arg} on {len(suite.all_tasks())} tasks ..."))
    return record, path


# ---------------------------------------------------------------- the command

def run(base: Side, candidate: Side, *, suite: Suite | None, gate_path: Path | None,
        runs_dir: Path, force: bool, say=print) -> dict[str, Any]:
    """Get both sides' evaluations (see :func:`resolve_side`), refuse incomparable ones
    (unless ``force``) and compare: compare.json's dict."""
    suite = suite or base.suite or candidate.suite
    if suite is None:
        raise ForgetbenchError("compare: --suite is needed (which tasks are target and general, and the "
                               "eval settings); it is only implied when BASE or CANDIDATE is a sweep point")
    # a side evaluated here will report the metrics its tasks' configs declare: a rule on
    # another fails now, not after that evaluation (given records are judged as they are)
    reported = declared_metrics if base.model or candidate.model else None
    if gate_path:
        gate, gate_source = load_gate(gate_path), str(gate_path)
        check_gate(gate, suite, gate_source, reported)
    else:
        gate, gate_source = suite_gate(suite, reported)
    for side, field in ((base, "BASE"), (candidate, "CANDIDATE")):
        if side.model and side.suite is None:
            check_model(side.model, "forgetbench compare", field=field, trust_remote_code=suite.trust_remote_code)
    sides = [base, candidate]
    # given records first (read, not evaluated): each is checked against the settings the
    # other side will be evaluated under before that evaluation runs (it may take hours);
    # the tokenizer after it
    loaded = {i: side_scores(side, suite, runs_dir, say=say) for i, side in enumerate(sides) if side.record}
    if base.model or candidate.model:
        check_tasks(suite.tasks, source="compare")
        planned = {"settings": eval_settings(suite.tasks, suite.eval)}
        for record, _ in loaded.values():
            _refuse_mismatch(differences(record, planned, tokenization=False), force)
    for i, side in enumerate(sides):
        if i not in loaded:
            loaded[i] = side_scores(side, suite, runs_dir, say=say)
    (b, b_path), (c, c_path) = loaded[0], loaded[1]
    mismatch = differences(b, c)
    _refuse_mismatch(mismatch, force)
    result = {"suite": suite.name, "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "resamples": RESAMPLES,
              "mismatch": mismatch,
              "base": _side_info(base, b, b_path), "candidate": _side_info(candidate, c, c_path),
              "settings": b["settings"], **compare_scores(suite, b, c, gate, gate_source)}
    return result


def _refuse_mismatch(mismatch: list[str], force: bool) -> None:
    if mismatch and not force:
        raise ForgetbenchError(f"compare: the two evaluations are not comparable: {'; '.join(mismatch)}; "
                               "evaluate both under the same settings (or pass --force to compare anyway)")


def _side_info(side: Side, record: dict, path: Path) -> dict[str, Any]:
    return {"arg": side.arg, "model": side.model, "scores": str(path), "eval_key": record.get("eval_key"),
            "fingerprint": record.get("model"), "tokenization": record.get("tokenization")}
