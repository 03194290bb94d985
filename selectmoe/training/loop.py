"""The training loop shared by the warmup and finetune stages, readable top to bottom.

A run is: plan the schedule, resume from the newest checkpoint of the same run, wrap the model
for several processes, then for every optimizer step set the learning rate, run the
accumulation micro-steps (:func:`accumulation_step`), clip, step, log and now and then save a
checkpoint. Randomness comes only from the ``seed`` argument.

**Checkpoints** (:mod:`selectmoe.training.checkpoints`). With ``checkpoint_dir`` the loop saves,
every
``checkpoint_every`` optimizer steps, the trainable tensors, the optimizer state, the
random-number states and the :class:`~selectmoe.training.checkpoints.TrainState`. A new run with
the same
``fingerprint`` resumes from the newest readable checkpoint and replays the data order, so an
interrupted and resumed run ends with the same weights as an uninterrupted one.

**Several processes** (:mod:`selectmoe.training.distributed`). Started under ``accelerate launch``
(or
``torchrun``) with ``WORLD_SIZE > 1``, the loop wraps the model in DDP through ``accelerate`` or,
with ``sharding="fsdp"``, shards it with FSDP2; every process draws the same global micro-batch
of ``micro_batch_size * world_size`` examples and trains on its own slice, so the effective batch
is ``micro_batch_size * gradient_accumulation_steps * world_size``. Only the main process logs
and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selectmoe.data.encoding import EncodedExample, collate_encoded
from selectmoe.errors import ConfigError, TrainingError
from selectmoe.training.checkpoints import TrainState, latest_checkpoint
from selectmoe.training.distributed import (
    SHARDING_MODES,
    DistributedInfo,
    distributed_info,
    full_cpu_copy,
    full_optimizer_state,
    gather_rng_states,
    init_process_group,
    local_share,
    restore_rng,
    shard_model,
)

__all__ = [
    "Optimization",
    "TrainResult",
    "accumulation_step",
    "accumulation_steps",
    "check_batch_sizes",
    "linear_schedule",
    "seed_everything",
    "train_loop",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Optimization:
    """The optimisation settings of a training run, the same for warmup and finetune.

    ``micro_batch_size`` and ``gradient_accumulation_steps`` are per process; the effective batch
    is their product times the number of processes. AdamW with ``weight_decay``, a linear warmup
    over ``warmup_ratio`` of the steps then linear decay, gradients clipped at ``max_grad_norm``
    (None: no clipping); ``max_steps`` stops early (the schedule spans them); a history entry
    every ``log_every`` steps.
    """

    learning_rate: float
    epochs: int
    micro_batch_size: int
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None
    log_every: int = 10

    @classmethod
    def of(
        cls, settings: Any, *, micro_batch_size: int, gradient_accumulation_steps: int
    ) -> Optimization:
        """The optimisation part of a stage's settings (``WarmupSettings``,
        ``FinetuneSettings``): the same names, and no weight decay where they have none."""
        return cls(
            learning_rate=settings.learning_rate,
            epochs=settings.epochs,
            micro_batch_size=micro_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            warmup_ratio=settings.warmup_ratio,
            weight_decay=getattr(settings, "weight_decay", 0.0),
            max_steps=settings.max_steps,
            log_every=settings.log_every,
        )


def check_batch_sizes(effective: int, per_device: int, *, section: str) -> None:
    """``effective_batch_size`` must be a whole number of ``per_device_batch_size`` batches."""
    if effective % per_device:
        raise ConfigError(
            f"{section}.effective_batch_size ({effective}) must be a multiple of "
            f"{section}.per_device_batch_size ({per_device})"
        )


def accumulation_steps(
    effective: int, per_device: int, *, section: str, world_size: int | None = None
) -> int:
    """Micro-steps per optimizer step: ``effective / (per_device * processes)``.

    The config names the batch once for warmup and finetune: ``per_device_batch_size`` (one
    process's micro-batch) and ``effective_batch_size`` (the whole optimizer step, all processes
    and accumulation micro-steps together).
    """
    processes = distributed_info().world_size if world_size is None else world_size
    per_step = per_device * processes  # examples per accumulation micro-step, all processes
    if effective % per_step:
        raise ConfigError(
            f"{section}.effective_batch_size ({effective}) is not a multiple "
            f"of per_device_batch_size x processes ({per_device} x {processes})"
        )
    return effective // per_step


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python's ``random`` for code using the global generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def linear_schedule(*, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier of optimizer step ``step`` (0-based), transformers' own
    ``get_linear_schedule_with_warmup`` as LESS's and open-instruct's trainers use it: ``step /
    warmup_steps`` during the warmup (0 at the first step), then linear decay to 0 at
    ``total_steps``.

    The schedule's function is taken from a scheduler built on a throwaway optimizer, so the
    training optimizer is not touched and a resumed run recomputes every step's rate.
    """
    from transformers import get_linear_schedule_with_warmup

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_linear_schedule_with_warmup(probe, warmup_steps, total_steps)
    return scheduler.lr_lambdas[0]


#: ``(epoch, mean_learning_rate, trainable_named, optimizer) -> None``: see :func:`train_loop`.
EpochEndFn = Callable[[int, float, list[tuple[str, torch.nn.Parameter]], Any], None]


class TrainResult(dict):
    """History and derived numbers of a run (a dict so that it serialises as it is)."""


def _epoch_batches(
    encoded: Sequence[EncodedExample], *, micro_batch_size: int, rng: random.Random
) -> list[list[EncodedExample]]:
    order = list(range(len(encoded)))
    rng.shuffle(order)
    return [
        [encoded[i] for i in order[start : start + micro_batch_size]]
        for start in range(0, len(order), micro_batch_size)
    ]


def accumulation_step(
    model: torch.nn.Module,
    group: Sequence[Sequence[EncodedExample]],
    *,
    compute_loss: LossFn,
    micro_batch_size: int,
    pad_token_id: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    info: DistributedInfo,
    sharded: bool,
) -> tuple[dict[str, float], int]:
    """Forward and backward over the global micro-batches of one optimizer step.

    Each process takes its slice of every global micro-batch; the losses are scaled so that the
    gradients (averaged over processes by DDP / FSDP) are those of the mean over the step's whole
    batch, and synchronised on the last micro-step only.

    Returns
    -------
    metrics : dict of str to float
        ``loss`` and ``compute_loss``'s metrics, this process's share of their step mean.
    tokens : int
        The tokens of the step's global batch.
    """
    world_size = info.world_size
    sums: dict[str, float] = {}
    tokens = 0
    for micro_index, global_batch in enumerate(group):
        local, share = local_share(
            global_batch, rank=info.rank, world_size=world_size, micro_batch_size=micro_batch_size
        )
        batch = collate_encoded(local, pad_token_id=pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items() if k != "index"}
        tokens += sum(len(item.input_ids) for item in global_batch)
        last_micro = micro_index == len(group) - 1
        if sharded:  # FSDP2: reduce-scatter the gradients on the last micro-step only
            model.set_requires_gradient_sync(last_micro)
        sync = (
            contextlib.nullcontext()
            if world_size == 1 or last_micro or sharded
            else model.no_sync()
        )
        with sync:
            with torch.autocast(
                device_type=device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                loss, metrics = compute_loss(model, batch)
            (loss * (share / len(group))).backward()  # a micro-batch is a share of the step
        weight = share / (len(group) * world_size)
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * weight
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * weight
    return sums, tokens


def _all_reduce_metrics(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """The sum over processes of each metric (every process's share adds to the step mean)."""
    keys = sorted(sums)
    packed = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(packed)
    return dict(zip(keys, packed.tolist(), strict=True))


def train_loop(
    model: torch.nn.Module,
    encoded: Sequence[EncodedExample],
    *,
    parameters: Iterable[torch.nn.Parameter],
    compute_loss: LossFn,
    optimization: Optimization,
    seed: int,
    pad_token_id: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    fingerprint: str = "",
    sharding: str = "ddp",
    on_epoch_end: EpochEndFn | None = None,
) -> TrainResult:
    """Train ``parameters`` of ``model`` on ``encoded`` (see the module docstring).

    Parameters
    ----------
    compute_loss : callable
        ``(model, batch) -> (loss, metrics)``; ``batch`` holds ``input_ids``, ``labels``,
        ``attention_mask`` ``[B, T]`` on ``device``; ``metrics`` are floats to log. ``model`` may
        be the DDP-wrapped model: call it, do not read its attributes.
    optimization : Optimization
        Learning rate, schedule, batch and accumulation, clipping, logging.
    checkpoint_dir, checkpoint_every, fingerprint
        Save a checkpoint every ``checkpoint_every`` optimizer steps and resume from the newest
        one with the same ``fingerprint`` (0: neither) (see
        :func:`selectmoe.training.checkpoints.run_fingerprint`).
    sharding : {"ddp", "fsdp"}
        With several processes: replicate the model (DDP through accelerate) or shard it with
        torch's ``fully_shard`` (FSDP2), per decoder layer and at the root
        (:func:`selectmoe.training.distributed.shard_model`). Checkpoints then hold gathered
        tensors.

    Returns
    -------
    TrainResult
        ``history`` (one dict per logged step: step, epoch, lr, loss and the metrics),
        ``optimizer_steps``, ``effective_batch_size``, ``tokens_seen``, ``seconds``,
        ``resumed_from_step`` (0 for a fresh run), ``world_size``.
    """
    opt = optimization
    info = distributed_info()
    world_size = info.world_size
    if sharding not in SHARDING_MODES:
        raise ValueError(f"sharding is {sharding!r}; valid: {', '.join(SHARDING_MODES)}")
    sharded = world_size > 1 and sharding == "fsdp"
    requested = {id(p) for p in parameters if p.requires_grad}
    trainable_named = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) in requested
    ]
    if not trainable_named:
        raise ValueError("no trainable parameters: check the target patterns / LoRA settings")

    # the schedule
    global_micro = opt.micro_batch_size * world_size
    steps_per_epoch = math.ceil(
        math.ceil(len(encoded) / global_micro) / opt.gradient_accumulation_steps
    )
    total_steps = steps_per_epoch * opt.epochs
    if opt.max_steps is not None:
        total_steps = min(total_steps, opt.max_steps)
    warmup_steps = math.ceil(opt.warmup_ratio * total_steps)  # as transformers' Trainer
    multiplier_at = linear_schedule(total_steps=total_steps, warmup_steps=warmup_steps)

    # resume: the trainable tensors go back before any sharding (they are whole here)
    checkpoint_path = (
        Path(checkpoint_dir) if checkpoint_dir is not None and checkpoint_every > 0 else None
    )
    found = latest_checkpoint(checkpoint_path, fingerprint) if checkpoint_path else None
    state = TrainState()
    if found is not None:
        path, saved = found
        missing = sorted(set(dict(trainable_named)) - set(saved["trainable"]))
        if missing:
            raise ValueError(f"{path}: checkpoint lacks trainable tensors {missing[:3]}")
        with torch.no_grad():
            for name, parameter in trainable_named:
                parameter.copy_(saved["trainable"][name].to(parameter.device, parameter.dtype))

    # several processes: shard (FSDP2) or replicate (DDP) the model
    train_model: torch.nn.Module = model
    if sharded:
        init_process_group(device)
        train_model = shard_model(model)
        # fully_shard swaps the parameters for DTensor shards: collect them again, by name
        names = dict(trainable_named)
        trainable_named = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad and n in names
        ]
    trainable = [p for _, p in trainable_named]
    optimizer = torch.optim.AdamW(
        trainable, lr=opt.learning_rate, weight_decay=opt.weight_decay, foreach=True
    )
    if found is not None:
        path, saved = found
        _load_optimizer_state(model, optimizer, saved["optimizer"], sharded=sharded)
        state = TrainState.from_checkpoint(saved)
        restore_rng(saved["rng"], info.rank)
        if info.is_main:
            logger.info("resuming from %s (optimizer step %d of %d)", path, state.step, total_steps)
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
            opt.epochs,
            global_micro * opt.gradient_accumulation_steps,
            opt.micro_batch_size,
            opt.gradient_accumulation_steps,
            world_size,
            total_steps,
            warmup_steps,
        )

    rng = random.Random(seed)
    start = time.perf_counter()
    model.train()
    steps_drawn = 0  # optimizer steps the data order has reached (replayed when resuming)
    for epoch in range(opt.epochs):
        if state.step >= total_steps:
            break
        batches = _epoch_batches(encoded, micro_batch_size=global_micro, rng=rng)
        trained_in_epoch = False
        for group_start in range(0, len(batches), opt.gradient_accumulation_steps):
            steps_drawn += 1
            if steps_drawn <= state.step:  # trained before the checkpoint: replay the order only
                continue
            trained_in_epoch = True
            group = batches[group_start : group_start + opt.gradient_accumulation_steps]
            multiplier = multiplier_at(state.step)
            for param_group in optimizer.param_groups:
                param_group["lr"] = opt.learning_rate * multiplier
            sums, tokens = accumulation_step(
                train_model,
                group,
                compute_loss=compute_loss,
                micro_batch_size=opt.micro_batch_size,
                pad_token_id=pad_token_id,
                device=device,
                autocast_dtype=autocast_dtype,
                info=info,
                sharded=sharded,
            )
            if world_size > 1:
                sums = _all_reduce_metrics(sums, device)
            # the norm before clipping (an infinite bound measures without clipping); every rank
            # sees the same reduced loss and gradients, so every rank stops together
            bound = opt.max_grad_norm if opt.max_grad_norm is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, bound)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2's norm is a DTensor
                grad_norm = grad_norm.full_tensor()
            grad_norm = float(grad_norm)
            _stop_if_not_finite(state, loss=sums["loss"], grad_norm=grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += tokens
            if state.step % opt.log_every == 0 or state.step in (1, total_steps):
                record = {
                    "step": state.step,
                    "epoch": epoch,
                    "lr": opt.learning_rate * multiplier,
                    **sums,
                }
                state.history.append(record)
                if info.is_main:
                    logger.info(
                        "step %d/%d %s",
                        state.step,
                        total_steps,
                        " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"),
                    )
            if (
                checkpoint_path is not None
                and checkpoint_every > 0
                and state.step % checkpoint_every == 0
                and state.step < total_steps
            ):
                _checkpoint(
                    state,
                    checkpoint_path,
                    model=model,
                    optimizer=optimizer,
                    trainable_named=trainable_named,
                    fingerprint=fingerprint,
                    seconds=time.perf_counter() - start,
                    info=info,
                    sharded=sharded,
                )
            if state.step >= total_steps:
                break
        if on_epoch_end is not None and trained_in_epoch:
            first = epoch * steps_per_epoch
            steps = range(first, min(first + steps_per_epoch, total_steps))
            multipliers = [multiplier_at(s) for s in steps]
            mean_lr = opt.learning_rate * sum(multipliers) / max(1, len(multipliers))
            on_epoch_end(epoch, mean_lr, trainable_named, optimizer)
    model.eval()
    return TrainResult(
        history=state.history,
        optimizer_steps=state.step,
        effective_batch_size=global_micro * opt.gradient_accumulation_steps,
        tokens_seen=state.tokens_seen,
        seconds=round(state.seconds_before + time.perf_counter() - start, 3),
        resumed_from_step=state.resumed_from,
        world_size=world_size,
    )


def _stop_if_not_finite(state: TrainState, *, loss: float, grad_norm: float) -> None:
    """Raise :class:`TrainingError` before a non-finite loss or gradient reaches the weights."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    origin = (
        f"resumed from the checkpoint of step {state.resumed_from}"
        if state.resumed_from
        else "trained from the start"
    )
    raise TrainingError(
        f"step {state.step + 1}: loss {loss:.6g}, gradient norm {grad_norm:.6g} is not finite "
        f"({origin}); nothing is written. Lower the learning rate, check the data of this step, "
        "or delete the run's checkpoints if one of them is damaged"
    )


def _load_optimizer_state(
    model: torch.nn.Module, optimizer: Any, saved: dict[str, Any], *, sharded: bool
) -> None:
    """Put a checkpoint's optimizer state back (whole, into the shards when sharded)."""
    if not sharded:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=saved, options=StateDictOptions(full_state_dict=True)
    )


def _checkpoint(
    state: TrainState,
    directory: Path,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    trainable_named: list[tuple[str, torch.nn.Parameter]],
    fingerprint: str,
    seconds: float,
    info: DistributedInfo,
    sharded: bool,
) -> None:
    """Gather what a checkpoint holds (collectives: every process calls this) and let the main
    process save it."""
    rng = gather_rng_states(info.world_size)
    trainable = {name: full_cpu_copy(p) for name, p in trainable_named}
    optimizer_state = full_optimizer_state(model, optimizer) if sharded else optimizer.state_dict()
    if info.is_main:
        saved = state.save(
            directory,
            fingerprint=fingerprint,
            trainable=trainable,
            optimizer=optimizer_state,
            rng=rng,
            seconds=seconds,
        )
        logger.info("checkpoint %s", saved)
