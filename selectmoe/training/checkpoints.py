"""Training checkpoints: where a run stands, saved every few optimizer steps and restored by a
resumed run.

A checkpoint holds the trainable tensors (gathered whole when sharded), the optimizer state,
every process's random states and the :class:`TrainState` (step, history, tokens, seconds). It
carries the run's *fingerprint* (:func:`run_fingerprint`: settings, model and data ids); a run
resumes only from its own, from the newest intact one. Saves are atomic and keep the newest
two; the data order is not saved but replayed from the seed up to the saved step.

Each checkpoint has a digest sidecar (:func:`selectmoe.hashing.write_digest_sidecar`), checked
before it is loaded: a checkpoint whose bytes changed since it was written (bit rot, a
half-synced network filesystem, a disk error inside a tensor record, which ``torch.load`` reads
without complaint) is logged with both digests and passed over for the next older one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selectmoe.hashing import (
    DIGEST_SUFFIX,
    DigestMismatch,
    check_digest_sidecar,
    text_sha256,
    write_digest_sidecar,
)
from selectmoe.io import atomic_torch_save
from selectmoe.training.distributed import distributed_info

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainState",
    "clear_checkpoints",
    "latest_checkpoint",
    "run_fingerprint",
    "save_checkpoint",
    "settings_fingerprint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "selectmoe-train-checkpoint-v1"
_CHECKPOINT_GLOB = "step_*.pt"


def run_fingerprint(**parts: Any) -> str:
    """A short hash of everything that determines a training run (settings, model, data ids).

    Checkpoints carry it; a run only resumes from checkpoints with its own fingerprint.
    """
    return text_sha256(json.dumps(parts, sort_keys=True, default=str))[:16]


#: Settings that do not change what is trained: a run resumes across changes of these.
NOT_IN_FINGERPRINT: tuple[str, ...] = ("log_every", "device", "checkpoint_every")


def settings_fingerprint(stage: str, settings: Any, *, examples: list, **parts: Any) -> str:
    """:func:`run_fingerprint` of a stage's settings dataclass (less :data:`NOT_IN_FINGERPRINT`),
    the ``(dataset, id)`` of its examples and ``parts`` (model, world size)."""
    semantic = {
        k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_IN_FINGERPRINT
    }
    return run_fingerprint(stage=stage, settings=semantic, examples=examples, **parts)


def latest_checkpoint(
    checkpoint_dir: str | os.PathLike[str], fingerprint: str
) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint of this run in ``checkpoint_dir``, or None.

    Files whose content differs from their digest sidecar (or that have none), that cannot be
    read, or that belong to another run are skipped with a warning naming the file.
    """
    directory = Path(checkpoint_dir)
    for path in sorted(directory.glob(_CHECKPOINT_GLOB), reverse=True):
        try:
            check_digest_sidecar(path)
        except DigestMismatch as error:
            logger.warning("checkpoint damaged: %s; trying an older one", error)
            continue
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


def save_checkpoint(
    checkpoint_dir: Path, state: dict[str, Any], *, step: int, keep: int = 2
) -> Path:
    """Write ``state`` as ``step_{step}.pt`` (atomically) with its digest sidecar and keep the
    newest ``keep``."""
    path = checkpoint_dir / f"step_{step:09d}.pt"
    atomic_torch_save(state, path)
    write_digest_sidecar(path)
    for old in sorted(checkpoint_dir.glob(_CHECKPOINT_GLOB), reverse=True)[keep:]:
        old.unlink(missing_ok=True)
        Path(os.fspath(old) + DIGEST_SUFFIX).unlink(missing_ok=True)
    return path


@dataclass
class TrainState:
    """Where a run stands: the optimizer steps taken, the logged history, the tokens seen and
    the training seconds of the runs it resumes. A checkpoint is this state and the tensors."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    tokens_seen: int = 0
    seconds_before: float = 0.0
    resumed_from: int = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> TrainState:
        """The state a checkpoint saved (its step becomes ``resumed_from``)."""
        step = int(checkpoint["step"])
        return cls(
            step=step,
            history=list(checkpoint["history"]),
            tokens_seen=int(checkpoint["tokens_seen"]),
            seconds_before=float(checkpoint.get("seconds", 0.0)),
            resumed_from=step,
        )

    def save(
        self,
        checkpoint_dir: Path,
        *,
        fingerprint: str,
        trainable: dict[str, torch.Tensor],
        optimizer: dict[str, Any],
        rng: list[dict[str, Any]],
        seconds: float,
    ) -> Path:
        """Save this state with the run's tensors, optimizer state and random states."""
        return save_checkpoint(
            checkpoint_dir,
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "step": self.step,
                "trainable": trainable,
                "optimizer": optimizer,
                "history": self.history,
                "tokens_seen": self.tokens_seen,
                "seconds": self.seconds_before + seconds,
                "rng": rng,
            },
            step=self.step,
        )
