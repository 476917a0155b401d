"""The cost of the in-training evaluations: one point of a suite trained with and without them.

With ``train.eval_every`` set, training measures the validation loss, the held-out general
loss and (``track_kl``) the KL to the base model every N steps and at step 0. This script
trains the same point in one run as the suite says and with ``eval_every`` off, alternating
after a warm-up run, and prints the fastest wall time of each training loop (the recipe's
``train_seconds``), the overhead (with − without) / without, and the evaluations' own
timed share. The target on the default suite is under 10%.

    python benchmarks/eval_overhead.py                          # the default suite, lr 3e-3
    python benchmarks/eval_overhead.py SUITE --lr 1e-4 --set train.eval_every=50
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    from forgetbench.config import Point, load_suite
    from forgetbench.models import resolve_model
    from forgetbench.train.recipe import train_point

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", nargs="?", default=str(REPO / "suites" / "medical.yaml"))
    p.add_argument("--lr", type=float, default=None, help="default: the suite's highest lr")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=float, default=None,
                   help="default: the point's; more epochs, less timing noise")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, the fastest counts")
    args = p.parse_args()
    suite = load_suite(args.suite, args.set)
    if not suite.train.eval_every:
        p.error("the suite has no train.eval_every: nothing to measure")
    plain = [pt for pt in suite.points() if not pt.mitigations()]
    lr = args.lr or max(pt.lr for pt in plain)
    point = next((pt for pt in plain if pt.lr == lr), None) or Point(
        lr=lr, epochs=plain[0].epochs, mix_ratio=0.0, regularizer="none", lam=0.0)
    if args.epochs:
        point = point.model_copy(update={"epochs": args.epochs})
    without = suite.model_copy(update={"train": suite.train.model_copy(update={"eval_every": None})})
    base = resolve_model(suite.model)

    def train(s) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            return train_point(s, point, base_model_dir=base, out_dir=None,
                               log_path=Path(tmp) / "log.jsonl", checkpoint_dir=Path(tmp) / "ckpt")

    # a process gets faster over its first runs (allocator, thread pools): warm up, then
    # alternate the two so drift hits both alike, and keep the fastest of each
    train(without)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        runs["off"].append(train(without))
        runs["on"].append(train(suite))
    off = min(r["train_seconds"] for r in runs["off"])
    summary = min(runs["on"], key=lambda r: r["train_seconds"])
    on = summary["train_seconds"]
    t = suite.train
    print(f"point: {point.label()}; {summary['last_step']} steps; eval every {t.eval_every} "
          f"steps, eval batch {t.eval_batch_size or 'the micro-batch'}, KL {'on' if t.track_kl else 'off'}")
    print(f"training without evaluations: {off:.2f} s")
    print(f"training with evaluations   : {on:.2f} s (of which evaluations {summary['eval_seconds']:.2f} s)")
    print(f"overhead (with − without) / without: {100 * (on - off) / off:.1f}%; evaluations' own "
          f"time / the rest of that run: {100 * summary['eval_seconds'] / (on - summary['eval_seconds']):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
