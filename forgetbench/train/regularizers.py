"""Regularisers that pull the fine-tuned weights θ toward the base weights θ0: plain tensor code.

They act on gradients after backward (after FSDP has reduced them), so they work unchanged
on sharded parameters: each rank adds the penalty's gradient to its own shard, with θ0 kept
in the same placement. No rank ever holds a full copy of θ0.
"""
from __future__ import annotations

import torch

from forgetbench.train import distributed


def snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """θ0: a detached fp32 copy of the parameters, the anchor the penalty pulls toward."""
    return [p.detach().to(torch.float32).clone() for p in params]


@torch.no_grad()
def l2_sp_penalty_(params: list[torch.Tensor], anchor: list[torch.Tensor], lam: float,
                   dist: distributed.Dist | None = None) -> float:
    """L2-SP: adds ∇(λ/2·‖θ − θ0‖²) = λ(θ − θ0) to each ``p.grad`` in place; returns the penalty.

    Penalty value λ/2 · Σ_i (θ_i − θ0_i)², summed over every parameter (and every rank's
    shard when ``dist`` is a process group).
    """
    total = 0.0
    for p, p0 in zip(params, anchor, strict=True):
        diff = distributed.local(p.detach()).to(torch.float32) - distributed.local(p0)
        total += float(diff.square().sum())
        if lam:
            step = (lam * diff).to(p.dtype)
            if p.grad is None:
                if distributed.local(p) is not p:
                    raise RuntimeError("L2-SP on a sharded parameter that has no gradient")
                p.grad = step
            else:
                distributed.local(p.grad).add_(step)
    if dist is not None:
        total = distributed.all_reduce_sum(total, dist)
    return 0.5 * lam * total
