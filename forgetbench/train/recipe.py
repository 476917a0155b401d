"""Full fine-tuning of one sweep point, read top to bottom: setup, data, loop, export.

The mitigations a sweep varies live here too: replay mixing (train/data.py), the point's
regulariser (any registered one, L2-SP and EWC built in: train/regularizers.py builds it),
discriminative learning rates (one optimizer group per depth), and early stopping on the
validation loss, measured with the general held-out loss (the forgetting curve) every
``train.eval_every`` steps.

Every parameter trains (AdamW). ``train.batch_size`` is the global batch: the examples of
one optimizer step over all ranks and micro-batches, so the process count and
``grad_accum`` change memory and speed, not the result. The loss is the summed token
cross-entropy of the completion tokens divided by their count in the whole global batch.

Single process, or one process per device under ``torchrun`` with the model sharded by
FSDP2 (train/distributed.py); only rank 0 writes the log and the exported model.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forgetbench.config import Point, Suite, TrainSpec
from forgetbench.datafiles import read_rows
from forgetbench.errors import ForgetbenchError
from forgetbench.schedule import lr_at
from forgetbench.store import read_jsonl
from forgetbench.train import checkpoint, distributed, preempt, regularizers, throughput
from forgetbench.train import data as train_data
from forgetbench.train.heldout import heldout_pass


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def rank_micro_batches(chunk: list, rank: int, world: int, grad_accum: int) -> list[list]:
    """This rank's share of one global batch (every world-th example), split into exactly
    ``grad_accum`` micro-batches; some may be empty at the end of the data, and every rank
    still runs them so the ranks' collectives stay in step."""
    share = chunk[rank::world]
    size = math.ceil(len(share) / grad_accum) if share else 0
    return [share[i * size:(i + 1) * size] for i in range(grad_accum)]


def discriminative_groups(model: torch.nn.Module, xi: float) -> list[dict]:
    """Optimizer groups for discriminative learning rates (ULMFiT): a parameter at depth l
    of L + 1 trains at lr / ξ^(L + 1 − l). Depth 0 is the embeddings (a tied output head
    shares them), 1 … L the decoder blocks, L + 1 what follows them (final norm, head).
    Each group carries its ``lr_scale``; ξ = 1 gives one group at lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    if xi == 1.0:
        return [{"params": params, "lr_scale": 1.0, "depth": 0}]
    depth: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            for p in module.parameters(recurse=False):
                depth.setdefault(id(p), 0)
    blocks = distributed.blocks(model)
    for k, block in enumerate(blocks, 1):
        for p in block.parameters():
            depth.setdefault(id(p), k)
    top = len(blocks) + 1
    by_depth: dict[int, list] = {}
    for p in params:
        by_depth.setdefault(depth.get(id(p), top), []).append(p)
    return [{"params": ps, "lr_scale": xi ** -(top - d), "depth": d}
            for d, ps in sorted(by_depth.items())]


@dataclass
class Trainee:
    """The model being fine-tuned, with what reads or runs it."""

    model: torch.nn.Module
    tokenizer: Any
    autocast: AbstractContextManager  # bf16 compute in one process; FSDP casts by policy instead
    names: list[str]                  # the trainable parameters' names, in the order of params
    params: list[torch.Tensor]
    n_params: int                     # those taking part in matrix products, for MFU
    n_layers: int
    hidden: int


def setup_model(suite: Suite, base_model_dir: Path | str, dist: distributed.Dist) -> Trainee:
    """The base model and tokenizer, with activation checkpointing and compilation as the
    suite says, sharded by FSDP2 when distributed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, trust = suite.train, suite.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32 master weights and optimizer state; bf16 only for compute. Updating bf16
    # weights in place would round most fine-tuning-sized steps to zero. Sharded, the model
    # starts without weights: rank 0 reads them once it is sharded (load_full_weights)
    model = (distributed.empty_model(base_model_dir, trust) if dist.active else
             AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32, trust_remote_code=trust))
    n_params = throughput.matmul_params(model)  # before sharding: for MFU
    if cfg.activation_checkpointing:  # before sharding, so each block recomputes inside FSDP
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:  # per block, before sharding (as torchtitan does): FSDP hooks stay outside
        for block in distributed.blocks(model):
            block.compile()
    bf16 = cfg.dtype == "bfloat16"
    if dist.active:
        # each unit is sharded on the device, then filled from rank 0's copy: no GPU and no
        # other process ever holds the whole model
        distributed.wrap_fsdp(model, dist, bf16=bf16)  # FSDP casts to bf16 by policy
        distributed.load_full_weights(model, base_model_dir, dist, trust)
        autocast = nullcontext()
    else:
        model.to(dist.device)
        autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train()
    mc = model.config
    return Trainee(model=model, tokenizer=tokenizer, autocast=autocast,
                   names=[n for n, p in model.named_parameters() if p.requires_grad],
                   params=[p for p in model.parameters() if p.requires_grad], n_params=n_params,
                   n_layers=getattr(mc, "num_hidden_layers", None) or getattr(mc, "n_layer", 0),
                   hidden=getattr(mc, "hidden_size", None) or getattr(mc, "n_embd", 0))


def setup_optimizer(trainee: Trainee, point: Point, cfg: TrainSpec) -> torch.optim.Optimizer:
    """AdamW over every parameter, one group per depth when ξ > 1 (each with its lr_scale)."""
    return torch.optim.AdamW(discriminative_groups(trainee.model, point.xi), lr=point.lr,
                             weight_decay=cfg.weight_decay)


@dataclass
class Stream:
    """The training examples in order: the target rows for ``epochs``, replay mixed in at
    ``mix_ratio``, shuffled by seed. Every rank builds the same stream and reads its own
    share of each global batch."""

    examples: list[train_data.Example]
    batch_size: int            # the global batch
    grad_accum: int
    pad_id: int
    total_steps: int
    warmup_steps: int

    def micro_batches(self, step: int, dist: distributed.Dist) -> list[tuple[torch.Tensor, ...]]:
        """This rank's ``grad_accum`` micro-batches of optimizer step ``step``; a rank with no
        example left runs an all-padding row that contributes no loss."""
        filler = train_data.Example((self.pad_id,), (train_data.IGNORE_INDEX,))
        chunk = self.examples[step * self.batch_size:(step + 1) * self.batch_size]
        return [list(train_data.batches(mb or [filler], len(mb) or 1, self.pad_id))[0]
                for mb in rank_micro_batches(chunk, dist.rank, dist.world_size, self.grad_accum)]


def setup_data(suite: Suite, point: Point, tokenizer) -> Stream:
    cfg = suite.train
    target = train_data.tokenize(read_rows(suite.data.target), tokenizer, cfg.max_seq_len,
                                  chat=cfg.chat_template)
    replay = (train_data.tokenize(read_rows(suite.data.replay), tokenizer, cfg.max_seq_len, chat=cfg.chat_template)
              if point.mix_ratio > 0 else [])
    if train_data.learns_nothing(target):  # checked before a sweep starts (sweep.check_training)
        raise ForgetbenchError(f"train.max_seq_len: {cfg.max_seq_len} tokens leave no completion "
                               f"token in any row of {suite.data.target}; raise it")
    examples = train_data.mixture(target, replay, epochs=point.epochs, mix_ratio=point.mix_ratio,
                                  seed=cfg.seed)
    total_steps = math.ceil(len(examples) / cfg.batch_size)
    if total_steps == 0:
        raise ForgetbenchError(f"sweep.epochs: {point.epochs:g} epochs of {len(target)} target "
                               "examples is less than one example; use a larger value")
    return Stream(examples, cfg.batch_size, cfg.grad_accum, tokenizer.pad_token_id, total_steps,
                  warmup_steps=round(cfg.warmup_ratio * total_steps))


class HeldOut:
    """The held-out sets measured every ``train.eval_every`` steps: target validation (early
    stopping) and general rows never trained on (the forgetting curve, and KL to the base
    model when ``train.track_kl``). The first measurement is the base model's."""

    def __init__(self, suite: Suite, trainee: Trainee, dist: distributed.Dist):
        cfg = suite.train
        self.trainee, self.dist, self.every = trainee, dist, cfg.eval_every
        self.sets = {}
        if cfg.eval_every:
            for key, path in (("val_loss", suite.data.validation),
                              ("general_loss", suite.data.general_heldout)):
                if path is not None:
                    self.sets[key] = train_data.tokenize(read_rows(path), trainee.tokenizer,
                                                         cfg.max_seq_len, chat=cfg.chat_template)
        self.batch_size = cfg.eval_batch_size or max(1, math.ceil(cfg.batch_size / dist.world_size
                                                                  / cfg.grad_accum))
        self.track_kl = cfg.track_kl and "general_loss" in self.sets
        self.base_logprobs = None  # the KL's reference: the base model's top-k log-probs
        self.seconds = 0.0

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.sets) and (step % self.every == 0 or step == total_steps)

    def start(self, resuming: bool) -> dict | None:
        """Measure the base model: the step-0 record, which also keeps the KL's reference;
        resuming, only that reference, before the checkpoint is loaded (None)."""
        if self.sets and not resuming:
            record, kept = self._measure(keep=self.track_kl)
            if self.track_kl:
                self.base_logprobs, record["kl"] = kept, 0.0
            return record
        if self.track_kl:
            _, self.base_logprobs = self._measure(keep=True, only="general_loss")
        return None

    def measure(self) -> dict:
        return self._measure()[0]

    def _measure(self, keep: bool = False, only: str | None = None) -> tuple[dict, list]:
        t = self.trainee
        t.model.eval()
        out, kept, t0 = {}, [], time.monotonic()
        for key, rows in self.sets.items():
            if only is not None and key != only:
                continue
            general = key == "general_loss"
            loss, kl, logp = heldout_pass(
                t.model, rows, batch_size=self.batch_size, pad_id=t.tokenizer.pad_token_id,
                device=self.dist.device, autocast=t.autocast, dist=self.dist,
                base_logprobs=self.base_logprobs if general else None, keep_logprobs=keep and general)
            out[key] = round(loss, 6)
            if kl is not None:
                out["kl"] = round(kl, 6)
            kept = logp or kept
        t.model.train()
        out["eval_s"] = round(time.monotonic() - t0, 3)
        self.seconds += out["eval_s"]
        return out, kept


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without a new best validation loss; each new best
    model is saved (sharded) to ``best_dir``, and that one is exported at the end."""

    patience: int | None
    best_dir: Path | None
    best: dict = field(default_factory=lambda: {"step": None, "val_loss": math.inf, "evals_since": 0})
    stopped: bool = False

    def __post_init__(self) -> None:
        if self.patience is not None and self.best_dir is None:
            raise ValueError("early stopping keeps its best model in checkpoint_dir; pass one")

    def update(self, step: int, val_loss: float, model, dist: distributed.Dist) -> None:
        """Record an evaluation; ``stopped`` says when training should stop."""
        if self.patience is None:
            return
        if val_loss < self.best["val_loss"]:
            self.best = {"step": step, "val_loss": val_loss, "evals_since": 0}
            checkpoint.save_model(model, self.best_dir, {"step": step}, dist)
        else:
            self.best["evals_since"] += 1
            self.stopped = self.best["evals_since"] >= self.patience


def train_step(step: int, *, trainee: Trainee, optimizer, stream: Stream, regularizer, point: Point,
               cfg: TrainSpec, dist: distributed.Dist, tokens: int, peak_flops: float | None) -> dict:
    """One optimizer step: lr from the schedule, forward and backward over this rank's
    micro-batches, the regulariser's gradient (coupled form), clipping, AdamW, the
    regulariser's pull toward the base weights (decoupled form). Returns the step's log
    fields (``tokens``: the running count, from ``tokens`` before it)."""
    step_start, device, model = time.monotonic(), dist.device, trainee.model
    lr = lr_at(step, total_steps=stream.total_steps, peak=point.lr, warmup_steps=stream.warmup_steps,
               kind=point.schedule, floor=point.lr * cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    micro = stream.micro_batches(step, dist)
    # the tokens the loss covers in the whole global batch, after the shift by one
    n_local = sum(int((labels[:, 1:] != train_data.IGNORE_INDEX).sum()) for _, _, labels in micro)
    n_tokens = distributed.all_reduce_sum(n_local, dist)
    loss_sum, n_seen = 0.0, 0
    for ids, mask, labels in micro:
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with trainee.autocast:
            logits = model(input_ids=ids, attention_mask=mask).logits
        token_loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), train_data.shift_labels(labels).flatten(),
            ignore_index=train_data.IGNORE_INDEX, reduction="sum") / max(n_tokens, 1)
        del logits  # the loss saved what it needs; the logits need not live through the backward
        # FSDP averages gradients over ranks; × world size makes that a sum
        (token_loss * dist.world_size).backward()
        loss_sum += token_loss.item()
        n_seen += int(mask.sum())
    loss_sum, n_seen, n_rows = distributed.all_reduce_sums(
        [loss_sum, n_seen, sum(int((m.sum(dim=1) > 0).sum()) for _, m, _ in micro)], dist)
    decoupled = regularizer is not None and point.regularizer_form == "decoupled"
    penalty = regularizer.penalty_(point.lam) if regularizer is not None and not decoupled else 0.0
    grad_norm = torch.nn.utils.clip_grad_norm_(trainee.params, cfg.max_grad_norm or math.inf)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    if not math.isfinite(grad_norm):
        raise FloatingPointError(f"non-finite gradient norm at step {step} "
                                 f"(lr {point.lr}); lower the learning rate")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if decoupled:  # outside Adam's normalisation, at each parameter's own (group's) lr
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        penalty = regularizer.pull_(point.lam, [lr_of[id(p)] for p in trainee.params])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tokens_per_s = n_seen / max(time.monotonic() - step_start, 1e-9)
    # attention FLOPs grow with the context: use this step's mean row length
    fpt = throughput.flops_per_token(trainee.n_params, trainee.n_layers, trainee.hidden, n_seen / max(n_rows, 1))
    return {"loss": round(loss_sum, 6), "lr": lr, "penalty": round(penalty, 6),
            "grad_norm": round(grad_norm, 6), "tokens": tokens + int(n_seen),
            "tokens_per_s": round(tokens_per_s, 1),
            "mfu": _round(throughput.mfu(tokens_per_s, fpt, peak_flops, dist.world_size)),
            "peak_mem_gb": round(throughput.peak_memory_gb(device), 3)}


def open_log(log_path: Path | None, first_step: int, dist: distributed.Dist):
    """Rank 0's train_log.jsonl, keeping the lines up to a resumed checkpoint's step (the
    steps after it are redone); None elsewhere."""
    if not dist.main or log_path is None:
        return None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    kept = ([r for r in read_jsonl(log_path) if r["step"] <= first_step]
            if first_step and log_path.exists() else [])
    log = open(log_path, "w", encoding="utf-8")
    log.writelines(json.dumps(r) + "\n" for r in kept)
    return log


def export(trainee: Trainee, out_dir: Path | None, dist: distributed.Dist) -> None:
    """An ordinary HF directory, gathered on rank 0 in fp32: what evaluation reads."""
    trainee.model.eval()
    full = distributed.full_state_dict(trainee.model, dist)
    if dist.main and out_dir is not None:
        trainee.model.save_pretrained(out_dir, state_dict=full)
        trainee.tokenizer.save_pretrained(out_dir)


def train_point(suite: Suite, point: Point, *, base_model_dir: Path | str,
                out_dir: Path | None, log_path: Path | None,
                checkpoint_dir: Path | None = None, stop_after: int | None = None,
                state_dir: Path | None = None) -> dict:
    """Fine-tune the base model at ``point``; rank 0 saves an HF directory to ``out_dir``
    and writes one JSON line per optimizer step to ``log_path``. Returns a summary.

    With ``checkpoint_dir``, training resumes from the newest complete checkpoint there and
    saves one every ``train.checkpoint_every`` steps; early stopping keeps its best model
    there too (and needs it). ``stop_after`` ends the run after that many optimizer steps
    with a checkpoint and no export (a time-limited job's slice); so does the preemption
    signal (train/preempt.py), at the step after it came. ``state_dir`` caches the
    regulariser's estimated state (EWC's Fisher): read when complete, else estimated and
    written there.
    """
    cfg = suite.train
    dist = distributed.init(cfg.device)
    torch.manual_seed(cfg.seed + dist.rank)
    trainee = setup_model(suite, base_model_dir, dist)
    optimizer = setup_optimizer(trainee, point, cfg)
    # the regulariser's state (θ0 for L2-SP and EWC, and EWC's Fisher): fp32, sharded like
    # the parameters
    regularizer = regularizers.build(regularizers.Setup(
        suite=suite, point=point, model=trainee.model, names=trainee.names, params=trainee.params,
        tokenizer=trainee.tokenizer, dist=dist, autocast=trainee.autocast, cache=state_dir))
    stream = setup_data(suite, point, trainee.tokenizer)
    heldout = HeldOut(suite, trainee, dist)
    early = EarlyStopping(point.patience, checkpoint_dir / "best" if checkpoint_dir is not None else None)

    # --- resume: model and optimizer shards, step, token count and early-stopping record
    resume_from = checkpoint.latest(checkpoint_dir) if checkpoint_dir is not None else None
    start = time.monotonic()
    step0 = heldout.start(resuming=resume_from is not None)  # the base model: every curve's start
    first_step, tokens = 0, 0
    if resume_from is not None:
        meta = checkpoint.load(trainee.model, optimizer, resume_from, dist)
        first_step, tokens = meta["step"], meta["tokens"]
        early.best = meta.get("best", early.best)
    log = open_log(log_path, first_step, dist)
    if log is not None and step0 is not None:
        log.write(json.dumps({"step": 0, **step0}) + "\n")
        log.flush()

    # --- the loop: one iteration per optimizer step
    peak_flops, done, total = throughput.peak_flops(dist.device), first_step, stream.total_steps
    try:
        for step in range(first_step, total):
            record = {"step": step + 1, **train_step(
                step, trainee=trainee, optimizer=optimizer, stream=stream, regularizer=regularizer,
                point=point, cfg=cfg, dist=dist, tokens=tokens, peak_flops=peak_flops)}
            done, tokens = step + 1, record["tokens"]
            if heldout.due(done, total):  # held-out losses; early stopping keeps the best model
                record.update(heldout.measure())
                early.update(done, record.get("val_loss", math.inf), trainee.model, dist)
            record["elapsed_s"] = round(time.monotonic() - start, 3)
            record["total_steps"] = total
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if early.stopped:
                break
            # stop here with a checkpoint: a slice of a time-limited job, or the preemption
            # signal on any rank (all ranks must agree, to save the same step)
            pausing = done < total and ((stop_after is not None and stop_after <= done) or (
                checkpoint_dir is not None and distributed.all_reduce_sum(preempt.requested(), dist) > 0))
            if checkpoint_dir is not None and done < total and (
                    pausing or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                checkpoint.save(trainee.model, optimizer, step=done, root=checkpoint_dir, d=dist,
                                info={"tokens": tokens, "best": early.best})
            if pausing:
                return {"steps": total, "stopped_at": done, "world_size": dist.world_size}
    finally:
        if log is not None:
            log.close()

    if early.best["step"] is not None and early.best["step"] != done:
        checkpoint.load_model(trainee.model, early.best_dir)  # the best validation loss's model
    export(trainee, out_dir, dist)
    if dist.main and checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the exported model supersedes them
    summary = {"steps": total, "last_step": done, "examples": len(stream.examples),
               "world_size": dist.world_size, "sharded": dist.active, "resumed_from_step": first_step,
               "train_seconds": round(time.monotonic() - start, 2),
               "eval_seconds": round(heldout.seconds, 2), "final_loss": record["loss"] if done > first_step else 0.0}
    if point.patience is not None:
        summary.update(best_step=early.best["step"], best_val_loss=early.best["val_loss"],
                       stopped_early=early.stopped)
    if regularizer is not None:
        summary.update(regularizer.summary)
    return summary
