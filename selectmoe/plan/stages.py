"""One :class:`StagePlan` per stage and model: memory and time of its jobs; the number of jobs comes
from the workflow's job graph (:meth:`selectmoe.workflow.layout.Layout.job_counts`)."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from selectmoe.errors import ConfigError
from selectmoe.plan.memory import (
    DTYPE_BYTES,
    FP32,
    GIB,
    HOUR,
    LOSS_LOGITS_BYTES,
    MASK_BYTES,
    SCORING_CHUNK_TOKENS,
    TERA,
    TRAINABLE_BYTES,
    Assumptions,
    dense_inference_bytes_per_token,
    layer_input_bytes_per_token,
    lora_saved_bytes_per_token,
    moe_inference_bytes_per_token,
    moe_warmup_saved_bytes_per_token,
)
from selectmoe.plan.shapes import ModelShape
from selectmoe.selection.methods import uses_score
from selectmoe.workflow.config import with_defaults
from selectmoe.workflow.layout import FULL, Layout, Selection

# ------------------------------------------------------------------------------------ stages


__all__ = [
    "LoraTraining",
    "StagePlan",
    "artefact_plans",
    "complete_config",
    "evaluate_plan",
    "finetune_plan",
    "less_gradients_plan",
    "less_warmup_plan",
    "lora_pass",
    "lora_training",
    "represent_plan",
    "score_plan",
    "select_plan",
    "warmup_plan",
]


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


@functools.lru_cache(maxsize=8)
def _complete_json(text: str) -> dict[str, Any]:
    return with_defaults(json.loads(text))


def complete_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` validated, with the schema's defaults filled in (the schema is their one home).

    Raises
    ------
    ConfigError
        For a config the schema refuses (one line naming the key).
    """
    return copy.deepcopy(_complete_json(json.dumps(config, sort_keys=True, default=str)))


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A config section with the schema defaults filled in."""
    return dict(complete_config(config).get(name) or {})


def _jobs(config: Mapping[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """Every job of the config's sweep, from the workflow's job graph."""
    return Layout(complete_config(config)).jobs()


def _count(config: Mapping[str, Any], rule: str, **wildcards: str) -> int:
    """Jobs of ``rule`` in the sweep whose wildcards include ``wildcards``."""
    return sum(
        1
        for name, given in _jobs(config)
        if name == rule and all(given.get(k) == v for k, v in wildcards.items())
    )


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
    jobs = _count(config, "warmup")
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
    jobs = _count(config, "score")
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
        jobs=jobs,
        precision=dtype,
        memory=memory,
        time_s=time_s,
        # every dataset once per loss type and selection replicate (the job graph's count)
        total_gpu_hours=jobs / len(time_s) * sum(time_s.values()) / HOUR,
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
    jobs = _count(config, "cluster")
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
    return settings


def _label(selection: str) -> tuple[str, float]:
    """The size label (``"10%"``, ``"full"``) and the pool fraction of a ``{selection}``."""
    chosen = Selection.from_path(selection)
    if chosen.method == FULL:
        return "full", 1.0
    return f"{chosen.percentage * 100:g}%", chosen.percentage


def _selections(config: Mapping[str, Any], rule: str, target: str) -> tuple[dict, dict]:
    """Pool fraction and number of jobs of ``rule`` per selection size, for one target."""
    fractions: dict[str, float] = {}
    jobs: dict[str, int] = {}
    for name, wildcards in _jobs(config):
        if name == rule and wildcards.get("target") == target:
            label, fraction = _label(wildcards["row"])
            fractions[label] = fraction
            jobs[label] = jobs.get(label, 0) + 1
    return fractions, jobs


def _n_seeds(config: Mapping[str, Any]) -> int:
    """Finetune runs per row: selection replicates times finetune seeds."""
    replicates = len(_section(config, "selection")["replicates"])
    return replicates * len(_section(config, "finetune")["seeds"])


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
    every row, once per selection replicate and finetune seed."""
    settings = _finetune_settings(config, target)
    gpus = int(config.get("resources", {}).get("gpus", {}).get("finetune", 1) or 1)
    shards = gpus if settings.get("sharding", "ddp") == "fsdp" and gpus > 1 else 1
    training = lora_training(shape, settings, assumptions, shards=shards)
    pool = sum(_pool(config, assumptions).values())
    fractions, jobs = _selections(config, "finetune", target)
    seeds = _n_seeds(config)
    time_s = {
        label: training.seconds(round(pool * fraction), assumptions)
        for label, fraction in fractions.items()
    }
    batch, length = int(settings["per_device_batch_size"]), training.max_sequence_length
    notes = [
        f"LoRA r={int(settings['lora_r'])} on {', '.join(settings['target_modules'])}: "
        f"{training.lora:,} parameters",
        f"{training.epochs} epochs, batch {batch} x {length}",
        f"{seeds} finetune(s) per row (replicates x seeds)",
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
    seeds = _n_seeds(config)
    # one job per row evaluates every replicate's adapters on one loaded model, + the base model
    selections = _count(config, "evaluate", target=target)
    jobs = selections + _count(config, "evaluate_base", target=target)
    evaluations = selections * seeds + 1
    notes.append(f"{dtype} weights (the workflow passes no dtype to lm-eval)")
    notes.append(f"{seeds} adapter(s) per job (replicates x seeds), one base-model load")
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
    return dict(_section(config, "targeted")[method])


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
        jobs=_count(config, "represent"),
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
    jobs = _count(config, "less_warmup")  # one per selection replicate
    return StagePlan(
        stage="less_warmup",
        model=shape.name,
        jobs=jobs,
        precision="bf16 weights + bf16 autocast" if training.bf16 else "float32",
        memory=training.memory,
        time_s={"": seconds},
        total_gpu_hours=jobs * seconds / HOUR,
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
    from selectmoe.training.gradients import PROJECTION_BLOCK_ROWS

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
    jobs = _count(config, "less_gradients")  # every part once per selection replicate
    return StagePlan(
        stage="less_gradients",
        model=shape.name,
        jobs=jobs,
        precision=("bf16 weights + bf16 autocast" if bf16 else "float32") + ", float32 projection",
        memory=memory,
        time_s=time_s,
        total_gpu_hours=jobs / len(time_s) * sum(time_s.values()) / HOUR,
        notes=[
            "one job per dataset and one for the queries",
            f"{epochs} checkpoints x (forward + backward, batch {batch} x {length} sorted by "
            "length, + projection)",
            f"LoRA r={int(settings['lora_r'])}: {lora:,} parameters projected to {dim:,} "
            f"dimensions",
        ],
    )


def artefact_plans(config: Mapping[str, Any]) -> list[StagePlan]:
    """One row per artefact a plugin's kind of method reads (:mod:`selectmoe.workflow.artefacts`):
    its jobs from the job graph; its memory and time are the plugin's, not modelled here."""
    counts: dict[str, int] = {}
    for name, wildcards in _jobs(config):
        if name == "artefact":
            counts[wildcards["name"]] = counts.get(wildcards["name"], 0) + 1
    return [
        StagePlan(
            stage="artefact",
            model=f"{artefact} (plugin)",
            jobs=jobs,
            precision="",
            memory={},
            time_s={},
            total_gpu_hours=0.0,
            device="cpu",
            notes=["a plugin's artefact: memory and time not modelled"],
        )
        for artefact, jobs in sorted(counts.items())
    ]
