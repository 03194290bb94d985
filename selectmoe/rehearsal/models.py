"""Tiny random-weight checkpoints of the paper's models: the same architecture classes, config keys,
dtypes and file layouts as the Hub checkpoints, with every size shrunk.

=================================== ================== ======== ===========================
paper model                         class              dtype    files (as on the Hub)
=================================== ================== ======== ===========================
allenai/OLMoE-1B-7B-0125            OlmoeForCausalLM   bfloat16 sharded safetensors + index
meta-llama/Llama-2-7b-hf            LlamaForCausalLM   float16  sharded safetensors + index,
                                                                SentencePiece tokenizer.model
Qwen/Qwen2.5-1.5B                   Qwen2ForCausalLM   bfloat16 one model.safetensors, tied
                                                                embeddings, real Qwen vocabulary
Qwen/Qwen3-1.7B-Base                Qwen3ForCausalLM   bfloat16 sharded safetensors + index,
                                                                tied, real Qwen vocabulary
=================================== ================== ======== ===========================

What is kept of each real config: the config class's keys, the special-token ids' roles (no pad
token in Llama-2, eos as pad in Qwen, pad 1 in OLMoE), ``max_position_embeddings``, rope base,
grouped-query attention (fewer key/value heads than heads where the real model has them), tied
embeddings, the router's top-k below the expert count, and the Qwen models' full 151,936-row
embedding. What is shrunk: hidden size, layers, heads, experts, intermediate sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["REHEARSAL_MODELS", "RehearsalModel", "save_tiny_model"]


@dataclass(frozen=True)
class RehearsalModel:
    """One tiny stand-in: where the real one lives, its class and how it is saved."""

    hub_id: str
    architecture: str
    dtype: str
    #: a shard size that splits the tiny weights into several files like the real checkpoint;
    #: None saves one model.safetensors
    max_shard_size: str | None
    #: the tokenizer kind (:mod:`selectmoe.rehearsal.tokenizers`)
    tokenizer: str
    #: ``tokenizer_class`` of the real ``tokenizer_config.json`` where the saved one differs
    tokenizer_class: str | None = None


#: name in the rehearsal -> the model it stands in for
REHEARSAL_MODELS: dict[str, RehearsalModel] = {
    "olmoe-1b-7b-0125": RehearsalModel(
        "allenai/OLMoE-1B-7B-0125", "OlmoeForCausalLM", "bfloat16", "60KB", "gpt_neox_like"
    ),
    "llama-2-7b-hf": RehearsalModel(
        "meta-llama/Llama-2-7b-hf", "LlamaForCausalLM", "float16", "60KB", "sentencepiece_llama"
    ),
    "qwen2.5-1.5b": RehearsalModel(
        "Qwen/Qwen2.5-1.5B", "Qwen2ForCausalLM", "bfloat16", None, "qwen_real", "Qwen2Tokenizer"
    ),
    "qwen3-1.7b-base": RehearsalModel(
        "Qwen/Qwen3-1.7B-Base", "Qwen3ForCausalLM", "bfloat16", "4MB", "qwen_real", "Qwen2Tokenizer"
    ),
}

_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}


def _config(name: str, tokenizer: Any) -> Any:
    """The tiny config of ``name``: the real model's non-shape values, shapes shrunk."""
    from transformers import LlamaConfig, OlmoeConfig, Qwen2Config, Qwen3Config

    if name == "olmoe-1b-7b-0125":
        # OlmoeConfig's defaults are OLMoE-1B-7B's; 0125 keeps them (rope 10,000, no qk clip)
        return OlmoeConfig(
            **_SHAPE,
            vocab_size=len(tokenizer),
            intermediate_size=16,
            num_key_value_heads=4,
            num_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=False,
        )
    if name == "llama-2-7b-hf":
        return LlamaConfig(
            **_SHAPE,
            vocab_size=len(tokenizer),
            intermediate_size=64,
            num_key_value_heads=4,  # Llama-2-7B has no grouped-query attention
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            tie_word_embeddings=False,
        )
    qwen = {
        "vocab_size": 151936,  # the real embedding: 151,646 tokens padded to a multiple of 128
        "intermediate_size": 64,
        "num_key_value_heads": 2,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "tie_word_embeddings": True,
        **_SHAPE,
    }
    if name == "qwen2.5-1.5b":
        return Qwen2Config(**qwen, max_position_embeddings=131072, use_sliding_window=False)
    if name == "qwen3-1.7b-base":
        return Qwen3Config(**qwen, head_dim=8, max_position_embeddings=32768)
    raise KeyError(f"no rehearsal model {name!r} (known: {', '.join(REHEARSAL_MODELS)})")


def save_tiny_model(name: str, tokenizer: Any, directory: Path, *, seed: int) -> dict[str, Any]:
    """Save the tiny random-weight stand-in ``name`` with ``tokenizer`` into ``directory``.

    Returns
    -------
    dict
        ``hub_id``, ``architecture``, ``dtype``, ``parameters`` and ``files`` (names written).
    """
    import torch
    import transformers

    spec = REHEARSAL_MODELS[name]
    config = _config(name, tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.architecture)(config).to(getattr(torch, spec.dtype))
    kwargs = {"max_shard_size": spec.max_shard_size} if spec.max_shard_size else {}
    # a size far beyond the tiny model keeps the one-file layout
    model.save_pretrained(directory, **(kwargs or {"max_shard_size": "10GB"}))
    tokenizer.save_pretrained(directory)
    if spec.tokenizer_class:
        tokenizer_config = directory / "tokenizer_config.json"
        values = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        values["tokenizer_class"] = spec.tokenizer_class
        tokenizer_config.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    return {
        "hub_id": spec.hub_id,
        "architecture": spec.architecture,
        "dtype": spec.dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "files": sorted(p.name for p in directory.iterdir()),
    }
