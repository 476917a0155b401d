"""Evaluation through EleutherAI's lm-eval: the only module that imports ``lm_eval``.

A checkpoint is always an HF directory, evaluated with ``lm_eval.simple_evaluate`` on the
suite's target and general tasks with per-sample logs kept, so before/after scores can be
paired item by item. Tasks in the suite's ``include_path`` whose data paths are relative
are resolved against their YAML file's folder (lm-eval alone would resolve them against the
working directory); every other name goes to lm-eval's own registry (hellaswag, gsm8k ...).

Each result carries the settings and versions it came from and an *eval key*, a hash of
them; forgetbench compares only scores with the same key.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from forgetbench.config import EvalSpec, TaskSpec, TasksSpec, read_utf8
from forgetbench.devices import resolve_device
from forgetbench.errors import ForgetbenchError, causes, shown, unreachable

# lm-eval's per-sample fields we keep: enough to pair items and to read what the model said
_SAMPLE_TEXT_LIMIT = 200
# Bump when a change here changes what a stored score means (parsing, seeds, settings) or
# what its per-item records hold (2: prompt, answers as text, lm-eval's hashes, clusters;
# 3: lm-eval's own bootstrap_iters, as its CLI uses, for bootstrapped stderrs; 4: BOS and
# context length pinned from the model, chat template settings).
EVAL_VERSION = 4
# simple_evaluate's seeds: the lm_eval CLI's defaults (--seed 0,1234,1234,1234), in that order
SEEDS = {"random": 0, "numpy_random": 1234, "torch_random": 1234, "fewshot_random": 1234}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_yaml(path: Path) -> dict:
    """A task YAML as lm-eval reads it: ``include:`` merged, ``!function`` tags imported (a
    module that cannot be, or a function it lacks, is one line naming the file)."""
    try:  # lm-eval >= 0.4.10
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # older lm-eval
        from lm_eval.utils import load_yaml_config

        def load_yaml(path: Path, resolve_func: bool) -> dict:
            return load_yaml_config(yaml_path=str(path))
    try:
        return load_yaml(path, resolve_func=True)
    except ImportError as exc:
        module = next((e.name for e in causes(exc) if getattr(e, "name", None)), None)
        raise ForgetbenchError(
            f"{path}: a !function tag needs module {shown(module or '?')}, which cannot be imported "
            f"({_first_line(exc)}); correct the tag, or make the module importable (a .py file beside the "
            "YAML, or an installed package)") from None
    except AttributeError as exc:  # the module has no such function
        raise ForgetbenchError(f"{path}: a !function tag: {_first_line(exc)}; correct the tag") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@lru_cache(maxsize=8)
def _local_task_files(include_path: tuple[Path, ...]) -> dict[str, Path]:
    """task name -> YAML file, for the single-task YAMLs in the ``include_path`` folders. A name
    defined twice is refused (lm-eval would let the later folder win, with a log line)."""
    found: dict[str, Path] = {}
    for folder in include_path:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:  # a plain read is enough to find the name; !function tags are left unresolved
                raw = yaml.load(read_utf8(path), Loader=_TagTolerantLoader)
            except yaml.YAMLError:
                continue
            if isinstance(raw, dict) and isinstance(raw.get("task"), str):
                name = raw["task"]
                if name in found and found[name] != path:
                    raise ForgetbenchError(f"tasks.include_path: task {shown(name)} is defined twice, in "
                                           f"{found[name]} and {path}; rename one of them")
                found[name] = path
    return found


class _TagTolerantLoader(yaml.SafeLoader):
    pass


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _local_task_config(path: Path) -> dict:
    """The task's config with relative ``dataset_kwargs.data_files`` made absolute."""
    cfg = _load_yaml(path)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if files is not None:
        def absolute(p: str) -> str:
            full = Path(p) if Path(p).is_absolute() else (path.parent / p).resolve()
            if not full.exists():
                raise ForgetbenchError(f"{path}: dataset_kwargs.data_files: file not found: {full}")
            return str(full)

        if isinstance(files, str):
            files = absolute(files)
        elif isinstance(files, list):
            files = [absolute(p) for p in files]
        else:
            files = {split: (absolute(p) if isinstance(p, str) else [absolute(q) for q in p])
                     for split, p in files.items()}
        kwargs["data_files"] = files
        cfg["dataset_kwargs"] = kwargs
    return cfg


def _flat_paths(files: Any) -> list[str]:
    """data_files as lm-eval/datasets accept it (str, list, or split -> str | list) -> paths."""
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [p for v in files.values() for p in _flat_paths(v)]
    return [p for v in files for p in _flat_paths(v)]


def _task_fingerprint(name: str, include_path: tuple[Path, ...]) -> str:
    """What a local task's results depend on: its YAML, the YAMLs and Python files beside it
    (``include:`` templates, ``!function`` modules: over-inclusive, never stale) and its
    data files' contents."""
    path = _local_task_files(include_path).get(name)
    if path is None:
        return "registry"  # lm-eval's task version is recorded with the results
    h = hashlib.sha256(path.read_bytes())
    for sibling in sorted(path.parent.glob("*")):
        if sibling.suffix in (".yaml", ".yml", ".py") and sibling != path:
            h.update(sibling.name.encode() + b"\0" + sibling.read_bytes())
    files = (_local_task_config(path).get("dataset_kwargs") or {}).get("data_files") or {}
    for p in sorted(_flat_paths(files)):
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    import lm_eval
    import torch
    import transformers

    return {"lm_eval": getattr(lm_eval, "__version__", "unknown"),
            "transformers": transformers.__version__, "torch": torch.__version__}


def eval_settings(tasks: TasksSpec, spec: EvalSpec) -> dict[str, Any]:
    """Everything a score depends on besides the model; hashed into the eval key."""
    e = spec
    return {
        "tasks": {t.name: _task_fingerprint(t.name, tasks.include_path)
                  for t, _ in tasks.all()},
        "num_fewshot": e.num_fewshot, "limit": e.limit, "batch_size": e.batch_size,
        "dtype": e.dtype, "device_type": resolve_device(e.device).type,
        "confirm_run_unsafe_code": e.confirm_run_unsafe_code,
        # a chat model's scores with and without its template are different measurements
        "apply_chat_template": e.apply_chat_template,
        "fewshot_as_multiturn": e.fewshot_as_multiturn if e.apply_chat_template else None,
        "system_instruction": e.system_instruction,
        # the document field that groups items (tasks.<role>[i].cluster), stored per item
        "clusters": {t.name: t.cluster for t, _ in tasks.all() if t.cluster},
        "versions": versions(), "eval_version": EVAL_VERSION,
    }


def model_pins(model_dir: str | Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """What of a model decides how lm-eval turns prompts into tokens, read from its tokenizer
    and config without loading weights: whether the tokenizer prepends BOS, and the context
    length lm-eval truncates to. :func:`evaluate` passes both to lm-eval's HF model and
    :func:`lm_eval_command` prints them, so what runs is what is printed and recorded."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    ids = tok("a")["input_ids"]
    max_length = context_length(config, tok) or 2048
    # True: it prepends BOS; False: it adds no special token at all; None (the tokenizer's
    # default, unpinned): it adds others, which lm-eval's add_special_tokens=False would drop
    adds_bos = tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id]
    plain = ids == tok("a", add_special_tokens=False)["input_ids"]
    return {"add_bos_token": True if adds_bos else (False if plain else None), "max_length": int(max_length)}


def context_length(config: Any, tokenizer: Any) -> int | None:
    """A model's context length in tokens as lm-eval reads it (its config's n_positions,
    max_position_embeddings or n_ctx, else its tokenizer's model_max_length); None when
    neither says (lm-eval then assumes 2048)."""
    try:  # lm-eval >= 0.4.10: its own rule
        from lm_eval.models.utils import resolve_max_length
        found = resolve_max_length(config, tokenizer, default=0)
    except ImportError:  # older lm-eval: the same order (config, then tokenizer)
        known = [getattr(config, a) for a in ("n_positions", "max_position_embeddings", "n_ctx")
                 if isinstance(getattr(config, a, None), int)]
        found = known[0] if known else (tokenizer.model_max_length if tokenizer.model_max_length < 10**12 else 0)
    return int(found) or None


def lm_eval_config(tasks: TasksSpec) -> str | None:
    """The ``--config`` file :func:`lm_eval_command` names when the suite has several task
    folders (the CLI's ``--include_path`` takes one); None for one folder or none."""
    if len(tasks.include_path) < 2:
        return None
    return yaml.safe_dump({"include_path": [str(Path(p).resolve()) for p in tasks.include_path]})


def lm_eval_command(model_dir: str | Path, tasks: TasksSpec, spec: EvalSpec, trust_remote_code: bool = False,
                    output_path: str | Path | None = None, config_path: str | Path = "lm_eval_config.yaml",
                    pins: dict[str, Any] | None = None) -> list[str]:
    """The ``lm_eval`` CLI command that computes the same scores as :func:`evaluate` does for
    ``model_dir`` (``forgetbench eval --print-lm-eval``): the same model arguments, tasks,
    task folder, batch size, device, seeds, few-shot count, limit and opt-ins; what neither
    sets (the bootstrap's iterations, max_batch_size) is lm-eval's default on both sides; BOS
    and the context length are pinned (:func:`model_pins`, read from the model unless given).
    With several task folders the command reads them from ``config_path``, whose text
    :func:`lm_eval_config` gives. The bundled tasks load their data relative to their own folder
    (suites/tasks/fb_data.py), so the command runs from any directory. A local task whose
    ``data_files`` are relative and which has no such loader would be read by the CLI
    against the working directory: refused."""
    local = _local_task_files(tasks.include_path)
    for t, _ in tasks.all():
        if t.name in local:
            raw = yaml.load(read_utf8(local[t.name]), Loader=_TagTolerantLoader) or {}
            files = (raw.get("dataset_kwargs") or {}).get("data_files")
            relative = [p for p in _flat_paths(files or []) if not Path(p).is_absolute()]
            if relative and "custom_dataset" not in raw:
                raise ForgetbenchError(
                    f"{local[t.name]}: dataset_kwargs.data_files: {relative[0]} is relative, which the lm_eval "
                    "CLI reads against its working directory; make it absolute, or load it with a "
                    "custom_dataset function as suites/tasks/fb_data.py does")
    e = spec
    pins = pins if pins is not None else model_pins(model_dir, trust_remote_code)
    model_args = {"pretrained": str(model_dir), "dtype": e.dtype, **{k: v for k, v in pins.items() if v is not None},
                  **({"trust_remote_code": True} if trust_remote_code else {})}
    # key=value,...; as JSON when the model's path holds a comma or an equals sign
    args = (",".join(f"{k}={v}" for k, v in model_args.items()) if not any(c in str(model_dir) for c in ",=")
            else json.dumps(model_args))
    cmd = ["lm_eval", "run", "--model", "hf", "--model_args", args,
           "--tasks", ",".join(t.name for t, _ in tasks.all())]
    if len(tasks.include_path) == 1:
        cmd += ["--include_path", str(Path(tasks.include_path[0]).resolve())]
    elif tasks.include_path:
        cmd += ["--config", str(config_path)]
    cmd += ["--batch_size", str(e.batch_size), "--device", str(resolve_device(e.device)),
            "--seed", ",".join(str(seed) for seed in SEEDS.values())]
    if e.num_fewshot is not None:
        cmd += ["--num_fewshot", str(e.num_fewshot)]
    if e.limit is not None:
        cmd += ["--limit", str(e.limit)]
    if e.confirm_run_unsafe_code:
        cmd += ["--confirm_run_unsafe_code"]
    if trust_remote_code:
        cmd += ["--trust_remote_code"]
    if e.apply_chat_template:
        cmd += ["--apply_chat_template", "--fewshot_as_multiturn", str(e.fewshot_as_multiturn).lower()]
    if e.system_instruction is not None:
        cmd += ["--system_instruction", e.system_instruction]
    if output_path is not None:
        cmd += ["--output_path", str(output_path)]
    return cmd


def eval_key(settings: dict[str, Any]) -> str:
    return _sha256(json.dumps(settings, sort_keys=True).encode())[:12]


@lru_cache(maxsize=4)
def _task_manager(include_path: tuple[Path, ...], defaults: bool):
    """lm-eval's task index, built once per process: indexing its thousands of built-in
    task YAMLs takes ~10 s, so a suite with bundled tasks only (``defaults`` False) skips it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in include_path] or None, include_defaults=defaults)


def registered_tasks(tasks: TasksSpec) -> list[str]:
    """The suite's tasks that lm-eval's registry defines (not its ``include_path`` folders)."""
    local = _local_task_files(tasks.include_path)
    return [t.name for t, _ in tasks.all() if t.name not in local]


def _needs_registry(tasks: TasksSpec) -> bool:
    return bool(registered_tasks(tasks))


def check_tasks(tasks: TasksSpec, source: str = "suite", spec: EvalSpec | None = None) -> None:
    """Fail before any training if a task name is neither bundled nor known to lm-eval, or a
    registered task's declared metric is not one its YAML config reports; with ``spec``, also
    if a task executes generated code (``unsafe_code``) without both opt-ins it needs. Reads
    lm-eval's task index only: no dataset is loaded."""
    local = _local_task_files(tasks.include_path)
    missing = [(t, role) for t, role in tasks.all() if t.name not in local]
    if not missing:
        return
    manager = _task_manager(tasks.include_path, True)
    known = set(manager.all_tasks) | set(local)
    for task, role in missing:
        if task.name not in known:
            close = difflib.get_close_matches(task.name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                "; list lm-eval's tasks with `lm-eval ls tasks`")
            raise ForgetbenchError(f"{source}: tasks.{role}: unknown lm-eval task "
                                   f"{shown(task.name)}{hint}")
    for task, role, index in _indexed_tasks(tasks):
        cfg = None if task.name in local else registry_config(manager, task.name)
        if cfg is None:  # bundled: checked with its documents; a group or tag: on the base model's scores
            continue
        names, functions = config_metrics(cfg)
        if task.metric is not None and task.metric not in names and not functions:
            raise ForgetbenchError(f"{source}: tasks.{role}[{index}].metric: {shown(task.metric)} is not a metric "
                                   f"lm-eval reports for task {shown(task.name)}; valid: {', '.join(names)}")
        if spec is not None and cfg.get("unsafe_code"):
            if not spec.confirm_run_unsafe_code:
                raise ForgetbenchError(
                    f"{source}: tasks.{role}[{index}]: task {shown(task.name)} executes the code the model "
                    "writes; set eval.confirm_run_unsafe_code: true (and HF_ALLOW_CODE_EVAL=1) where "
                    "that is acceptable, such as a container or VM, or drop the task")
            if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":  # its code_eval metric refuses to load without it
                raise ForgetbenchError(
                    f"{source}: tasks.{role}[{index}]: task {shown(task.name)} executes the code the model "
                    "writes, which HF evaluate's code_eval runs only with HF_ALLOW_CODE_EVAL=1 in the "
                    "environment; export HF_ALLOW_CODE_EVAL=1 where that is acceptable, or drop the task")


def registry_config(manager, name: str) -> dict[str, Any] | None:
    """A registered task's YAML config as lm-eval's task index holds it (includes merged,
    ``!function`` tags unresolved: the function's path); None for a group, a tag, a Python
    task, or an lm-eval whose index does not keep configs."""
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None)
    kind = getattr(getattr(entry, "kind", None), "name", None)
    return cfg if kind == "TASK" and isinstance(cfg, dict) and cfg.get("task") == name else None


def config_metrics(cfg: dict[str, Any]) -> tuple[list[str], bool]:
    """The metric names lm-eval reports for a task, from its config alone (no data): each metric
    of ``metric_list`` (else its output type's defaults) under each filter of ``filter_list``,
    named as :func:`_metric_name` names them; and whether one of them is a Python function,
    whose results may carry other names (humaneval's ``pass_at_k`` reports ``pass@1``)."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    listed = cfg.get("metric_list")
    raw = ([m.get("metric") for m in listed if isinstance(m, dict)] if listed is not None
           else list(DEFAULT_METRIC_REGISTRY.get(cfg.get("output_type"), [])))
    # an unresolved !function is the path of the function: ".../mbpp/utils.pass_at_1"
    functions = [m for m in raw if callable(m) or (isinstance(m, str) and "/" in m)]
    metrics = [getattr(m, "__name__", None) or str(m).rsplit("/", 1)[-1].rsplit(".", 1)[-1]
               if m in functions else str(m) for m in raw]
    filters = [f["name"] for f in cfg.get("filter_list") or () if isinstance(f, dict) and "name" in f] or ["none"]
    return [_metric_name(m, f) for f in filters for m in metrics], bool(functions)


def declared_metrics(tasks: TasksSpec) -> dict[str, list[str] | None]:
    """Task name -> the metric names its evaluation will report, read from its YAML config
    (:func:`config_metrics`) before anything is evaluated: a bundled task's file, a registered
    one's entry in lm-eval's task index. None where only its results tell: a group or tag, or
    a task with a Python function for a metric."""
    local = _local_task_files(tasks.include_path)
    manager = _task_manager(tasks.include_path, True) if _needs_registry(tasks) else None
    out: dict[str, list[str] | None] = {}
    for task, _ in tasks.all():
        cfg = (_local_task_config(local[task.name]) if task.name in local
               else registry_config(manager, task.name))
        names, functions = config_metrics(cfg) if cfg is not None else ([], True)
        out[task.name] = None if functions else names
    return out


def _indexed_tasks(tasks: TasksSpec) -> list[tuple[TaskSpec, str, int]]:
    """(task, role, index in its role's list): where a task sits in the suite file."""
    return [(t, role, i) for role, listed in (("target", tasks.target), ("general", tasks.general))
            for i, t in enumerate(listed)]


def _load_tasks(manager, spec: str | dict) -> dict[str, Any]:
    """lm-eval's leaf tasks (a group or tag expands to its subtasks) of one spec, by name."""
    if hasattr(manager, "load"):  # newer lm-eval: flat dicts of tasks and groups
        return manager.load([spec])["tasks"]
    from lm_eval.tasks import get_task_dict  # older lm-eval: groups nest as dicts

    found: dict[str, Any] = {}

    def walk(node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value)
            elif hasattr(value, "eval_docs"):
                found[getattr(value, "task_name", None) or str(key)] = value

    walk(get_task_dict([spec], manager))
    return found


def _question_answer(task, doc) -> tuple[str, str]:
    """What an item asks and its gold answer, as text. Multiple choice: the gold choice (the
    first, if several are gold); multiple-input tasks (winogrande) choose the context, so the
    question is the gold context; generation: the reference (the first, if several)."""
    text, target = task.doc_to_text(doc), task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if getattr(task, "multiple_input", 0):
            return str(choices[text]), str(target)
        gold = target[0] if isinstance(target, list) and target else target
        if isinstance(gold, int) and 0 <= gold < len(choices):
            gold = choices[gold]
        return str(text), str(gold)
    if isinstance(target, list):
        target = target[0] if target else ""
    return str(text), str(target)


def reported_metrics(task) -> list[str]:
    """The metric names :func:`evaluate` stores for one lm-eval leaf task: each metric of its
    metric list (its aggregations) under each of its filters, named as :func:`_metric_name`
    names them ('acc'; 'exact_match,strict-match' for a filter other than lm-eval's 'none')."""
    filters = [f.name for f in getattr(task, "_filters", None) or ()] or ["none"]
    return [_metric_name(metric, filt) for filt in filters for metric in task.aggregation()]


def _check_metric(task: TaskSpec, field: str, loaded: dict[str, Any], source: str) -> None:
    """Refuse a declared headline metric the task's results will not have; checked from the
    task objects, so before the base model is evaluated. A group or tag (its name is not one
    of its leaf tasks), and a task with a Python function for a metric (which may report
    other names: humaneval's pass_at_k reports pass@1), are left to the check on the
    baseline's scores."""
    if task.metric is None or task.name not in loaded:
        return
    valid = reported_metrics(loaded[task.name])
    listed = getattr(getattr(loaded[task.name], "config", None), "metric_list", None) or ()
    if any(callable(m.get("metric")) for m in listed if isinstance(m, dict)):
        return
    if task.metric not in valid:
        raise ForgetbenchError(f"{source}: {field}.metric: {shown(task.metric)} is not a metric "
                               f"lm-eval reports for task {shown(task.name)}; valid: {', '.join(valid)}")


def eval_items(tasks: TasksSpec, source: str = "suite", *, show_progress: bool = False,
               registry: bool = True) -> dict[str, list[tuple[str, str]]]:
    """lm-eval task name -> (question, answer) of every document of its evaluation split,
    in document order (``eval.limit`` ignored), for the suite's target and general tasks; a
    group or tag is listed by its subtasks. The texts are lm-eval's own ``doc_to_text`` and
    ``doc_to_target`` (see :func:`_question_answer`); leakage.py compares them with the
    training data. Registry tasks load their datasets as an evaluation would.

    With the task objects loaded, each task's declared ``metric`` is checked against what
    lm-eval will report (:func:`reported_metrics`): a typo fails here, before anything runs.
    ``registry`` False leaves out lm-eval's registered tasks (the bundled ones only: what a
    dry run reads, which downloads nothing). Loading a registered task is what downloads its
    dataset into the local cache where the hub is reachable (``forgetbench cache``)."""
    include = tasks.include_path
    local = _local_task_files(include)
    manager = _task_manager(include, _needs_registry(tasks) and registry)
    items: dict[str, list[tuple[str, str]]] = {}
    for task, role, index in _indexed_tasks(tasks):
        if task.name not in local and not registry:
            continue
        spec = _local_task_config(local[task.name]) if task.name in local else task.name
        with contextlib.nullcontext() if show_progress else contextlib.redirect_stderr(io.StringIO()):
            try:
                loaded = _load_tasks(manager, spec)
                docs = {name: list(t.eval_docs) for name, t in loaded.items()}
            except Exception as exc:  # a dataset lm-eval cannot get (offline, gated ...)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                fix = (f"; its dataset is not in the local cache and the hub cannot be reached: where "
                       f"it can, run `forgetbench cache {source}` with the same HF_HOME, or copy that "
                       "cache here" if unreachable(exc) else "")
                raise ForgetbenchError(
                    f"{source}: tasks.{role}: lm-eval could not load the documents of task "
                    f"{shown(task.name)} to check them against the training data "
                    f"({type(exc).__name__}: {first[:200]}){fix}") from exc
        _check_metric(task, f"tasks.{role}[{index}]", loaded, source)
        for name, t in loaded.items():
            items[name] = [_question_answer(t, doc) for doc in docs[name]]
    return items


def _split_metric_key(key: str) -> tuple[str, str] | None:
    """'acc,none' -> ('acc', 'none'); None for stderr and alias entries."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    if metric.endswith("_stderr"):
        return None
    return metric, filt


def _choice_text(arguments: Any, index: int) -> str | None:
    """The text of multiple-choice option ``index``: the continuation of its request, None
    when the requests are not (context, continuation) pairs."""
    args = arguments[index] if isinstance(arguments, list) and 0 <= index < len(arguments) else None
    if isinstance(args, (list, tuple)) and len(args) > 1 and isinstance(args[1], str):
        return args[1].strip()[:_SAMPLE_TEXT_LIMIT]
    return None


def _response(resps: Any, arguments: Any) -> str:
    """What the model answered: generated text, or for multiple choice the text of the choice
    with the highest log-likelihood."""
    if isinstance(resps, list) and resps and all(isinstance(r, (list, tuple)) for r in resps):
        lls = [float(r[0]) for r in resps]  # (log-likelihood, is_greedy) per choice
        best = max(range(len(lls)), key=lls.__getitem__)
        text = _choice_text(arguments, best)
        return str(best) if text is None else text
    first = resps[0] if isinstance(resps, list) and resps else resps
    return str(first)[:_SAMPLE_TEXT_LIMIT]


def _prompt(arguments: Any) -> str:
    """The text the model was given for an item (its first request's context)."""
    first = arguments[0] if isinstance(arguments, list) and arguments else None
    context = first[0] if isinstance(first, (list, tuple)) and first else first
    return str(context or "")[-_SAMPLE_TEXT_LIMIT:]


def _gold_text(target: Any, arguments: Any) -> str:
    """The gold answer as text: for multiple choice (an index into the requests) the gold
    choice's text, else the target itself."""
    text = _choice_text(arguments, target) if isinstance(target, int) else None
    return str(target)[:_SAMPLE_TEXT_LIMIT] if text is None else text


def tokenizer_digest(tokenizer: Any) -> str:
    """What decides how a prompt becomes tokens, hashed: the vocabulary, the special tokens,
    the chat template and the encoding of a probe text (normalisation and pre-tokenisation).
    Two checkpoints of one model give the same digest even when ``save_pretrained`` wrote
    their tokenizer files differently."""
    probe = "The capital of France is\n  def f(x):\n\treturn x + 12 * 34  # Ünïcode 日本 ✓"
    state = {"vocab": sorted(tokenizer.get_vocab().items()),
             "special": sorted(map(str, getattr(tokenizer, "all_special_tokens", []))),
             "chat_template": getattr(tokenizer, "chat_template", None),
             "probe": tokenizer.encode(probe)}
    return _sha256(json.dumps(state, default=str).encode())[:16]


def _metric_name(metric: str, filt: str) -> str:
    return metric if filt == "none" else f"{metric},{filt}"


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@contextlib.contextmanager
def _cheap_provenance():
    """lm-eval stamps every result with where it ran; two of its probes cost more than they
    are worth here (forgetbench records its own versions and settings with each score):

    - the working directory's git commit, by ``git describe``, whose stderr is this process's
      file descriptor 2 (out of reach of ``redirect_stderr``): outside a repository git prints
      ``fatal: not a git repository`` on every evaluation. The call is kept, its stderr dropped.
    - torch's ``collect_env`` report, which runs ``pip list`` and other programs: ~1.2 s of a
      ~4 s evaluation of the embedded model. It is replaced by a note; the rest of lm-eval's
      environment fields (its and transformers' versions) stay."""
    from lm_eval import evaluator

    lookup, env_info = evaluator.get_git_commit_hash, evaluator.add_env_info

    def quiet() -> str | None:
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
                return lookup()
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    def cheap_env_info(storage: dict[str, Any]) -> None:
        import torch.utils.collect_env as collect_env

        real = collect_env.get_pretty_env_info
        collect_env.get_pretty_env_info = lambda: "not collected (forgetbench records its versions)"
        try:
            env_info(storage)
        finally:
            collect_env.get_pretty_env_info = real

    evaluator.get_git_commit_hash, evaluator.add_env_info = quiet, cheap_env_info
    try:
        yield
    finally:
        evaluator.get_git_commit_hash, evaluator.add_env_info = lookup, env_info


def evaluate(model_dir: Path | str, tasks: TasksSpec, spec: EvalSpec, *, trust_remote_code: bool = False,
             show_progress: bool = False) -> dict[str, Any]:
    """Evaluate the HF directory ``model_dir`` on the suite's tasks; returns a scores record.

    lm-eval's progress bars reach stderr only with ``show_progress``; its log records reach
    the logging handlers either way.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    settings = eval_settings(tasks, spec)
    e = spec
    pins = model_pins(model_dir, trust_remote_code)
    local = _local_task_files(tasks.include_path)
    specs = [_local_task_config(local[t.name]) if t.name in local else t.name
             for t, _ in tasks.all()]
    start = time.monotonic()
    with (contextlib.nullcontext() if show_progress else contextlib.redirect_stderr(io.StringIO()),
          _cheap_provenance()):
        lm = HFLM(pretrained=str(model_dir), device=str(resolve_device(e.device)), dtype=e.dtype,
                  batch_size=e.batch_size, trust_remote_code=trust_remote_code, **pins)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=specs, num_fewshot=e.num_fewshot, limit=e.limit, log_samples=True,
            task_manager=_task_manager(tasks.include_path, _needs_registry(tasks)),
            # (lm-eval's bootstrap_iters, 100000, as its CLI: the same stderrs; see lm_eval_command)
            **{f"{name}_seed": seed for name, seed in SEEDS.items()},
            confirm_run_unsafe_code=e.confirm_run_unsafe_code, apply_chat_template=e.apply_chat_template,
            fewshot_as_multiturn=e.fewshot_as_multiturn and e.apply_chat_template,
            system_instruction=e.system_instruction)
    results: dict[str, Any] = {}
    for task, _role in tasks.all():
        res = out["results"].get(task.name)
        if res is None:
            raise ForgetbenchError(f"lm-eval returned no results for task {shown(task.name)}")
        better = out.get("higher_is_better", {}).get(task.name, {})
        metrics = {}
        for key, value in res.items():
            split = _split_metric_key(key)
            if split is None or not isinstance(value, (int, float)):
                continue
            metric, filt = split
            stderr = res.get(f"{metric}_stderr,{filt}")
            metrics[_metric_name(metric, filt)] = {
                "value": _clean(float(value)),
                "stderr": _clean(float(stderr)) if isinstance(stderr, (int, float)) else None,
                "higher_is_better": bool(better.get(metric, True))}
        # lm-eval logs one record per (item, filter); merge them into one record per item,
        # with values named like the aggregate metrics above
        by_doc: dict[int, dict[str, Any]] = {}
        for s in out.get("samples", {}).get(task.name, []):
            filt = s.get("filter", "none")
            rec = by_doc.setdefault(s["doc_id"], {
                "doc_id": s["doc_id"], "doc_hash": s.get("doc_hash"),
                "prompt_hash": s.get("prompt_hash"), "target_hash": s.get("target_hash"),
                "prompt": _prompt(s.get("arguments")),
                "target": _gold_text(s.get("target"), s.get("arguments")),
                "responses": {}, "values": {}})
            if task.cluster:
                doc = s.get("doc") if isinstance(s.get("doc"), dict) else {}
                if task.cluster not in doc:
                    raise ForgetbenchError(f"tasks: {task.name}.cluster: its documents have no field "
                                           f"{shown(task.cluster)}; fields: {', '.join(sorted(doc))}")
                rec["cluster"] = str(doc[task.cluster])
            rec["responses"][filt] = _response(s.get("filtered_resps"), s.get("arguments"))
            for m in s.get("metrics", []):
                if isinstance(s.get(m), (int, float, bool)):
                    rec["values"][_metric_name(m, filt)] = _clean(float(s[m]))
        samples = [by_doc[k] for k in sorted(by_doc)]
        results[task.name] = {"metrics": metrics, "n": len(samples) or out.get("n-samples", {}).get(
            task.name, {}).get("effective"), "version": out.get("versions", {}).get(task.name),
            "n_shot": out.get("n-shot", {}).get(task.name),
            # multiple_choice tasks are scored by log-likelihood: the model never generates
            "output_type": (out.get("configs", {}).get(task.name) or {}).get("output_type"),
            "samples": samples}
    return {"eval_key": eval_key(settings), "settings": settings, "model_dir": str(model_dir),
            # what of the model itself decides how prompts become tokens: compare checks both
            "tokenization": {"tokenizer": tokenizer_digest(lm.tokenizer), **pins},
            "tasks": results, "seconds": round(time.monotonic() - start, 2)}
