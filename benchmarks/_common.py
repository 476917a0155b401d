"""What the benchmarks share: a randomly initialised Llama of a chosen shape (the embedded
model's tokenizer, a wider vocabulary if asked), long synthetic training rows, and a suite
that trains one point of it with forgetbench's recipe."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_model(out: Path, *, hidden: int, layers: int, vocab: int | None = None,
               intermediate: int | None = None, heads: int | None = None, kv_heads: int | None = None,
               seq_len: int = 2048) -> None:
    """A random Llama with the embedded model's tokenizer; ``vocab`` widens the embeddings and
    the head to a real model's size (the tokenizer only uses its first ids)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from forgetbench.builtin import builtin_model_dir

    tok = AutoTokenizer.from_pretrained(builtin_model_dir("tiny-llama"))
    heads = heads or max(1, hidden // 64)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=max(vocab or 0, len(tok)), hidden_size=hidden,
                      intermediate_size=intermediate or hidden * 8 // 3, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      max_position_embeddings=max(seq_len, 512),
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


def write_long_rows(path: Path, *, rows: int, tokens: int, model_dir: Path) -> None:
    """``rows`` prompt/completion rows of at least ``tokens`` tokens each, cut from the
    bundled pretraining corpus: with train.max_seq_len = tokens every row fills the context,
    so no batch carries padding."""
    from transformers import AutoTokenizer

    from forgetbench.builtin.build import corpus_path

    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = [json.loads(line)["text"] for line in corpus_path().read_text().splitlines()]
    out, i = [], 0
    for _ in range(rows):
        text, n = [], 0
        while n < tokens + 8:
            doc = docs[i % len(docs)]
            text.append(doc)
            n += len(tok(doc, add_special_tokens=False)["input_ids"]) + 1
            i += 1
        out.append({"prompt": "Text:", "completion": " " + "\n".join(text)})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))


def one_point_suite(work: Path, *, model_dir: Path, target: Path, batch_size: int, seq_len: int,
                    dtype: str, device: str, epochs: float = 1.0, regularizer: str = "none", **train) -> Path:
    """A suite of one point (lr 1e-4, ``epochs``, no replay, ``regularizer`` at λ 1) over ``target``, from
    the default suite's settings, for the processes torchrun started (one without it): the
    recipe trains it, and ``planner.suite_plan`` reads it as the recipe runs it."""
    raw = yaml.safe_load((REPO / "suites/medical.yaml").read_text())
    raw["model"] = str(model_dir)
    raw["data"] = {"target": str(target)}
    if regularizer == "ewc":
        raw["data"]["fisher"] = str(target)
    raw["tasks"]["include_path"] = str(REPO / "suites/tasks")
    raw["gate"] = str(REPO / "suites" / raw["gate"])  # relative to suites/, and the copy is elsewhere
    for key in ("eval_every", "track_kl", "eval_batch_size", "ewc"):
        raw["train"].pop(key, None)
    raw["train"].update(batch_size=batch_size, max_seq_len=seq_len, dtype=dtype, device=device,
                        nproc=int(os.environ.get("WORLD_SIZE", "1")), **train)
    raw["sweep"] = {"lr": [1e-4], "epochs": [epochs], "mix_ratio": [0.0], "regularizer": [regularizer],
                    "lam": [1.0 if regularizer != "none" else 0.0]}
    path = work / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
