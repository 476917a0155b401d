"""Sharded states on disk (torch.distributed.checkpoint): resume checkpoints, the best model
of early stopping, and the cached EWC Fisher.

A resume checkpoint holds the model and AdamW state as each rank's shards, each rank's RNG
state (for dropout), plus the step, the token count and the early-stopping record. Data
position needs nothing more: the stream is a pure function of the seed, and the
learning-rate schedule a pure function of the step.

Every state is written the same way: each rank writes its shards into a temporary folder
(``store.temporary_name(<name>, "partial")``, one name for every rank);
after a barrier, rank 0 writes ``COMPLETE`` (with the metadata) and renames the folder into
place. Only folders with that marker are read, so a state cut short by a crash is never
taken for a complete one. DCP reshards on load, so the process count may differ from the
one that saved.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from forgetbench.store import temporary_name
from forgetbench.train import distributed

MARKER = "COMPLETE"


def _barrier(d: distributed.Dist) -> None:
    if d.active:
        torch.distributed.barrier()


def complete(path: Path) -> bool:
    return (path / MARKER).exists()


def meta(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


def save_state(state: dict, final: Path, info: dict, d: distributed.Dist,
               per_rank: dict | None = None) -> Path:
    """Write ``state`` (nested dicts of possibly sharded tensors) to ``final`` atomically;
    every rank must call. ``per_rank`` is each rank's own small state (its RNG), kept as
    ``rank_<r>.pt``. An existing state at ``final`` is replaced."""
    import torch.distributed.checkpoint as dcp

    partial = final.parent / temporary_name(final.name, "partial")
    if d.main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier(d)
    with _single_process_ok():
        dcp.save(state, checkpoint_id=str(partial))
    if per_rank is not None:
        torch.save(per_rank, partial / f"rank_{d.rank}.pt")
    _barrier(d)
    if d.main:
        (partial / MARKER).write_text(json.dumps({**info, "world_size": d.world_size}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    _barrier(d)
    return final


def load_state(state: dict, path: Path) -> dict:
    """Fill ``state`` (tensors shaped and placed as wanted) from ``path``; returns its metadata."""
    import torch.distributed.checkpoint as dcp

    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(path))
    return meta(path)


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns that it assumes a single process when there is no process group: here
    that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ---------------------------------------------------------------- resume checkpoints

def latest(root: Path) -> Path | None:
    """The newest complete resume checkpoint under ``root``, if any."""
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if complete(p)]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(model, optimizer, *, step: int, info: dict, root: Path, d: distributed.Dist) -> Path:
    """A resume checkpoint of model and optimizer at ``step``, with each rank's RNG state
    (dropout draws continue as they would have); older checkpoints are removed."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    final = save_state({"model": model_sd, "optim": optim_sd}, root / f"step_{step:07d}",
                       {"step": step, **info}, d, per_rank={"rng": rng_state(d.device)})
    if d.main:
        for old in root.glob("step_*"):  # keep only the newest: checkpoints of big models are big
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(d)
    return final


def load(model, optimizer, path: Path, d: distributed.Dist) -> dict:
    """Restore model and optimizer shards from ``path``, and this rank's RNG state when the
    process count is the one that saved (resharded, each rank keeps its fresh seed);
    returns the checkpoint's metadata (step ...)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # also initialises AdamW's state
    state = {"model": model_sd, "optim": optim_sd}
    info = load_state(state, path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    own = path / f"rank_{d.rank}.pt"
    if info.get("world_size") == d.world_size and own.exists():
        set_rng_state(torch.load(own, weights_only=True)["rng"], d.device)
    return info


# ---------------------------------------------------------------- model-only states

def save_model(model, path: Path, info: dict, d: distributed.Dist) -> Path:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return save_state({"model": get_model_state_dict(model)}, path, info, d)


def load_model(model, path: Path) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    info = load_state(state, path)
    set_model_state_dict(model, state["model"])
    return info
