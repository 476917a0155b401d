"""Process groups, FSDP2 wrapping, and rank helpers for the training recipe.

Under ``torchrun`` each process trains a shard: NCCL on GPUs, gloo on CPU, also with one
process (FSDP2 over one GPU: the same code path as many, and how one GPU checks it).
Without torchrun (WORLD_SIZE unset) everything here degrades to a single process and no
wrapping, so the recipe reads the same either way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from forgetbench.devices import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device
    launched: bool = False  # under torchrun: a process group, and the model sharded by FSDP2

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.launched or self.world_size > 1


def init(device_name: str) -> Dist:
    """Join the torchrun process group if there is one; pick this rank's device."""
    launched = "WORLD_SIZE" in os.environ
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        # one GPU per process under torchrun; the named (or first) GPU otherwise
        device = torch.device("cuda", local if launched else (device.index or 0))
        torch.cuda.set_device(device)
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, device=device, launched=launched)


def shutdown_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sums(values: list[float], d: Dist) -> list[float]:
    """Sum Python numbers over ranks in one collective (identity in a single process)."""
    if not d.active:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_sum(value: float, d: Dist) -> float:
    return all_reduce_sums([value], d)[0]


def block_classes(model: torch.nn.Module) -> set[type]:
    """The repeated decoder-block classes to shard one by one, found from the model itself:
    transformers lists them in ``_no_split_modules`` (LlamaDecoderLayer, Qwen2DecoderLayer,
    MistralDecoderLayer, GPT2Block ...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    # the class itself, also once fully_shard has swapped in its FSDP<name> subclass
    classes = {c for m in model.modules() for c in type(m).__mro__ if c.__name__ in names}
    if not classes:
        raise ValueError(f"{type(model).__name__} names no decoder block in _no_split_modules; "
                         "cannot choose FSDP units")
    return classes


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    classes = tuple(block_classes(model))
    return [m for m in model.modules() if isinstance(m, classes)]


def wrap_fsdp(model: torch.nn.Module, d: Dist, *, bf16: bool) -> torch.nn.Module:
    """``fully_shard`` each decoder block, then the root. With ``bf16``, parameters are cast
    to bf16 for compute while gradients are reduced in fp32 (the sharded fp32 parameters
    stay the optimizer's master copy)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 else MixedPrecisionPolicy())
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def empty_model(model_dir, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model of ``model_dir`` without its weights: parameters on the meta device (no
    memory), buffers computed for real (rotary frequencies are not in checkpoints), tied
    embeddings tied. ``load_full_weights`` fills it once it is sharded."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code),
            dtype=torch.float32, trust_remote_code=trust_remote_code)
    model.tie_weights()  # init_empty_weights swaps in new meta parameters, untying them
    return model.eval()  # as from_pretrained returns it


def load_full_weights(model: torch.nn.Module, model_dir, d: Dist, trust_remote_code: bool = False) -> None:
    """Fill an ``empty_model`` that ``wrap_fsdp`` sharded: rank 0 alone reads the weights
    (one fp32 copy in its host memory) and broadcasts them tensor by tensor; every rank
    keeps its shard. N processes reading the whole model each would need N copies in host
    memory: 2.2 TB for a 70B model on 8 GPUs."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForCausalLM

    full = (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code).state_dict()
            if d.main else {})
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # loading assigns each key its own tensor; FSDP tracks a tied table through the input
    # embeddings, so the head points at that one again
    model.tie_weights()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a (possibly) sharded tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_state_dict(model: torch.nn.Module, d: Dist) -> dict[str, torch.Tensor] | None:
    """The unsharded fp32 state dict on rank 0 (CPU), None elsewhere; every rank must call."""
    if not d.active:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if d.main else None
