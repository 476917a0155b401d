"""A whole sweep, one point at a time against N at once: the wall time of each and the ratio.

Runs ``forgetbench sweep SUITE --jobs J`` for each J given (default 1 and 2), each from
nothing (its own runs directory, its own evaluation store: the base model is evaluated in
every run), one after the other, and prints the wall times, the points per minute and the
ratio of each run's wall time to the first's (below 1: faster). The results of the runs are
compared too: the same suite must give the same results.csv however many points run at once
(on a CPU each lane trains on its share of the cores, which changes float rounding; a
difference is printed, not hidden).

    python benchmarks/sweep_jobs.py                          # the default suite, --jobs 1 and 2
    python benchmarks/sweep_jobs.py --jobs 1 8 --suite my.yaml   # e.g. 8 GPUs, one point each
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def run(suite: Path, jobs: int, runs: Path, extra: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "forgetbench", "sweep", str(suite), "--runs-dir", str(runs),
                           "--jobs", str(jobs), *extra], stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"sweep --jobs {jobs} exited with status {done.returncode}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", type=Path, default=REPO / "suites" / "medical.yaml")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to the sweep, e.g. to shrink the grid")
    args = parser.parse_args()
    extra = [a for kv in args.set for a in ("--set", kv)]
    walls, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="fb-bench-") as tmp:
        for jobs in args.jobs:
            runs = Path(tmp) / f"jobs{jobs}"
            walls[jobs] = run(args.suite, jobs, runs, extra)
            results[jobs] = pd.read_csv(next(runs.glob("*/results.csv")))
            print(f"--jobs {jobs}: {walls[jobs]:.1f} s", flush=True)
    first = args.jobs[0]
    points = results[first]["point_id"].nunique()
    print(f"\nsuite {args.suite.name}: {points} points, from nothing (base model evaluated in each run)")
    print(f"{'jobs':>4} {'wall s':>8} {'points/min':>10} {'ratio':>6}")
    for jobs in args.jobs:
        print(f"{jobs:>4} {walls[jobs]:>8.1f} {points / walls[jobs] * 60:>10.2f} {walls[jobs] / walls[first]:>6.2f}")
    key = ["point_id", "task", "metric"]
    for jobs in args.jobs[1:]:
        a = results[first].set_index(key)["after"]
        b = results[jobs].set_index(key)["after"].reindex(a.index)
        differ = int((a - b).abs().gt(1e-9).sum())
        print(f"results.csv --jobs {jobs} vs --jobs {first}: "
              + ("identical scores" if differ == 0 else
                 f"{differ} of {len(a)} scores differ (max |Δ| {float((a - b).abs().max()):.4f})"))


if __name__ == "__main__":
    main()
