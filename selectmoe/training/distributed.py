"""This process's place in a multi-process job, and the collective operations the training
loop needs: DDP's local batch share, FSDP2 sharding and gathering, random states.

A job started under ``accelerate launch`` (or ``torchrun``) has ``WORLD_SIZE > 1``; every helper
here is a no-op or the identity with one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

Item = TypeVar("Item")

__all__ = [
    "SHARDING_MODES",
    "DistributedInfo",
    "decoder_layers",
    "distributed_info",
    "full_cpu_copy",
    "full_model_state",
    "full_optimizer_state",
    "gather_rng_states",
    "init_process_group",
    "local_share",
    "resolve_device",
    "restore_rng",
    "shard_model",
]


@dataclass(frozen=True)
class DistributedInfo:
    """This process's place in a multi-process job (from the launcher's environment)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0


def distributed_info() -> DistributedInfo:
    """Rank, local rank and world size from ``accelerate launch`` / ``torchrun`` (else 0, 0, 1)."""
    return DistributedInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; otherwise the named device.

    In a multi-process job a CUDA device without an index becomes ``cuda:LOCAL_RANK``.
    """
    info = distributed_info()
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and info.world_size > 1:
        resolved = torch.device("cuda", info.local_rank)
    return resolved


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every process's torch random states (gathered to all processes when distributed)."""
    local = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        local["cuda"] = torch.cuda.get_rng_state()
    if world_size == 1:
        return [local]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def restore_rng(states: list[dict[str, Any]], rank: int) -> None:
    if rank >= len(states):  # resumed with more processes than saved: keep the seeded state
        return
    torch.set_rng_state(states[rank]["cpu"])
    if "cuda" in states[rank] and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[rank]["cuda"])


def local_share(
    global_batch: Sequence[Item], *, rank: int, world_size: int, micro_batch_size: int
) -> tuple[list[Item], float]:
    """This process's slice of a global micro-batch and the factor on its loss.

    DDP averages gradients over processes; scaling each process's mean loss by
    ``world_size * n_local / n_global`` makes the average the gradient of the mean over the whole
    global batch, also when the last batch does not split evenly. A process left without examples
    runs one example with factor 0, so that every process takes part in the gradient exchange.
    """
    local = list(global_batch[rank * micro_batch_size : (rank + 1) * micro_batch_size])
    if not local:
        return list(global_batch[:1]), 0.0
    return local, world_size * len(local) / len(global_batch)


SHARDING_MODES: tuple[str, ...] = ("ddp", "fsdp")
"""How a multi-process training job splits the model: replicas (DDP) or shards (FSDP2)."""


def init_process_group(device: torch.device) -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA), once."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a transformers causal LM (also inside a peft wrapper).

    Raises
    ------
    ValueError
        When the model has no ``layers`` module list.
    """
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList) and len(module):
            return module
    raise ValueError(f"{type(model).__name__} has no decoder-layer list ('layers') to shard")


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` over the process group with FSDP2 (``torch.distributed.fsdp.fully_shard``).

    Each decoder layer is one unit (its weights, frozen base and LoRA alike, are gathered just
    before it runs and freed after), the rest (embeddings, final norm, LM head) the root unit.
    Every process then holds ``1 / world_size`` of each weight; gradients are reduce-scattered
    (averaged) over the processes.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def full_cpu_copy(parameter: torch.Tensor) -> torch.Tensor:
    """A whole CPU copy of a parameter, gathered from its shards if it is a DTensor."""
    tensor = parameter.detach()
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()  # collective
    return tensor.to("cpu").clone()


def full_optimizer_state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The sharded optimizer's state, gathered whole (keyed by parameter name); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's whole state dict on the CPU (collective: every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
