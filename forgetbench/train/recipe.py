"""Full fine-tuning of one sweep point, read top to bottom: setup, data, loop, export.

The mitigations a sweep varies live here too: replay mixing (train/data.py), L2-SP and EWC
penalties (train/regularizers.py), discriminative learning rates (one optimizer group per
depth), and early stopping on the validation loss, measured with the general held-out
loss (the forgetting curve) every ``train.eval_every`` steps.

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
from forgetbench.store import read_jsonl
from forgetbench.train import checkpoint, distributed, regularizers, throughput
from forgetbench.train import data as train_data
from forgetbench.train.heldout import heldout_pass
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


def train_point(suite: Suite, point: Point, *, base_model_dir: Path | str,
                out_dir: Path | None, log_path: Path | None,
                checkpoint_dir: Path | None = None, stop_after: int | None = None,
                state_dir: Path | None = None) -> dict:
    """Fine-tune the base model at ``point``; rank 0 saves an HF directory to ``out_dir``
    and writes one JSON line per optimizer step to ``log_path``. Returns a summary.

    With ``checkpoint_dir``, training resumes from the newest complete checkpoint there and
    saves one every ``train.checkpoint_every`` steps; early stopping keeps its best model
    there too (and needs it). ``stop_after`` ends the run after that many optimizer steps
    with a checkpoint and no export (a time-limited job's slice). ``state_dir`` caches the
    regulariser's estimated state (EWC's Fisher): read when complete, else estimated and
    written there.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = suite.train
    # --- setup: process group, seeds, model (sharded when distributed), optimizer
    dist = distributed.init(cfg.device)
    torch.manual_seed(cfg.seed + dist.rank)
    device = dist.device
    trust = suite.trust_remote_code
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
        model.to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    groups = discriminative_groups(model, point.xi)
    optimizer = torch.optim.AdamW(groups, lr=point.lr, weight_decay=cfg.weight_decay)
    # the regulariser's state (θ0 for L2-SP and EWC, and EWC's Fisher): fp32, sharded like
    # the parameters
    regularizer = regularizers.build(regularizers.Setup(
        suite=suite, point=point, model=model, names=names, params=params, tokenizer=tokenizer,
        dist=dist, autocast=autocast, cache=state_dir))

    # --- data: target examples, replay mixed in at mix_ratio, shuffled by seed; every rank
    # builds the same stream and reads its own share of each global batch
    target = train_data.tokenize(train_data.read_rows(suite.data.target), tokenizer, cfg.max_seq_len)
    replay = (train_data.tokenize(train_data.read_rows(suite.data.replay), tokenizer, cfg.max_seq_len)
              if point.mix_ratio > 0 else [])
    if train_data.learns_nothing(target):  # checked before a sweep starts (sweep.check_training)
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

    # --- held-out sets, measured every eval_every steps: target validation (early stopping)
    # and general rows never trained on (the forgetting curve, and KL to the base model)
    heldout = {}
    if cfg.eval_every:
        for key, path in (("val_loss", suite.data.validation),
                          ("general_loss", suite.data.general_heldout)):
            if path is not None:
                heldout[key] = train_data.tokenize(train_data.read_rows(path), tokenizer,
                                                   cfg.max_seq_len)
    eval_batch = cfg.eval_batch_size or max(1, math.ceil(cfg.batch_size / dist.world_size
                                                         / cfg.grad_accum))

    def measure(base_logprobs=None, keep=False, only=None):
        model.eval()
        out, kept, t0 = {}, [], time.monotonic()
        for key, rows in heldout.items():
            if only is not None and key != only:
                continue
            general = key == "general_loss"
            loss, kl, logp = heldout_pass(
                model, rows, batch_size=eval_batch, pad_id=tokenizer.pad_token_id, device=device,
                autocast=autocast, dist=dist, base_logprobs=base_logprobs if general else None,
                keep_logprobs=keep and general)
            out[key] = round(loss, 6)
            if kl is not None:
                out["kl"] = round(kl, 6)
            kept = logp or kept
        model.train()
        out["eval_s"] = round(time.monotonic() - t0, 3)
        return out, kept

    track_kl = cfg.track_kl and "general_loss" in heldout

    # --- resume: model and optimizer shards, step, token count and early-stopping record
    first_step, tokens_seen = 0, 0
    best = {"step": None, "val_loss": math.inf, "evals_since": 0}
    best_dir = checkpoint_dir / "best" if checkpoint_dir is not None else None
    if point.patience is not None and best_dir is None:
        raise ValueError("early stopping keeps its best model in checkpoint_dir; pass one")
    resume_from = checkpoint.latest(checkpoint_dir) if checkpoint_dir is not None else None
    start = time.monotonic()
    base_logprobs, eval_seconds = None, 0.0
    if heldout and resume_from is None:  # step 0: the base model, where every curve starts
        step0, kept = measure(keep=track_kl)
        eval_seconds += step0["eval_s"]
        if track_kl:
            base_logprobs, step0["kl"] = kept, 0.0
    elif track_kl:  # resuming: the KL reference is still the base model, before the load
        measured, base_logprobs = measure(keep=True, only="general_loss")
        eval_seconds += measured["eval_s"]
    if resume_from is not None:
        meta = checkpoint.load(model, optimizer, resume_from, dist)
        first_step, tokens_seen = meta["step"], meta["tokens"]
        best = meta.get("best", best)

    # --- the loop: one iteration per optimizer step
    log = None
    if dist.main and log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        kept = ([r for r in read_jsonl(log_path) if r["step"] <= first_step]
                if first_step and log_path.exists() else [])
        log = open(log_path, "w", encoding="utf-8")
        log.writelines(json.dumps(r) + "\n" for r in kept)  # steps after the checkpoint are redone
    stopped_early, done = False, first_step
    if log is not None and heldout and first_step == 0:
        log.write(json.dumps({"step": 0, **step0}) + "\n")
        log.flush()
    peak = throughput.peak_flops(device)
    mc = model.config
    n_layers = getattr(mc, "num_hidden_layers", None) or getattr(mc, "n_layer", 0)
    hidden = getattr(mc, "hidden_size", None) or getattr(mc, "n_embd", 0)
    try:
        for step in range(first_step, total_steps):
            step_start = time.monotonic()
            lr = lr_at(step, total_steps=total_steps, peak=point.lr, warmup_steps=warmup,
                       kind=point.schedule, floor=point.lr * cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
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
            tokens_seen += int(n_seen)
            penalty = regularizer.penalty_(point.lam) if regularizer is not None else 0.0
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
            done = step + 1
            record = {"step": done, "loss": round(loss_sum, 6), "lr": lr,
                      "penalty": round(penalty, 6), "grad_norm": round(grad_norm, 6),
                      "tokens": tokens_seen, "tokens_per_s": round(tokens_per_s, 1),
                      "mfu": _round(throughput.mfu(tokens_per_s, fpt, peak, dist.world_size)),
                      "peak_mem_gb": round(throughput.peak_memory_gb(device), 3)}
            # --- held-out losses; early stopping keeps the best validation loss's model
            if heldout and (done % cfg.eval_every == 0 or done == total_steps):
                measured, _ = measure(base_logprobs)
                eval_seconds += measured["eval_s"]
                record.update(measured)
                if point.patience is not None:
                    if measured["val_loss"] < best["val_loss"]:
                        best = {"step": done, "val_loss": measured["val_loss"], "evals_since": 0}
                        checkpoint.save_model(model, best_dir, {"step": done}, dist)
                    else:
                        best["evals_since"] += 1
                        stopped_early = best["evals_since"] >= point.patience
            record["elapsed_s"] = round(time.monotonic() - start, 3)
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if stopped_early:
                break
            every = cfg.checkpoint_every
            stopping = stop_after is not None and done >= stop_after and done < total_steps
            if checkpoint_dir is not None and done < total_steps and (
                    stopping or (every and done % every == 0)):
                checkpoint.save(model, optimizer, step=done, root=checkpoint_dir, d=dist,
                                info={"tokens": tokens_seen, "best": best})
            if stopping:
                return {"steps": total_steps, "stopped_at": done, "world_size": dist.world_size}
    finally:
        if log is not None:
            log.close()

    # --- early stopping: the best validation loss's model is the one exported
    if best["step"] is not None and best["step"] != done:
        checkpoint.load_model(model, best_dir)

    # --- export: an ordinary HF directory, gathered on rank 0; what evaluation reads
    model.eval()
    full = distributed.full_state_dict(model, dist)
    if dist.main and out_dir is not None:
        model.save_pretrained(out_dir, state_dict=full)
        tokenizer.save_pretrained(out_dir)
    if dist.main and checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the exported model supersedes them
    summary = {"steps": total_steps, "last_step": done, "examples": len(stream),
               "world_size": dist.world_size, "sharded": dist.active, "resumed_from_step": first_step,
               "train_seconds": round(time.monotonic() - start, 2),
               "eval_seconds": round(eval_seconds, 2), "final_loss": round(loss_sum, 6)}
    if point.patience is not None:
        summary.update(best_step=best["step"], best_val_loss=best["val_loss"],
                       stopped_early=stopped_early)
    if regularizer is not None:
        summary.update(regularizer.summary)
    return summary

