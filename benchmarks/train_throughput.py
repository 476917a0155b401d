"""Training throughput: forgetbench's recipe against Hugging Face ``Trainer``, same run.

Both train the same randomly initialised Llama on the same tokenised examples with the same
global batch, AdamW, cosine schedule and clipping, for the same number of optimizer steps,
in one process. The script prints tokens/s (non-padding tokens over the wall time of the
training loop) for each and the ratio forgetbench / Trainer (above 1: forgetbench is
faster), then forgetbench's steady-state figures from its per-step log (tokens/s, MFU, peak
memory after the warm-up steps) next to the memory planner's prediction.

    python benchmarks/train_throughput.py                       # CPU-sized, the medical rows
    # GPU, ~0.94B parameters, full 2048-token rows, Llama-2's vocabulary:
    python benchmarks/train_throughput.py --hidden 2048 --layers 16 --vocab 32000 \\
        --data long --seq-len 2048 --batch-size 8 --steps 30 --dtype bfloat16
    # the same under torchrun: FSDP2 (NCCL on GPUs); the Trainer is skipped
    torchrun --nproc_per_node N benchmarks/train_throughput.py ... --skip-trainer
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, make_model, one_point_suite, write_long_rows  # noqa: E402


def run_forgetbench(suite, model_dir: Path, work: Path) -> list[dict]:
    from forgetbench.train.recipe import train_point

    [point] = suite.points()
    log = work / "fb_log.jsonl"
    train_point(suite, point, base_model_dir=model_dir, out_dir=None, log_path=log)
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run_trainer(model_dir: Path, target: Path, work: Path, args) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from forgetbench.datafiles import read_rows
    from forgetbench.train import data as train_data

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = train_data.tokenize(read_rows(target), tok, args.seq_len)
    stream = train_data.mixture(examples, [], epochs=args.epochs, mix_ratio=0.0, seed=0)
    ds = Dataset.from_list([{"input_ids": list(e.input_ids), "attention_mask": [1] * len(e.input_ids),
                             "labels": list(e.labels)} for e in stream])
    steps = math.ceil(len(stream) / args.batch_size)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targs = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=args.batch_size, max_steps=steps,
        learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=round(0.1 * steps),
        max_grad_norm=1.0, weight_decay=0.0, logging_steps=10**9, save_strategy="no",
        report_to=[], bf16=args.dtype == "bfloat16", use_cpu=args.device == "cpu",
        dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=ds,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    start = time.monotonic()
    trainer.train()
    elapsed = time.monotonic() - start
    tokens = sum(len(e.input_ids) for e in stream[: steps * args.batch_size])
    return elapsed, tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=None, help="model vocabulary (default: the tokenizer's 640)")
    p.add_argument("--data", default="medical", choices=["medical", "long"],
                   help="the default suite's short target rows, or synthetic rows that fill --seq-len")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (rows per optimizer step)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the medical rows")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps with --data long")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the steady-state figures")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="train.compile: torch.compile each decoder block")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--skip-trainer", action="store_true", help="forgetbench only (implied under torchrun)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the two this often; report each one's fastest")
    args = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    skip_trainer = args.skip_trainer or "WORLD_SIZE" in os.environ
    # every rank builds the same files in its own directory (cheap next to training)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_model(work / "model", hidden=args.hidden, layers=args.layers, vocab=args.vocab,
                   seq_len=args.seq_len)
        target = REPO / "suites/data/medical_train.jsonl"
        if args.data == "long":
            target = work / "long.jsonl"
            write_long_rows(target, rows=args.steps * args.batch_size, tokens=args.seq_len, model_dir=work / "model")
            args.epochs = 1.0
        from forgetbench.config import load_suite
        from forgetbench.planner import suite_plan

        suite = load_suite(one_point_suite(
            work, model_dir=work / "model", target=target, batch_size=args.batch_size, seq_len=args.seq_len,
            dtype=args.dtype, device=args.device, epochs=args.epochs, compile=args.compile,
            activation_checkpointing=args.activation_checkpointing))
        plan = suite_plan(suite, gpu_memory_gb=80.0)
        # alternate the two, keep each one's fastest run: a busy machine slows both alike
        log, hf = None, None
        for _ in range(args.repeats):
            run = run_forgetbench(suite, work / "model", work)
            if log is None or run[-1]["elapsed_s"] < log[-1]["elapsed_s"]:
                log = run
            if not skip_trainer:
                run = run_trainer(work / "model", target, work, args)
                hf = run if hf is None or run[0] < hf[0] else hf
    if not main_rank:
        return 0
    fb_s, fb_tok = log[-1]["elapsed_s"], log[-1]["tokens"]
    print(f"model: random Llama, {plan.basis.split(';')[0]}, "
          f"{args.dtype} on {args.device} x{world}{' (FSDP2)' if 'WORLD_SIZE' in os.environ else ''}; "
          f"global batch {args.batch_size}, {len(log)} steps of {args.data} rows (max {args.seq_len} tokens)"
          + (", compiled blocks" if args.compile else "")
          + (", activation checkpointing" if args.activation_checkpointing else ""))
    if args.repeats > 1:
        print(f"fastest of {args.repeats} alternating runs each:")
    print(f"forgetbench recipe : {fb_tok} tokens in {fb_s:.2f} s = {fb_tok / fb_s:,.0f} tokens/s")
    if hf is not None:
        hf_s, hf_tok = hf
        print(f"HF Trainer         : {hf_tok} tokens in {hf_s:.2f} s = {hf_tok / hf_s:,.0f} tokens/s")
        print(f"ratio forgetbench / Trainer: {(fb_tok / fb_s) / (hf_tok / hf_s):.2f}")
    steady = log[args.warmup_steps:] or log
    rate = statistics.median(r["tokens_per_s"] for r in steady)
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    mfu_text = f"MFU {statistics.median(mfu):.1%}" if mfu else "MFU n/a (no GPU peak known)"
    print(f"steady state (steps {steady[0]['step']}-{steady[-1]['step']}, median per step): "
          f"{rate:,.0f} tokens/s per job, {mfu_text}")
    measured = max(r["peak_mem_gb"] for r in log)
    what = "CUDA allocator peak" if args.device.startswith("cuda") else "process peak RSS (not comparable to the plan)"
    print(f"peak memory: {measured:.2f} GB ({what}); planned per device: {plan.total_gb:.2f} GB "
          f"(ratio measured / planned {measured / plan.total_gb:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
