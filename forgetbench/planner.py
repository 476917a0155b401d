"""Memory planner: will a suite's full fine-tuning fit on these GPUs?

The estimates are pure functions; the last section reads a suite's model config and this
machine's GPU to apply them (``forgetbench plan`` and the check before a sweep).

Two estimates, both in decimal GB (1e9 bytes):

``textbook`` (the classic mixed-precision Adam estimate, for comparison with the literature)
    state       = 16 B/param   (2 fp16 weights + 2 fp16 grads + 12 fp32 master, m, v)
    activations = s · b · d · L · 12
    min GPUs    = ceil((state + activations) / GPU memory)

``fsdp`` (what forgetbench's recipe holds per GPU: FSDP2 over n > 1 GPUs, or one process)
    sharded     = (4 master + 4 grad + 8 Adam m, v [+ 4 L2-SP θ0 | + 8 EWC θ0, Fisher]) B/param / n
    working set = n > 1: the largest decoder block gathered in the compute dtype, twice (the
                  one computing and the one prefetched), plus the root group (embeddings,
                  head, final norm), which stays gathered from forward to backward, plus
                  one block's unsharded gradient on its way to the reduce-scatter (in the
                  compute dtype and again in fp32, the reduce dtype).
                  n = 1 with bf16: autocast's bf16 copy of every weight, which the forward
                  saves for the backward (2 B/param; one block's with activation checkpointing)
    activations = per-GPU micro-batch b, per layer per token (s·b), in multiples of d:
                  bf16 parameters (FSDP)   20 + 4·g + 8·r     (r = intermediate / d,
                  bf16 autocast (1 GPU)    30 + 4·g + 8·r      g = kv heads / heads)
                  fp32                     32 + 8·g + 16·r
                  counted from what autograd saves in transformers' Llama-family decoder
                  layer (RMSNorm, gated MLP, SDPA/flash attention, which stores no scores;
                  tests/test_planner.py checks the counts against a real forward). Eager
                  attention adds 5·a·s per token and layer. With activation checkpointing,
                  each block keeps only its input (s·b·d in the residual's dtype) and one
                  block recomputes at a time. One layer's backward adds its temporaries,
                  the gradients of the MLP's three intermediates and of the residual,
                  (3·r + 1)·d per token in the compute dtype. The loss adds 12 B per token
                  and vocabulary entry: the fp32 log-softmax, its gradient and the gradient
                  of the logits
    min GPUs    = the smallest n whose per-GPU total fits in the GPU memory
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from forgetbench import devices, regularizers
from forgetbench.errors import ForgetbenchError
from forgetbench.models import resolve_model
from forgetbench.train.distributed import block_classes

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
    intermediate: int | None = None    # MLP width; default: what the block's parameters leave for a gated MLP
    kv_heads: int | None = None        # key/value heads (grouped-query attention); default: heads

    @property
    def per_block(self) -> float:
        if self.block_params is not None:
            return self.block_params
        return max(self.params - self.root_params, 0) / self.layers

    @property
    def mlp_ratio(self) -> float:
        """r = intermediate / d. Without an intermediate size, the block's parameters left
        after attention (2·d² for q and o, 2·d²·g for k and v) are taken as a gated MLP's 3·d·i."""
        if self.intermediate:
            return self.intermediate / self.hidden
        d = self.hidden
        return max(self.per_block - (2 + 2 * self.kv_ratio) * d * d, 0) / (3 * d * d)

    @property
    def kv_ratio(self) -> float:
        return (self.kv_heads or self.heads) / self.heads

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
    regularizer: str = "none"        # none, or a registered regulariser (forgetbench/regularizers.py)
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
    basis: str = ""        # the model and workload the numbers are for

    def as_dict(self) -> dict:
        return asdict(self)


def describe(model: ModelShape, work: Workload, *, detail: bool = True) -> str:
    """One line: what a plan assumed, to check against what will run."""
    n = model.params
    size = f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"
    if not detail:  # the textbook formula reads nothing else
        return (f"{size} parameters (d {model.hidden}, {model.layers} layers); "
                f"{work.batch_size} x {work.seq_len} tokens")
    kv = model.kv_heads or model.heads
    extras = [x for x, on in (("activation checkpointing", work.activation_checkpointing),
                              (f"{work.attention} attention", work.attention == "eager"),
                              (f"regulariser {work.regularizer}", work.regularizer != "none")) if on]
    return (f"{size} parameters (d {model.hidden}, {model.layers} layers, MLP {model.mlp_ratio:.3g}·d, "
            f"{kv} of {model.heads} heads for keys/values, vocab {model.vocab}); {work.batch_size} x "
            f"{work.seq_len} tokens per GPU per micro-batch, {'FSDP2' if work.gpus > 1 else 'one process'}, "
            f"{work.dtype}" + "".join(f", {x}" for x in extras))


def textbook(model: ModelShape, work: Workload) -> Plan:
    """The classic estimate: 16 B/param and s·b·d·L·12 bytes of activations, not divided."""
    p = model.params
    weights, grads, optim = 2 * p / GB, 2 * p / GB, 12 * p / GB
    acts = work.seq_len * work.batch_size * model.hidden * model.layers * 12 / GB
    total = weights + grads + optim + acts
    need = math.ceil(total / work.gpu_memory_gb)
    return Plan("textbook", weights, grads, optim, 0.0, 0.0, acts, total, work.gpus, need,
                work.gpu_memory_gb, fits=work.gpus >= need, basis=describe(model, work, detail=False))


def activation_bytes_per_layer(model: ModelShape, work: Workload, sharded: bool) -> float:
    """Bytes autograd keeps per token for one decoder layer's backward (the module docstring
    says where the counts come from); ``sharded`` is FSDP's bf16 parameters, else autocast."""
    g, r = model.kv_ratio, model.mlp_ratio
    if work.dtype == "float32":
        per_d = 32 + 8 * g + 16 * r
    elif sharded:  # FSDP casts the parameters: the residual stream is bf16
        per_d = 20 + 4 * g + 8 * r
    else:  # autocast over fp32 weights: fp32 residual and norms, one bf16 cast per projection input
        per_d = 30 + 4 * g + 8 * r
    scores = 5 * model.heads * work.seq_len / model.hidden if work.attention == "eager" else 0.0
    return (per_d + scores) * model.hidden


def _fsdp_per_gpu(model: ModelShape, work: Workload, n: int) -> tuple[float, ...]:
    p = model.params
    sharded, bf16 = n > 1, work.dtype != "float32"
    compute_bytes = 2 if bf16 else 4
    weights, grads, optim = 4 * p / n / GB, 4 * p / n / GB, 8 * p / n / GB
    anchors = regularizers.state_bytes(work.regularizer) * p / n / GB
    if sharded:
        gathered = (2 * model.per_block + model.root_params) * compute_bytes
        working = (gathered + model.per_block * (compute_bytes + 4)) / GB
    elif bf16:  # autocast's weight copies live from the forward to the backward
        copied = model.per_block + model.root_params if work.activation_checkpointing else p
        working = 2 * copied / GB
    else:
        working = 0.0
    tokens, L = work.seq_len * work.batch_size, model.layers
    per_layer = tokens * activation_bytes_per_layer(model, work, sharded)
    loss = 12 * tokens * model.vocab
    temporaries = tokens * model.hidden * (3 * model.mlp_ratio + 1) * compute_bytes  # one layer's backward
    if work.activation_checkpointing:  # each block keeps its input; one block recomputes at a time
        residual_bytes = 2 if sharded and bf16 else 4
        acts = (L * tokens * model.hidden * residual_bytes + per_layer + temporaries + loss) / GB
    else:
        acts = (L * per_layer + temporaries + loss) / GB
    return weights, grads, optim, anchors, working, acts


def fsdp(model: ModelShape, work: Workload) -> Plan:
    """Per-GPU memory of forgetbench's FSDP2 recipe on ``work.gpus`` GPUs, and the minimum
    GPU count at which it fits."""
    parts = _fsdp_per_gpu(model, work, work.gpus)
    total = sum(parts)
    need = next((n for n in range(1, 4097)
                 if sum(_fsdp_per_gpu(model, work, n)) <= work.gpu_memory_gb), 0)
    return Plan("fsdp", *parts, total_gb=total, gpus=work.gpus, min_gpus=need,
                gpu_memory_gb=work.gpu_memory_gb, fits=total <= work.gpu_memory_gb,
                basis=describe(model, work))


FORMULAS = {"fsdp": fsdp, "textbook": textbook}


def shape_of(model_ref: str, trust_remote_code: bool = False) -> ModelShape:
    """The shape of an HF model from its config alone: built on the meta device, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_ref, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    blocks = block_classes(model)
    block = next(m for m in model.modules() if type(m) in blocks)
    get = lambda *names: next((getattr(cfg, n) for n in names if getattr(cfg, n, None)), 0)  # noqa: E731
    return ModelShape(params=sum(p.numel() for p in model.parameters()),
                      hidden=get("hidden_size", "n_embd"), layers=get("num_hidden_layers", "n_layer"),
                      heads=get("num_attention_heads", "n_head"), vocab=get("vocab_size"),
                      block_params=sum(p.numel() for p in block.parameters()),
                      tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
                      intermediate=get("intermediate_size", "n_inner") or None,
                      kv_heads=get("num_key_value_heads") or None)


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
    lines = [f"memory plan ({plan.formula}), decimal GB"] + ([f"  for {plan.basis}"] if plan.basis else [])
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
    # the regulariser with the most state per parameter decides what must fit
    worst = max((r for g in suite.grids for r in g.regularizer), key=regularizers.state_bytes)
    shape = shape_of(str(resolve_model(suite.model)), suite.trust_remote_code)
    return FORMULAS[formula](shape, workload_of(suite, gpu_memory_gb, worst))


def check_fits(suite, source: str, force: bool) -> None:
    """Refuse, with the numbers, a suite whose training cannot fit its GPUs."""
    memory = gpu_memory_gb()
    if force or memory is None or devices.resolve_device(suite.train.device).type != "cuda":
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
