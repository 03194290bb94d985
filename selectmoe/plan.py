"""GPU memory and time of every stage at paper scale, computed from the model shapes.

``selectmoe plan --configfile config/paper.yaml`` prints the table; :func:`plan_table` returns it.
Everything here is arithmetic on the models' ``config.json`` values and the workflow config; no
model is loaded and no GPU is needed. The numbers are **estimates**: the memory model counts the
tensors the stage's code keeps alive at its peak, the time model counts matmul FLOPs and divides
by an assumed sustained throughput. Every assumption is a named field of :class:`Assumptions`.

Parameter counts (:class:`ModelShape`)
    Exact for the supported architectures (OLMoE / Select-MoE, Llama, Qwen2, Qwen3): the tests
    compare them with ``sum(p.numel())`` of the real transformers modules.

Memory per stage (bytes, then GiB)
    *weights* in the dtype the stage's code loads them in, *trainable* tensors with their
    gradients and AdamW's two float32 moments, *activations* that autograd saves for the backward
    pass (training) or that are live at once (inference), the *logits* of the loss, and a
    fixed CUDA context plus a fragmentation share of the caching allocator. The saved-activation
    formula follows Korthikanti et al. (2022, "Reducing Activation Recomputation in Large
    Transformer Models", §4): list the tensors every layer keeps for the backward pass, per token.
    Here the list is the one of *this* code path (PyTorch SDPA, so no ``T x T`` score matrix;
    frozen weights, so the inputs of frozen linear layers are not kept; RMSNorm upcasts to
    float32), and the tests check it against the tensors autograd really saves on tiny models.

Time per job (seconds)
    ``FLOPs / (peak FLOP/s of the dtype x mfu)`` with the usual ``2 x matmul params`` FLOPs per
    token and forward pass. Training passes cost ``2 N`` (forward) ``+ 2 N`` (gradient with respect
    to the activations, needed wherever a gradient flows, frozen weights included) ``+ 2 N_train``
    (gradients of the trainable weights only): about ``4 N`` instead of the ``6 N`` of full
    training, because the base weights are frozen in both warmup and LoRA finetuning. Gradient
    checkpointing adds one more forward. Token counts come from the pool size, an assumed mean
    example length and the config's ratios, epochs and selection percentages. Token generation
    in evaluation is bound by memory bandwidth and is timed as one read of the weights per step.

Targeted methods (rows only when ``selection.methods`` has them)
    ``rds``: *represent*, one inference pass of the targeted model (``targeted.model`` or the
    first target's) over every pool dataset and the query set. ``less``: *less_warmup*, LoRA
    training as in finetuning on ``targeted.less.warmup_share`` of the pool, and
    *less_gradients*, per-example LoRA gradients at each epoch's checkpoint, randomly projected
    to ``projection_dim`` (``2 P d`` float32 FLOPs per example for ``P`` LoRA parameters).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

from selectmoe.errors import ConfigError, ModelError
from selectmoe.selection.allocation import CLUSTERED_ALLOCATIONS
from selectmoe.selection.methods import TARGETED_METHODS, method_definitions, uses_score
from selectmoe.workflow.sweep import FULL, sweep_selections

__all__ = [
    "BUILTIN_SHAPES",
    "LESS_POOL_SIZES",
    "TARGETED_DEFAULTS",
    "Assumptions",
    "LoraTraining",
    "ModelShape",
    "StagePlan",
    "evaluate_plan",
    "finetune_plan",
    "format_plan_markdown",
    "less_gradients_plan",
    "less_warmup_plan",
    "load_config",
    "lora_pass",
    "lora_training",
    "plan_table",
    "represent_plan",
    "score_plan",
    "select_plan",
    "shape_for_model",
    "shape_from_config",
    "warmup_plan",
]

GIB = 2**30
HOUR = 3600.0
TERA = 1e12

# bytes per element of the dtypes the stages use
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = DTYPE_BYTES["float32"]
INDEX_BYTES = 8  # int64 routing indices
MASK_BYTES = 1  # torch.bool: dropout masks on CUDA, SDPA's padding mask
# answer tokens per LM-head chunk in scoring (selectmoe.stages.scoring's chunk_tokens default;
# tests/test_plan.py checks them against each other)
SCORING_CHUNK_TOKENS = 1024
ADAMW_STATE_BYTES = 2 * FP32  # exp_avg and exp_avg_sq, float32, per trainable parameter
# AdamW keeps float32 master weights and gradients for the trainable tensors (LoRA adapters are
# float32 under peft even on a bf16 base; the warmup trains in float32)
TRAINABLE_BYTES = FP32 + FP32 + ADAMW_STATE_BYTES
# peak bytes per token and vocabulary entry around the cross-entropy: the logits, their float32
# shifted copy (``logits[:, :-1].float()``) and the saved log-softmax, about three float32 copies
LOSS_LOGITS_BYTES = 3 * FP32
# the LESS training pool (SPEC §4): examples per dataset
LESS_POOL_SIZES: dict[str, int] = {
    "cot": 100_000,
    "dolly": 15_011,
    "flan_v2": 100_000,
    "oasst1": 55_668,
}
# the workflow's lm-eval call (workflow_scripts/evaluate.py) passes no dtype, and
# selectmoe.stages.evaluation.run_lm_eval defaults to float32
# settings the plan reads, with the defaults of config/schema.yaml for keys a config leaves out
# (tests/test_plan.py checks them against the schema)
SCHEMA_DEFAULTS: dict[str, dict[str, Any]] = {
    "warmup": {
        "peft_mode": "full_rank",
        "lora_r": 8,
        "subset_ratio": 0.05,
        "epochs": 1,
        "per_device_batch_size": 4,
        "effective_batch_size": 4,
        "max_sequence_length": 2048,
    },
    "scoring": {
        "batch_size": 16,
        "max_sequence_length": 2048,
        "dtype": "float32",
        "lm_statistics": True,
    },
    "finetune": {
        "lora_r": 128,
        "lora_dropout": 0.1,
        "epochs": 4,
        "per_device_batch_size": 1,
        "max_sequence_length": 2048,
        "bf16": True,
        "gradient_checkpointing": False,
    },
    "evaluation": {"batch_size": 16, "dtype": "float32"},
}
# finetune.target_modules when a config leaves it out (selectmoe.stages.finetune.FinetuneSettings)
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# the targeted methods' settings the plan reads (targeted.rds, targeted.less), with the defaults
# of config/schema.yaml (tests/test_plan.py checks them against the schema)
TARGETED_DEFAULTS: dict[str, dict[str, Any]] = {
    "rds": {"batch_size": 16, "max_sequence_length": 2048, "dtype": "float32"},
    "less": {
        "warmup_share": 0.05,
        "epochs": 4,
        "lora_r": 128,
        "lora_dropout": 0.1,
        "target_modules": list(DEFAULT_LORA_TARGETS),
        "per_device_batch_size": 1,
        "max_sequence_length": 2048,
        "bf16": True,
        "projection_dim": 8192,
        "batch_size": 8,
    },
}


# --------------------------------------------------------------------------------------- shapes


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


# ---------------------------------------------------------------------------------- assumptions


@dataclass(frozen=True)
class Assumptions:
    """Everything the plan assumes beyond the config and the model shapes.

    Hardware (defaults: one NVIDIA H100 SXM 80 GB)
        ``gpu_memory_gib`` the memory a job may use; ``bf16_peak_tflops`` 989 (dense bf16 tensor
        cores), ``fp32_peak_tflops`` 67 (plain float32: PyTorch leaves TF32 matmuls off and the
        code does not turn them on), ``hbm_tb_s`` 3.35 memory bandwidth; ``mfu`` the sustained
        share of the peak (0.4 is typical of well-fed dense training, optimistic for the eager
        MoE and small-batch paths); ``bandwidth_efficiency`` the share of ``hbm_tb_s`` a decode
        step reaches.
    Allocator
        ``cuda_context_gib`` CUDA context and library workspaces outside PyTorch's allocator;
        ``fragmentation`` the share the caching allocator adds over the live tensors.
    Data
        ``pool_sizes`` examples per dataset (LESS); ``mean_example_tokens`` 350: the mean
        prompt + completion lengths per dataset in the data tables of the Tulu and LESS papers
        (Wang et al. 2023, Xia et al. 2024; Llama-2 tokenizer, figures as recalled, not
        re-checked offline: FLAN-v2 ~387, CoT ~319, Dolly ~209, OASST1 ~247 per turn at ~1.6
        turns) weighted by the pool counts, plus the chat template's role tokens; replace it
        with ``n_tokens / n_samples`` from the score stage's metadata once the pool is scored.
        ``length_sigma`` 0.7: examples lengths taken as log-normal with this sigma (coefficient
        of variation ~0.8); it sets the padding of random (unsorted) training batches.
        ``answer_token_share`` 0.3: the labelled (assistant) share of an example's tokens, from
        the same tables' completion lengths (FLAN-v2 ~31, CoT ~53, Dolly ~91, OASST1 ~212 per
        turn) weighted by the pool counts; the score stage's ``n_answer_tokens / n_tokens``
        replaces it. It sizes the LM head of the scoring pass and its answer-alone pass (IFD).
    Query sets of the targeted methods (rds, less)
        ``query_examples`` 375: LESS's query sets, 285 MMLU + 81 BBH + 9 TydiQA examples;
        ``query_example_tokens`` 512 mean tokens per query example (few-shot prompts).
    Evaluation (the paper's six tasks, lm-eval defaults)
        ``eval_prefill_tokens`` 21 M tokens through the forward pass (mmlu ~6.7 M, hellaswag
        ~4.4 M, bbh CoT 3-shot ~6.5 M, tydiqa ~3 M, arc ~0.7 M); ``eval_generated_tokens`` 1.1 M
        generated tokens (bbh CoT ~1 M, tydiqa ~0.1 M); ``eval_sequence_length`` 2048, the
        longest request (lm-eval sizes ``batch_size: auto`` on it); ``eval_max_auto_batch`` 64,
        where lm-eval's automatic batch search starts (halving until a batch fits). The weights'
        dtype is the config's ``evaluation.dtype``.
    Selection (CPU k-means), calibrated on ``benchmarks/RESULTS.md``
        ``kmeans_seconds_per_unit`` 3.43e-10 s per (sample x feature x cluster x restart) on 2
        threads: the benchmark's whole clustering step (k-means++ seeding, ~30 Lloyd iterations
        per k, silhouettes) took 118.1 s for 270,679 x 1024 features and k = 10, 14, ..., 98
        with one restart; taken to scale linearly with threads (optimistic).
        ``select_host_bytes_per_cell`` 13.2 bytes of peak host memory per feature value
        (3.67 GB for 270,679 x 1024).
    """

    gpu_memory_gib: float = 80.0
    mfu: float = 0.4
    bf16_peak_tflops: float = 989.0
    fp32_peak_tflops: float = 67.0
    hbm_tb_s: float = 3.35
    bandwidth_efficiency: float = 0.7
    cuda_context_gib: float = 1.0
    fragmentation: float = 0.10
    pool_sizes: Mapping[str, int] = field(default_factory=lambda: dict(LESS_POOL_SIZES))
    mean_example_tokens: float = 350.0
    length_sigma: float = 0.7
    answer_token_share: float = 0.3
    query_examples: int = 375
    query_example_tokens: float = 512.0
    eval_prefill_tokens: float = 21e6
    eval_generated_tokens: float = 1.1e6
    eval_sequence_length: int = 2048
    eval_max_auto_batch: int = 64
    kmeans_seconds_per_unit: float = 3.43e-10
    select_host_bytes_per_cell: float = 13.2

    def __post_init__(self) -> None:
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"mfu is {self.mfu}; it must be in (0, 1]")
        if self.gpu_memory_gib <= 0:
            raise ConfigError(f"gpu_memory_gib is {self.gpu_memory_gib}; it must be > 0")

    def peak_flops(self, dtype: str) -> float:
        """Peak matmul FLOP/s of the GPU in ``dtype`` (float16 runs at the bf16 rate)."""
        return (self.fp32_peak_tflops if dtype == "float32" else self.bf16_peak_tflops) * TERA

    def seconds(self, flops: float, dtype: str) -> float:
        """Time of ``flops`` at ``mfu`` of the ``dtype`` peak."""
        return flops / (self.peak_flops(dtype) * self.mfu)

    def padding_factor(self, batch_size: int) -> float:
        """Padded / real tokens of a random batch: ``E[max of n lengths] / mean length``.

        With log-normal lengths of sigma ``s`` and Blom's approximation of the expected largest
        of ``n`` standard normals, ``z_n = Phi^-1((n - 0.375) / (n + 0.25))``, the ratio is
        ``exp(s z_n - s^2 / 2)`` (at least 1; exactly 1 for ``n = 1``).
        """
        if batch_size <= 1:
            return 1.0
        z = NormalDist().inv_cdf((batch_size - 0.375) / (batch_size + 0.25))
        return max(1.0, math.exp(self.length_sigma * z - self.length_sigma**2 / 2))

    def with_overhead(self, live_bytes: float) -> dict[str, float]:
        """The allocator's fragmentation and the CUDA context on top of ``live_bytes``."""
        return {
            "fragmentation": self.fragmentation * live_bytes,
            "cuda_context": self.cuda_context_gib * GIB,
        }


# ------------------------------------------------------------------------------- activations


def moe_warmup_saved_bytes_per_token(shape: ModelShape, *, mask_length: int = 0) -> float:
    """Bytes one token keeps per layer for the warmup's backward pass (float32, no autocast).

    The warmup trains the routers and quality gates of every layer, so the gradient flows
    through the whole stack; the frozen projections keep no inputs. Per token and layer, in
    float32 elements (``H`` hidden, ``Q``/``KV`` query/key-value widths, ``I`` expert width,
    ``K`` top-k, ``E`` experts)::

        H                 input RMSNorm input
        Q + KV            q-norm and k-norm inputs (OLMoE's qk-norm)
        2 Q + 2 KV'       SDPA query, key, value, output (KV' = Q when a padding mask makes
                          transformers repeat the key/value heads)
        H                 post-attention RMSNorm input
        H                 router / quality-gate input (their weights are trained)
        H                 MoE output, kept for ``good * moe``
        K (2 I + I + H)   per routed expert: gate_up output, activation output, expert output
        E                 router softmax
        4 + heads + 2     per-token scalars: RMSNorm reciprocal RMS (4 norms), SDPA
                          log-sum-exp per head, the gate's sigmoid and ``good``
        T                 with padding (``mask_length = T > 0``): SDPA's copy of the
                          ``[B, 1, T, T]`` mask in the query dtype, one per layer

    plus ``4 K`` int64 routing indices and ``K`` float32 routing weights.
    """
    h, q, kv = shape.hidden_size, shape.q_width, shape.kv_width
    k, i, e = shape.experts_per_token, shape.intermediate_size, shape.num_experts
    qk_norm = (q + kv) if shape.qk_norm != "none" else 0
    norms = 2 + 2 * (shape.qk_norm != "none")
    scalars = norms + shape.num_heads + 2
    kv_attn = q if mask_length and kv != q else kv  # a mask makes transformers repeat k/v heads
    elements = h + qk_norm + 2 * q + 2 * kv_attn + 3 * h + k * (3 * i + h) + e + scalars
    elements += mask_length
    return FP32 * elements + 4 * k * INDEX_BYTES + k * FP32


def lora_saved_bytes_per_token(
    shape: ModelShape,
    *,
    rank: int,
    modules: Sequence[str],
    dropout: bool,
    autocast_bf16: bool,
    mask_length: int = 0,
) -> float:
    """Bytes one token keeps per layer for LoRA finetuning's backward pass (dense models).

    Compute dtype ``c`` = 2 bytes under bf16 autocast, else 4. Per token and layer::

        2 x 4 H             the two RMSNorm inputs, saved as float32 (RMSNorm upcasts)
        4 (Q + KV)          q/k-norm inputs (Qwen3), float32
        c (2 Q + 2 KV')     SDPA query, key, value, output (KV' = Q when a padding mask makes
                            transformers repeat the key/value heads)
        c T                 with padding (``mask_length = T > 0``): SDPA's copy of the
                            ``[B, 1, T, T]`` mask in the compute dtype
        3 c I               MLP gate output, up output, activation output (the frozen
                            down_proj keeps no input)
        per LoRA module:    c in  (the input of A, cast to the compute dtype)
                            c r   (the input of B)
                            1 in  (the dropout mask, bool on CUDA, when dropout > 0)
        4 (2 + heads)       per-token scalars: RMSNorm reciprocal RMS, SDPA log-sum-exp
        4 (heads + kv)      Qwen3's per-head q/k-norm reciprocal RMS (2 for a full q/k-norm)
    """
    h, q, kv, i = shape.hidden_size, shape.q_width, shape.kv_width, shape.intermediate_size
    compute = DTYPE_BYTES["bfloat16"] if autocast_bf16 else FP32
    kv_attn = q if mask_length and kv != q else kv
    total = 2 * FP32 * h + FP32 * (2 + shape.num_heads) + compute * mask_length
    if shape.qk_norm == "per_head":
        total += FP32 * (q + kv) + FP32 * (shape.num_heads + shape.num_kv_heads)
    elif shape.qk_norm == "full":
        total += FP32 * (q + kv) + FP32 * 2
    total += compute * (2 * q + 2 * kv_attn)
    total += 3 * compute * i
    shapes = shape.linear_shapes()
    for module in modules:
        in_features = shapes[module][0]
        total += compute * in_features + compute * rank + (MASK_BYTES * in_features) * dropout
    return total


def layer_input_bytes_per_token(shape: ModelShape, *, residual_bytes: int) -> float:
    """What gradient checkpointing keeps per layer and token: the layer's input."""
    return residual_bytes * shape.hidden_size


def moe_inference_bytes_per_token(shape: ModelShape, *, dtype_bytes: int, padded: bool) -> float:
    """Bytes per token live at once in an inference forward of the Select-MoE decoder stack.

    The residual stream and its normed copy (``2 H``), the larger of the attention block
    (``2 Q + 2 KV``) and the routed MoE block (``K (H + 2 I + I + H)``: gathered inputs,
    gate_up output, activation output, expert outputs, plus the float32 router softmax ``E``),
    and every layer's router output, which scoring keeps to the end (``L (E + 1)``).
    """
    h, q, kv = shape.hidden_size, shape.q_width, shape.kv_width
    k, i, e = shape.experts_per_token, shape.intermediate_size, shape.num_experts
    kv_attn = q if padded and kv != q else kv
    attention = dtype_bytes * (2 * q + 2 * kv_attn)
    moe = dtype_bytes * k * (2 * h + 3 * i) + FP32 * e
    kept = dtype_bytes * shape.num_layers * (e + 1)
    return dtype_bytes * 2 * h + max(attention, moe) + kept


def dense_inference_bytes_per_token(
    shape: ModelShape, *, dtype_bytes: int, padded: bool, kv_cache: bool
) -> float:
    """Bytes per token live at once in a dense model's forward, logits aside (lm-eval).

    Residual and normed copy (``2 H``), the larger of attention (``2 Q + 2 KV``) and MLP
    (``3 I``), and the KV cache of every layer (``2 L KV``: transformers builds one by default).
    """
    h, q, kv, i = shape.hidden_size, shape.q_width, shape.kv_width, shape.intermediate_size
    kv_attn = q if padded and kv != q else kv
    total = dtype_bytes * (2 * h + max(2 * q + 2 * kv_attn, 3 * i))
    if kv_cache:
        total += dtype_bytes * 2 * shape.num_layers * kv
    return total


# ------------------------------------------------------------------------------------ stages


@dataclass
class StagePlan:
    """One row of the plan: a stage run on one model.

    Attributes
    ----------
    memory : dict
        Bytes per part (weights, trainable, activations, logits, fragmentation, cuda_context);
        empty for a CPU job.
    time_s : dict
        Seconds per job, by label (e.g. one entry per selection percentage).
    jobs : int
        Jobs of this stage and model in the config's sweep.
    total_gpu_hours : float
        Summed over the jobs (0 for a CPU job).
    """

    stage: str
    model: str
    jobs: int
    precision: str
    memory: dict[str, float]
    time_s: dict[str, float]
    total_gpu_hours: float
    device: str = "gpu"
    notes: list[str] = field(default_factory=list)
    host_memory_bytes: float = 0.0

    @property
    def memory_bytes(self) -> float:
        """GPU memory of one job."""
        return float(sum(self.memory.values()))

    def fits(self, gpu_memory_gib: float) -> bool:
        """Whether one job fits in one GPU of ``gpu_memory_gib``."""
        return self.memory_bytes <= gpu_memory_gib * GIB

    def to_row(self, gpu_memory_gib: float) -> dict[str, Any]:
        """JSON-ready dict: sizes in GiB, times in hours."""
        return {
            "stage": self.stage,
            "model": self.model,
            "device": self.device,
            "jobs": self.jobs,
            "precision": self.precision,
            "gpu_memory_gib": round(self.memory_bytes / GIB, 2),
            "memory_gib": {k: round(v / GIB, 2) for k, v in self.memory.items()},
            "host_memory_gib": round(self.host_memory_bytes / GIB, 2),
            "fits": self.fits(gpu_memory_gib) if self.device == "gpu" else None,
            "gpu_memory_limit_gib": gpu_memory_gib,
            "time_per_job_h": {k: round(v / HOUR, 3) for k, v in self.time_s.items()},
            "total_gpu_hours": round(self.total_gpu_hours, 2),
            "notes": list(self.notes),
        }


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A config section with the schema defaults filled in for the keys the plan reads."""
    values = dict(SCHEMA_DEFAULTS.get(name, {}))
    values.update(config.get(name) or {})
    return values


def _pool(config: Mapping[str, Any], assumptions: Assumptions) -> dict[str, int]:
    datasets = list(config.get("data", {}).get("datasets") or [])
    if not datasets:
        raise ConfigError("config key data.datasets is missing or empty")
    unknown = [d for d in datasets if d not in assumptions.pool_sizes]
    if unknown:
        raise ConfigError(
            f"data.datasets {unknown}: pool size unknown to the plan (known: "
            f"{', '.join(assumptions.pool_sizes)}); pass Assumptions(pool_sizes=...)"
        )
    return {d: int(assumptions.pool_sizes[d]) for d in datasets}


def _tokens(examples: float, max_length: int, assumptions: Assumptions) -> float:
    """Real tokens of ``examples`` examples truncated at ``max_length``."""
    return examples * min(assumptions.mean_example_tokens, max_length)


def warmup_plan(
    config: Mapping[str, Any], shape: ModelShape, assumptions: Assumptions
) -> StagePlan:
    """Stage 1 on the converted Select-MoE model (``selectmoe.stages.warmup.run_warmup``).

    Facts of the code: the model is loaded and trained in float32 without autocast, the whole
    stack keeps its activations (no gradient checkpointing), AdamW over the routers and gates
    (or their LoRA adapters). Peak: weights + trainable state + saved activations of a
    ``per_device_batch_size x max_sequence_length`` batch + the loss's logits.
    """
    settings = _section(config, "warmup")
    shape = replace(shape, quality_gate=True)
    batch = int(settings["per_device_batch_size"])
    length = int(settings["max_sequence_length"])
    tokens_per_batch = batch * length
    if settings["peft_mode"] == "lora":
        rank = int(settings["lora_r"])
        trainable = shape.num_layers * (
            rank * (shape.hidden_size + shape.num_experts) + shape.hidden_size
        )
    else:
        trainable = shape.num_layers * shape.router_params_per_layer
    memory = {
        "weights": FP32 * shape.total_params,
        "trainable": TRAINABLE_BYTES * trainable,
        "activations": tokens_per_batch
        * shape.num_layers
        * moe_warmup_saved_bytes_per_token(shape, mask_length=length if batch > 1 else 0),
        "logits": tokens_per_batch * shape.vocab_size * LOSS_LOGITS_BYTES,
    }
    memory.update(assumptions.with_overhead(sum(memory.values())))

    pool = _pool(config, assumptions)
    examples = round(sum(pool.values()) * float(settings["subset_ratio"]))
    padding = assumptions.padding_factor(batch)
    tokens = _tokens(examples, length, assumptions) * int(settings["epochs"]) * padding
    n_matmul = shape.matmul_params_per_token()
    flops = tokens * (2 * n_matmul + 2 * n_matmul + 2 * trainable)
    seconds = assumptions.seconds(flops, "float32")
    jobs = len(config["selection"]["loss_types"])
    return StagePlan(
        stage="warmup",
        model=shape.name,
        jobs=jobs,
        precision="float32 (no autocast)",
        memory=memory,
        time_s={"": seconds},
        total_gpu_hours=jobs * seconds / HOUR,
        notes=[
            f"{examples:,} examples x {int(settings['epochs'])} epoch(s), "
            f"batch {batch} padded x{padding:.2f}",
            f"{settings['peft_mode']}: {trainable:,} trainable parameters",
        ],
    )


def score_plan(config: Mapping[str, Any], shape: ModelShape, assumptions: Assumptions) -> StagePlan:
    """Stage 2 (``selectmoe.stages.scoring.compute_router_data``): inference in ``scoring.dtype``.

    The decoder stack, ``torch.inference_mode``, length-sorted batches of
    ``scoring.batch_size`` padded to at most ``scoring.max_sequence_length``; SDPA receives a
    boolean ``[B, 1, T, T]`` padding mask. With ``scoring.lm_statistics`` the LM head runs on the
    answer tokens only, ``chunk_tokens`` (1,024) at a time (float32 logits and their
    log-softmax of one chunk); when a method of the sweep ranks by ``ifd`` the answers go
    through the whole model a second time, alone. One job per (loss type, dataset).
    """
    settings = _section(config, "scoring")
    shape = replace(shape, quality_gate=True)
    dtype = str(settings["dtype"])
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"scoring.dtype is {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    width = DTYPE_BYTES[dtype]
    batch, length = int(settings["batch_size"]), int(settings["max_sequence_length"])
    lm_statistics = bool(settings["lm_statistics"])
    selection = config["selection"]
    answers_alone = lm_statistics and uses_score(
        "ifd", selection["methods"], selection.get("method_definitions")
    )
    tokens_per_batch = batch * length
    memory = {
        "weights": width * shape.total_params,
        "activations": tokens_per_batch
        * moe_inference_bytes_per_token(shape, dtype_bytes=width, padded=batch > 1),
        "attention_mask": (MASK_BYTES + width) * batch * length * length,
    }
    if lm_statistics:
        memory["logits"] = 2 * FP32 * SCORING_CHUNK_TOKENS * shape.vocab_size
    memory.update(assumptions.with_overhead(sum(memory.values())))
    n_matmul = shape.matmul_params_per_token(lm_head=False)
    head = shape.hidden_size * shape.vocab_size
    share = assumptions.answer_token_share
    # FLOPs per token of an example: the stack, the head on its answer tokens, and the answers'
    # second pass through stack and head
    per_token = 2 * n_matmul
    if lm_statistics:
        per_token += 2 * head * share
    if answers_alone:
        per_token += 2 * (n_matmul + head) * share
    time_s = {
        dataset: assumptions.seconds(per_token * _tokens(n, length, assumptions), dtype)
        for dataset, n in _pool(config, assumptions).items()
    }
    losses = len(selection["loss_types"])
    notes = ["length-sorted batches: padding taken as none"]
    if lm_statistics:
        notes.append(f"LM head on the answer tokens ({share:.0%} of tokens)")
    else:
        notes.append("no LM head (lm_statistics off)")
    if answers_alone:
        notes.append("answers alone a second time (ifd)")
    return StagePlan(
        stage="score",
        model=shape.name,
        jobs=losses * len(time_s),
        precision=dtype,
        memory=memory,
        time_s=time_s,
        total_gpu_hours=losses * sum(time_s.values()) / HOUR,
        notes=notes,
    )


def select_plan(
    config: Mapping[str, Any], shape: ModelShape, assumptions: Assumptions
) -> StagePlan:
    """Stage 2b (``selectmoe.selection.clusters``): the k-means sweep over the pooled router data.

    Features: ``N x (L E)`` float32. One clustering job per loss type (rule ``cluster``) serves
    every clustered method and percentage. Times are scaled from the CPU benchmark in
    ``benchmarks/RESULTS.md`` (see :class:`Assumptions`).
    """
    selection = config["selection"]
    params = dict(selection.get("clustering_params") or {})
    if params.get("auto_k", True):
        low, high = params.get("k_range", [10, 100])
        ks = list(range(int(low), int(high) + 1, int(params.get("k_step", 1))))
    else:
        ks = [int(params.get("k", 10))]
    n_init = int(params.get("n_init", 1))
    n = sum(_pool(config, assumptions).values())
    features = shape.num_layers * shape.num_experts
    resources = config.get("resources") or {}
    gpus = int((resources.get("gpus") or {}).get("select", 0))
    threads_table = resources.get("threads") or {}
    threads = int(threads_table.get("select", threads_table.get("default", 1)))
    benchmark_threads = 2  # the benchmark's machine
    seconds = (
        assumptions.kmeans_seconds_per_unit
        * n
        * features
        * sum(ks)
        * n_init
        * benchmark_threads
        / max(threads, 1)
    )
    # one k-means sweep per loss type (rule cluster) serves every clustered method and
    # percentage; the selections themselves take seconds
    definitions = method_definitions(selection.get("method_definitions"))
    clustered = any(
        m in definitions and definitions[m]["allocation"] in CLUSTERED_ALLOCATIONS
        for m in selection["methods"]
    )
    jobs = len(selection["loss_types"]) if clustered else 0
    host = assumptions.select_host_bytes_per_cell * n * features
    memory: dict[str, float] = {}
    device = "cpu"
    notes = [
        f"k in {ks[0]}..{ks[-1]} ({len(ks)} values) x n_init {n_init} on {n:,} x {features}",
        f"CPU time at {threads} thread(s), scaled from the 2-thread benchmark",
        "one sweep per loss type for every clustered selection; the selections take seconds",
    ]
    if gpus > 0:
        device = "gpu"
        # features, their unit-normalised copy and the N x k distances of the largest k
        memory = {"activations": FP32 * n * (2 * features + 2 * max(ks))}
        memory.update(assumptions.with_overhead(sum(memory.values())))
        notes[1] = "GPU: time not modelled beyond the CPU figure (an upper bound)"
    return StagePlan(
        stage="select",
        model=f"k-means on {shape.name} router data",
        jobs=jobs,
        precision="float32",
        memory=memory,
        time_s={"": seconds},
        total_gpu_hours=jobs * seconds / HOUR if gpus > 0 else 0.0,
        device=device,
        notes=notes,
        host_memory_bytes=host,
    )


def _finetune_settings(config: Mapping[str, Any], target: str) -> dict[str, Any]:
    settings = _section(config, "finetune")
    settings.update(config["targets"][target].get("finetune") or {})
    settings.setdefault("target_modules", list(DEFAULT_LORA_TARGETS))
    return settings


def _selections(config: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, int]]:
    """Fraction of the pool and number of selections per selection size."""
    fractions: dict[str, float] = {}
    jobs: dict[str, int] = {}
    for selection in sweep_selections(config["selection"]):
        label = "full" if selection.method == FULL else f"{selection.percentage * 100:g}%"
        fractions[label] = selection.percentage
        jobs[label] = jobs.get(label, 0) + 1
    return fractions, jobs


def _n_seeds(config: Mapping[str, Any]) -> int:
    """Finetune runs per selection (``finetune.seeds``)."""
    return len(config["finetune"].get("seeds", [None]))


@dataclass(frozen=True)
class LoraTraining:
    """One LoRA training step on a dense model: its memory and its FLOPs per token.

    Shared by the finetune stage and the LESS warmup (``settings`` is a ``finetune``-like
    section: lora_r, lora_dropout, target_modules, per_device_batch_size, max_sequence_length,
    bf16, epochs and optionally gradient_checkpointing).

    Attributes
    ----------
    memory : dict
        Bytes per part of one GPU, allocator overhead included.
    flops_per_token : float
        Forward and backward FLOPs per real token, padding of random batches included.
    lora : int
        Trainable (adapter) parameters.
    """

    memory: dict[str, float]
    flops_per_token: float
    lora: int
    bf16: bool
    epochs: int
    max_sequence_length: int

    @property
    def dtype(self) -> str:
        """The dtype whose peak times the step."""
        return "bfloat16" if self.bf16 else "float32"

    def seconds(self, examples: float, assumptions: Assumptions) -> float:
        """Time of ``epochs`` epochs over ``examples`` examples."""
        tokens = _tokens(examples, self.max_sequence_length, assumptions)
        return assumptions.seconds(self.flops_per_token * tokens * self.epochs, self.dtype)


def lora_pass(
    shape: ModelShape, settings: Mapping[str, Any], *, batch: int, dropout: bool
) -> tuple[int, float, float]:
    """LoRA parameters, saved activation bytes per token (all layers) and forward + backward
    FLOPs per token of a LoRA model in ``settings`` (``bf16``, ``lora_r``, ``target_modules``,
    ``max_sequence_length``, optional ``gradient_checkpointing``), batches of ``batch``."""
    bf16 = bool(settings["bf16"])
    rank = int(settings["lora_r"])
    modules = list(settings["target_modules"])
    length = int(settings["max_sequence_length"])
    lora = shape.lora_params(rank, modules)
    per_layer = lora_saved_bytes_per_token(
        shape,
        rank=rank,
        modules=modules,
        dropout=dropout,
        autocast_bf16=bf16,
        mask_length=length if batch > 1 else 0,
    )
    checkpointing = bool(settings.get("gradient_checkpointing", False))
    if checkpointing:
        base_bytes = DTYPE_BYTES["bfloat16"] if bf16 else FP32
        saved = shape.num_layers * layer_input_bytes_per_token(shape, residual_bytes=base_bytes)
        saved += per_layer  # the layer being recomputed
    else:
        saved = shape.num_layers * per_layer
    n_matmul = shape.matmul_params_per_token() + lora
    passes = 3 if checkpointing else 2  # forward(s) + activation gradients, in units of 2 N
    return lora, saved, 2 * n_matmul * passes + 2 * lora


def lora_training(
    shape: ModelShape,
    settings: Mapping[str, Any],
    assumptions: Assumptions,
    *,
    shards: int = 1,
) -> LoraTraining:
    """Memory and FLOPs of LoRA training (``selectmoe.stages.finetune``'s step) on a dense model.

    Facts of the code: with ``bf16`` (on a bf16-capable GPU) the frozen base is loaded in
    bfloat16 and the step runs under bf16 autocast; otherwise everything is float32. The LoRA
    adapters train in float32 with AdamW. ``gradient_checkpointing`` keeps only each layer's
    input and recomputes the layer in the backward pass (one more forward). With ``shards`` > 1
    (FSDP2) every GPU keeps 1/N of every weight, adapter and optimizer state, and gathers a
    decoder layer whole just before it runs, the next one prefetched: two layers.
    """
    bf16 = bool(settings["bf16"])
    base_bytes = DTYPE_BYTES["bfloat16"] if bf16 else FP32
    batch, length = int(settings["per_device_batch_size"]), int(settings["max_sequence_length"])
    tokens_per_batch = batch * length
    lora, saved, flops_per_token = lora_pass(
        shape, settings, batch=batch, dropout=float(settings["lora_dropout"]) > 0
    )
    # under autocast the float32 adapters are cast to bf16 once per step and the copies cached
    autocast_copies = DTYPE_BYTES["bfloat16"] * lora if bf16 else 0
    layer_params = (shape.total_params - shape.embedding_params - shape.lm_head_params) / max(
        1, shape.num_layers
    )
    memory = {
        "weights": base_bytes * shape.total_params / shards,
        "trainable": (TRAINABLE_BYTES * lora + autocast_copies) / shards,
        "activations": tokens_per_batch * saved,
        "logits": tokens_per_batch * shape.vocab_size * LOSS_LOGITS_BYTES,
    }
    if shards > 1:
        memory["gathered layers"] = 2 * base_bytes * layer_params
    memory.update(assumptions.with_overhead(sum(memory.values())))
    return LoraTraining(
        memory=memory,
        flops_per_token=flops_per_token * assumptions.padding_factor(batch),
        lora=lora,
        bf16=bf16,
        epochs=int(settings["epochs"]),
        max_sequence_length=length,
    )


def finetune_plan(
    config: Mapping[str, Any], target: str, shape: ModelShape, assumptions: Assumptions
) -> StagePlan:
    """Stage 3 (``selectmoe.stages.finetune.run_finetune``) for one target: :func:`lora_training` on
    every selection, ``finetune.seeds`` times."""
    settings = _finetune_settings(config, target)
    gpus = int(config.get("resources", {}).get("gpus", {}).get("finetune", 1) or 1)
    shards = gpus if settings.get("sharding", "ddp") == "fsdp" and gpus > 1 else 1
    training = lora_training(shape, settings, assumptions, shards=shards)
    pool = sum(_pool(config, assumptions).values())
    fractions, selections = _selections(config)
    seeds = _n_seeds(config)
    jobs = {label: count * seeds for label, count in selections.items()}
    time_s = {
        label: training.seconds(round(pool * fraction), assumptions)
        for label, fraction in fractions.items()
    }
    batch, length = int(settings["per_device_batch_size"]), training.max_sequence_length
    notes = [
        f"LoRA r={int(settings['lora_r'])} on {', '.join(settings['target_modules'])}: "
        f"{training.lora:,} parameters",
        f"{training.epochs} epochs, batch {batch} x {length}",
        f"{seeds} finetune seed(s) per selection",
    ]
    if settings.get("gradient_checkpointing"):
        notes.append("gradient checkpointing on")
    if shards > 1:
        notes.append(f"FSDP over {shards} GPUs: memory per GPU")
    return StagePlan(
        stage="finetune",
        model=shape.name,
        jobs=sum(jobs.values()),
        precision="bf16 weights + bf16 autocast" if training.bf16 else "float32",
        memory=training.memory,
        time_s=time_s,
        total_gpu_hours=sum(time_s[label] * jobs[label] for label in time_s) / HOUR,
        notes=notes,
    )


def evaluate_plan(
    config: Mapping[str, Any], target: str, shape: ModelShape, assumptions: Assumptions
) -> StagePlan:
    """Stage 4 (lm-eval ``hf`` model with the LoRA adapter) for one target.

    Weights in ``evaluation.dtype`` plus the float32 adapter; per batch of
    ``eval_sequence_length`` tokens the live activations, KV cache, logits and log-softmax.
    ``evaluation.batch_size: auto`` takes the largest of 64, 32, ... that fits, as lm-eval's
    search does. One job per finetuned adapter plus one for the base model.
    """
    settings = _section(config, "evaluation")
    finetune = _finetune_settings(config, target)
    dtype = str(settings["dtype"])
    if dtype == "auto":  # lm-eval's auto loads the checkpoint's dtype: bf16 for these targets
        dtype = "bfloat16"
    width = DTYPE_BYTES[dtype]
    length = assumptions.eval_sequence_length
    lora = shape.lora_params(int(finetune["lora_r"]), list(finetune["target_modules"]))

    def memory_for(batch: int) -> dict[str, float]:
        parts = {
            "weights": width * shape.total_params + FP32 * lora,
            "activations": batch
            * length
            * dense_inference_bytes_per_token(
                shape, dtype_bytes=width, padded=batch > 1, kv_cache=True
            ),
            # the logits and lm-eval's log-softmax of them, [batch, length, V] each
            "logits": batch * length * 2 * width * shape.vocab_size,
            "attention_mask": (MASK_BYTES + width) * batch * length * length,
        }
        parts.update(assumptions.with_overhead(sum(parts.values())))
        return parts

    requested = settings["batch_size"]
    notes = []
    if isinstance(requested, str) and requested.startswith("auto"):
        batch = assumptions.eval_max_auto_batch
        while batch > 1 and sum(memory_for(batch).values()) > assumptions.gpu_memory_gib * GIB:
            batch //= 2
        notes.append(f"batch_size auto -> {batch} (largest that fits)")
    else:
        batch = int(requested)
        notes.append(f"batch_size {batch}")
    memory = memory_for(batch)
    prefill = assumptions.seconds(
        2 * shape.matmul_params_per_token() * assumptions.eval_prefill_tokens, dtype
    )
    decode_steps = assumptions.eval_generated_tokens / batch
    weight_read = memory["weights"] / (
        assumptions.hbm_tb_s * TERA * assumptions.bandwidth_efficiency
    )
    seconds = prefill + decode_steps * weight_read
    _, selections = _selections(config)
    seeds = _n_seeds(config)
    # one job per selection evaluates every seed's adapter on one loaded model, + the base model
    jobs = sum(selections.values()) + 1
    evaluations = sum(selections.values()) * seeds + 1
    notes.append(f"{dtype} weights (the workflow passes no dtype to lm-eval)")
    notes.append(f"{seeds} adapter(s) per job, one base-model load")
    return StagePlan(
        stage="evaluate",
        model=shape.name,
        jobs=jobs,
        precision=dtype,
        memory=memory,
        time_s={"per adapter": seconds},
        total_gpu_hours=evaluations * seconds / HOUR,
        notes=notes,
    )


# --------------------------------------------------------------------------- targeted methods


def _targeted_settings(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``targeted.{method}`` with the schema defaults filled in."""
    values = dict(TARGETED_DEFAULTS[method])
    values.update((config.get("targeted") or {}).get(method) or {})
    return values


def _targeted_source(config: Mapping[str, Any]) -> str:
    """The model the targeted methods select with: ``targeted.model`` or the first target's."""
    source = (config.get("targeted") or {}).get("model")
    if source:
        return str(source)
    return str(next(iter(config["targets"].values()))["model"])


def _targeted_jobs(
    config: Mapping[str, Any], assumptions: Assumptions, length: int
) -> dict[str, tuple[float, float]]:
    """``(examples, real tokens)`` of each job: one per pool dataset, one for the query set."""
    jobs = {
        dataset: (float(n), _tokens(n, length, assumptions))
        for dataset, n in _pool(config, assumptions).items()
    }
    queries = float(assumptions.query_examples)
    jobs["queries"] = (queries, queries * min(assumptions.query_example_tokens, length))
    return jobs


def represent_plan(
    config: Mapping[str, Any], shape: ModelShape, assumptions: Assumptions
) -> StagePlan:
    """RDS+'s representations (method ``rds``): one inference pass of the targeted model.

    One job per pool dataset and one for the query set. ``torch.no_grad``, weights in
    ``targeted.rds.dtype``, length-sorted batches of ``rds.batch_size`` padded to at most
    ``rds.max_sequence_length`` (no padding counted), the model body only (no LM head): its final
    hidden states, mean-pooled to ``[hidden]`` per example. Memory: the weights (the whole model
    counted), the live activations of one batch (no KV cache: ``use_cache=False`` taken, as
    scoring does) and SDPA's padding mask. Time: ``2 x`` the body's matmul parameters per token.
    """
    settings = _targeted_settings(config, "rds")
    dtype = str(settings["dtype"])
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"targeted.rds.dtype is {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    width = DTYPE_BYTES[dtype]
    batch, length = int(settings["batch_size"]), int(settings["max_sequence_length"])
    tokens_per_batch = batch * length
    memory = {
        "weights": width * shape.total_params,
        "activations": tokens_per_batch
        * dense_inference_bytes_per_token(
            shape, dtype_bytes=width, padded=batch > 1, kv_cache=False
        ),
        "attention_mask": (MASK_BYTES + width) * batch * length * length,
    }
    memory.update(assumptions.with_overhead(sum(memory.values())))
    per_token = 2 * shape.matmul_params_per_token(lm_head=False)
    time_s = {
        label: assumptions.seconds(per_token * tokens, dtype)
        for label, (_, tokens) in _targeted_jobs(config, assumptions, length).items()
    }
    return StagePlan(
        stage="represent",
        model=shape.name,
        jobs=len(time_s),
        precision=dtype,
        memory=memory,
        time_s=time_s,
        total_gpu_hours=sum(time_s.values()) / HOUR,
        notes=[
            "one job per dataset and one for the queries",
            f"length-sorted batches of {batch}: padding taken as none; no LM head",
            f"{assumptions.query_examples} query examples of "
            f"{assumptions.query_example_tokens:g} tokens",
        ],
    )


def less_warmup_plan(
    config: Mapping[str, Any], shape: ModelShape, assumptions: Assumptions
) -> StagePlan:
    """LESS's warmup (method ``less``): :func:`lora_training` of the targeted model with the
    ``targeted.less`` settings on ``warmup_share`` of every pool dataset, for ``epochs`` epochs
    (one checkpoint per epoch). One job."""
    settings = _targeted_settings(config, "less")
    training = lora_training(shape, settings, assumptions)
    examples = sum(
        round(n * float(settings["warmup_share"])) for n in _pool(config, assumptions).values()
    )
    seconds = training.seconds(examples, assumptions)
    batch = int(settings["per_device_batch_size"])
    return StagePlan(
        stage="less_warmup",
        model=shape.name,
        jobs=1,
        precision="bf16 weights + bf16 autocast" if training.bf16 else "float32",
        memory=training.memory,
        time_s={"": seconds},
        total_gpu_hours=seconds / HOUR,
        notes=[
            f"LoRA r={int(settings['lora_r'])} on {', '.join(settings['target_modules'])}: "
            f"{training.lora:,} parameters",
            f"{examples:,} examples ({float(settings['warmup_share']):g} of the pool) x "
            f"{training.epochs} epochs, batch {batch} x {training.max_sequence_length}",
            f"{training.epochs} checkpoints",
        ],
    )


def less_gradients_plan(
    config: Mapping[str, Any], shape: ModelShape, assumptions: Assumptions
) -> StagePlan:
    """LESS's projected gradients (method ``less``) at each of the ``epochs`` checkpoints.

    One job per pool dataset and one for the query set. Per checkpoint every example goes
    through a forward and backward pass of the LoRA model (base in bf16 under autocast with
    ``less.bf16``, float32 adapters, dropout off); ``torch.func.vmap`` over ``less.batch_size``
    examples gives their per-example LoRA gradients, float32 vectors of ``P`` values, which a
    Rademacher matrix ``[P, d]`` projects to ``d = projection_dim``: ``2 P d`` float32 FLOPs per
    example, the matrix drawn in blocks of 65,536 rows. Memory: weights, adapters (and their bf16
    autocast copies), the batch's per-example gradients, its saved activations and loss logits,
    and one projection block. Batches are sorted by length (no padding counted).
    """
    from selectmoe.stages.gradients import PROJECTION_BLOCK_ROWS

    settings = _targeted_settings(config, "less")
    bf16 = bool(settings["bf16"])
    base_bytes = DTYPE_BYTES["bfloat16"] if bf16 else FP32
    batch, length = int(settings["batch_size"]), int(settings["max_sequence_length"])
    dim, epochs = int(settings["projection_dim"]), int(settings["epochs"])
    lora, saved, flops_per_token = lora_pass(shape, settings, batch=batch, dropout=False)
    tokens_per_batch = batch * length
    memory = {
        "weights": base_bytes * shape.total_params,
        "adapters": FP32 * lora + (DTYPE_BYTES["bfloat16"] * lora if bf16 else 0),
        # vmap's per-example gradients, their concatenation, and for pool examples the two
        # temporaries of the Adam-normalised direction
        "gradients": 4 * batch * FP32 * lora,
        "activations": tokens_per_batch * saved,
        "logits": tokens_per_batch * shape.vocab_size * LOSS_LOGITS_BYTES,
        "projection": PROJECTION_BLOCK_ROWS * dim * FP32,
    }
    memory.update(assumptions.with_overhead(sum(memory.values())))
    dtype = "bfloat16" if bf16 else "float32"
    time_s = {  # batches sorted by length: little padding
        label: epochs
        * (
            assumptions.seconds(flops_per_token * tokens, dtype)
            + assumptions.seconds(2 * lora * dim * examples, "float32")
        )
        for label, (examples, tokens) in _targeted_jobs(config, assumptions, length).items()
    }
    return StagePlan(
        stage="less_gradients",
        model=shape.name,
        jobs=len(time_s),
        precision=("bf16 weights + bf16 autocast" if bf16 else "float32") + ", float32 projection",
        memory=memory,
        time_s=time_s,
        total_gpu_hours=sum(time_s.values()) / HOUR,
        notes=[
            "one job per dataset and one for the queries",
            f"{epochs} checkpoints x (forward + backward, batch {batch} x {length} sorted by "
            "length, + projection)",
            f"LoRA r={int(settings['lora_r'])}: {lora:,} parameters projected to {dim:,} "
            f"dimensions",
        ],
    )


# ------------------------------------------------------------------------------------- table


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a workflow config YAML file.

    Raises
    ------
    ConfigError
        When the file is missing or does not hold a mapping.
    """
    import yaml

    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: config file not found; pass e.g. config/paper.yaml")
    try:
        loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(f"{config_path}: not valid YAML ({first})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config_path}: a config must be a mapping of sections")
    return loaded


def plan_table(
    config: Mapping[str, Any],
    *,
    gpu_memory_gib: float = 80.0,
    mfu: float = 0.4,
    assumptions: Assumptions | None = None,
    shapes: Mapping[str, ModelShape] | None = None,
) -> list[dict[str, Any]]:
    """The plan of every stage and model of ``config``, one dict per row.

    Parameters
    ----------
    config : mapping
        A workflow config (``config/paper.yaml`` parsed); overrides in it change the plan.
    gpu_memory_gib, mfu : float
        Override the same fields of ``assumptions``.
    assumptions : Assumptions, optional
        Everything else assumed (defaults: one H100 SXM 80 GB, LESS pool, see the class).
    shapes : mapping, optional
        Model shapes by source (hub id or directory), consulted before the built-in ones.

    Returns
    -------
    list of dict
        Rows in stage order (warmup, score; represent with the method ``rds``, less_warmup and
        less_gradients with ``less``; select, then finetune and evaluate per target), as
        :meth:`StagePlan.to_row` makes them.

    Raises
    ------
    SelectMoeError
        For a config the plan cannot read (missing section, unknown model or dataset).
    """
    base = assumptions or Assumptions()
    assumptions = replace(base, gpu_memory_gib=gpu_memory_gib, mfu=mfu)
    for section in ("base_model", "selection", "targets"):
        if not isinstance(config.get(section), Mapping):
            raise ConfigError(f"config key {section} is missing; see config/paper.yaml")

    def lookup(source: str) -> ModelShape:
        if shapes and source in shapes:
            return shapes[source]
        return shape_for_model(source)

    try:
        selector = lookup(str(config["base_model"]["source"]))
        if not selector.is_moe:
            raise ModelError(f"{selector.name}: the selector must be an OLMoE (MoE) model")
        plans = [
            warmup_plan(config, selector, assumptions),
            score_plan(config, selector, assumptions),
            select_plan(config, selector, assumptions),
        ]
        methods = set(config["selection"]["methods"])
        if methods & set(TARGETED_METHODS):
            source = _targeted_source(config)
            targeted = lookup(source)
            if targeted.is_moe:
                raise ModelError(f"targeted.model {source}: the plan models dense targets only")
            if "rds" in methods:
                plans.append(represent_plan(config, targeted, assumptions))
            if "less" in methods:
                plans.append(less_warmup_plan(config, targeted, assumptions))
                plans.append(less_gradients_plan(config, targeted, assumptions))
        for target, entry in config["targets"].items():
            shape = lookup(str(entry["model"]))
            if shape.is_moe:
                raise ModelError(f"targets.{target}: the plan models dense targets only")
            plans.append(finetune_plan(config, target, shape, assumptions))
            plans.append(evaluate_plan(config, target, shape, assumptions))
    except KeyError as error:
        raise ConfigError(
            f"config key {error.args[0]!r} is missing; see config/paper.yaml"
        ) from None
    order = {
        "warmup": 0,
        "score": 1,
        "represent": 2,
        "less_warmup": 3,
        "less_gradients": 4,
        "select": 5,
        "finetune": 6,
        "evaluate": 7,
    }
    plans.sort(key=lambda p: order[p.stage])  # stable: targets keep their config order
    rows = [plan.to_row(assumptions.gpu_memory_gib) for plan in plans]
    settings = {k: v for k, v in asdict(assumptions).items() if k != "pool_sizes"}
    for row in rows:
        row["assumptions"] = settings
    return rows


def _hours(hours: float) -> str:
    if hours < 0.1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h" if hours < 100 else f"{hours:,.0f} h"


def format_plan_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`plan_table`'s rows (one line per row)."""
    limit = rows[0]["gpu_memory_limit_gib"] if rows else 80.0
    header = (
        "| stage | model | jobs | precision | GPU memory / job | of which | "
        f"fits {limit:g} GiB | time / job | GPU-hours, all jobs |"
    )
    lines = [header, "| --- | --- | ---: | --- | ---: | --- | --- | --- | ---: |"]
    for row in rows:
        if row["device"] == "cpu":
            memory = f"CPU job ({row['host_memory_gib']:.1f} GiB host)"
            parts = "—"
            fits = "—"
        else:
            memory = f"{row['gpu_memory_gib']:.1f} GiB"
            parts = ", ".join(
                f"{name.replace('_', ' ')} {gib:.1f}"
                for name, gib in row["memory_gib"].items()
                if gib >= 0.05
            )
            fits = "yes" if row["fits"] else "**no**"
        times = row["time_per_job_h"]
        if list(times) == [""]:
            per_job = _hours(times[""])
        elif row["stage"] in ("score", "represent", "less_gradients"):
            per_job = f"{_hours(min(times.values()))} – {_hours(max(times.values()))}"
        else:
            per_job = ", ".join(f"{label}: {_hours(h)}" for label, h in times.items())
        total = f"{row['total_gpu_hours']:.1f}" if row["device"] == "gpu" else "— (CPU)"
        lines.append(
            f"| {row['stage']} | {row['model']} | {row['jobs']} | {row['precision']} | "
            f"{memory} | {parts} | {fits} | {per_job} | {total} |"
        )
    return "\n".join(lines)
