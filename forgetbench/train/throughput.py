"""Throughput figures for the per-step log: FLOPs per token, device peaks, MFU, peak memory."""
from __future__ import annotations

import resource
import sys

import torch

# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s, without sparsity).
# A device not listed gets no MFU rather than a guessed one.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12,
    "H100 NVL": 835e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
}


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: float) -> float:
    """Training FLOPs per token, forward and backward: 6·N + 12·L·d·s (PaLM, appendix B),
    with N parameters that take part in matrix products (``matmul_params``), L layers,
    hidden size d and s tokens of context."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


def matmul_params(model: torch.nn.Module) -> int:
    """The parameters that cost FLOPs per token: all but embedding tables, which are only
    looked up, unless the output head multiplies by the same table (tied embeddings).
    Counting an untied input table too would overstate MFU by V·d/N (7% for Llama-3-8B)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    lookups = {id(m.weight): m.weight.numel() for m in model.modules()
               if isinstance(m, torch.nn.Embedding) and m.weight is not head_weight}
    return sum(p.numel() for p in model.parameters()) - sum(lookups.values())


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    # the longest matching key wins ("H100 PCIe" before a plain "H100")
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float | None, world: int) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all devices."""
    return None if not peak else tokens_per_s * flops_per_tok / (peak * world)


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA-allocator memory on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9
