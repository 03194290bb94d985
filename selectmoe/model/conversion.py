"""Convert an OLMoE checkpoint into a Select-MoE model and prove the conversion exact."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, OlmoeForCausalLM

from selectmoe.errors import ModelError
from selectmoe.io import atomic_output_dir, atomic_write_json
from selectmoe.model.configuration_select_moe import SelectMoeConfig
from selectmoe.model.modeling_select_moe import SelectMoeForCausalLM, register_select_moe
from selectmoe.model.source import require_model_source

__all__ = ["QUALITY_GATE_SUFFIX", "convert_olmoe", "verify_conversion"]

logger = logging.getLogger(__name__)

QUALITY_GATE_SUFFIX = "quality_gate.weight"


def _load_olmoe(source: str, *, dtype: torch.dtype | str) -> OlmoeForCausalLM:
    # a hub id is "org/name"; anything else that is not a directory is a missing local path
    config = require_model_source(source, what="model directory")
    if config.model_type != "olmoe":
        raise ModelError(
            f"{source}: model_type is {config.model_type!r}, expected 'olmoe'; "
            "give an OLMoE checkpoint"
        )
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)


def convert_olmoe(
    source: str,
    output_dir: str | os.PathLike[str],
    *,
    quality_gate_init_mean: float = 0.0,
    quality_gate_init_std: float = 0.02,
    trash_expert_mode: str = "zero",
    seed: int = 42,
) -> dict[str, Any]:
    """Copy every OLMoE weight into a :class:`SelectMoeForCausalLM` and add fresh quality gates.

    Parameters
    ----------
    source : str
        Local directory or hub id of an OLMoE causal-LM checkpoint.
    output_dir : path-like
        Written atomically: model (safetensors), config and the tokenizer when the source has one.
    quality_gate_init_mean, quality_gate_init_std : float
        The new gates are drawn from ``N(mean, std)`` with ``torch.manual_seed(seed)``.

    Returns
    -------
    dict
        ``n_copied`` tensors, ``n_new`` gate tensors, parameter counts.
    """
    register_select_moe()
    olmoe = _load_olmoe(source, dtype="auto")
    config_dict = olmoe.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
        config_dict.pop(key, None)
    config = SelectMoeConfig(
        **config_dict,
        quality_gate_init_mean=quality_gate_init_mean,
        quality_gate_init_std=quality_gate_init_std,
        trash_expert_mode=trash_expert_mode,
    )
    config.architectures = ["SelectMoeForCausalLM"]
    torch.manual_seed(seed)
    model = SelectMoeForCausalLM(config).to(next(olmoe.parameters()).dtype)
    source_state = olmoe.state_dict()
    missing, unexpected = model.load_state_dict(source_state, strict=False)
    new_keys = [k for k in missing if k.endswith(QUALITY_GATE_SUFFIX)]
    if unexpected or len(new_keys) != len(missing):
        raise ModelError(
            f"{source}: checkpoint does not match the OLMoE layout (unexpected: {unexpected[:3]}, "
            f"missing: {[k for k in missing if k not in new_keys][:3]})"
        )
    with atomic_output_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        try:
            AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        except (OSError, ValueError):
            logger.warning("%s has no tokenizer; the converted model is saved without one", source)
    summary = {
        "source": source,
        "n_copied": len(source_state),
        "n_new": len(new_keys),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_gate_parameters": sum(model.get_parameter(k).numel() for k in new_keys),
    }
    logger.info("converted %s: %s", source, summary)
    return summary


def verify_conversion(
    source: str,
    converted_dir: str | os.PathLike[str],
    *,
    output_json: str | os.PathLike[str] | None = None,
    tolerance: float = 1e-5,
    n_sequences: int = 2,
    sequence_length: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Prove a conversion exact.

    (a) every tensor of the source is bit-identical in the converted model; (b) with
    ``quality_gate_bypass`` (good = 1) the logits equal OLMoE's within ``tolerance`` in float32 on
    random token ids. Writes the report to ``output_json`` only when both hold.

    Raises
    ------
    ModelError
        When a tensor differs, is missing, or the logits differ by more than ``tolerance``.
    """
    register_select_moe()
    if not Path(converted_dir).is_dir():
        raise ModelError(
            f"{converted_dir}: converted model not found; run `selectmoe convert` first"
        )
    olmoe = _load_olmoe(source, dtype=torch.float32).eval()
    native_dtype = AutoConfig.from_pretrained(source).dtype
    converted_native = SelectMoeForCausalLM.from_pretrained(converted_dir, dtype=native_dtype)
    source_native = _load_olmoe(source, dtype=native_dtype)
    converted_state = converted_native.state_dict()
    mismatched = [
        name
        for name, tensor in source_native.state_dict().items()
        if name not in converted_state or not torch.equal(tensor, converted_state[name])
    ]
    del converted_native, source_native
    if mismatched:
        raise ModelError(
            f"{converted_dir}: {len(mismatched)} tensors differ from {source} "
            f"(first: {mismatched[0]}); "
            "re-run the conversion"
        )
    converted = SelectMoeForCausalLM.from_pretrained(converted_dir, dtype=torch.float32).eval()
    converted.config.quality_gate_bypass = True
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(
        0, olmoe.config.vocab_size, (n_sequences, sequence_length), generator=generator
    )
    with torch.no_grad():
        expected = olmoe(input_ids).logits
        actual = converted(input_ids).logits
    max_abs_diff = float((expected - actual).abs().max())
    report = {
        "source": source,
        "converted": os.fspath(converted_dir),
        "n_tensors_compared": len(converted_state) - converted.config.num_hidden_layers,
        "tensors_bit_identical": True,
        "logits_max_abs_diff": max_abs_diff,
        "tolerance": tolerance,
        "input_shape": list(input_ids.shape),
        "dtype": "float32",
        "passed": max_abs_diff <= tolerance,
    }
    if max_abs_diff > tolerance:
        raise ModelError(
            f"{converted_dir}: logits differ from {source} by {max_abs_diff:.3g} > {tolerance:g} "
            "with the gate forced open; the model code does not reproduce OLMoE"
        )
    if output_json is not None:
        atomic_write_json(output_json, report)
    logger.info("conversion verified: %s", report)
    return report
