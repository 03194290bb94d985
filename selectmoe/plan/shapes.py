"""Model shapes: the sizes of a decoder-only transformer (OLMoE / Select-MoE, Llama, Qwen2,
Qwen3) that fix its parameter count, exactly (the tests compare them with the real modules)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectmoe.errors import ConfigError, ModelError

# --------------------------------------------------------------------------------------- shapes


__all__ = [
    "BUILTIN_SHAPES",
    "ModelShape",
    "shape_for_model",
    "shape_from_config",
]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that fix its parameter count.

    Parameters
    ----------
    name : str
        Hub id or directory, for display.
    hidden_size, num_layers, num_heads, num_kv_heads : int
        ``H``, ``L``, query heads, key/value heads (grouped-query attention when fewer).
    intermediate_size : int
        ``I``: the MLP width, per expert for an MoE.
    vocab_size : int
        ``V``.
    tie_embeddings : bool
        The LM head shares the input embedding matrix.
    num_experts, experts_per_token : int
        ``E`` and top-``K`` of an MoE layer; ``0`` for a dense MLP.
    head_dim : int, optional
        Width of one head; ``H // num_heads`` when not given (Qwen3 gives it).
    qkv_bias, o_bias : bool
        Biases on the q/k/v and on the o projection (Qwen2: q/k/v only).
    qk_norm : {"none", "full", "per_head"}
        RMSNorm on the projected queries and keys: over all heads (OLMoE) or per head (Qwen3).
    mlp_bias : bool
        Biases on the dense MLP's projections (Llama's ``mlp_bias``).
    quality_gate : bool
        Select-MoE: a ``[1, H]`` quality gate per layer.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    num_experts: int = 0
    experts_per_token: int = 0
    head_dim: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: str = "none"
    mlp_bias: bool = False
    quality_gate: bool = False

    def __post_init__(self) -> None:
        if self.qk_norm not in ("none", "full", "per_head"):
            raise ConfigError(f"qk_norm is {self.qk_norm!r}; allowed: none, full, per_head")
        if self.is_moe and not 0 < self.experts_per_token <= self.num_experts:
            raise ConfigError(
                f"{self.name}: experts_per_token {self.experts_per_token} must be in "
                f"[1, num_experts={self.num_experts}]"
            )

    @property
    def is_moe(self) -> bool:
        """True for a sparse MoE MLP."""
        return self.num_experts > 0

    @property
    def head_width(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_width(self) -> int:
        """Output width of q_proj (all query heads)."""
        return self.num_heads * self.head_width

    @property
    def kv_width(self) -> int:
        """Output width of k_proj and of v_proj."""
        return self.num_kv_heads * self.head_width

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each dense projection of one layer, by module name."""
        h, i = self.hidden_size, self.intermediate_size
        shapes = {
            "q_proj": (h, self.q_width),
            "k_proj": (h, self.kv_width),
            "v_proj": (h, self.kv_width),
            "o_proj": (self.q_width, h),
        }
        if not self.is_moe:
            shapes.update({"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)})
        return shapes

    @property
    def attention_params_per_layer(self) -> int:
        """q/k/v/o weights and biases plus the q/k norms of one layer."""
        h, q, kv = self.hidden_size, self.q_width, self.kv_width
        weights = h * q + 2 * h * kv + q * h  # q, k, v, o
        biases = (self.q_width + 2 * self.kv_width) * self.qkv_bias + self.hidden_size * self.o_bias
        if self.qk_norm == "full":  # OLMoE: RMSNorm(hidden_size) on q, RMSNorm(kv width) on k
            norms = self.hidden_size + self.kv_width
        elif self.qk_norm == "per_head":  # Qwen3: RMSNorm(head_dim) on q and on k
            norms = 2 * self.head_width
        else:
            norms = 0
        return weights + biases + norms

    @property
    def mlp_dense_params_per_layer(self) -> int:
        """Gate/up/down weights (and biases) of a dense MLP; 0 for an MoE."""
        if self.is_moe:
            return 0
        h, i = self.hidden_size, self.intermediate_size
        return 3 * h * i + (2 * i + h) * self.mlp_bias

    @property
    def expert_params(self) -> int:
        """One expert's gate, up and down projection (SwiGLU)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def router_params_per_layer(self) -> int:
        """The MoE router ``[E, H]`` plus the Select-MoE quality gate ``[1, H]``."""
        return (self.num_experts + self.quality_gate) * self.hidden_size

    @property
    def mlp_params_per_layer(self) -> int:
        """All MLP parameters of one layer (every expert of an MoE, router and gate included)."""
        if self.is_moe:
            return self.num_experts * self.expert_params + self.router_params_per_layer
        return self.mlp_dense_params_per_layer

    @property
    def embedding_params(self) -> int:
        """Input embedding ``[V, H]``."""
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """LM head ``[V, H]``; 0 extra parameters when tied to the embedding."""
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        """Every parameter, as ``sum(p.numel() for p in model.parameters())`` counts them."""
        per_layer = (
            self.attention_params_per_layer
            + self.mlp_params_per_layer
            + 2 * self.hidden_size  # input and post-attention RMSNorm
        )
        final_norm = self.hidden_size
        return (
            self.num_layers * per_layer + self.embedding_params + self.lm_head_params + final_norm
        )

    @property
    def active_params_per_token(self) -> int:
        """Parameters one token uses: all but the experts it is not routed to.

        Counted like the published "active" figures (embedding and LM head included).
        """
        idle_experts = self.num_experts - self.experts_per_token if self.is_moe else 0
        return self.total_params - self.num_layers * idle_experts * self.expert_params

    def matmul_params_per_token(self, *, lm_head: bool = True) -> int:
        """Weights one token multiplies through (``FLOPs = 2 x`` this per forward).

        The embedding lookup and the norms do no matmul; the LM head counts even when tied.
        """
        per_layer = sum(a * b for a, b in self.linear_shapes().values())  # attention, dense MLP
        if self.is_moe:
            per_layer += self.experts_per_token * self.expert_params
            per_layer += self.router_params_per_layer
        head = self.vocab_size * self.hidden_size if lm_head else 0
        return self.num_layers * per_layer + head

    def linear_weight_params(self) -> int:
        """Weights of the layers' dense projections (attention, dense MLP) and the LM head."""
        per_layer = sum(a * b for a, b in self.linear_shapes().values())
        return self.num_layers * per_layer + self.vocab_size * self.hidden_size

    def lora_params(self, rank: int, modules: Sequence[str]) -> int:
        """LoRA ``A [r, in]`` and ``B [out, r]`` on the named projections of every layer.

        Raises
        ------
        ConfigError
            When a module is not a projection of this architecture.
        """
        shapes = self.linear_shapes()
        unknown = [m for m in modules if m not in shapes]
        if unknown:
            raise ConfigError(
                f"finetune.target_modules {unknown} are not projections of {self.name}; "
                f"valid: {', '.join(shapes)}"
            )
        return self.num_layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in modules)


# The published config.json values of the paper's models (hub ids as in config/paper.yaml):
# allenai/OLMoE-1B-7B-0125: hidden 2048, 16 layers, 16 heads (16 kv), intermediate 1024 per
#   expert, 64 experts, top-8, vocab 50304, untied, no attention bias, qk-norm over all heads;
# meta-llama/Llama-2-7b-hf: hidden 4096, 32 layers, 32 heads (32 kv), intermediate 11008,
#   vocab 32000, untied, no biases;
# Qwen/Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads, 2 kv heads, intermediate 8960,
#   vocab 151936, tied, biases on q/k/v;
# Qwen/Qwen3-1.7B-Base: hidden 2048, 28 layers, 16 heads, 8 kv heads, head_dim 128,
#   intermediate 6144, vocab 151936, tied, no biases, per-head q/k RMSNorm.
BUILTIN_SHAPES: dict[str, ModelShape] = {
    "allenai/OLMoE-1B-7B-0125": ModelShape(
        name="allenai/OLMoE-1B-7B-0125",
        hidden_size=2048,
        num_layers=16,
        num_heads=16,
        num_kv_heads=16,
        intermediate_size=1024,
        vocab_size=50304,
        tie_embeddings=False,
        num_experts=64,
        experts_per_token=8,
        qk_norm="full",
    ),
    "meta-llama/Llama-2-7b-hf": ModelShape(
        name="meta-llama/Llama-2-7b-hf",
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        tie_embeddings=False,
    ),
    "Qwen/Qwen2.5-1.5B": ModelShape(
        name="Qwen/Qwen2.5-1.5B",
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        tie_embeddings=True,
        qkv_bias=True,
    ),
    "Qwen/Qwen3-1.7B-Base": ModelShape(
        name="Qwen/Qwen3-1.7B-Base",
        hidden_size=2048,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        intermediate_size=6144,
        vocab_size=151936,
        tie_embeddings=True,
        head_dim=128,
        qk_norm="per_head",
    ),
}

_MOE_TYPES = ("olmoe", "select_moe")
_DENSE_TYPES = ("llama", "qwen2", "qwen3")


def shape_from_config(config: Mapping[str, Any], *, name: str = "") -> ModelShape:
    """The :class:`ModelShape` of a Hugging Face ``config.json`` (as a dict).

    Parameters
    ----------
    config : mapping
        The parsed ``config.json`` (or ``PretrainedConfig.to_dict()``) of an ``olmoe``,
        ``select_moe``, ``llama``, ``qwen2`` or ``qwen3`` model.
    name : str
        Display name (default: the config's ``_name_or_path`` or its model type).

    Raises
    ------
    ModelError
        For another ``model_type`` or a missing size key.
    """
    model_type = config.get("model_type")
    if model_type not in _MOE_TYPES + _DENSE_TYPES:
        raise ModelError(
            f"{name or 'config'}: model_type {model_type!r} is not supported by the plan; "
            f"supported: {', '.join(_MOE_TYPES + _DENSE_TYPES)}"
        )
    try:
        heads = int(config["num_attention_heads"])
        common: dict[str, Any] = {
            "name": name or config.get("_name_or_path") or model_type,
            "hidden_size": int(config["hidden_size"]),
            "num_layers": int(config["num_hidden_layers"]),
            "num_heads": heads,
            "num_kv_heads": int(config.get("num_key_value_heads") or heads),
            "intermediate_size": int(config["intermediate_size"]),
            "vocab_size": int(config["vocab_size"]),
            "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
            "head_dim": config.get("head_dim"),
        }
        if model_type in _MOE_TYPES:
            bias = bool(config.get("attention_bias", False))
            return ModelShape(
                **common,
                num_experts=int(config["num_experts"]),
                experts_per_token=int(config["num_experts_per_tok"]),
                qkv_bias=bias,
                o_bias=bias,
                qk_norm="full",
                quality_gate=model_type == "select_moe",
            )
    except KeyError as error:
        raise ModelError(f"{name or 'config'}: config.json has no {error.args[0]!r}") from None
    if model_type == "qwen2":  # Qwen2Attention: bias on q/k/v, never on o
        return ModelShape(**common, qkv_bias=True, o_bias=False)
    bias = bool(config.get("attention_bias", False))
    return ModelShape(
        **common,
        qkv_bias=bias,
        o_bias=bias,
        qk_norm="per_head" if model_type == "qwen3" else "none",
        mlp_bias=bool(config.get("mlp_bias", False)),
    )


def shape_for_model(source: str) -> ModelShape:
    """The shape of a hub id with a built-in shape, or of a local model directory.

    Raises
    ------
    ModelError
        When ``source`` is neither a built-in hub id nor a directory with a ``config.json``.
    """
    if source in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[source]
    config_path = Path(source) / "config.json"
    if config_path.is_file():
        return shape_from_config(json.loads(config_path.read_text(encoding="utf-8")), name=source)
    raise ModelError(
        f"{source}: no built-in shape and no {config_path}; use one of "
        f"{', '.join(BUILTIN_SHAPES)} or a local model directory (build the demo first)"
    )
