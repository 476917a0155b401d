"""How far each regulariser lets the weights drift from the base model, step by step, in each form.

Trains points of a suite (default: the default suite at its highest learning rate) with
forgetbench's recipe (``train_point``, the loop a sweep's point runs) and records, after
every optimizer step, the distance of the weights θ to the base weights θ0: ‖θ − θ0‖, the
largest |θ_i − θ0_i|, and the RMS of θ_i − θ0_i over the coordinates in the top 10% of EWC's
Fisher F (what EWC protects most) and over the rest. It runs plain training, L2-SP and EWC
in the forms of ``sweep.regularizer_form``: ``coupled`` (λ·penalty in the loss, the pull
normalised by Adam) and ``decoupled`` (a pull toward θ0 at the rate lr·λ·w after each AdamW
step). Plain training is measured as EWC at λ = 0, which trains exactly as plain training
does (tests/train/test_recipe.py) and gives the Fisher to split by.

The probe is the regulariser registry's own extension point: each built-in entry is
registered again, in this process only, with a component that wraps the built-in one and
measures θ each time the recipe calls it. It prints the Fisher's spread, each run's drift
at a few steps, then one line per run.

    python benchmarks/regularizer_drift.py                    # the default suite, 1 epoch, lr 3e-3
    python benchmarks/regularizer_drift.py --epochs 4 --run ewc:coupled:1e5 --run ewc:decoupled:1e8
    python benchmarks/regularizer_drift.py --smoke                             # seconds: a smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from forgetbench import regularizers  # noqa: E402
from forgetbench.train import regularizers as components  # noqa: E402

# plain training; the coupled form at the λ that hold the weights (L2-SP 1e6) or were meant to
# (EWC 1e4, 1e5); the decoupled form at the default suite's lower λ and at a λ that holds them
RUNS = ["none", "l2:coupled:1e6", "ewc:coupled:1e4", "ewc:coupled:1e5",
        "l2:decoupled:30", "l2:decoupled:1e4", "ewc:decoupled:1e6", "ewc:decoupled:1e8"]
SMOKE_RUNS = ["none", "l2:coupled:1", "ewc:decoupled:1e6"]
TOP = 0.10  # the share of coordinates with the largest Fisher measured apart


@dataclass
class DriftProbe:
    """Wraps a regulariser's component (its penalty_ or pull_ does the work) and records
    θ − θ0 after each optimizer step: θ_t as the coupled form's penalty_ of step t finds it,
    θ_(t+1) as the decoupled form's pull_ of step t leaves it."""

    inner: Any
    anchor: list[torch.Tensor]
    params: list[torch.Tensor]
    top: list[torch.Tensor]       # per parameter: its coordinates in the Fisher's top share
    fisher: list[torch.Tensor]
    rows: list[dict] = field(default_factory=list)
    calls: int = 0

    @property
    def summary(self) -> dict:
        return self.inner.summary

    def penalty_(self, lam: float) -> float:
        if self.calls:
            self.measure(self.calls)
        self.calls += 1
        return self.inner.penalty_(lam)

    def pull_(self, lam: float, lrs: list[float]) -> float:
        value = self.inner.pull_(lam, lrs)
        self.calls += 1
        self.measure(self.calls)
        return value

    @torch.no_grad()
    def measure(self, step: int) -> None:
        if self.rows and self.rows[-1]["step"] == step:
            return
        sq_top = sq_rest = fisher_sq = 0.0
        n_top = n_rest = 0
        largest = 0.0
        for p, p0, top, f in zip(self.params, self.anchor, self.top, self.fisher):
            d2 = (p.detach().float() - p0).square()
            sq_top += float(d2[top].sum())
            sq_rest += float(d2[~top].sum())
            n_top += int(top.sum())
            n_rest += top.numel() - int(top.sum())
            fisher_sq += float((f * d2).sum())
            largest = max(largest, float(d2.max()))
        self.rows.append({"step": step, "norm": math.sqrt(sq_top + sq_rest), "max": math.sqrt(largest),
                          "rms_top": math.sqrt(sq_top / max(n_top, 1)),
                          "rms_rest": math.sqrt(sq_rest / max(n_rest, 1)), "fisher_sq": fisher_sq})


@contextlib.contextmanager
def probes_installed(fisher_cache: Path, probes: list[DriftProbe]):
    """Register L2-SP and EWC again with components that build the built-in one, its
    Fisher (EWC's, read from ``fisher_cache`` after the first run) and a probe around them;
    the built-in entries are registered back at the end (a caller in the same process, such
    as the benchmarks' smoke test, trains with them afterwards)."""
    def probed(name: str):
        def build(setup: components.Setup) -> DriftProbe:
            ewc = components.ewc(replace(setup, cache=fisher_cache))
            inner = ewc if name == "ewc" else components.l2_sp(setup)
            flat = torch.cat([f.flatten() for f in ewc.weights])
            cut = torch.kthvalue(flat, max(1, math.ceil((1 - TOP) * flat.numel()))).values
            probe = DriftProbe(inner, inner.anchor, setup.params, [f > cut for f in ewc.weights],
                               ewc.weights)
            probes.append(probe)
            return probe
        return build

    builtin = {name: regularizers.get(name) for name in ("l2", "ewc")}
    for name, entry in builtin.items():
        regularizers.register(replace(entry, component=probed(name)))
    try:
        yield
    finally:
        for entry in builtin.values():
            regularizers.register(entry)


def parse_run(text: str) -> tuple[str, str, str, float]:
    """``none`` or ``REGULARIZER:FORM:LAMBDA`` -> (label, regulariser, form, λ)."""
    if text == "none":
        return "plain", "ewc", "coupled", 0.0
    name, form, lam = text.split(":")
    if name not in ("l2", "ewc") or form not in regularizers.FORMS:
        raise SystemExit(f"--run {text}: expected none or (l2|ewc):(decoupled|coupled):LAMBDA")
    return f"{regularizers.title(name)} {form} λ={float(lam):g}", name, form, float(lam)


def fisher_spread(fisher: list[torch.Tensor], lr: float) -> str:
    """The Fisher's quantiles (of a sample of a million values, torch.quantile's limit), and
    what decoupled EWC's per-step rate lr·λ·F is at the median and the 90% quantile."""
    flat = torch.cat([f.flatten() for f in fisher]).double()
    sample = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    q10, q50, q90, q99 = torch.quantile(sample, torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    zero = 100 * float((flat == 0).double().mean())
    return (f"Fisher F over {flat.numel()} coordinates: mean {flat.mean():.3g}, {zero:.1f}% zero, "
            f"quantiles 10/50/90/99%: {q10:.3g} / {q50:.3g} / {q90:.3g} / {q99:.3g}, max {flat.max():.3g}. "
            f"Decoupled EWC's rate lr·λ·F at lr {lr:g}, λ 1e6: {lr * 1e6 * q50:.3g} at the median F, "
            f"{lr * 1e6 * q90:.3g} at the 90% quantile")


def main() -> int:
    from forgetbench.config import Point, load_suite
    from forgetbench.models import resolve_model
    from forgetbench.train.recipe import train_point

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", nargs="?", default=str(REPO / "suites" / "medical.yaml"))
    p.add_argument("--lr", type=float, default=None, help="default: the suite's highest lr")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--run", action="append", default=None, metavar="none|REG:FORM:LAMBDA",
                   help=f"repeatable; default: {' '.join(RUNS)}")
    p.add_argument("--steps", type=int, default=None, help="stop each run after this many steps")
    p.add_argument("--smoke", action="store_true",
                   help=f"seconds: {' '.join(SMOKE_RUNS)}, 3 steps each, the Fisher on 16 rows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="suite overrides")
    p.add_argument("--json", type=Path, default=None, help="also write every step's record here")
    args = p.parse_args()
    if args.smoke:
        args.run, args.steps = args.run or SMOKE_RUNS, args.steps or 3
        args.set = ["train.ewc.samples=16", *args.set]
    # the in-training evaluations change no weight: left out, they cost no time here
    suite = load_suite(args.suite, ["train.eval_every=null", "train.track_kl=false", *args.set])
    lr = args.lr or max(pt.lr for pt in suite.points())
    base = resolve_model(suite.model)
    results: dict[str, list[dict]] = {}
    probes: list[DriftProbe] = []
    with tempfile.TemporaryDirectory() as tmp, probes_installed(Path(tmp) / "fisher", probes):
        for text in args.run or RUNS:
            label, name, form, lam = parse_run(text)
            point = Point(lr=lr, epochs=args.epochs, mix_ratio=0.0, regularizer=name, lam=lam,
                          regularizer_form=form)
            summary = train_point(suite, point, base_model_dir=base, out_dir=None, log_path=None,
                                  stop_after=args.steps)
            probe = probes[-1]
            probe.measure(summary.get("stopped_at") or summary["last_step"])
            results[label] = probe.rows
            if len(results) == 1:
                print(fisher_spread(probe.fisher, lr))
            print(f"\n{label} (lr {lr:g}, {args.epochs:g} epochs, {len(probe.rows)} steps): "
                  f"step, ‖θ−θ0‖, max |θ−θ0|, RMS over the top {TOP:.0%} of F, RMS over the rest, Σ F (θ−θ0)²")
            last = probe.rows[-1]["step"]
            for r in probe.rows:
                if r["step"] in (1, 2, 3, 5, 10) or r["step"] % 20 == 0 or r["step"] == last:
                    print(f"  {r['step']:4d}  {r['norm']:9.4f}  {r['max']:8.5f}  {r['rms_top']:9.2e}  "
                          f"{r['rms_rest']:9.2e}  {r['fisher_sq']:9.2e}")
    print(f"\nafter the last step (lr {lr:g}, {args.epochs:g} epochs):")
    print(f"  {'run':28s} {'‖θ−θ0‖':>9s} {'peak ‖θ−θ0‖':>12s} {'max|θ−θ0|':>10s} {'RMS top F':>10s} "
          f"{'RMS rest':>10s} {'top/rest':>8s}")
    for label, rows in results.items():
        r = rows[-1]
        ratio = r["rms_top"] / r["rms_rest"] if r["rms_rest"] else float("nan")
        print(f"  {label:28s} {r['norm']:9.4f} {max(x['norm'] for x in rows):12.4f} {r['max']:10.5f} "
              f"{r['rms_top']:10.2e} {r['rms_rest']:10.2e} {ratio:8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"lr": lr, "epochs": args.epochs, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
