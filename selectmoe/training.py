"""Pieces shared by the training stages (warmup, finetune) and inference (scoring).

The loop is deliberately plain (nanoGPT style): learning rate, accumulation micro-steps, clip,
step, log. Randomness comes only from the ``seed`` argument.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from selectmoe.data import EncodedExample, collate_encoded

__all__ = [
    "TrainResult",
    "length_sorted_batches",
    "linear_warmup_decay",
    "require_model_source",
    "resolve_device",
    "seed_everything",
    "train_loop",
]

logger = logging.getLogger(__name__)


def require_model_source(source: str, *, what: str) -> None:
    """Fail early unless ``source`` is an existing directory or looks like a hub id ("org/name").

    Raises
    ------
    ModelError
        Naming ``what`` (e.g. "target model") and the path.
    """
    from selectmoe.errors import ModelError

    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/"))
    if not os.path.isdir(source) and not looks_like_hub_id:
        raise ModelError(f"{source}: {what} not found; build the demo or fix the path")


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _epoch_batches(
    encoded: Sequence[EncodedExample], *, micro_batch_size: int, rng: random.Random
) -> list[list[EncodedExample]]:
    order = list(range(len(encoded)))
    rng.shuffle(order)
    return [
        [encoded[i] for i in order[start : start + micro_batch_size]]
        for start in range(0, len(order), micro_batch_size)
    ]


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
) -> TrainResult:
    """Train ``parameters`` of ``model`` on ``encoded`` with AdamW and a linear schedule.

    Parameters
    ----------
    compute_loss : callable
        ``(model, batch) -> (loss, metrics)``; ``batch`` holds ``input_ids``, ``labels``,
        ``attention_mask`` ``[B, T]`` on ``device``; ``metrics`` are floats to log.
    micro_batch_size, gradient_accumulation_steps : int
        The effective batch is their product (per optimizer step).
    max_steps : int, optional
        Stop after this many optimizer steps (the schedule still spans all epochs).

    Returns
    -------
    TrainResult
        ``history`` (one dict per logged step: step, epoch, lr, loss and the metrics),
        ``optimizer_steps``, ``effective_batch_size``, ``tokens_seen``, ``seconds``.
    """
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: check the target patterns / LoRA settings")
    steps_per_epoch = math.ceil(
        math.ceil(len(encoded) / micro_batch_size) / gradient_accumulation_steps
    )
    total_steps = steps_per_epoch * epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    warmup_steps = math.ceil(warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    logger.info(
        "training %d parameters (%d tensors) on %d examples: %d epochs, effective batch %d "
        "(%d x %d accumulation), %d optimizer steps, %d warmup",
        sum(p.numel() for p in trainable),
        len(trainable),
        len(encoded),
        epochs,
        micro_batch_size * gradient_accumulation_steps,
        micro_batch_size,
        gradient_accumulation_steps,
        total_steps,
        warmup_steps,
    )
    rng = random.Random(seed)
    history: list[dict[str, Any]] = []
    tokens_seen = 0
    step = 0
    start = time.perf_counter()
    model.train()
    done = False
    for epoch in range(epochs):
        batches = _epoch_batches(encoded, micro_batch_size=micro_batch_size, rng=rng)
        for group_start in range(0, len(batches), gradient_accumulation_steps):
            group = batches[group_start : group_start + gradient_accumulation_steps]
            multiplier = linear_warmup_decay(
                step, total_steps=total_steps, warmup_steps=warmup_steps
            )
            for param_group in optimizer.param_groups:
                param_group["lr"] = learning_rate * multiplier
            sums: dict[str, float] = {}
            for micro in group:
                batch = collate_encoded(micro, pad_token_id=pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items() if k != "index"}
                tokens_seen += int(batch["attention_mask"].sum())
                with torch.autocast(
                    device_type=device.type,
                    dtype=autocast_dtype or torch.float32,
                    enabled=autocast_dtype is not None,
                ):
                    loss, metrics = compute_loss(model, batch)
                # each micro-batch is a share of the step's batch
                (loss / len(group)).backward()
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / len(group)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) / len(group)
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % log_every == 0 or step == 1 or step == total_steps:
                record = {"step": step, "epoch": epoch, "lr": learning_rate * multiplier, **sums}
                history.append(record)
                logger.info(
                    "step %d/%d %s",
                    step,
                    total_steps,
                    " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("step",)),
                )
            if step >= total_steps:
                done = True
                break
        if done:
            break
    model.eval()
    return TrainResult(
        history=history,
        optimizer_steps=step,
        effective_batch_size=micro_batch_size * gradient_accumulation_steps,
        tokens_seen=tokens_seen,
        seconds=round(time.perf_counter() - start, 3),
    )
