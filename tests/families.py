"""Tiny random-weight models of the families users fine-tune, for tests: each built from its
own config class with its own tokenizer class (trained on the bundled texts), saved as an
ordinary Hugging Face folder, as ``save_pretrained`` writes a real checkpoint.

What each family brings that the embedded Llama does not: Qwen2's attention biases and a
tokenizer with no BOS; Mistral's sliding-window attention; Gemma 3's tied, scaled embeddings,
sandwich norms and sliding/global layers; Phi-3's fused qkv and gate/up projections; GPT-2's
Conv1D layers, learned positions, tied head and a tokenizer with no pad token.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SUITES

FAMILIES = ("llama", "qwen2", "mistral", "gemma3", "phi3", "gpt2")

VOCAB = 512
MAX_POSITIONS = 256
# one shape for all: small enough that a few training steps take well under a second
_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS)
# Phi-3's hub checkpoints still name code of their own in ``auto_map`` (from before transformers
# had the class); with trust_remote_code off, transformers uses its own Phi3ForCausalLM. Here
# those files fail when imported, so a run that passes shows that none of it ran.
_PHI3_CODE = {"AutoConfig": "configuration_phi3.Phi3Config", "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}


def bundled_texts() -> list[str]:
    """Every text field of the bundled data (prompts, completions, replay text, choices)."""
    texts = []
    for path in sorted((SUITES / "data").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts += [row[k] for k in ("prompt", "completion", "text", "answer") if isinstance(row.get(k), str)]
            texts += [c for c in row.get("choices", []) if isinstance(c, str)]
    return texts


def _tokenizer(family: str):
    """The family's own tokenizer class, trained small. Llama and Gemma checkpoints add BOS;
    the bare classes must be told to (their post-processor has none by default)."""
    import transformers as T

    cls, kwargs = {"llama": (T.LlamaTokenizer, {"add_bos_token": True}),
                   "mistral": (T.LlamaTokenizer, {"add_bos_token": True}),
                   "phi3": (T.LlamaTokenizer, {"add_bos_token": True}),
                   "qwen2": (T.Qwen2Tokenizer, {}),
                   "gemma3": (T.GemmaTokenizer, {"add_bos_token": True}),
                   "gpt2": (T.GPT2Tokenizer, {})}[family]
    return cls(**kwargs).train_new_from_iterator(bundled_texts(), vocab_size=VOCAB, show_progress=False)


def _config(family: str, tok):
    import transformers as T

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    if family == "gpt2":  # its own names; dropout off, so runs can be compared bit for bit
        return T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=MAX_POSITIONS, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    if family == "gemma3":  # head_dim and the query scale default to the 1B model's 256
        return T.Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                  layer_types=["sliding_attention", "full_attention"], **_SHAPE, **ids)
    if family == "phi3":  # its defaults (ids 32000, a long-context rope) do not fit a tiny vocabulary
        return T.Phi3Config(original_max_position_embeddings=MAX_POSITIONS, **_SHAPE, **ids)
    if family == "mistral":  # a window shorter than the training rows, so it masks something
        return T.MistralConfig(sliding_window=16, **_SHAPE, **ids)
    return {"llama": T.LlamaConfig, "qwen2": T.Qwen2Config}[family](**_SHAPE, **ids)


def build_family_model(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny ``family`` model with random weights (seeded) and its tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(family)
    config = _config(family, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    if family == "phi3":
        model.config.auto_map = _PHI3_CODE
        for module in {name.split(".")[0] for name in _PHI3_CODE.values()}:
            (out / f"{module}.py").write_text(
                f"raise ImportError('{module}.py of a model folder ran without trust_remote_code')\n")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
