"""The warmup's weights file (``full_rank_weights.pt``): its tensors applied to the converted
model, whose warmed gates and routers (or their LoRA adapters) then score the pool."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from selectmoe.errors import ModelError
from selectmoe.model.modeling_select_moe import (
    SelectMoeForCausalLM,
    register_select_moe,
)
from selectmoe.model.source import require_finite_weights

__all__ = ["PEFT_MODES", "QUALITY_GATE_TARGET", "apply_router_lora", "load_warmed_model"]

PEFT_MODES: tuple[str, ...] = ("full_rank", "lora")


QUALITY_GATE_TARGET = "quality_gate.weight"


def apply_router_lora(
    model: SelectMoeForCausalLM, lora_config: dict[str, Any]
) -> tuple[torch.nn.Module, list[str]]:
    """Wrap ``model`` with LoRA adapters on its router weights; quality gates stay trainable.

    Returns
    -------
    peft_model : torch.nn.Module
        The peft-wrapped model; only the adapters and the quality gates require gradients.
    adapted : list of str
        Names of the adapted modules (one per MoE layer for the default targets).

    Raises
    ------
    ModelError
        When no parameter matches ``target_parameters``.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import ParamWrapper

    try:
        peft_model = get_peft_model(model, LoraConfig(**lora_config))
    except ValueError as error:
        raise ModelError(
            f"LoRA on {lora_config.get('target_parameters')}: {error}; "
            "name parameters such as mlp.gate.weight"
        ) from None
    adapted = sorted(
        {name for name, module in peft_model.named_modules() if isinstance(module, ParamWrapper)}
    )
    if not adapted:
        raise ModelError(
            f"LoRA target_parameters {lora_config.get('target_parameters')} match no parameter "
            "of the model; the OLMoE router weight is mlp.gate.weight"
        )
    for name, parameter in peft_model.named_parameters():
        if name.endswith(QUALITY_GATE_TARGET):
            parameter.requires_grad_(True)
    return peft_model, adapted


def load_warmed_model(
    model_dir: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[SelectMoeForCausalLM, dict[str, Any]]:
    """A converted model with the warmup's weights and config overrides applied.

    Raises
    ------
    ModelError
        When the weights file is missing, malformed, or names tensors the model does not have.
    """
    register_select_moe()
    if not os.path.isfile(weights_path):
        raise ModelError(f"{weights_path}: warmup weights not found; run the warmup stage first")
    try:
        payload = torch.load(weights_path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise ModelError(
            f"{weights_path}: cannot be read as warmup weights ({type(error).__name__}); "
            "re-run the warmup stage"
        ) from None
    if not isinstance(payload, dict) or "weights" not in payload or "peft_mode" not in payload:
        raise ModelError(
            f"{weights_path}: not a warmup weights file (missing 'weights'/'peft_mode')"
        )
    require_finite_weights(payload["weights"], path=weights_path, rerun="warmup")
    if payload["peft_mode"] not in PEFT_MODES:
        raise ModelError(
            f"{weights_path}: peft_mode {payload['peft_mode']!r} is not one of "
            f"{', '.join(PEFT_MODES)}"
        )
    # load and merge in float32, then cast: a LoRA update is not rounded twice
    try:
        model = SelectMoeForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"{model_dir}: cannot load the converted model ({str(error).splitlines()[0][:200]}); "
            "re-run the convert stage"
        ) from None
    trained_model: torch.nn.Module = model
    if payload["peft_mode"] == "lora":
        if "lora_config" not in payload:
            raise ModelError(f"{weights_path}: peft_mode 'lora' but no 'lora_config' saved")
        trained_model, _ = apply_router_lora(model, payload["lora_config"])
    params = dict(trained_model.named_parameters())
    unknown = [name for name in payload["weights"] if name not in params]
    if unknown:
        raise ModelError(f"{weights_path}: tensors not in {model_dir}: {unknown[:3]}")
    missing = [name for name in params if "lora_" in name and name not in payload["weights"]]
    if missing:
        raise ModelError(f"{weights_path}: LoRA tensors missing: {missing[:3]}")
    with torch.no_grad():
        for name, tensor in payload["weights"].items():
            if tensor.shape != params[name].shape:
                raise ModelError(
                    f"{weights_path}: {name} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)
    if payload["peft_mode"] == "lora":
        model = trained_model.merge_and_unload()
    model = model.to(dtype)
    for key, value in payload.get("config", {}).get("model_overrides", {}).items():
        setattr(model.config, key, value)
    model.eval()
    return model, payload
