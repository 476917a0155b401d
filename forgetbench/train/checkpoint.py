"""Sharded training checkpoints (torch.distributed.checkpoint) and resume.

A checkpoint holds the model and AdamW state as each rank's shards, plus the step and the
token count. Data position needs nothing more: the stream is a pure function of the seed,
and the learning-rate schedule a pure function of the step. Every rank writes its shards
into ``.step_N.partial``; after a barrier, rank 0 writes ``COMPLETE`` and renames the
folder to ``step_N``. Only folders with that marker are resumed from, so a checkpoint cut
short by a crash is never taken for a complete one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from forgetbench.train import distributed

MARKER = "COMPLETE"


def _barrier(d: distributed.Dist) -> None:
    if d.active:
        torch.distributed.barrier()


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, if any."""
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if (p / MARKER).exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def save(model, optimizer, *, step: int, tokens: int, root: Path, d: distributed.Dist) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final, partial = root / f"step_{step:07d}", root / f".step_{step:07d}.partial"
    if d.main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier(d)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
    _barrier(d)
    if d.main:
        (partial / MARKER).write_text(json.dumps({"step": step, "tokens": tokens,
                                                  "world_size": d.world_size}) + "\n")
        os.replace(partial, final)
        for old in root.glob("step_*"):  # keep only the newest: checkpoints of big models are big
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(d)
    return final


def load(model, optimizer, path: Path) -> dict:
    """Restore model and optimizer shards from ``path``; returns its step and token count.
    The process count may differ from the one that saved: DCP reshards on load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # also initialises AdamW's state
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((path / MARKER).read_text())
