"""The memory model: bytes per element and per token of the tensors each stage keeps alive, and
the :class:`Assumptions` about hardware, allocator and data (Korthikanti et al. 2022, §4)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from selectmoe.errors import ConfigError
from selectmoe.plan.shapes import ModelShape

__all__ = [
    "ADAMW_STATE_BYTES",
    "DTYPE_BYTES",
    "FP32",
    "GIB",
    "HOUR",
    "INDEX_BYTES",
    "LESS_POOL_SIZES",
    "LOSS_LOGITS_BYTES",
    "MASK_BYTES",
    "SCORING_CHUNK_TOKENS",
    "TERA",
    "TRAINABLE_BYTES",
    "Assumptions",
    "dense_inference_bytes_per_token",
    "layer_input_bytes_per_token",
    "lora_saved_bytes_per_token",
    "moe_inference_bytes_per_token",
    "moe_warmup_saved_bytes_per_token",
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
