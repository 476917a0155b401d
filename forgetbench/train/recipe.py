"""Full fine-tuning of one sweep point, read top to bottom: setup, data, loop, export.

Every parameter trains (AdamW). The loss is the summed token cross-entropy of the
completion tokens divided by their count in the whole optimizer step (all micro-batches),
so gradient accumulation gives the same update as one large batch.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from forgetbench.config import Point, Suite
from forgetbench.errors import ForgetbenchError
from forgetbench.train import data as train_data
from forgetbench.train.regularizers import l2_sp_penalty_, snapshot
from forgetbench.train.schedule import lr_at


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_point(suite: Suite, point: Point, *, base_model_dir: Path, out_dir: Path,
                log_path: Path) -> dict:
    """Fine-tune the base model at ``point``; save an HF directory to ``out_dir``.

    One JSON line per optimizer step goes to ``log_path``. Returns a summary dict.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = suite.train
    # --- setup: seeds, device, model, optimizer
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32 master weights and optimizer state; bf16 only inside autocast. Updating bf16
    # weights in place would round most fine-tuning-sized steps to zero.
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=point.lr, weight_decay=cfg.weight_decay)
    anchor = snapshot(params) if point.regularizer == "l2" else None

    # --- data: target examples, replay mixed in at mix_ratio, shuffled by seed
    target = train_data.tokenize(train_data.read_rows(suite.data.target), tokenizer, cfg.max_seq_len)
    replay = (train_data.tokenize(train_data.read_rows(suite.data.replay), tokenizer, cfg.max_seq_len)
              if point.mix_ratio > 0 else [])
    if all(lab == train_data.IGNORE_INDEX for ex in target for lab in ex.labels[1:]):
        raise ForgetbenchError(f"train.max_seq_len: {cfg.max_seq_len} tokens leave no completion "
                               f"token in any row of {suite.data.target}; raise it")
    stream = train_data.mixture(target, replay, epochs=point.epochs, mix_ratio=point.mix_ratio,
                                seed=cfg.seed)
    micro_batches = list(train_data.batches(stream, cfg.batch_size, tokenizer.pad_token_id))
    total_steps = math.ceil(len(micro_batches) / cfg.grad_accum)
    if total_steps == 0:
        raise ForgetbenchError(f"sweep.epochs: {point.epochs:g} epochs of {len(target)} target "
                               "examples is less than one example; use a larger value")
    warmup = round(cfg.warmup_ratio * total_steps)

    # --- the loop: one iteration per optimizer step
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    tokens_seen = 0
    with open(log_path, "w", encoding="utf-8") as log:
        for step in range(total_steps):
            lr = lr_at(step, total_steps=total_steps, peak=point.lr, warmup_steps=warmup,
                       kind=cfg.schedule, floor=point.lr * cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            group_batches = micro_batches[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]
            # count the tokens the loss covers in the whole step, after the shift by one
            n_tokens = sum(int((labels[:, 1:] != train_data.IGNORE_INDEX).sum())
                           for _, _, labels in group_batches)
            loss_sum = 0.0
            for ids, mask, labels in group_batches:
                ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
                with autocast:
                    logits = model(input_ids=ids, attention_mask=mask).logits
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                    labels[:, 1:].reshape(-1), ignore_index=train_data.IGNORE_INDEX,
                    reduction="sum") / max(n_tokens, 1)
                loss.backward()
                loss_sum += loss.item()
                tokens_seen += int(mask.sum())
            penalty = (l2_sp_penalty_(params, anchor, point.lam) if anchor is not None else 0.0)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                         if cfg.max_grad_norm else _grad_norm(params))
            if not torch.isfinite(grad_norm):
                raise FloatingPointError(f"non-finite gradient norm at step {step} "
                                         f"(lr {point.lr}); lower the learning rate")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.monotonic() - start
            log.write(json.dumps({"step": step + 1, "loss": round(loss_sum, 6), "lr": lr,
                                  "penalty": round(penalty, 6),
                                  "grad_norm": round(float(grad_norm), 6),
                                  "tokens": tokens_seen, "elapsed_s": round(elapsed, 3)}) + "\n")
            log.flush()

    # --- export: an ordinary HF directory, what evaluation reads
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"steps": total_steps, "examples": len(stream), "tokens": tokens_seen,
            "train_seconds": round(time.monotonic() - start, 2),
            "final_loss": round(loss_sum, 6) if total_steps else None}


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
