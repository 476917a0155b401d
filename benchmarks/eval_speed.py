"""Evaluation speed: one checkpoint on a suite's tasks, by forgetbench and by the lm-eval CLI.

Three timings of the same evaluation (same model, tasks, batch size, device, seeds: the
command ``forgetbench eval --print-lm-eval`` prints, whose scores tests/eval/test_lm_eval_parity.py
finds equal to forgetbench's), each repeated and alternated, the fastest counting:

- ``lm_eval run ...`` as a new process: what a user of the CLI pays per checkpoint (Python
  start, imports, lm-eval's index of its ~thousands of task YAMLs, the model, the tasks);
- ``forgetbench eval MODEL --suite S`` as a new process, scores not stored yet: the same
  work end to end (it indexes lm-eval's tasks only when the suite names one of them);
- ``harness.evaluate`` in a process that has evaluated before: what each further point of a
  sweep pays (its worker processes keep the imports and the task index).

It prints each wall time and the CLI's over forgetbench's. The scores of the three are also
compared, so a speed-up that changed a number would show.

    python benchmarks/eval_speed.py                               # the default suite, the embedded model
    python benchmarks/eval_speed.py --model DIR --suite S --device cuda --batch-size 64
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _run(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds


def _metrics_from_cli(out: Path) -> dict[tuple[str, str], float]:
    from forgetbench.eval.harness import _metric_name, _split_metric_key

    [results] = list(out.rglob("results_*.json"))
    found = {}
    for task, res in json.loads(results.read_text())["results"].items():
        for key, value in res.items():
            split = _split_metric_key(key)
            if split and isinstance(value, (int, float)):
                found[(task, _metric_name(*split))] = float(value)
    return found


def _metrics(record: dict) -> dict[tuple[str, str], float]:
    return {(task, m): v["value"] for task, r in record["tasks"].items() for m, v in r["metrics"].items()}


def main() -> int:
    from forgetbench.config import load_suite
    from forgetbench.eval import harness
    from forgetbench.models import resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=str(REPO / "suites" / "medical.yaml"))
    p.add_argument("--model", default="builtin:tiny-llama", help="builtin:NAME or a save_pretrained folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", help="eval.device (default: the suite's)")
    p.add_argument("--batch-size", type=int, help="eval.batch_size (default: the suite's)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternated; the fastest counts")
    args = p.parse_args()
    if Path(args.model).is_dir():  # (the runs below start in a temporary folder)
        args.model = str(Path(args.model).resolve())
    overrides = list(args.set)
    if args.device:
        overrides.append(f"eval.device={args.device}")
    if args.batch_size:
        overrides.append(f"eval.batch_size={args.batch_size}")
    suite = load_suite(args.suite, overrides)
    model_dir = resolve_model(args.model)
    cmd = harness.lm_eval_command(model_dir, suite.tasks, suite.eval, trust_remote_code=suite.trust_remote_code)
    config = harness.lm_eval_config(suite.tasks)

    times: dict[str, list[float]] = {"cli": [], "forgetbench": [], "warm": []}
    scores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        suite_file = tmp / "suite.yaml"
        suite_file.write_text(json.dumps(suite.resolved()))  # (JSON is YAML) the suite as overridden
        if config is not None:
            (tmp / "lm_eval_config.yaml").write_text(config)
        harness.evaluate(model_dir, suite.tasks, suite.eval)  # warm this process: imports, task index
        for i in range(args.repeats):
            out = tmp / f"cli{i}"
            times["cli"].append(_run([sys.executable, "-m", "lm_eval", *cmd[1:], "--output_path", str(out)], tmp))
            scores["cli"] = _metrics_from_cli(out)
            runs = tmp / f"runs{i}"  # empty: nothing stored to reuse
            times["forgetbench"].append(_run([sys.executable, "-m", "forgetbench", "eval", args.model, "--suite",
                                              str(suite_file), "--runs-dir", str(runs)], tmp))
            [stored] = list((runs / "evals").glob("*.json"))
            scores["forgetbench"] = _metrics(json.loads(stored.read_text()))
            start = time.perf_counter()
            record = harness.evaluate(model_dir, suite.tasks, suite.eval)
            times["warm"].append(time.perf_counter() - start)
            scores["warm"] = _metrics(record)

    best = {k: min(v) for k, v in times.items()}
    print(f"model {args.model}; tasks {', '.join(t.name for t, _ in suite.all_tasks())}; "
          f"batch {suite.eval.batch_size}, device {cmd[cmd.index('--device') + 1]}, limit {suite.eval.limit}")
    print(f"lm_eval CLI (new process)            {best['cli']:7.2f} s   runs: "
          + " ".join(f"{t:.2f}" for t in times["cli"]))
    print(f"forgetbench eval (new process)       {best['forgetbench']:7.2f} s   runs: "
          + " ".join(f"{t:.2f}" for t in times["forgetbench"])
          + f"   CLI / forgetbench = {best['cli'] / best['forgetbench']:.2f}x")
    print(f"forgetbench, a sweep's next point    {best['warm']:7.2f} s   runs: "
          + " ".join(f"{t:.2f}" for t in times["warm"])
          + f"   CLI / forgetbench = {best['cli'] / best['warm']:.2f}x")
    same = scores["cli"] == scores["forgetbench"] == scores["warm"]
    print(f"scores equal in all three: {'yes' if same else 'NO'} ({len(scores['cli'])} metrics)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
