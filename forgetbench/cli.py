"""The ``forgetbench`` command: argument parsing and printing only.

User mistakes surface as a ForgetbenchError: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from forgetbench import regularizers
from forgetbench.errors import ForgetbenchError
from forgetbench.executor import Terminated


def _quiet_libraries(verbose: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _echo(msg: str) -> None:
    print(msg, flush=True)


def _progress(msg: str) -> None:
    """A sweep's progress line: on a terminal as it is; elsewhere (a log file, CI) with the
    time, as in the run's sweep.log."""
    print(msg if sys.stdout.isatty() else f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def cmd_plan(args: argparse.Namespace) -> int:
    from forgetbench import planner
    from forgetbench.config import load_suite

    memory = args.gpu_memory or planner.gpu_memory_gb() or 80.0
    if args.suite:
        from forgetbench.models import check_model

        suite = load_suite(args.suite, args.set)
        check_model(suite.model, args.suite, trust_remote_code=suite.trust_remote_code)
        if args.gpus:
            suite = suite.model_copy(update={"train": suite.train.model_copy(update={"nproc": args.gpus})})
        plan = planner.suite_plan(suite, memory, args.formula)
    else:
        missing = [f for f in ("params", "hidden", "layers", "seq_len") if getattr(args, f) is None]
        if missing:
            raise ForgetbenchError("plan: give a SUITE, or --params, --hidden, --layers and "
                                   f"--seq-len (missing: {', '.join('--' + m.replace('_', '-') for m in missing)})")
        shape = planner.ModelShape(params=args.params, hidden=args.hidden, layers=args.layers,
                                   heads=args.heads, vocab=args.vocab, intermediate=args.intermediate,
                                   kv_heads=args.kv_heads)
        work = planner.Workload(seq_len=args.seq_len, batch_size=args.batch_size, gpus=args.gpus or 1,
                                gpu_memory_gb=memory, regularizer=args.regularizer)
        plan = planner.FORMULAS[args.formula](shape, work)
    print(json.dumps(plan.as_dict(), indent=2) if args.json else planner.format_plan(plan))
    return 0


def _print_tables(summary, mitigations, judged) -> None:
    import textwrap

    from forgetbench.report.tables import format_mitigations, format_summary
    from forgetbench.report.verdict import verdict_lines

    _echo("\nlearning (target) and forgetting (general), headline metrics, in points; one line per\n"
          "setting, the mean of its seeds; max forget: the worst general task; *: Pareto front:")
    _echo(format_summary(summary))
    if not mitigations.empty:
        _echo("\nwhat each mitigation buys:")
        _echo(format_mitigations(mitigations))
    if judged is not None:
        _echo("\nverdict (95% paired intervals over items, and seeds where a setting has several):")
        for line in verdict_lines(judged):
            _echo(textwrap.fill(line, 100, initial_indent="- ", subsequent_indent="  "))


def _print_files(root: Path) -> None:
    """Where the details the terminal tables leave out are."""
    _echo(f"details in {root}:\n"
          "  summary.csv  one row per point (each seed): learning and forgetting per task\n"
          "  summary.md   the settings above as a Markdown table, to paste into a pull request\n"
          "  results.csv  one row per point and task metric: before, after, delta with its 95% interval\n"
          "  report.html  the verdict, figures, training curves, every table and the items that changed")


def cmd_sweep(args: argparse.Namespace) -> int:
    from forgetbench.config import load_cluster, load_suite
    from forgetbench.datafiles import read_rows, uncached_hub_data
    from forgetbench.devices import resolve_device
    from forgetbench.eval.harness import check_tasks, declared_metrics, eval_items
    from forgetbench.executor import LocalExecutor, lanes, model_modules
    from forgetbench.gate import suite_gate
    from forgetbench.leakage import check_leakage
    from forgetbench.models import check_model, ensure_cached, missing_from_cache
    from forgetbench.planner import check_fits
    from forgetbench.store import check_writable
    from forgetbench.sweep import check_training, plan, run_sweep

    start = time.monotonic()
    suite = load_suite(args.suite, args.set)
    if not args.dry_run:
        check_writable(Path(args.runs_dir) / suite.name, "--runs-dir")
    if args.cluster:
        suite = suite.model_copy(update={"cluster": load_cluster(args.cluster)})
    # Everything a user can get wrong is checked before the run directory is touched.
    if args.executor == "local" and args.no_wait:
        raise ForgetbenchError("--no-wait goes with --executor slurm (or submitit-local): local jobs end with "
                               "the sweep")
    if args.executor != "local" and args.jobs != 1:
        raise ForgetbenchError(f"--jobs goes with --executor local; on {args.executor} each point is a job of "
                               "its own, at most cluster.array_parallelism at once")
    if args.executor != "local" and args.point_timeout:
        raise ForgetbenchError(f"--point-timeout goes with --executor local; on {args.executor} the suite's "
                               "cluster.time limits each job (which then checkpoints and is requeued)")
    check_model(suite.model, args.suite, trust_remote_code=suite.trust_remote_code)
    executor = None
    if args.executor != "local":
        from forgetbench.cluster import SubmititExecutor

        executor = SubmititExecutor(args.executor, Path(args.runs_dir).resolve() / suite.name / "jobs",
                                    suite.cluster, gpus=suite.cluster.gpus(suite.train), name=suite.name,
                                    wait=not args.no_wait)
        if not args.dry_run:
            executor.check()
    elif not args.dry_run:
        executor = LocalExecutor(lanes(args.jobs, suite.train.nproc, resolve_device(suite.train.device).type),
                                 preload=model_modules(suite.model))
        executor.start()  # its imports overlap the checks below
    check_tasks(suite.tasks, source=args.suite, spec=suite.eval)
    # A dry run downloads nothing: what needs a hub model's tokenizer not cached here, or the
    # documents of lm-eval's registered tasks, is left to the sweep, which checks it first,
    # having downloaded the model where the hub is reachable (else it stops, naming the command)
    uncached = missing_from_cache(suite.model) if args.dry_run else []
    hub_data = uncached_hub_data(suite.data.sources()) if args.dry_run else []
    if not args.dry_run:
        ensure_cached(suite.model, args.suite, trust_remote_code=suite.trust_remote_code)
    if "tokenizer" not in uncached and not hub_data:
        check_training(suite, args.suite)
    # the release gate the verdict judges by: a bad file, or a metric it will not have, fails now
    suite_gate(suite, declared_metrics, headline_only=True)
    if not hub_data:
        # no eval item, nor a held-out row, is trained on; always refused (see leakage.py)
        check_leakage(suite, eval_items(suite.tasks, args.suite, show_progress=args.verbose,
                                        registry=not args.dry_run))
        if suite.data.fisher is not None:  # the one data file the leakage guard does not read
            read_rows(suite.data.fisher)
    planned = plan(suite)
    check_fits(suite, args.suite, args.force)
    if args.dry_run:
        from forgetbench.eval.harness import eval_key, eval_settings
        from forgetbench.status import plan_lines

        key = eval_key(eval_settings(suite.tasks, suite.eval))
        for line in plan_lines(suite, planned, Path(args.runs_dir), key, args.jobs):
            _echo(line)
        for line in _left_to_the_sweep(suite, args.suite, uncached, hub_data):
            _echo(line)
        if executor is not None:
            from forgetbench.sweep import jobs_to_run

            jobs = jobs_to_run(suite, planned, Path(args.runs_dir))
            _echo("")
            for line in executor.layout(jobs) if jobs else ["nothing to submit"]:
                _echo(line)
        return 0
    live = contextlib.nullcontext(None)
    if sys.stdout.isatty():  # a live line of progress under the sweep's lines (forgetbench/progress.py)
        from forgetbench.eval.harness import eval_key, eval_settings
        from forgetbench.progress import LiveLine

        live = LiveLine(Path(args.runs_dir) / suite.name, [pp.id for pp in planned],
                        eval_key(eval_settings(suite.tasks, suite.eval)),
                        args.jobs if args.executor == "local" else suite.cluster.array_parallelism)
    try:
        with live as line:
            outcome = run_sweep(suite, Path(args.runs_dir), echo=line.echo if line else _progress, executor=executor,
                                retry_failed=args.retry_failed,
                                point_timeout=args.point_timeout * 60 if args.point_timeout else None)
    except (KeyboardInterrupt, Terminated) as exc:
        if args.executor != "slurm":  # local jobs, and submitit's local controllers, end with it
            raise
        print(f"forgetbench: stopped following; the submitted jobs run on (`forgetbench status "
              f"{Path(args.runs_dir) / suite.name}`); the same command again follows them", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM
    if outcome.waiting:
        _echo(f"\n{len(outcome.waiting)} job(s) queued or running: "
              + ", ".join(f"{k} ({v})" for k, v in list(outcome.waiting.items())[:6])
              + (" ..." if len(outcome.waiting) > 6 else ""))
        _echo(f"follow them: forgetbench status {outcome.store.root}; once they are done, the same sweep "
              "command writes the tables and report")
        return 0
    _print_tables(*outcome.tables)
    _echo(f"\n{len(outcome.trained)} trained, {len(outcome.evaluated)} evaluated, "
          f"{len(outcome.skipped)} already complete, {len(outcome.failed)} failed "
          f"in {time.monotonic() - start:.0f} s")
    if outcome.failed:
        _echo("failed: " + ", ".join(outcome.failed) + "; why: `forgetbench status "
              f"{outcome.store.root}`, each point's log: points/<id>/point.log")
    if outcome.not_retried:
        _echo(f"{len(outcome.not_retried)} of them failed in an earlier sweep and were not run again; "
              "--retry-failed runs them")
    _print_files(outcome.store.root)
    return 1 if outcome.failed else 0


def _left_to_the_sweep(suite, source: str, uncached: list[str], hub_data: list) -> list[str]:
    """What a dry run left unchecked, having downloaded nothing, and the command that caches
    what the sweep will read."""
    from forgetbench.eval.harness import registered_tasks

    registered = registered_tasks(suite.tasks)
    unchecked = ([f"the training data against the documents of lm-eval's {len(registered)} registered tasks"]
                 * bool(registered and not hub_data)
                 + ["the training data against the evaluation items and the held-out rows against the "
                    "training data (leakage)"] * bool(hub_data)
                 + [f"sweep.epochs and train.max_seq_len against the training data as {suite.model}'s "
                    "tokenizer reads it"] * bool("tokenizer" in uncached or hub_data))
    if not unchecked:
        return []
    what = ([f"{suite.model}'s {' and '.join(uncached)}, not in the local Hugging Face cache"] * bool(uncached)
            + [f"the training data's {', '.join(str(d) for d in dict.fromkeys(hub_data))}, not cached"]
            * bool(hub_data)
            + ["the tasks' datasets, if they are not yet"] * bool(registered))
    return [f"not checked without downloading (the sweep checks it first): {'; '.join(unchecked)}",
            f"to cache first, where the hub is reachable: forgetbench cache {source}  ({'; '.join(what)})"]


def cmd_cache(args: argparse.Namespace) -> int:
    """Download what a sweep of SUITE reads from the hub into the local caches, through the
    libraries' own loaders: each task's dataset as lm-eval loads it, each data source, and the
    model's files (``models.fetch_model``). The same HF_HOME then serves a sweep offline."""
    from forgetbench.config import load_suite
    from forgetbench.datafiles import read_rows
    from forgetbench.eval.harness import check_tasks, eval_items
    from forgetbench.models import check_model, ensure_cached, is_hub_id

    suite = load_suite(args.suite, args.set)
    check_tasks(suite.tasks, source=args.suite)  # (downloading runs no code: no code-eval opt-ins needed)
    items = eval_items(suite.tasks, args.suite, show_progress=args.verbose)
    _echo(f"tasks: {len(items)} ({sum(map(len, items.values()))} documents) loaded by lm-eval, "
          "their datasets in the local cache")
    for source in suite.data.sources():
        read_rows(source)
    ensure_cached(suite.model, args.suite, trust_remote_code=suite.trust_remote_code)
    check_model(suite.model, args.suite, trust_remote_code=suite.trust_remote_code)
    if is_hub_id(suite.model):
        from huggingface_hub import try_to_load_from_cache

        _echo(f"model: {suite.model} in the local Hugging Face cache: "
              f"{Path(try_to_load_from_cache(suite.model, 'config.json')).parent}")
    _echo("cached under HF_HOME; a sweep elsewhere reads that cache (copy it, or share HF_HOME)")
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM (scancel, torchrun ending its workers, a sweep interrupted) raises Terminated:
    the point's journal records it as interrupted and its unfinished files are removed."""
    from forgetbench.executor import _terminated

    signal.signal(signal.SIGTERM, _terminated)


def _sigterm_as_ctrl_c(signum, frame) -> None:
    """SIGTERM (kill, a CI job cancelled, systemd) ends any command as Ctrl-C does: what it
    was doing cleans up (a sweep ends its jobs, which record why, and releases its lock)."""
    raise Terminated("stopped by SIGTERM")


def cmd_point(args: argparse.Namespace) -> int:
    from forgetbench.cluster import WATCH_ENV
    from forgetbench.executor import watch_in_background
    from forgetbench.sweep import run_point

    _stop_on_sigterm()
    if os.environ.get(WATCH_ENV):  # a cluster job's command: it ends with its job (nothing trains on)
        watch_in_background(int(os.environ[WATCH_ENV]))
    target = Path(args.point_json)
    if not target.exists():
        raise ForgetbenchError(f"{target}: not found; give a point's point.json (or its folder), "
                               "as `forgetbench sweep` writes it under <run>/points/<id>/")
    return run_point(target)


def cmd_train(args: argparse.Namespace) -> int:
    from forgetbench.config import load_suite
    from forgetbench.models import check_model
    from forgetbench.store import RunStore, atomic_write_json
    from forgetbench.sweep import (
        check_training,
        planned_point,
        read_point,
        train_command,
        train_one,
        training_line,
    )
    from forgetbench.train import distributed

    _stop_on_sigterm()
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml"):  # the convenience form: a suite and a point id
        if args.point is None:
            raise ForgetbenchError(f"{target}: with a suite file give --point ID (`forgetbench sweep "
                                   f"{target} --dry-run` lists them), or train a point's point.json")
        suite, pp = load_suite(target, args.set), None
    else:  # a point.json (or its folder): exactly the point and suite the sweep planned
        if not target.exists():
            raise ForgetbenchError(f"{target}: not found; give a point's point.json (or its folder), "
                                   "or a suite file with --point ID")
        if args.set or args.point:
            raise ForgetbenchError(f"{target}: --set and --point go with a suite file; a point.json "
                                   "trains the point and suite it holds")
        suite, pp, store = read_point(target)
    check_model(suite.model, str(target), trust_remote_code=suite.trust_remote_code)
    check_training(suite, str(target))
    if pp is None:
        pp, store = planned_point(suite, args.point), RunStore(Path(args.runs_dir) / suite.name)
    nproc = args.nproc or suite.train.nproc
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        # not yet under torchrun: start it, each process training the point from its point.json
        point_file = store.point_dir(pp.id) / "point.json"
        atomic_write_json(point_file, pp.record(suite))
        cmd = train_command(point_file, nproc)
        cmd += ["--stop-after", str(args.stop_after)] if args.stop_after else []
        return subprocess.run(cmd).returncode
    try:
        summary = train_one(suite, pp, store, stop_after=args.stop_after)
    finally:
        if "WORLD_SIZE" in os.environ:
            distributed.shutdown_group()
    if int(os.environ.get("RANK", "0")) == 0:
        _echo(training_line(pp.id, summary))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from forgetbench.config import Suite
    from forgetbench.report import write_outputs
    from forgetbench.store import RunStore

    store = RunStore(Path(args.run_dir))
    if not store.journal.exists():
        raise ForgetbenchError(f"{store.root}: no journal.jsonl; not a forgetbench run directory")
    sweep = store.latest_sweep()
    # the suite that sweep ran with, not suite.yaml, which a later sweep may have rewritten
    _print_tables(*write_outputs(store, Suite.model_validate(sweep["suite"]), sweep))
    _echo("")
    _print_files(store.root)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from forgetbench.status import status_lines

    root = Path(args.run_dir)
    if not (root / "journal.jsonl").exists() and not (root / "suite.yaml").exists():
        raise ForgetbenchError(f"{root}: no journal.jsonl or suite.yaml; not a forgetbench run directory "
                               "(give runs/<suite name>)")
    for line in status_lines(root):
        _echo(line)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from forgetbench.config import load_suite
    from forgetbench.eval.harness import check_tasks
    from forgetbench.evalstore import EvalStore
    from forgetbench.models import check_model
    from forgetbench.store import check_writable

    suite = load_suite(args.suite, args.set)
    # the same forms as a suite's model: builtin:NAME, a save_pretrained folder, a hub id
    check_model(args.model, "forgetbench eval", field="MODEL", trust_remote_code=suite.trust_remote_code)
    check_tasks(suite.tasks, source=args.suite, spec=None if args.print_lm_eval else suite.eval)
    if args.print_lm_eval:  # the lm_eval CLI command that computes the same scores
        import shlex

        from forgetbench.eval.harness import lm_eval_command, lm_eval_config
        from forgetbench.models import resolve_model

        config = lm_eval_config(suite.tasks)
        if config is not None:  # several task folders: the CLI reads them from a --config file
            _echo(f"cat > lm_eval_config.yaml <<'EOF'\n{config}EOF")
        _echo(shlex.join(lm_eval_command(resolve_model(args.model), suite.tasks, suite.eval,
                                         trust_remote_code=suite.trust_remote_code)))
        return 0
    check_writable(Path(args.runs_dir), "--runs-dir")
    # stored once per model and eval settings: a later sweep or compare reuses these scores
    scores, path, computed = EvalStore(Path(args.runs_dir) / "evals").scores(
        args.model, suite.tasks, suite.eval, trust_remote_code=suite.trust_remote_code,
        warn=lambda msg: print(msg, file=sys.stderr), show_progress=args.verbose)
    print(f"{'evaluated' if computed else 'stored scores'}: {path}", file=sys.stderr)
    if args.json:
        for task in scores["tasks"].values():
            task.pop("samples")
        print(json.dumps(scores, indent=2))
        return 0
    for task, role in suite.all_tasks():
        for metric, v in scores["tasks"][task.name]["metrics"].items():
            err = f" ± {v['stderr']:.3f}" if v["stderr"] is not None else ""
            _echo(f"{task.name:<24} {role:<8} {metric:<14} {v['value']:.3f}{err}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from forgetbench import compare
    from forgetbench.config import load_suite
    from forgetbench.report.compare_page import format_terminal, rule_line, write_outputs
    from forgetbench.store import check_writable

    suite = load_suite(args.suite, args.set) if args.suite else None
    if args.set and not args.suite:
        raise ForgetbenchError("compare: --set changes the --suite file; give --suite too")
    base, candidate = compare.resolve_side(args.base), compare.resolve_side(args.candidate)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "compare" / compare.output_name(base, candidate)
    check_writable(out, "--out")  # before an evaluation that may take hours
    result = compare.run(base, candidate, suite=suite, gate_path=Path(args.gate) if args.gate else None,
                         runs_dir=Path(args.runs_dir), force=args.force,
                         say=lambda msg: print(msg, file=sys.stderr, flush=True))
    # the verdict first: an output that cannot be written then loses nothing, and exits 2
    # (an error), never 1 (the gate failed) nor 0
    _echo(json.dumps(result, indent=2) if args.json else format_terminal(result))
    for rule in result["rules"]:
        if not rule["passed"]:
            print(f"forgetbench: gate failed: {rule_line(rule)}", file=sys.stderr)
    try:
        write_outputs(result, out)
    except OSError as exc:
        raise ForgetbenchError(f"--out {out}: cannot write {exc.filename2 or exc.filename or 'its files'} "
                               f"({exc.strerror or exc}); the verdict above ({result['verdict']}) stands, "
                               "its files are not written: run it again with a --out you can write to "
                               "(the evaluations are stored, not repeated)") from None
    if not args.json:
        _echo(f"\n{out}/: compare.json, compare.md, compare.html")
    return 1 if result["verdict"] == "FAIL" else 0


def _minutes(text: str) -> float:
    """A time limit in minutes: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text[:50]!r}: give a positive number of minutes, e.g. 90")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetbench", description=(
        "Measure how much full fine-tuning makes an LLM forget, and which settings prevent it."))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show library logs and progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_set(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a suite field, e.g. --set sweep.lr=[1e-4,1e-3] (repeatable)")

    p = sub.add_parser("sweep", parents=[common], help="fine-tune and evaluate every grid point not yet complete")
    p.add_argument("suite", help="suite YAML file, e.g. suites/medical.yaml")
    with_set(p)
    p.add_argument("--runs-dir", default="runs", help="parent of the run directory (default: runs)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the points and their status, what is left, its disk and time; run nothing")
    p.add_argument("--force", action="store_true", help="run even if the memory plan says it will not fit")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="points at once, each in its own process: on GPUs each gets train.nproc of them, "
                        "on a CPU its share of the cores (default: 1)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the points that failed in an earlier sweep (interrupted ones always resume)")
    p.add_argument("--point-timeout", type=_minutes, metavar="MINUTES",
                   help="end a point (failed: timed out) still running after this long, e.g. a hung collective")
    p.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="where the jobs run: local processes (default); slurm, one job per point through "
                        "submitit, resources from the suite's cluster: section; submitit-local, the same job "
                        "path as local processes (to try it without a cluster)")
    p.add_argument("--cluster", metavar="FILE",
                   help="a YAML file of the cluster: section's fields, used instead of the suite's")
    p.add_argument("--no-wait", action="store_true",
                   help="with a cluster executor: return once the jobs are queued; `forgetbench status` "
                        "follows them, and the same sweep command again follows them to the report")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plan", parents=[common], help="memory per GPU and the minimum GPU count")
    p.add_argument("suite", nargs="?", help="a suite file; or describe the model with the flags")
    with_set(p)
    p.add_argument("--params", type=float, help="parameter count, e.g. 7e9")
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--kv-heads", type=int, help="key/value heads (grouped-query attention; default: --heads)")
    p.add_argument("--intermediate", type=int,
                   help="MLP width (default: what the parameters leave for a gated MLP)")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch-size", type=int, default=1, help="micro-batch per GPU")
    p.add_argument("--gpus", type=int, help="GPU count (default: the suite's train.nproc, or 1)")
    p.add_argument("--gpu-memory", type=float, help="GB per GPU (default: this machine's GPU, else 80)")
    p.add_argument("--regularizer", default="none", choices=regularizers.names())
    p.add_argument("--formula", default="fsdp", choices=["fsdp", "textbook"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("cache", parents=[common],
                       help="download the model and the tasks' datasets a suite reads from the hub (then run offline)")
    p.add_argument("suite", help="suite YAML file, e.g. suites/medical-llama.yaml")
    with_set(p)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", parents=[common],
                       help="train one point (what a sweep launches; runs under torchrun)")
    p.add_argument("target", metavar="POINT_JSON | SUITE",
                   help="a point's point.json (or its folder), as a sweep plans it; or a suite file with --point")
    p.add_argument("--point", help="point id, from `sweep SUITE --dry-run` (with a suite file)")
    with_set(p)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes (one per GPU); default: the suite's train.nproc")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                   help="stop with a checkpoint after this many optimizer steps (time-limited jobs); "
                        "the next run of the same command resumes")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("point", parents=[common],
                       help="train one point, then evaluate it: a sweep's job for one point")
    p.add_argument("point_json", metavar="POINT_JSON",
                   help="the point's point.json (or its folder), as `forgetbench sweep` wrote it")
    p.set_defaults(func=cmd_point)

    p = sub.add_parser("eval", parents=[common], help="evaluate a model on a suite's tasks")
    p.add_argument("model", help="builtin:NAME, a Hugging Face model folder, or a hub id")
    p.add_argument("--suite", required=True)
    with_set(p)
    p.add_argument("--runs-dir", default="runs",
                   help="its evaluation store is RUNS_DIR/evals, shared with sweeps (default: runs)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON (no per-sample logs)")
    p.add_argument("--print-lm-eval", action="store_true",
                   help="print the lm_eval CLI command that computes the same scores, and evaluate nothing")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", parents=[common],
                       help="judge a candidate checkpoint against a base, item by item (exit 1: the gate failed)")
    p.add_argument("base", help="builtin:NAME, a model folder, a hub id, a sweep point (RUN:ID or "
                               "RUN/points/ID) or a stored evaluation (.json)")
    p.add_argument("candidate", help="as BASE")
    p.add_argument("--suite", help="the tasks and eval settings (default: a sweep point's suite)")
    with_set(p)
    p.add_argument("--gate", help="gate rules YAML (default: the suite's gate, else: no general task "
                                  "loses 2 points or more)")
    p.add_argument("--out", help="output folder (default: RUNS_DIR/compare/BASE-vs-CANDIDATE-HASH, HASH "
                                 "of both in full)")
    p.add_argument("--runs-dir", default="runs", help="its evaluation store is RUNS_DIR/evals (default: runs)")
    p.add_argument("--force", action="store_true",
                   help="compare evaluations whose settings differ; every output says what differs")
    p.add_argument("--json", action="store_true", help="print compare.json instead of the table")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("status", parents=[common], help="each point's state, from the run's journal")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", parents=[common], help="rebuild results.csv and report.html from stored scores")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        _quiet_libraries(args.verbose)  # (seconds of imports: Ctrl-C there is a Ctrl-C too)
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed stdout is caught below, not at exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # the reader of stdout is gone (`forgetbench ... | head -1`): stop quietly, with the
        # status of a program that SIGPIPE ended (what the shell shows for `yes | head -1`):
        # not 0, the output was cut short; not 1, compare's "the gate failed"
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python flushes it at exit)
        return 128 + signal.SIGPIPE
    except ForgetbenchError as exc:
        print(f"forgetbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("forgetbench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"forgetbench: {exc}; run the same command again to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stdout_closed() -> bool:
    """Whether nothing reads stdout any more: polled, a pipe (or socket) whose reader is gone
    reports an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (OSError, ValueError):  # (stdout replaced by an object without a file descriptor)
        return False
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
