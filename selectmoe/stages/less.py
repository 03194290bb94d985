"""LESS (Xia et al., 2024): a short LoRA warmup of the target, then per-example gradient features
of the LoRA weights at each of its checkpoints.

* :func:`run_less_warmup`: LoRA on a seeded random share of every pool dataset (5% by default),
  one checkpoint per epoch (4 by default): the LoRA weights, AdamW's moments and the epoch's mean
  learning rate (the checkpoint's weight in the score), in ``checkpoint-{epoch}.pt``.
* :func:`run_less_gradients`: for one pool dataset (Adam-normalised gradients) or the query set
  (plain gradients), per checkpoint, the per-example gradients of the LoRA weights
  (:func:`selectmoe.training.gradients.per_example_gradients`, batched and exact), projected to
  ``projection_dim`` with a seeded Rademacher matrix. They are written in shards of
  ``shard_size`` examples beside the output; a killed job keeps its finished shards and resumes
  after them to the same features; the shards are removed once the features file is written.

The gradients are taken in eval mode (no LoRA dropout), as LESS's script loads its checkpoints
(for inference), so that they do not depend on a random mask and a resumed job is exact. The
scores are in :mod:`selectmoe.selection.targeted`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from selectmoe.data.encoding import (
    collate_encoded,
    encode_examples,
    length_sorted_batches,
    pad_token_id_of,
)
from selectmoe.data.pool import Example, load_pool, subset_examples
from selectmoe.data.queries import QUERY_TEMPLATE, load_queries
from selectmoe.errors import ConfigError, DataError, IntegrityError
from selectmoe.hashing import (
    DigestMismatch,
    check_digest_sidecar,
    text_sha256,
    write_digest_sidecar,
)
from selectmoe.io import atomic_output_dir, atomic_torch_save, atomic_write_json
from selectmoe.model.losses import causal_lm_loss
from selectmoe.model.source import require_model_source
from selectmoe.schema import default_seed, section_defaults
from selectmoe.selection.targeted import save_features
from selectmoe.training.distributed import resolve_device
from selectmoe.training.gradients import (
    PROJECTIONS,
    adam_update_direction,
    flat_moments,
    per_example_gradients,
)
from selectmoe.training.loop import Optimization, accumulation_steps, seed_everything, train_loop
from selectmoe.training.lora import LoraTrainingSettings, attach_lora

__all__ = [
    "LessSettings",
    "checkpoint_files",
    "lora_target_model",
    "run_less_gradients",
    "run_less_warmup",
]

logger = logging.getLogger(__name__)


_TARGETED_LESS_DEFAULTS = section_defaults("targeted.less")


@dataclass
class LessSettings(LoraTrainingSettings):
    """``targeted.less`` of the config (defaults: LESS's): the LoRA warmup (the LoRA and
    optimisation fields of :class:`~selectmoe.training.lora.LoraTrainingSettings`, an effective
    batch
    of 32), the share of the pool it trains on, and the gradient features."""

    effective_batch_size: int = _TARGETED_LESS_DEFAULTS["effective_batch_size"]
    warmup_share: float = _TARGETED_LESS_DEFAULTS["warmup_share"]
    projection_dim: int = _TARGETED_LESS_DEFAULTS["projection_dim"]
    projection: str = _TARGETED_LESS_DEFAULTS["projection"]
    batch_size: int = _TARGETED_LESS_DEFAULTS["batch_size"]
    shard_size: int = _TARGETED_LESS_DEFAULTS["shard_size"]
    device: str = _TARGETED_LESS_DEFAULTS["device"]
    seed: int = field(default_factory=default_seed)

    def __post_init__(self) -> None:
        if not 0 < self.warmup_share <= 1:
            raise ConfigError(
                f"targeted.less.warmup_share is {self.warmup_share}; it must be in (0, 1]"
            )
        for key in ("epochs", "lora_r", "projection_dim", "batch_size", "shard_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"targeted.less.{key} is {getattr(self, key)}; it must be >= 1")
        if self.projection not in PROJECTIONS:
            raise ConfigError(
                f"targeted.less.projection is {self.projection!r}; use one of "
                f"{', '.join(PROJECTIONS)}"
            )


def checkpoint_files(warmup_dir: str | os.PathLike[str], epochs: int) -> list[Path]:
    """The warmup's checkpoint files, one per epoch."""
    return [Path(warmup_dir) / f"checkpoint-{epoch}.pt" for epoch in range(1, epochs + 1)]


def lora_target_model(base_model: str, settings: LessSettings, device: torch.device):
    """The target with fresh LoRA adapters (float32 on CPU, bf16 base on a bf16 GPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_model_source(base_model, what="target model")
    use_bf16 = settings.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(
        base_model,
        dtype=torch.bfloat16 if use_bf16 else torch.float32,
        # eager attention: torch.func's vmap has batching rules for its every operation
        attn_implementation="eager",
    ).to(device)
    return attach_lora(model, settings), tokenizer, use_bf16


def run_less_warmup(
    *,
    base_model: str,
    pool_paths: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    settings: LessSettings,
) -> dict[str, Any]:
    """Train LoRA on ``warmup_share`` of the pool and write one checkpoint per epoch.

    ``output_dir`` (written atomically) holds ``checkpoint-{epoch}.pt`` (``trainable``,
    ``exp_avg``, ``exp_avg_sq``: name -> tensor; ``learning_rate``: the epoch's mean) and
    ``warmup.json`` (settings, examples, history).
    """
    pool = load_pool(pool_paths)
    examples = subset_examples(pool, ratio=settings.warmup_share, seed=settings.seed)
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    model, tokenizer, use_bf16 = lora_target_model(base_model, settings, device)
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=False,
        max_sequence_length=settings.max_sequence_length,
        template=settings.template,
    )
    encoded = [item for item in encoded if item.n_label_tokens > 0]
    if not encoded:
        raise DataError("no warmup example keeps an assistant token; raise max_sequence_length")
    micro = settings.per_device_batch_size
    accumulation = accumulation_steps(
        settings.effective_batch_size, micro, section="targeted.less", world_size=1
    )
    accumulation = max(1, min(accumulation, math.ceil(len(encoded) / micro)))

    def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return causal_lm_loss(logits, batch["labels"], sample_wise=False), {}

    with atomic_output_dir(output_dir) as tmp:

        def save_epoch(epoch: int, mean_lr: float, trainable_named, optimizer) -> None:
            state = optimizer.state
            atomic_torch_save(
                {
                    "epoch": epoch + 1,
                    "learning_rate": mean_lr,
                    "trainable": {n: p.detach().cpu().clone() for n, p in trainable_named},
                    "exp_avg": {n: state[p]["exp_avg"].cpu().clone() for n, p in trainable_named},
                    "exp_avg_sq": {
                        n: state[p]["exp_avg_sq"].cpu().clone() for n, p in trainable_named
                    },
                },
                Path(tmp) / f"checkpoint-{epoch + 1}.pt",
            )
            write_digest_sidecar(Path(tmp) / f"checkpoint-{epoch + 1}.pt")
            logger.info("epoch %d: checkpoint (mean learning rate %.3g)", epoch + 1, mean_lr)

        result = train_loop(
            model,
            encoded,
            parameters=model.parameters(),
            compute_loss=compute_loss,
            pad_token_id=pad_token_id_of(tokenizer),
            optimization=Optimization(
                learning_rate=settings.learning_rate,
                epochs=settings.epochs,
                micro_batch_size=micro,
                gradient_accumulation_steps=accumulation,
                warmup_ratio=settings.warmup_ratio,
            ),
            seed=settings.seed,
            device=device,
            autocast_dtype=torch.bfloat16 if use_bf16 else None,
            on_epoch_end=save_epoch,
        )
        log = {
            "base_model": base_model,
            "settings": asdict(settings),
            "examples": [[e.dataset, e.id] for e in examples],
            "gradient_accumulation_steps_used": accumulation,
            **result,
        }
        atomic_write_json(Path(tmp) / "warmup.json", log)
    return log


def _fingerprint(**parts: Any) -> str:
    return text_sha256(json.dumps(parts, sort_keys=True, default=str))


def _shard_plan(batch_sizes: Sequence[int], shard_size: int) -> list[list[int]]:
    """Consecutive batches grouped into shards of at most ``shard_size`` examples (a batch
    larger than that is a shard of its own): the batch indices of every shard."""
    shards: list[list[int]] = [[]]
    held = 0
    for index, size in enumerate(batch_sizes):
        if shards[-1] and held + size > shard_size:
            shards.append([])
            held = 0
        shards[-1].append(index)
        held += size
    return [shard for shard in shards if shard]


def _open_shard_dir(shard_dir: Path, fingerprint: str) -> None:
    """Keep the shards of a run with the same ``fingerprint``; discard any others."""
    stamp = shard_dir / "fingerprint.txt"
    if shard_dir.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)


def _intact_checkpoint(path: Path) -> str:
    """The SHA-256 of a LESS warmup checkpoint that equals its sidecar's, else one clear error."""
    try:
        return check_digest_sidecar(path)
    except DigestMismatch as error:
        raise IntegrityError(
            f"{error}; the LESS warmup is damaged: rerun rule less_warmup"
        ) from None


def _intact_shard(path: Path) -> bool:
    """Whether a gradient shard equals its sidecar (a damaged one is logged and recomputed)."""
    try:
        check_digest_sidecar(path)
    except DigestMismatch as error:
        logger.warning("gradient shard damaged: %s; computing it again", error)
        return False
    return True


def _load_lora(
    model: torch.nn.Module, names: Sequence[str], trainable: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Put a checkpoint's LoRA weights into ``model``; return them by name, detached (what
    :func:`selectmoe.training.gradients.per_example_gradients` differentiates)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            parameters[name].copy_(trainable[name])
    return {name: parameters[name].detach() for name in names}


def run_less_gradients(
    *,
    base_model: str,
    warmup_dir: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: LessSettings,
    queries: bool = False,
) -> dict[str, Any]:
    """Write the projected gradient features of one pool dataset file (Adam-normalised) or of
    the query file (``queries``: plain gradients), ``[epochs, N, projection_dim]``.

    Shards go to ``{output}.shards/`` (with the fingerprint of the inputs and settings: shards of
    another run are discarded); a rerun after a kill computes only the missing ones.
    """
    from selectmoe.data.pool import load_jsonl_examples

    query_set = load_queries(data_path) if queries else None
    examples: list[Example] = query_set.examples if query_set else load_jsonl_examples(data_path)
    if queries:  # rendered as LESS renders its validation sets
        settings = replace(settings, template=QUERY_TEMPLATE)
    checkpoints = checkpoint_files(warmup_dir, settings.epochs)
    missing = [str(p) for p in checkpoints if not p.is_file()]
    if missing:
        raise DataError(
            f"{warmup_dir}: LESS warmup checkpoints missing ({', '.join(missing)}); rerun "
            "less_warmup with the same targeted.less.epochs"
        )
    device = resolve_device(settings.device)
    start = time.perf_counter()
    model, tokenizer, _ = lora_target_model(base_model, settings, device)
    model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=False,
        max_sequence_length=settings.max_sequence_length,
        template=settings.template,
    )
    batches = length_sorted_batches(encoded, batch_size=settings.batch_size)
    shards = _shard_plan([len(batch) for batch in batches], settings.shard_size)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projection = PROJECTIONS[settings.projection](n_params, settings.projection_dim, settings.seed)
    shard_dir = Path(f"{os.fspath(output)}.shards")
    fingerprint = _fingerprint(
        data=[(e.dataset, e.id) for e in examples],
        checkpoints=[_intact_checkpoint(p) for p in checkpoints],
        settings=asdict(settings),
        queries=queries,
        projection=projection.describe(device.type),
    )
    _open_shard_dir(shard_dir, fingerprint)
    pad_id = pad_token_id_of(tokenizer)
    # the features gather in a file-backed tensor beside the shards: the page cache holds them,
    # not the job's own memory (a pool dataset's [4, 100k, 8192] float32 would be 13 GB)
    shape = (len(checkpoints), len(encoded), settings.projection_dim)
    features = torch.from_file(
        str(shard_dir / "features.f32"), shared=True, size=math.prod(shape), dtype=torch.float32
    ).view(shape)
    weights: list[float] = []
    computed = 0
    for c, path in enumerate(checkpoints):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        weights.append(float(saved["learning_rate"]))
        params = _load_lora(model, names, saved["trainable"])
        moments = None
        if not queries:  # training examples: LESS's Adam-normalised gradient
            moments = flat_moments(names, saved["exp_avg"], saved["exp_avg_sq"])
            moments = (moments[0].to(device), moments[1].to(device))
        for k, shard in enumerate(shards):
            shard_path = shard_dir / f"checkpoint{c + 1}-shard{k:05d}.pt"
            if shard_path.is_file() and not _intact_shard(shard_path):
                shard_path.unlink()
            if not shard_path.is_file():
                rows, vectors = [], []
                for b in shard:
                    batch = collate_encoded(batches[b], pad_token_id=pad_id)
                    grads = per_example_gradients(
                        model, params, batch["input_ids"].to(device), batch["labels"].to(device)
                    )
                    if moments is not None:
                        grads = adam_update_direction(grads, *moments)
                    vectors.append(projection.project(grads).cpu())
                    rows.append(batch["index"])
                atomic_torch_save(
                    {"rows": torch.cat(rows), "features": torch.cat(vectors)}, shard_path
                )
                write_digest_sidecar(shard_path)
                computed += 1
            part = torch.load(shard_path, map_location="cpu", weights_only=True)
            features[c, part["rows"]] = part["features"]
    seconds = time.perf_counter() - start
    save_features(
        output,
        kind="gradients",
        features=features,
        sample_ids=[e.id for e in examples],
        datasets=[e.dataset for e in examples],
        checkpoint_weights=weights,
        tasks=query_set.tasks if query_set else None,
        subtasks=query_set.subtasks if query_set else None,
        model=base_model,
        signature=f"{base_model} LoRA warmup {warmup_dir}; {projection.describe(device.type)}",
        settings=asdict(settings),
    )
    shutil.rmtree(shard_dir, ignore_errors=True)
    logger.info(
        "%d examples x %d checkpoints: %d LoRA parameters -> %d dimensions (%d of %d shards "
        "computed, the rest resumed) in %.1f s -> %s",
        len(examples),
        len(checkpoints),
        n_params,
        settings.projection_dim,
        computed,
        len(shards) * len(checkpoints),
        seconds,
        output,
    )
    return {
        "n_examples": len(examples),
        "n_params": n_params,
        "shards_computed": computed,
        "shards": len(shards) * len(checkpoints),
        "seconds": seconds,
    }
