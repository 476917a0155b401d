"""Memory planner: will a suite's full fine-tuning fit on these GPUs?

The estimates are pure functions; the last section reads a suite's model config and this
machine's GPU to apply them (``forgetbench plan`` and the check before a sweep).

Two estimates, both in decimal GB (1e9 bytes):

``textbook`` (the classic mixed-precision Adam estimate, for comparison with the literature)
    state       = 16 B/param   (2 fp16 weights + 2 fp16 grads + 12 fp32 master, m, v)
    activations = s · b · d · L · 12
    min GPUs    = ceil((state + activations) / GPU memory)

``fsdp`` (what forgetbench's recipe holds per GPU with FSDP2 over n GPUs)
    sharded     = (4 master + 4 grad + 8 Adam m, v [+ 4 L2-SP θ0 | + 8 EWC θ0, Fisher]) B/param / n
    working set = the largest decoder block gathered in the compute dtype, twice (the one
                  computing and the one prefetched), plus the root group (embeddings, head,
                  final norm), which stays gathered from forward to backward
    activations = per-GPU micro-batch b (with activation checkpointing: each block's input,
                  L · s·b·d·2, plus one block's full set), else L · s·b·d·34 bytes for bf16 compute (Korthikanti et
                  al. 2022, no recomputation; ×2 for fp32), + L · 5·a·s²·b when attention
                  scores are materialised (eager attention; SDPA/flash do not store them),
                  plus the logits and their gradient in fp32, 2 · s·b·V·4
    min GPUs    = the smallest n whose per-GPU total fits in the GPU memory
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from forgetbench.errors import ForgetbenchError

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    params: float          # total parameters
    hidden: int            # d
    layers: int            # L
    heads: int = 32        # a
    vocab: int = 32000     # V
    block_params: float | None = None  # parameters of one decoder block; default (N − 2·V·d) / L
    tied_embeddings: bool = False

    @property
    def per_block(self) -> float:
        if self.block_params is not None:
            return self.block_params
        return max(self.params - self.root_params, 0) / self.layers

    @property
    def root_params(self) -> float:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden


@dataclass(frozen=True)
class Workload:
    seq_len: int           # s
    batch_size: int = 1    # b: micro-batch per GPU
    gpus: int = 1          # n
    gpu_memory_gb: float = 80.0
    dtype: str = "bfloat16"          # compute dtype
    regularizer: str = "none"        # none | l2 | ewc
    attention: str = "sdpa"          # sdpa | flash_attention_2 | eager
    activation_checkpointing: bool = False


@dataclass(frozen=True)
class Plan:
    formula: str
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    anchors_gb: float
    working_set_gb: float
    activations_gb: float
    total_gb: float        # per GPU (fsdp) or in all (textbook)
    gpus: int
    min_gpus: int
    gpu_memory_gb: float
    fits: bool

    def as_dict(self) -> dict:
        return asdict(self)


def textbook(model: ModelShape, work: Workload) -> Plan:
    """The classic estimate: 16 B/param and s·b·d·L·12 bytes of activations, not divided."""
    p = model.params
    weights, grads, optim = 2 * p / GB, 2 * p / GB, 12 * p / GB
    acts = work.seq_len * work.batch_size * model.hidden * model.layers * 12 / GB
    total = weights + grads + optim + acts
    need = math.ceil(total / work.gpu_memory_gb)
    return Plan("textbook", weights, grads, optim, 0.0, 0.0, acts, total, work.gpus, need,
                work.gpu_memory_gb, fits=work.gpus >= need)


def _fsdp_per_gpu(model: ModelShape, work: Workload, n: int) -> tuple[float, ...]:
    p = model.params
    compute_bytes = 4 if work.dtype == "float32" else 2
    weights, grads, optim = 4 * p / n / GB, 4 * p / n / GB, 8 * p / n / GB
    anchors = {"none": 0, "l2": 4, "ewc": 8}[work.regularizer] * p / n / GB
    working = (2 * model.per_block + model.root_params) * compute_bytes / GB if n > 1 else 0.0
    s, b, d, a, L = work.seq_len, work.batch_size, model.hidden, model.heads, model.layers
    scores = 5 * a * s / d if work.attention == "eager" else 0.0
    per_layer = s * b * d * (34 + scores) * (compute_bytes / 2)
    logits = 2 * s * b * model.vocab * 4
    if work.activation_checkpointing:  # each block keeps its input; one block recomputes at a time
        acts = (L * s * b * d * compute_bytes + per_layer + logits) / GB
    else:
        acts = (L * per_layer + logits) / GB
    return weights, grads, optim, anchors, working, acts


def fsdp(model: ModelShape, work: Workload) -> Plan:
    """Per-GPU memory of forgetbench's FSDP2 recipe on ``work.gpus`` GPUs, and the minimum
    GPU count at which it fits."""
    parts = _fsdp_per_gpu(model, work, work.gpus)
    total = sum(parts)
    need = next((n for n in range(1, 4097)
                 if sum(_fsdp_per_gpu(model, work, n)) <= work.gpu_memory_gb), 0)
    return Plan("fsdp", *parts, total_gb=total, gpus=work.gpus, min_gpus=need,
                gpu_memory_gb=work.gpu_memory_gb, fits=total <= work.gpu_memory_gb)


FORMULAS = {"fsdp": fsdp, "textbook": textbook}


def shape_of(model_ref: str) -> ModelShape:
    """The shape of an HF model from its config alone: built on the meta device, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    from forgetbench.train.distributed import block_classes

    blocks = block_classes(model)
    block = next(m for m in model.modules() if type(m) in blocks)
    get = lambda *names: next((getattr(cfg, n) for n in names if getattr(cfg, n, None)), 0)  # noqa: E731
    return ModelShape(params=sum(p.numel() for p in model.parameters()),
                      hidden=get("hidden_size", "n_embd"), layers=get("num_hidden_layers", "n_layer"),
                      heads=get("num_attention_heads", "n_head"), vocab=get("vocab_size"),
                      block_params=sum(p.numel() for p in block.parameters()),
                      tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)))


def workload_of(suite, gpu_memory_gb: float, regularizer: str = "none") -> Workload:
    """A suite's training as a workload: its per-GPU micro-batch on train.nproc GPUs."""
    t = suite.train
    micro = math.ceil(t.batch_size / (t.nproc * t.grad_accum))
    return Workload(seq_len=t.max_seq_len, batch_size=micro, gpus=t.nproc,
                    gpu_memory_gb=gpu_memory_gb, dtype=t.dtype, regularizer=regularizer,
                    activation_checkpointing=t.activation_checkpointing)


def format_plan(plan: Plan) -> str:
    where = "in all" if plan.formula == "textbook" else f"per GPU on {plan.gpus}"
    rows = [("weights", plan.weights_gb), ("gradients", plan.gradients_gb),
            ("optimizer state", plan.optimizer_gb), ("regulariser anchors", plan.anchors_gb),
            ("unsharded working set", plan.working_set_gb), ("activations", plan.activations_gb),
            (f"total ({where})", plan.total_gb)]
    lines = [f"memory plan ({plan.formula}), decimal GB"]
    lines += [f"  {name:<24} {value:10.3f}" for name, value in rows]
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"  minimum GPUs of {plan.gpu_memory_gb:g} GB: {plan.min_gpus} "
                 f"({plan.gpus} planned: {verdict})")
    return "\n".join(lines)


# ---------------------------------------------------------------- suites and this machine

def gpu_memory_gb() -> float | None:
    """Memory of the first visible GPU, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 1e9


def suite_plan(suite, gpu_memory_gb: float, formula: str = "fsdp") -> Plan:
    from forgetbench.config import REGULARIZERS
    from forgetbench.sweep import resolve_model

    # the costliest regulariser swept decides what must fit (REGULARIZERS is in cost order)
    worst = max((r for g in suite.grids for r in g.regularizer), key=REGULARIZERS.index)
    shape = shape_of(str(resolve_model(suite.model)))
    return FORMULAS[formula](shape, workload_of(suite, gpu_memory_gb, worst))


def check_fits(suite, source: str, force: bool) -> None:
    """Refuse, with the numbers, a suite whose training cannot fit its GPUs."""
    from forgetbench.train.distributed import resolve_device

    memory = gpu_memory_gb()
    if force or memory is None or resolve_device(suite.train.device).type != "cuda":
        return
    plan = suite_plan(suite, memory)
    if not plan.fits:
        fix = (f"at least {plan.min_gpus}" if plan.min_gpus
               else "far higher (4096 GPUs are not enough)")
        raise ForgetbenchError(
            f"{source}: train: needs {plan.total_gb:.1f} GB per GPU on {plan.gpus} GPU(s) of "
            f"{memory:.0f} GB (weights {plan.weights_gb:.1f}, gradients {plan.gradients_gb:.1f}, "
            f"optimizer {plan.optimizer_gb:.1f}, anchors {plan.anchors_gb:.1f}, working set "
            f"{plan.working_set_gb:.1f}, activations {plan.activations_gb:.1f}); set train.nproc "
            f"to {fix}, lower train.batch_size or max_seq_len, or pass --force")
