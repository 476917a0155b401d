"""Rebuild the embedded default model and check it before it replaces the shipped one.

    python tools/build_builtin_model.py                 # rebuild forgetbench/builtin/tiny-llama/
    python tools/build_builtin_model.py --out DIR       # build elsewhere (nothing shipped changes)

The build (forgetbench/builtin/build.py) is deterministic on one machine only: another CPU
or library version builds another model, which is why the weights are shipped. The new model
is evaluated on the default suite's tasks and kept only if it knows the general tasks
(headline score >= 0.9 each) and not yet the target (< 0.4, chance being 0.25), the base the
default suite's checks assume; else the build is discarded and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERAL_MIN, TARGET_MAX = 0.9, 0.4


def base_score_failures(scores: dict, suite) -> list[str]:
    """The default suite's base-model checks that ``scores`` fail, as readable lines."""
    failures = []
    for task, role in suite.all_tasks():
        value = scores["tasks"][task.name]["metrics"][task.metric]["value"]
        ok = value >= GENERAL_MIN if role == "general" else value < TARGET_MAX
        bound = f">= {GENERAL_MIN}" if role == "general" else f"< {TARGET_MAX}"
        print(f"  {task.name:<14} {role:<8} {task.metric:<12} {value:.3f}  (needs {bound})")
        if not ok:
            failures.append(f"{task.name} {task.metric} {value:.3f}, needs {bound}")
    return failures


def main(argv: list[str] | None = None) -> int:
    import forgetbench.builtin
    from forgetbench.builtin import MODEL_FILES
    from forgetbench.builtin.build import RECIPES, build_tiny_llama
    from forgetbench.config import load_suite
    from forgetbench.eval.harness import evaluate
    from forgetbench.store import fresh_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="tiny-llama", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, help="build here instead of replacing the shipped model")
    args = parser.parse_args(argv)
    suite = load_suite(REPO / "suites" / "medical.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / args.name
        stats = build_tiny_llama(RECIPES[args.name], built)
        print(f"built {args.name}: {stats['parameters']} parameters, final loss "
              f"{stats['final_loss']:.4f}, {stats['build_seconds']} s "
              f"({json.dumps(stats['built_with'])})")
        failures = base_score_failures(evaluate(built, suite.tasks, suite.eval), suite)
        if failures:
            print("not kept: " + "; ".join(failures), file=sys.stderr)
            return 1
        dest = args.out or Path(forgetbench.builtin.__file__).parent / args.name
        with fresh_dir(dest) as staging:  # replaces dest whole, never file by file
            for name in (*MODEL_FILES, "forgetbench_builtin.json"):
                shutil.copyfile(built / name, staging / name)
    print(f"kept: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
