"""Full fine-tuning of one sweep point, read top to bottom: setup, data, loop, export.

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
from contextlib import nullcontext
from pathlib import Path

import torch

from forgetbench.config import Point, Suite
from forgetbench.errors import ForgetbenchError
from forgetbench.train import data as train_data
from forgetbench.train import checkpoint, distributed, throughput
from forgetbench.train.regularizers import l2_sp_penalty_, snapshot
from forgetbench.train.schedule import lr_at


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def rank_micro_batches(chunk: list, rank: int, world: int, grad_accum: int) -> list[list]:
    """This rank's share of one global batch (every world-th example), split into exactly
    ``grad_accum`` micro-batches; some may be empty at the end of the data, and every rank
    still runs them so the ranks' collectives stay in step."""
    share = chunk[rank::world]
    size = math.ceil(len(share) / grad_accum) if share else 0
    return [share[i * size:(i + 1) * size] for i in range(grad_accum)]


def train_point(suite: Suite, point: Point, *, base_model_dir: Path | str,
                out_dir: Path | None, log_path: Path | None,
                checkpoint_dir: Path | None = None, stop_after: int | None = None) -> dict:
    """Fine-tune the base model at ``point``; rank 0 saves an HF directory to ``out_dir``
    and writes one JSON line per optimizer step to ``log_path``. Returns a summary.

    With ``checkpoint_dir``, training resumes from the newest complete checkpoint there and
    saves one every ``train.checkpoint_every`` steps. ``stop_after`` ends the run after that
    many optimizer steps with a checkpoint and no export (a time-limited job's slice).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = suite.train
    # --- setup: process group, seeds, model (sharded when distributed), optimizer
    dist = distributed.init(cfg.device)
    torch.manual_seed(cfg.seed + dist.rank)
    device = dist.device
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32 master weights and optimizer state; bf16 only for compute. Updating bf16
    # weights in place would round most fine-tuning-sized steps to zero.
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    if cfg.activation_checkpointing:  # before sharding, so each block recomputes inside FSDP
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:  # per block, before sharding (as torchtitan does): FSDP hooks stay outside
        for block in distributed.blocks(model):
            block.compile()
    bf16 = cfg.dtype == "bfloat16"
    if dist.active:
        # fully_shard moves each unit to the device as it shards it: a GPU never holds the
        # whole model (each process still loads it once into host memory)
        distributed.wrap_fsdp(model, dist, bf16=bf16)  # FSDP casts to bf16 by policy
        autocast = nullcontext()
    else:
        model.to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=point.lr, weight_decay=cfg.weight_decay)
    anchor = snapshot(params) if point.regularizer == "l2" else None  # sharded like params

    # --- data: target examples, replay mixed in at mix_ratio, shuffled by seed; every rank
    # builds the same stream and reads its own share of each global batch
    target = train_data.tokenize(train_data.read_rows(suite.data.target), tokenizer, cfg.max_seq_len)
    replay = (train_data.tokenize(train_data.read_rows(suite.data.replay), tokenizer, cfg.max_seq_len)
              if point.mix_ratio > 0 else [])
    if all(lab == train_data.IGNORE_INDEX for ex in target for lab in ex.labels[1:]):
        raise ForgetbenchError(f"train.max_seq_len: {cfg.max_seq_len} tokens leave no completion "
                               f"token in any row of {suite.data.target}; raise it")
    stream = train_data.mixture(target, replay, epochs=point.epochs, mix_ratio=point.mix_ratio,
                                seed=cfg.seed)
    total_steps = math.ceil(len(stream) / cfg.batch_size)
    if total_steps == 0:
        raise ForgetbenchError(f"sweep.epochs: {point.epochs:g} epochs of {len(target)} target "
                               "examples is less than one example; use a larger value")
    warmup = round(cfg.warmup_ratio * total_steps)
    # an all-padding row: what a rank with no example left runs, contributing no loss
    filler = train_data.Example((tokenizer.pad_token_id,), (train_data.IGNORE_INDEX,))

    # --- resume: model and optimizer shards, step and token count from the last checkpoint
    first_step, tokens_seen = 0, 0
    resume_from = checkpoint.latest(checkpoint_dir) if checkpoint_dir is not None else None
    if resume_from is not None:
        meta = checkpoint.load(model, optimizer, resume_from)
        first_step, tokens_seen = meta["step"], meta["tokens"]

    # --- the loop: one iteration per optimizer step
    log = None
    if dist.main and log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        kept = log_path.read_text().splitlines()[:first_step] if first_step and log_path.exists() else []
        log = open(log_path, "w", encoding="utf-8")
        log.writelines(line + "\n" for line in kept)  # steps after the checkpoint are redone
    start = time.monotonic()
    peak = throughput.peak_flops(device)
    mc = model.config
    n_layers = getattr(mc, "num_hidden_layers", None) or getattr(mc, "n_layer", 0)
    hidden = getattr(mc, "hidden_size", None) or getattr(mc, "n_embd", 0)
    try:
        for step in range(first_step, total_steps):
            step_start = time.monotonic()
            lr = lr_at(step, total_steps=total_steps, peak=point.lr, warmup_steps=warmup,
                       kind=cfg.schedule, floor=point.lr * cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chunk = stream[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            micro = [list(train_data.batches(mb or [filler], len(mb) or 1, tokenizer.pad_token_id))[0]
                     for mb in rank_micro_batches(chunk, dist.rank, dist.world_size, cfg.grad_accum)]
            # the tokens the loss covers in the whole global batch, after the shift by one
            n_local = sum(int((labels[:, 1:] != train_data.IGNORE_INDEX).sum()) for _, _, labels in micro)
            n_tokens = distributed.all_reduce_sum(n_local, dist)
            loss_sum, n_seen = 0.0, 0
            for ids, mask, labels in micro:
                ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
                with autocast:
                    logits = model(input_ids=ids, attention_mask=mask).logits
                # shift the labels, not the logits: slicing logits would copy a
                # batch × length × vocab tensor
                shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1),
                                                  value=train_data.IGNORE_INDEX)
                token_loss = torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), shifted.flatten(),
                    ignore_index=train_data.IGNORE_INDEX, reduction="sum") / max(n_tokens, 1)
                # FSDP averages gradients over ranks; × world size makes that a sum
                (token_loss * dist.world_size).backward()
                loss_sum += token_loss.item()
                n_seen += int(mask.sum())
            loss_sum, n_seen, n_rows = distributed.all_reduce_sums(
                [loss_sum, n_seen, sum(int((m.sum(dim=1) > 0).sum()) for _, m, _ in micro)], dist)
            tokens_seen += int(n_seen)
            penalty = l2_sp_penalty_(params, anchor, point.lam, dist) if anchor is not None else 0.0
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if not math.isfinite(grad_norm):
                raise FloatingPointError(f"non-finite gradient norm at step {step} "
                                         f"(lr {point.lr}); lower the learning rate")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tokens_per_s = n_seen / max(time.monotonic() - step_start, 1e-9)
            # attention FLOPs grow with the context: use this step's mean row length
            fpt = throughput.flops_per_token(n_params, n_layers, hidden, n_seen / max(n_rows, 1))
            if log is not None:
                log.write(json.dumps({"step": step + 1, "loss": round(loss_sum, 6), "lr": lr,
                                      "penalty": round(penalty, 6), "grad_norm": round(grad_norm, 6),
                                      "tokens": tokens_seen, "tokens_per_s": round(tokens_per_s, 1),
                                      "mfu": _round(throughput.mfu(tokens_per_s, fpt, peak, dist.world_size)),
                                      "peak_mem_gb": round(throughput.peak_memory_gb(device), 3),
                                      "elapsed_s": round(time.monotonic() - start, 3)}) + "\n")
                log.flush()
            done = step + 1
            every = cfg.checkpoint_every
            stopping = stop_after is not None and done >= stop_after and done < total_steps
            if checkpoint_dir is not None and done < total_steps and (
                    stopping or (every and done % every == 0)):
                checkpoint.save(model, optimizer, step=done, tokens=tokens_seen,
                                root=checkpoint_dir, d=dist)
            if stopping:
                return {"steps": total_steps, "stopped_at": done, "world_size": dist.world_size}
    finally:
        if log is not None:
            log.close()

    # --- export: an ordinary HF directory, gathered on rank 0; what evaluation reads
    model.eval()
    full = distributed.full_state_dict(model, dist)
    if dist.main and out_dir is not None:
        model.save_pretrained(out_dir, state_dict=full)
        tokenizer.save_pretrained(out_dir)
    if dist.main and checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the exported model supersedes them
    return {"steps": total_steps, "examples": len(stream), "world_size": dist.world_size,
            "resumed_from_step": first_step,
            "train_seconds": round(time.monotonic() - start, 2), "final_loss": round(loss_sum, 6)}
