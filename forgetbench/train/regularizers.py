"""The built-in regularisers' components (see forgetbench/regularizers.py, the registry), and
the tensor code of penalties that pull the fine-tuned weights θ toward the base weights θ0:

- L2-SP: λ/2 · Σ_i (θ_i − θ0_i)²
- EWC:   λ/2 · Σ_i F_i (θ_i − θ0_i)², F the diagonal Fisher of the base model on general data

Each acts in one of two forms (``sweep.regularizer_form``):

- ``coupled``: added to the loss as the literal formula says; the gradient λ·w_i·(θ_i − θ0_i)
  (w = 1 or F) joins the data gradient before clipping and AdamW (:func:`anchor_penalty_`).
  Adam divides every coordinate's step by its own gradient scale, so the penalty's share of
  a step, not λ, decides how far θ moves: the first steps move every weight by about lr
  whatever λ is.
- ``decoupled``: outside the adaptive step, as AdamW decouples weight decay from the
  gradient (Loshchilov & Hutter, 2019): after AdamW's step, θ_i is pulled toward θ0_i at the
  rate lr·λ·w_i (:func:`anchor_pull_`). λ is then a rate per unit of learning rate, and a
  large one holds θ at θ0 from the first step.

Both act after backward (after FSDP has reduced the gradients), so they work unchanged on
sharded parameters: each rank touches its own shard, with θ0 and F kept in the same
placement in fp32. No rank ever holds a full copy of θ0 or F.
"""
from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forgetbench import regularizers
from forgetbench.config import Point, Suite
from forgetbench.datafiles import read_rows
from forgetbench.train import checkpoint, distributed
from forgetbench.train import data as train_data
from forgetbench.train.data import IGNORE_INDEX, shift_labels


@dataclass
class Setup:
    """What a regulariser's component is built from, in the recipe, once the model is sharded."""

    suite: Suite
    point: Point
    model: torch.nn.Module
    names: list[str]              # the trainable parameters' names, in the order of ``params``
    params: list[torch.Tensor]
    tokenizer: Any
    dist: distributed.Dist
    autocast: AbstractContextManager
    cache: Path | None            # where its estimated state is cached (the registry's ``cache``)


def build(setup: Setup) -> Any | None:
    """The component of ``setup.point``'s regulariser (None for plain training), instantiated
    from the registry: a callable, or a "module:function" path imported here."""
    entry = regularizers.get(setup.point.regularizer)
    if entry is None:
        return None
    component = entry.component
    if isinstance(component, str):
        module, _, name = component.partition(":")
        component = getattr(importlib.import_module(module), name)
    return component(setup)


@dataclass
class AnchorPenalty:
    """λ/2 · Σ_i w_i (θ_i − θ0_i)², θ0 the parameters when it was made; w = 1 is L2-SP."""

    params: list[torch.Tensor]
    dist: distributed.Dist
    weights: list[torch.Tensor] | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.anchor = snapshot(self.params)

    def penalty_(self, lam: float) -> float:
        return anchor_penalty_(self.params, self.anchor, lam, self.weights, self.dist)

    def pull_(self, lam: float, lrs: list[float]) -> float:
        return anchor_pull_(self.params, self.anchor, lam, lrs, self.weights, self.dist)


def l2_sp(setup: Setup) -> AnchorPenalty:
    """L2-SP (Li et al., 2018): the squared distance to the base weights."""
    return AnchorPenalty(setup.params, setup.dist)


def ewc(setup: Setup) -> AnchorPenalty:
    """EWC (Kirkpatrick et al., 2017): the distance weighted by the base model's diagonal Fisher."""
    anchor = AnchorPenalty(setup.params, setup.dist)  # θ0 before the Fisher's backward passes
    anchor.weights, info = _ewc_fisher(setup)
    anchor.summary = {"fisher": info}
    return anchor


def _ewc_fisher(s: Setup) -> tuple[list[torch.Tensor], dict]:
    """EWC's diagonal Fisher of the base model, sharded like the parameters: read from the
    cache when it is complete there, else estimated on ``train.ewc.samples`` rows of
    data.fisher (or data.replay), the same rows on every rank, and written to the cache."""
    cfg = s.suite.train
    if s.cache is not None and checkpoint.complete(s.cache):
        state = {"fisher": {n: torch.zeros_like(p.detach(), dtype=torch.float32)
                            for n, p in zip(s.names, s.params)}}
        info = checkpoint.load_state(state, s.cache)
        return [state["fisher"][n] for n in s.names], info
    source = s.suite.data.fisher or s.suite.data.replay
    rows = train_data.tokenize(read_rows(source), s.tokenizer, cfg.max_seq_len, chat=cfg.chat_template)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    picked = [rows[i] for i in order[:cfg.ewc.samples]]
    device = s.dist.device

    def logits_of(ids, mask):
        with s.autocast:
            return s.model(input_ids=ids, attention_mask=mask).logits

    examples = ((ids.to(device), mask.to(device), labels.to(device)) for ids, mask, labels in
                train_data.batches(picked, 1, s.tokenizer.pad_token_id))
    start = time.monotonic()
    s.model.eval()  # no dropout: the Fisher of the model as it predicts
    fisher = fisher_diagonal(s.params, logits_of, examples, variant=cfg.ewc.fisher, dist=s.dist,
                             generator=torch.Generator(device).manual_seed(cfg.seed))
    s.model.train()
    total = distributed.all_reduce_sums(
        [sum(float(distributed.local(f).sum()) for f in fisher),
         sum(distributed.local(f).numel() for f in fisher)], s.dist)
    info = {"variant": cfg.ewc.fisher, "samples": len(picked), "data": str(source),
            "mean": total[0] / total[1], "seconds": round(time.monotonic() - start, 2)}
    if s.cache is not None:
        checkpoint.save_state({"fisher": dict(zip(s.names, fisher))}, s.cache, info, s.dist)
    return fisher, info


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


@torch.no_grad()
def anchor_pull_(params: list[torch.Tensor], anchor: list[torch.Tensor], lam: float, lrs: list[float],
                 weights: list[torch.Tensor] | None = None,
                 dist: distributed.Dist | None = None) -> float:
    """The decoupled form, after the optimizer's step: moves each θ_i toward θ0_i as the
    gradient flow of λ/2 · Σ_i w_i (θ_i − θ0_i)² does over a time of the step's learning rate
    (``lrs``: one per parameter, its group's lr), and returns the penalty before the move:

        θ_i ← θ0_i + (θ_i − θ0_i) · exp(−lr · λ · w_i)

    To first order in lr·λ·w that is AdamW's decoupled decay toward θ0, θ ← θ − lr·λ·w·(θ − θ0).
    That explicit step multiplies the distance by 1 − lr·λ·w: past lr·λ·w = 1 it overshoots
    θ0, past 2 it diverges, and with EWC's Fisher spread over orders of magnitude, a λ that
    makes the pull felt on most coordinates puts the largest-F ones past both. The exact flow shrinks
    every distance by a factor in (0, 1], monotone in λ: a large λ·lr holds θ at θ0 (where F
    is not 0) and λ = 0 leaves θ untouched. Since AdamW moves a coordinate by about lr·u per
    step (u = |m̂/√v̂| ≤ ~1), the distance it settles at is about u / (λ·w), whatever the lr.
    """
    total = 0.0
    weights = weights if weights is not None else [None] * len(anchor)
    for p, p0, w, lr in zip(params, anchor, weights, lrs, strict=True):
        theta = distributed.local(p.detach())
        diff = theta.to(torch.float32) - distributed.local(p0)
        total += float(((diff if w is None else distributed.local(w) * diff) * diff).sum())
        if lam:
            # θ + (1 − e^(−rate)) · (θ0 − θ): a coordinate with rate 0 keeps its bits
            moved = (-math.expm1(-lr * lam) if w is None
                     else (-torch.expm1(-(lr * lam) * distributed.local(w))).to(theta.dtype))
            theta.lerp_(distributed.local(p0).to(theta.dtype), moved)
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
