"""LoRA adapters on a target and their optimisation settings, shared by finetuning and LESS's
warmup."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from selectmoe.data.encoding import DEFAULT_TEMPLATE
from selectmoe.schema import section_defaults

__all__ = ["LoraTrainingSettings", "attach_lora"]


_FINETUNE_DEFAULTS = section_defaults("finetune")


@dataclass
class LoraTrainingSettings:
    """LoRA on a target and its optimisation, LESS's defaults: the part of the settings that
    finetuning and LESS's warmup (:class:`selectmoe.stages.less.LessSettings`) share."""

    lora_r: int = _FINETUNE_DEFAULTS["lora_r"]
    lora_alpha: float = _FINETUNE_DEFAULTS["lora_alpha"]
    lora_dropout: float = _FINETUNE_DEFAULTS["lora_dropout"]
    target_modules: list[str] = field(
        default_factory=lambda: list(_FINETUNE_DEFAULTS["target_modules"])
    )
    learning_rate: float = _FINETUNE_DEFAULTS["learning_rate"]
    epochs: int = _FINETUNE_DEFAULTS["epochs"]
    effective_batch_size: int = _FINETUNE_DEFAULTS["effective_batch_size"]
    per_device_batch_size: int = _FINETUNE_DEFAULTS["per_device_batch_size"]
    warmup_ratio: float = _FINETUNE_DEFAULTS["warmup_ratio"]
    max_sequence_length: int = _FINETUNE_DEFAULTS["max_sequence_length"]
    bf16: bool = _FINETUNE_DEFAULTS["bf16"]
    template: str = DEFAULT_TEMPLATE  # data.template, the chat template's ending


def attach_lora(model: torch.nn.Module, settings: LoraTrainingSettings) -> torch.nn.Module:
    """``model`` with fresh LoRA adapters of ``settings`` (peft; the base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
