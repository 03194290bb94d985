"""Stage 3: LoRA finetuning of the target model on the selected data (assistant-only labels)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selectmoe.data.encoding import encode_examples, pad_token_id_of
from selectmoe.data.pool import Example, iter_jsonl_records, parse_record
from selectmoe.errors import ConfigError, DataError
from selectmoe.io import atomic_output_dir, atomic_write_json
from selectmoe.model.losses import causal_lm_loss
from selectmoe.model.source import require_model_source
from selectmoe.schema import section_defaults
from selectmoe.training.checkpoints import clear_checkpoints, settings_fingerprint
from selectmoe.training.distributed import (
    SHARDING_MODES,
    distributed_info,
    full_model_state,
    resolve_device,
)
from selectmoe.training.loop import (
    Optimization,
    accumulation_steps,
    check_batch_sizes,
    seed_everything,
    train_loop,
)
from selectmoe.training.lora import LoraTrainingSettings, attach_lora

__all__ = [
    "FinetuneSettings",
    "load_selected_examples",
    "run_finetune",
]

logger = logging.getLogger(__name__)


_FINETUNE_DEFAULTS = section_defaults("finetune")


@dataclass
class FinetuneSettings(LoraTrainingSettings):
    """Stage-3 settings; defaults as in LESS (SPEC §5)."""

    weight_decay: float = _FINETUNE_DEFAULTS["weight_decay"]
    gradient_checkpointing: bool = _FINETUNE_DEFAULTS["gradient_checkpointing"]
    sharding: str = _FINETUNE_DEFAULTS["sharding"]
    sample_wise_averaging: bool = _FINETUNE_DEFAULTS["sample_wise_averaging"]
    mask_special_tokens: bool = _FINETUNE_DEFAULTS["mask_special_tokens"]
    seed: int = 42
    log_every: int = _FINETUNE_DEFAULTS["log_every"]
    max_steps: int | None = _FINETUNE_DEFAULTS["max_steps"]
    checkpoint_every: int = _FINETUNE_DEFAULTS["checkpoint_every"]
    device: str = _FINETUNE_DEFAULTS["device"]

    def __post_init__(self) -> None:
        for key in ("per_device_batch_size", "effective_batch_size", "epochs", "lora_r"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune.{key} is {getattr(self, key)}; it must be >= 1")
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"finetune.checkpoint_every is {self.checkpoint_every}; use 0 (never) or more"
            )
        if self.sharding not in SHARDING_MODES:
            raise ConfigError(
                f"finetune.sharding is {self.sharding!r}; allowed: {', '.join(SHARDING_MODES)}"
            )
        check_batch_sizes(self.effective_batch_size, self.per_device_batch_size, section="finetune")


def load_selected_examples(path: str | os.PathLike[str]) -> list[Example]:
    """Read ``selected_data.jsonl`` (LESS fields plus score and cluster), validating each line.

    Raises :class:`DataError` naming the file and the line on a bad line (see
    :func:`selectmoe.data.pool.iter_jsonl_records` and :func:`selectmoe.data.pool.parse_record`).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: selected data not found; run the select stage first")
    examples = [
        parse_record(record, os.fspath(path), line_number, None)
        for line_number, record in iter_jsonl_records(path)
    ]
    if not examples:
        raise DataError(f"{path}: no selected examples; the selection is empty")
    return examples


def run_finetune(
    *,
    base_model: str,
    selected_data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    settings: FinetuneSettings,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """LoRA-finetune ``base_model`` on the selected examples and save the PEFT adapter.

    Checkpoints go to ``checkpoint_dir`` (default ``{output_dir}.checkpoints``) every
    ``settings.checkpoint_every`` optimizer steps; a killed run resumes from the newest one, and
    they are removed once the adapter is written. Under ``accelerate launch`` with several
    processes the main process writes the adapter.

    The adapter directory (written atomically) holds ``adapter_config.json``,
    ``adapter_model.safetensors`` and ``training_log.json`` (settings, history, derived numbers).
    A tokenizer without a pad token pads with its eos token: padded positions are masked out of
    attention and loss, so no embedding has to be added and the base weights stay as they are.
    """
    examples = load_selected_examples(selected_data)  # fail fast, before loading a large model
    require_model_source(base_model, what="target model")
    info = distributed_info()
    if checkpoint_dir is None:
        checkpoint_dir = Path(f"{os.fspath(output_dir).rstrip('/')}.checkpoints")
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    use_bf16 = settings.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    # bf16 runs keep the frozen base in bf16 (half the memory of a 7B model); the LoRA weights,
    # their gradients and optimizer states stay float32 (peft casts the adapters up)
    base_dtype = torch.bfloat16 if use_bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=base_dtype).to(device)
    if settings.gradient_checkpointing:
        # recompute each layer's activations in the backward pass instead of keeping them:
        # activation memory of one layer instead of all, for about a third more compute
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = attach_lora(model, settings)
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=False,
        mask_special_tokens=settings.mask_special_tokens,
        max_sequence_length=settings.max_sequence_length,
        template=settings.template,
    )
    encoded = [item for item in encoded if item.n_label_tokens > 0]
    if not encoded:
        raise DataError(
            f"{selected_data}: no example keeps an assistant token within "
            f"max_sequence_length={settings.max_sequence_length}"
        )
    micro = settings.per_device_batch_size
    per_step = micro * info.world_size  # examples per accumulation micro-step, all processes
    accumulation = accumulation_steps(
        settings.effective_batch_size, micro, section="finetune", world_size=info.world_size
    )
    # a selection smaller than the effective batch would make a single step; shrink the
    # accumulation so that every epoch still takes at least one full step of real examples
    accumulation = max(1, min(accumulation, math.ceil(len(encoded) / per_step)))

    def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = causal_lm_loss(logits, batch["labels"], sample_wise=settings.sample_wise_averaging)
        return loss, {}

    fingerprint = settings_fingerprint(
        "finetune",
        settings,
        examples=[(e.dataset, e.id) for e in examples],
        base_model=base_model,
        world_size=info.world_size,
    )
    result = train_loop(
        model,
        encoded,
        parameters=model.parameters(),
        compute_loss=compute_loss,
        pad_token_id=pad_token_id_of(tokenizer),
        optimization=Optimization.of(
            settings, micro_batch_size=micro, gradient_accumulation_steps=accumulation
        ),
        seed=settings.seed,
        device=device,
        autocast_dtype=torch.bfloat16 if use_bf16 else None,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=settings.checkpoint_every,
        fingerprint=fingerprint,
        sharding=settings.sharding,
    )
    log = {
        "base_model": base_model,
        "selected_data": os.fspath(selected_data),
        "n_examples": len(encoded),
        "settings": asdict(settings),
        "gradient_accumulation_steps_used": accumulation,
        "bf16": use_bf16,
        **result,
    }
    # a sharded model's weights are gathered whole first (every process takes part)
    sharded = info.world_size > 1 and settings.sharding == "fsdp"
    state_dict = full_model_state(model) if sharded else None
    if info.is_main:
        with atomic_output_dir(output_dir) as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)
            atomic_write_json(Path(tmp) / "training_log.json", log)
        clear_checkpoints(checkpoint_dir)
        logger.info("adapter saved to %s after %d steps", output_dir, result["optimizer_steps"])
    return log
