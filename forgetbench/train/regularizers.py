"""Regularisers that pull the fine-tuned weights θ toward the base weights θ0: plain tensor code.

- L2-SP: λ/2 · Σ_i (θ_i − θ0_i)²
- EWC:   λ/2 · Σ_i F_i (θ_i − θ0_i)², F the diagonal Fisher of the base model on general data

Both are added to the loss as the literal formula says: their gradient λ·w_i·(θ_i − θ0_i)
(w = 1 or F) joins the data gradient before clipping and AdamW. They act after backward
(after FSDP has reduced the gradients), so they work unchanged on sharded parameters: each
rank adds the penalty's gradient to its own shard, with θ0 and F kept in the same placement
in fp32. No rank ever holds a full copy of θ0 or F.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from forgetbench.train import distributed
from forgetbench.train.data import IGNORE_INDEX, shift_labels


def snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """θ0: a detached fp32 copy of the parameters, the anchor the penalty pulls toward."""
    return [p.detach().to(torch.float32).clone() for p in params]


@torch.no_grad()
def anchor_penalty_(params: list[torch.Tensor], anchor: list[torch.Tensor], lam: float,
                    weights: list[torch.Tensor] | None = None,
                    dist: distributed.Dist | None = None) -> float:
    """Adds ∇(λ/2 · Σ_i w_i (θ_i − θ0_i)²) = λ·w_i·(θ_i − θ0_i) to each ``p.grad`` in place
    and returns the penalty. ``weights`` None is L2-SP (w = 1); the Fisher makes it EWC.

    The value is summed over every parameter (and every rank's shard when ``dist`` is a
    process group).
    """
    total = 0.0
    weights = weights if weights is not None else [None] * len(anchor)
    for p, p0, w in zip(params, anchor, weights, strict=True):
        diff = distributed.local(p.detach()).to(torch.float32) - distributed.local(p0)
        pull = diff if w is None else distributed.local(w) * diff
        total += float((pull * diff).sum())
        if lam:
            step = (lam * pull).to(p.dtype)
            if p.grad is None:
                if distributed.local(p) is not p:
                    raise RuntimeError("a penalty on a sharded parameter that has no gradient")
                p.grad = step
            else:
                distributed.local(p.grad).add_(step)
    if dist is not None:
        total = distributed.all_reduce_sum(total, dist)
    return 0.5 * lam * total


def sample_labels(logits: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's own predictive distribution, at the positions the data
    labels (the true Fisher's y ~ p_θ(·|x)); other positions stay ignored. ``labels`` are
    already shifted: position t holds the token that follows t."""
    probs = torch.softmax(logits.detach().float(), dim=-1).flatten(0, -2)
    drawn = torch.multinomial(probs, 1, generator=generator).view_as(labels)
    return torch.where(labels != IGNORE_INDEX, drawn, labels)


def fisher_diagonal(params: list[torch.Tensor],
                    logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    examples: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], *,
                    variant: str, generator: torch.Generator | None = None,
                    dist: distributed.Dist | None = None) -> list[torch.Tensor]:
    """The diagonal Fisher F_i = 1/N · Σ_n (∂ log p(y_n | x_n) / ∂θ_i)², one example at a time.

    ``examples`` are (input_ids, attention_mask, labels) of one row each; log p(y | x) is the
    summed log-probability of the row's labelled tokens. ``variant`` ``empirical`` takes y
    from the data; ``true`` samples each labelled token from the model (``generator``).
    ``logits_of(ids, mask)`` runs the model. Returns fp32 tensors placed like the parameters
    (sharded like them under FSDP). Under FSDP every rank must pass the same examples in the
    same order: the reduced gradient then is that example's own gradient, and each rank
    squares its shard of it; sampled labels are broadcast from rank 0 so they agree.
    """
    if variant not in ("true", "empirical"):
        raise ValueError(f"unknown Fisher variant {variant!r}")
    fisher = [torch.zeros_like(p.detach(), dtype=torch.float32) for p in params]
    n = 0
    for ids, mask, labels in examples:
        target = shift_labels(labels)
        if not (target != IGNORE_INDEX).any():
            continue
        logits = logits_of(ids, mask)
        if variant == "true":
            target = sample_labels(logits, target, generator)
            if dist is not None and dist.active:
                torch.distributed.broadcast(target, src=0)
        nll = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX,
            reduction="sum")
        nll.backward()  # the square of ∇(−log p) is that of ∇ log p
        with torch.no_grad():
            for f, p in zip(fisher, params):
                if p.grad is not None:
                    distributed.local(f).add_(distributed.local(p.grad).float().square())
                p.grad = None
        n += 1
    if n == 0:
        raise ValueError("no example with a labelled token to estimate the Fisher from")
    for f in fisher:
        distributed.local(f).div_(n)
    return fisher
