"""Run under torchrun by test_distributed.py: the in-memory FSDP model's logits, then the export."""
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetbench.train import distributed


def main(model_dir: str, out: str) -> None:
    d = distributed.init("cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    distributed.wrap_fsdp(model, d, bf16=False)
    with torch.no_grad():  # perturb the shards so the export cannot be the input by accident
        for p in model.parameters():
            distributed.local(p).add_(0.01 * torch.randn_like(distributed.local(p)))
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(["The capital of France is", "12+30="], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    full = distributed.full_state_dict(model, d)
    if d.main:
        model.save_pretrained(Path(out) / "model", state_dict=full)
        tok.save_pretrained(Path(out) / "model")
        torch.save({"logits": logits, "inputs": dict(ids)}, Path(out) / "logits.pt")
    distributed.shutdown_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
