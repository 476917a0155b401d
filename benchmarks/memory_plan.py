"""The memory planner against memory measured in a real training run of forgetbench's recipe.

One process (or each rank under torchrun, with FSDP2) trains a randomly initialised Llama
on rows that fill the context, for a few optimizer steps, and the script prints the
planner's per-device estimate (``forgetbench plan``'s fsdp formula) next to:

- the peak of live tensor bytes, tracked op by op (a TorchDispatchMode that counts every
  tensor storage an operation touches or creates, until it is freed) around the whole
  run: what the planner models, on any device;
- on a GPU, also the CUDA caching allocator's peak (what the per-step log reports), which
  adds the allocator's rounding and fragmentation and the library workspaces.

    python benchmarks/memory_plan.py                                  # CPU, fp32 and bf16
    python benchmarks/memory_plan.py --dtype bfloat16 --regularizer ewc --activation-checkpointing
    python benchmarks/memory_plan.py --hidden 2048 --layers 16 --vocab 32000 --seq-len 2048 \\
        --batch-size 4 --device cuda --dtype bfloat16            # GPU, ~0.94B parameters
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import weakref
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_model, one_point_suite, write_long_rows  # noqa: E402


class LiveTensors(TorchDispatchMode):
    """The peak of the bytes of live tensor storages on one device type, seen through every
    operation's inputs and outputs (PyTorch's MemTracker does this per module, but refuses a
    module called twice, as any training loop does)."""

    def __init__(self, device_type: str):
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.now = self.peak = 0

    def _see(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type or type(t) is not torch.Tensor:
            return
        st = t.untyped_storage()
        key = id(st)
        known = self.live.get(key)
        if known is not None and known[0]() is st:
            if known[1] != st.nbytes():  # resized in place
                self.now += st.nbytes() - known[1]
                self.live[key] = (known[0], st.nbytes())
            return
        self.live[key] = (weakref.ref(st, lambda _, k=key: self._free(k)), st.nbytes())
        self.now += st.nbytes()

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.now -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if DTensor in types:  # FSDP's sharded parameters: count the local shards they run on
            return NotImplemented
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                self._see(t)
        self.peak = max(self.peak, self.now)
        return out


def measure(args, dtype: str, work: Path) -> dict:
    from forgetbench.config import load_suite
    from forgetbench.planner import format_plan, suite_plan
    from forgetbench.train.recipe import train_point

    model, rows = work / "model", work / "rows.jsonl"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        work = Path(tmp)
        ewc = {"ewc": {"samples": args.fisher_samples}} if args.regularizer == "ewc" else {}
        suite = load_suite(one_point_suite(work, model_dir=model, target=rows, batch_size=args.batch_size,
                                           seq_len=args.seq_len, dtype=dtype, device=args.device,
                                           regularizer=args.regularizer,
                                           activation_checkpointing=args.activation_checkpointing, **ewc))
        [point] = suite.points()
        plan = suite_plan(suite, gpu_memory_gb=80.0)
        device = torch.device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.reset_peak_memory_stats(device)
        tracker = LiveTensors(device.type)
        with tracker:
            summary = train_point(suite, point, base_model_dir=model, out_dir=None, log_path=work / "log.jsonl",
                                  state_dir=work / "fisher")
        allocator = (torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None)
        return {"plan": plan, "plan_text": format_plan(plan), "tracked_gb": tracker.peak / 1e9,
                "allocator_gb": allocator, "steps": summary["last_step"], "fisher": summary.get("fisher")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4, help="global rows per step (split over torchrun's ranks)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--regularizer", choices=["none", "l2", "ewc"], default="none")
    p.add_argument("--fisher-samples", type=int, default=8, help="EWC: examples in the Fisher estimate")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="also print one JSON line per run")
    args = p.parse_args()
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        # before training starts a process group (transformers then saves on rank 0 only)
        work = Path(tmp)
        make_model(work / "model", hidden=args.hidden, layers=args.layers, vocab=args.vocab, seq_len=args.seq_len)
        write_long_rows(work / "rows.jsonl", rows=args.steps * args.batch_size, tokens=args.seq_len,
                        model_dir=work / "model")
        results = [(dtype, measure(args, dtype, work)) for dtype in dtypes]
    for dtype, r in results:
        plan = r["plan"]
        figures = (r["tracked_gb"], r["allocator_gb"])
        per_rank = [figures]
        if world > 1:
            per_rank = [None] * world
            torch.distributed.all_gather_object(per_rank, figures)
        if rank != 0:
            continue
        print(f"\nrandom Llama on {args.device} x{world}{' (FSDP2)' if 'WORLD_SIZE' in os.environ else ''}, "
              f"global batch {args.batch_size} x {args.seq_len} tokens, {r['steps']} steps")
        print(r["plan_text"])
        tracked = max(t for t, _ in per_rank)
        print(f"  measured peak of live tensors{' (largest rank)' if world > 1 else ''}: {tracked:.3f} GB; "
              f"ratio measured / planned {tracked / plan.total_gb:.2f}")
        if r["allocator_gb"] is not None:
            allocated = max(a for _, a in per_rank)
            print(f"  CUDA allocator peak: {allocated:.3f} GB; ratio / planned {allocated / plan.total_gb:.2f}")
        if r["fisher"]:
            print(f"  EWC Fisher: {r['fisher']['samples']} examples in {r['fisher']['seconds']} s "
                  "(inside the tracked run, its peak included)")
        if args.json:
            print(json.dumps({"world": world, "dtype": dtype, "planned_gb": plan.total_gb,
                              "tracked_gb": [t for t, _ in per_rank], "allocator_gb": [a for _, a in per_rank],
                              "basis": plan.basis, "args": vars(args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
