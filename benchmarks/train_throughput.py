"""Training throughput: forgetbench's recipe against Hugging Face ``Trainer``, same run.

Both train the same randomly initialised Llama on the same tokenised examples (the
default suite's target data, completion-only labels) with the same global batch, AdamW,
cosine schedule and clipping, for the same number of optimizer steps, one process. The
script prints tokens/s (non-padding tokens over wall time of the training loop) for each
and the ratio forgetbench / Trainer; above 1 means forgetbench is faster.

    python benchmarks/train_throughput.py                       # CPU-sized model
    python benchmarks/train_throughput.py --hidden 2048 --layers 16 --dtype bfloat16   # GPU
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_model(out: Path, args) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgetbench.builtin import builtin_model_dir

    tok_dir = builtin_model_dir("tiny-llama")  # its tokenizer; the weights are fresh
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


def run_forgetbench(model_dir: Path, work: Path, args) -> tuple[float, int]:
    from forgetbench.config import Point, load_suite
    from forgetbench.train.recipe import train_point

    raw = yaml.safe_load((REPO / "suites/medical.yaml").read_text())
    raw["model"] = str(model_dir)
    raw["data"] = {"target": str(REPO / "suites/data/medical_train.jsonl")}
    raw["tasks"]["include_path"] = str(REPO / "suites/tasks")
    raw["train"].update(batch_size=args.batch_size, max_seq_len=args.seq_len, dtype=args.dtype,
                        device=args.device)
    raw["sweep"] = {"lr": [1e-4], "mix_ratio": [0.0]}
    path = work / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    suite = load_suite(path)
    point = Point(lr=1e-4, epochs=args.epochs, mix_ratio=0.0, regularizer="none", lam=0.0)
    log = work / "fb_log.jsonl"
    train_point(suite, point, base_model_dir=model_dir, out_dir=None, log_path=log)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return rows[-1]["elapsed_s"], rows[-1]["tokens"]


def run_trainer(model_dir: Path, work: Path, args) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from forgetbench.train import data as train_data

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = train_data.tokenize(train_data.read_rows(REPO / "suites/data/medical_train.jsonl"),
                                   tok, args.seq_len)
    stream = train_data.mixture(examples, [], epochs=args.epochs, mix_ratio=0.0, seed=0)
    ds = Dataset.from_list([{"input_ids": list(e.input_ids), "attention_mask": [1] * len(e.input_ids),
                             "labels": list(e.labels)} for e in stream])
    steps = math.ceil(len(stream) / args.batch_size)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
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
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_model(work / "model", args)
        fb_s, fb_tok = run_forgetbench(work / "model", work, args)
        hf_s, hf_tok = run_trainer(work / "model", work, args)
    fb_rate, hf_rate = fb_tok / fb_s, hf_tok / hf_s
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {args.dtype} on {args.device}; "
          f"batch {args.batch_size}, {args.epochs:g} epochs of the medical target data")
    print(f"forgetbench recipe : {fb_tok} tokens in {fb_s:.2f} s = {fb_rate:,.0f} tokens/s")
    print(f"HF Trainer         : {hf_tok} tokens in {hf_s:.2f} s = {hf_rate:,.0f} tokens/s")
    print(f"ratio forgetbench / Trainer: {fb_rate / hf_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
