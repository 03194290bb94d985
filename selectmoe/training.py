"""Pieces shared by the training stages (warmup, finetune) and inference (scoring).

The loop is deliberately plain (nanoGPT style): learning rate, accumulation micro-steps, clip,
step, log. Randomness comes only from the ``seed`` argument.

**Checkpoints.** With ``checkpoint_dir`` the loop saves, every ``checkpoint_every`` optimizer
steps, the trainable tensors, the optimizer state, the random-number states and the history
(atomically, keeping the newest two). A new run with the same ``fingerprint`` resumes from the
newest readable checkpoint and replays the data order, so an interrupted and resumed run ends
with the same weights as an uninterrupted one. A checkpoint with another fingerprint (other
settings or data) is ignored, never resumed.

**Several processes.** Started under ``accelerate launch`` (or ``torchrun``) with
``WORLD_SIZE > 1``, the loop wraps the model in DDP through ``accelerate`` or, with
``sharding="fsdp"``, shards it with FSDP2; every process draws the same global micro-batch of
``micro_batch_size * world_size`` examples and trains on its own slice, so the effective batch is
``micro_batch_size * gradient_accumulation_steps * world_size``. Only the main process logs and
writes checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selectmoe.data import EncodedExample, collate_encoded
from selectmoe.hashing import text_sha256
from selectmoe.io import atomic_torch_save

__all__ = [
    "CHECKPOINT_FORMAT",
    "SHARDING_MODES",
    "DistributedInfo",
    "TrainResult",
    "clear_checkpoints",
    "decoder_layers",
    "distributed_info",
    "full_model_state",
    "latest_checkpoint",
    "length_sorted_batches",
    "linear_warmup_decay",
    "require_model_source",
    "resolve_device",
    "run_fingerprint",
    "seed_everything",
    "shard_model",
    "train_loop",
]

logger = logging.getLogger(__name__)


def require_model_source(source: str, *, what: str) -> Any:
    """Fail early unless ``source`` is a model directory or a reachable hub id ("org/name").

    Returns
    -------
    transformers.PretrainedConfig
        The model's config, read from the directory, the Hugging Face cache or the Hub (a hub id
        offline without a cached copy is an error here, not a traceback at model loading).

    Raises
    ------
    ModelError
        Naming ``what`` (e.g. "target model") and the path.
    """
    from transformers import AutoConfig

    from selectmoe.errors import ModelError

    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/"))
    if not os.path.isdir(source) and not looks_like_hub_id:
        raise ModelError(f"{source}: {what} not found; build the demo or fix the path")
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"{source}: cannot load a model config for the {what} ({error.__class__.__name__}); "
            "give a local model directory or a hub id that is reachable (set HF_HUB_OFFLINE=0 "
            "when online)"
        ) from None


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


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python's ``random`` for code using the global generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def length_sorted_batches(
    encoded: Sequence[EncodedExample], *, batch_size: int
) -> list[list[EncodedExample]]:
    """Batches of examples of similar length (longest first) to waste little on padding.

    The sort is stable, so the batching is deterministic; callers restore file order through
    ``EncodedExample.index``.
    """
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    return [
        [encoded[i] for i in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]


def linear_warmup_decay(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warmup to 1, then linear decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    return max(0.0, (total_steps - step) / remaining)


class TrainResult(dict):
    """History and derived numbers of a run (a dict so that it serialises as it is)."""


CHECKPOINT_FORMAT = "selectmoe-train-checkpoint-v1"
_CHECKPOINT_GLOB = "step_*.pt"


def run_fingerprint(**parts: Any) -> str:
    """A short hash of everything that determines a training run (settings, model, data ids).

    Checkpoints carry it; a run only resumes from checkpoints with its own fingerprint.
    """
    return text_sha256(json.dumps(parts, sort_keys=True, default=str))[:16]


def latest_checkpoint(
    checkpoint_dir: str | os.PathLike[str], fingerprint: str
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of this run in ``checkpoint_dir``, or None.

    Files that cannot be read (a kill during a save cannot leave one, since saves are atomic, but
    a full disk or a copy can) or that belong to another run are skipped with a warning.
    """
    directory = Path(checkpoint_dir)
    for path in sorted(directory.glob(_CHECKPOINT_GLOB), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            logger.warning("checkpoint %s is unreadable (%s); trying an older one", path, error)
            continue
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            logger.warning("%s is not a training checkpoint; ignored", path)
            continue
        if state.get("fingerprint") != fingerprint:
            logger.warning(
                "checkpoint %s belongs to another run (settings or data changed); ignored", path
            )
            continue
        return path, state
    return None


def clear_checkpoints(checkpoint_dir: str | os.PathLike[str] | None) -> None:
    """Remove a finished run's checkpoint directory (its final output is written)."""
    if checkpoint_dir is not None and distributed_info().is_main:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _save_checkpoint(
    checkpoint_dir: Path, state: dict[str, Any], *, step: int, keep: int = 2
) -> Path:
    path = checkpoint_dir / f"step_{step:09d}.pt"
    atomic_torch_save(state, path)
    for old in sorted(checkpoint_dir.glob(_CHECKPOINT_GLOB), reverse=True)[keep:]:
        old.unlink(missing_ok=True)
    return path


def _rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every process's torch random states (gathered to all processes when distributed)."""
    local = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        local["cuda"] = torch.cuda.get_rng_state()
    if world_size == 1:
        return [local]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def _restore_rng(states: list[dict[str, Any]], rank: int) -> None:
    if rank >= len(states):  # resumed with more processes than saved: keep the seeded state
        return
    torch.set_rng_state(states[rank]["cpu"])
    if "cuda" in states[rank] and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[rank]["cuda"])


def _epoch_batches(
    encoded: Sequence[EncodedExample], *, micro_batch_size: int, rng: random.Random
) -> list[list[EncodedExample]]:
    order = list(range(len(encoded)))
    rng.shuffle(order)
    return [
        [encoded[i] for i in order[start : start + micro_batch_size]]
        for start in range(0, len(order), micro_batch_size)
    ]


def _local_share(
    global_batch: list[EncodedExample], *, rank: int, world_size: int, micro_batch_size: int
) -> tuple[list[EncodedExample], float]:
    """This process's slice of a global micro-batch and the factor on its loss.

    DDP averages gradients over processes; scaling each process's mean loss by
    ``world_size * n_local / n_global`` makes the average the gradient of the mean over the whole
    global batch, also when the last batch does not split evenly. A process left without examples
    runs one example with factor 0, so that every process takes part in the gradient exchange.
    """
    local = global_batch[rank * micro_batch_size : (rank + 1) * micro_batch_size]
    if not local:
        return global_batch[:1], 0.0
    return local, world_size * len(local) / len(global_batch)


SHARDING_MODES: tuple[str, ...] = ("ddp", "fsdp")
"""How a multi-process training job splits the model: replicas (DDP) or shards (FSDP2)."""


def _init_process_group(device: torch.device) -> None:
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


def _full_cpu(parameter: torch.Tensor) -> torch.Tensor:
    """A whole CPU copy of a parameter, gathered from its shards if it is a DTensor."""
    tensor = parameter.detach()
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()  # collective
    return tensor.to("cpu").clone()


def _full_optimizer_state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
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


def train_loop(
    model: torch.nn.Module,
    encoded: Sequence[EncodedExample],
    *,
    parameters: Iterable[torch.nn.Parameter],
    compute_loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict]],
    learning_rate: float,
    epochs: int,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    warmup_ratio: float,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    seed: int,
    pad_token_id: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    log_every: int = 10,
    max_steps: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    fingerprint: str = "",
    sharding: str = "ddp",
) -> TrainResult:
    """Train ``parameters`` of ``model`` on ``encoded`` with AdamW and a linear schedule.

    Parameters
    ----------
    compute_loss : callable
        ``(model, batch) -> (loss, metrics)``; ``batch`` holds ``input_ids``, ``labels``,
        ``attention_mask`` ``[B, T]`` on ``device``; ``metrics`` are floats to log. ``model`` may
        be the DDP-wrapped model: call it, do not read its attributes.
    micro_batch_size, gradient_accumulation_steps : int
        Per process; the effective batch is their product times the number of processes.
    max_steps : int, optional
        Stop after this many optimizer steps (the schedule spans them).
    checkpoint_dir, checkpoint_every, fingerprint
        Save a checkpoint every ``checkpoint_every`` optimizer steps (0: never) and resume from
        the newest one with the same ``fingerprint`` (see :func:`run_fingerprint`).
    sharding : {"ddp", "fsdp"}
        With several processes: replicate the model (DDP through accelerate) or shard it with
        torch's ``fully_shard`` (FSDP2), per decoder layer and at the root (see
        :func:`shard_model`). Checkpoints then hold full (gathered) tensors.

    Returns
    -------
    TrainResult
        ``history`` (one dict per logged step: step, epoch, lr, loss and the metrics),
        ``optimizer_steps``, ``effective_batch_size``, ``tokens_seen``, ``seconds``,
        ``resumed_from_step`` (0 for a fresh run), ``world_size``.
    """
    info = distributed_info()
    world_size = info.world_size
    trainable_named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    requested = {id(p) for p in parameters if p.requires_grad}
    trainable_named = [(n, p) for n, p in trainable_named if id(p) in requested]
    trainable = [p for _, p in trainable_named]
    if not trainable:
        raise ValueError("no trainable parameters: check the target patterns / LoRA settings")
    global_micro = micro_batch_size * world_size
    steps_per_epoch = math.ceil(
        math.ceil(len(encoded) / global_micro) / gradient_accumulation_steps
    )
    total_steps = steps_per_epoch * epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    warmup_steps = math.ceil(warmup_ratio * total_steps)
    sharded = world_size > 1 and sharding == "fsdp"
    if sharding not in SHARDING_MODES:
        raise ValueError(f"sharding is {sharding!r}; valid: {', '.join(SHARDING_MODES)}")

    history: list[dict[str, Any]] = []
    tokens_seen = 0
    step = 0
    elapsed_before = 0.0
    resumed_from = 0
    checkpoint_path = Path(checkpoint_dir) if checkpoint_dir is not None else None
    found = latest_checkpoint(checkpoint_path, fingerprint) if checkpoint_path else None
    if found is not None:
        # the trainable tensors are put back before any sharding (they are whole here)
        path, state = found
        named = dict(trainable_named)
        missing = sorted(set(named) - set(state["trainable"]))
        if missing:
            raise ValueError(f"{path}: checkpoint lacks trainable tensors {missing[:3]}")
        with torch.no_grad():
            for name, parameter in trainable_named:
                parameter.copy_(state["trainable"][name].to(parameter.device, parameter.dtype))

    train_model: torch.nn.Module = model
    if sharded:
        _init_process_group(device)
        train_model = shard_model(model)
        # fully_shard swaps the parameters for DTensor shards: collect them again, by name
        trainable_named = [
            (n, p)
            for n, p in model.named_parameters()
            if p.requires_grad and n in dict(trainable_named)
        ]
        trainable = [p for _, p in trainable_named]
    optimizer = torch.optim.AdamW(
        trainable, lr=learning_rate, weight_decay=weight_decay, foreach=True
    )
    if found is not None:
        path, state = found
        if sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                model,
                optimizer,
                optim_state_dict=state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            optimizer.load_state_dict(state["optimizer"])
        step = resumed_from = int(state["step"])
        history = list(state["history"])
        tokens_seen = int(state["tokens_seen"])
        elapsed_before = float(state.get("seconds", 0.0))
        _restore_rng(state["rng"], info.rank)
        if info.is_main:
            logger.info("resuming from %s (optimizer step %d of %d)", path, step, total_steps)

    if world_size > 1 and not sharded:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu")
        train_model, optimizer = accelerator.prepare(model, optimizer)
    if info.is_main:
        logger.info(
            "training %d parameters (%d tensors) on %d examples: %d epochs, effective batch %d "
            "(%d x %d accumulation x %d processes), %d optimizer steps, %d warmup",
            sum(p.numel() for p in trainable),
            len(trainable),
            len(encoded),
            epochs,
            global_micro * gradient_accumulation_steps,
            micro_batch_size,
            gradient_accumulation_steps,
            world_size,
            total_steps,
            warmup_steps,
        )
    rng = random.Random(seed)
    start = time.perf_counter()
    model.train()
    group_index = 0  # optimizer steps the data order has reached (replayed when resuming)
    done = step >= total_steps
    for epoch in range(epochs):
        if done:
            break
        batches = _epoch_batches(encoded, micro_batch_size=global_micro, rng=rng)
        for group_start in range(0, len(batches), gradient_accumulation_steps):
            if group_index < step:  # trained before the checkpoint: replay the order only
                group_index += 1
                continue
            group_index += 1
            group = batches[group_start : group_start + gradient_accumulation_steps]
            multiplier = linear_warmup_decay(
                step, total_steps=total_steps, warmup_steps=warmup_steps
            )
            for param_group in optimizer.param_groups:
                param_group["lr"] = learning_rate * multiplier
            sums: dict[str, float] = {}
            for micro_index, global_batch in enumerate(group):
                local, share = _local_share(
                    global_batch,
                    rank=info.rank,
                    world_size=world_size,
                    micro_batch_size=micro_batch_size,
                )
                batch = collate_encoded(local, pad_token_id=pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items() if k != "index"}
                tokens_seen += sum(len(item.input_ids) for item in global_batch)
                last_micro = micro_index == len(group) - 1
                if sharded:  # FSDP2: reduce-scatter the gradients on the last micro-step only
                    train_model.set_requires_gradient_sync(last_micro)
                sync = (
                    contextlib.nullcontext()
                    if world_size == 1 or last_micro or sharded
                    else train_model.no_sync()
                )
                with sync:
                    with torch.autocast(
                        device_type=device.type,
                        dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None,
                    ):
                        loss, metrics = compute_loss(train_model, batch)
                    # each micro-batch is a share of the step's batch
                    (loss * (share / len(group))).backward()
                weight = share / (len(group) * world_size)
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * weight
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * weight
            if world_size > 1:
                keys = sorted(sums)
                packed = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(packed)
                sums = dict(zip(keys, packed.tolist(), strict=True))
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % log_every == 0 or step == 1 or step == total_steps:
                record = {"step": step, "epoch": epoch, "lr": learning_rate * multiplier, **sums}
                history.append(record)
                if info.is_main:
                    logger.info(
                        "step %d/%d %s",
                        step,
                        total_steps,
                        " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"),
                    )
            if (
                checkpoint_path is not None
                and checkpoint_every > 0
                and step % checkpoint_every == 0
                and step < total_steps
            ):
                rng_states = _rng_states(world_size)  # collective: every process takes part
                # collectives too when sharded: every process gathers, the main one saves
                trainable_state = {name: _full_cpu(p) for name, p in trainable_named}
                optimizer_state = (
                    _full_optimizer_state(model, optimizer) if sharded else optimizer.state_dict()
                )
                if info.is_main:
                    saved = _save_checkpoint(
                        checkpoint_path,
                        {
                            "format": CHECKPOINT_FORMAT,
                            "fingerprint": fingerprint,
                            "step": step,
                            "trainable": trainable_state,
                            "optimizer": optimizer_state,
                            "history": history,
                            "tokens_seen": tokens_seen,
                            "seconds": elapsed_before + time.perf_counter() - start,
                            "rng": rng_states,
                        },
                        step=step,
                    )
                    logger.info("checkpoint %s", saved)
            if step >= total_steps:
                done = True
                break
    model.eval()
    return TrainResult(
        history=history,
        optimizer_steps=step,
        effective_batch_size=global_micro * gradient_accumulation_steps,
        tokens_seen=tokens_seen,
        seconds=round(elapsed_before + time.perf_counter() - start, 3),
        resumed_from_step=resumed_from,
        world_size=world_size,
    )
