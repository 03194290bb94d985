"""Stage 1: warm up the quality gates and MoE routers of a converted Select-MoE model.

``peft_mode="full_rank"`` trains exactly the tensors whose names end in one of
:data:`FULL_RANK_TARGETS` (every quality gate and every MoE router weight); all other weights stay
frozen and bit-identical.

``peft_mode="lora"`` puts LoRA adapters (peft ``target_parameters``) on the raw router weights
named by ``lora_target_parameters`` (default ``mlp.gate.weight``: OLMoE's ``OlmoeTopKRouter``
holds a bare ``weight``, not an ``nn.Linear``) and trains the new quality gates in full (a gate
is a single ``[1, hidden]`` row, which a low-rank adapter could not make smaller).

The output ``full_rank_weights.pt`` holds::

    {"weights": {param_name: tensor}, "peft_mode": "full_rank" | "lora",
     "target_patterns": [...], "config": {...}, "history": [...],
     "lora_config": {...}}   # lora only; names are those of the peft-wrapped model

``history`` has one record per logged optimizer step: ``step``, ``epoch``, ``lr``, ``loss``,
``lm_loss``, ``quality_loss``, ``good_mean`` (the gate output ``sigmoid(quality_score)`` averaged
over valid tokens and layers) and, per layer ``i``, ``good_mean/layer_{i}`` and
``good_sq/layer_{i}`` (mean and mean square of the gate output over the valid tokens; the spread
is ``sqrt(good_sq - good_mean**2)``).

Training checkpoints go to ``checkpoint_dir`` (outside the declared output) and are removed once
the output is written; a killed job resumes from the newest one (see
:mod:`selectmoe.training.loop`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from selectmoe.data.encoding import DEFAULT_TEMPLATE, encode_examples, pad_token_id_of
from selectmoe.data.pool import load_pool, subset_examples
from selectmoe.errors import ConfigError, ModelError
from selectmoe.io import atomic_torch_save
from selectmoe.model.configuration_select_moe import (
    LOSS_SCALINGS,
    QUALITY_LOSS_PARAMETERS,
    QualityLossParameters,
)
from selectmoe.model.losses import get_quality_loss
from selectmoe.model.modeling_select_moe import (
    SelectMoeForCausalLM,
    check_trash_expert_mode,
    initialize_quality_gates,
    register_select_moe,
)
from selectmoe.model.warmed import PEFT_MODES, QUALITY_GATE_TARGET, apply_router_lora
from selectmoe.schema import default_seed, section_defaults
from selectmoe.training.checkpoints import clear_checkpoints, settings_fingerprint
from selectmoe.training.distributed import distributed_info, resolve_device
from selectmoe.training.loop import (
    Optimization,
    accumulation_steps,
    check_batch_sizes,
    seed_everything,
    train_loop,
)

__all__ = [
    "FULL_RANK_TARGETS",
    "MODEL_OVERRIDE_KEYS",
    "WarmupSettings",
    "run_warmup",
]

logger = logging.getLogger(__name__)

FULL_RANK_TARGETS: tuple[str, ...] = ("quality_gate.weight", "mlp.gate.weight")
# settings that are model-config fields: applied to the model before training and saved with the
# weights so that scoring runs the model exactly as it was trained
MODEL_OVERRIDE_KEYS: tuple[str, ...] = (
    "quality_loss_type",
    "quality_loss_weight",
    "trash_expert_mode",
    *QUALITY_LOSS_PARAMETERS,
    "quality_loss_debug",
    "enable_load_balancing",
    "loss_scaling",
)


_WARMUP_DEFAULTS = section_defaults("warmup")


@dataclass
class WarmupSettings(QualityLossParameters):
    """Stage-1 settings (SPEC §5 defaults); the quality losses' parameters are inherited."""

    peft_mode: str = _WARMUP_DEFAULTS["peft_mode"]
    lora_r: int = _WARMUP_DEFAULTS["lora_r"]
    lora_alpha: int = _WARMUP_DEFAULTS["lora_alpha"]
    lora_target_parameters: list[str] = field(
        default_factory=lambda: list(_WARMUP_DEFAULTS["lora_target_parameters"])
    )
    learning_rate: float = _WARMUP_DEFAULTS["learning_rate"]
    subset_ratio: float = _WARMUP_DEFAULTS["subset_ratio"]
    epochs: int = _WARMUP_DEFAULTS["epochs"]
    effective_batch_size: int = _WARMUP_DEFAULTS["effective_batch_size"]
    per_device_batch_size: int = _WARMUP_DEFAULTS["per_device_batch_size"]
    warmup_ratio: float = _WARMUP_DEFAULTS["warmup_ratio"]
    max_sequence_length: int = _WARMUP_DEFAULTS["max_sequence_length"]
    seed: int = field(default_factory=default_seed)
    gate_init_seed: int | None = None
    quality_loss_type: str = "sigmoid"
    quality_loss_weight: float = _WARMUP_DEFAULTS["quality_loss_weight"]
    trash_expert_mode: str = _WARMUP_DEFAULTS["trash_expert_mode"]
    quality_loss_debug: bool = _WARMUP_DEFAULTS["quality_loss_debug"]
    enable_load_balancing: bool = _WARMUP_DEFAULTS["enable_load_balancing"]
    loss_scaling: str = _WARMUP_DEFAULTS["loss_scaling"]
    full_sequence_prediction: bool = _WARMUP_DEFAULTS["full_sequence_prediction"]
    mask_special_tokens: bool = _WARMUP_DEFAULTS["mask_special_tokens"]
    log_every: int = _WARMUP_DEFAULTS["log_every"]
    max_steps: int | None = _WARMUP_DEFAULTS["max_steps"]
    checkpoint_every: int = _WARMUP_DEFAULTS["checkpoint_every"]
    device: str = _WARMUP_DEFAULTS["device"]
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if self.peft_mode not in PEFT_MODES:
            raise ConfigError(
                f"warmup.peft_mode is {self.peft_mode!r}; allowed: {', '.join(PEFT_MODES)}"
            )
        get_quality_loss(self.quality_loss_type)  # unknown names fail here, listing valid ones
        check_trash_expert_mode(self.trash_expert_mode)  # before any model loads
        if self.loss_scaling not in LOSS_SCALINGS:
            raise ConfigError(
                f"warmup.loss_scaling is {self.loss_scaling!r}; allowed: {', '.join(LOSS_SCALINGS)}"
            )
        for key in ("per_device_batch_size", "effective_batch_size", "epochs", "lora_r"):
            if getattr(self, key) < 1:
                raise ConfigError(f"warmup.{key} is {getattr(self, key)}; it must be >= 1")
        check_batch_sizes(self.effective_batch_size, self.per_device_batch_size, section="warmup")
        if not 0 < self.subset_ratio <= 1:
            raise ConfigError(f"warmup.subset_ratio is {self.subset_ratio}; it must be in (0, 1]")
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"warmup.checkpoint_every is {self.checkpoint_every}; use 0 (never) or more"
            )
        if self.peft_mode == "lora" and not self.lora_target_parameters:
            raise ConfigError("warmup.lora_target_parameters is empty; name the router weights")

    def lora_config_dict(self) -> dict[str, Any]:
        """Keyword arguments of ``peft.LoraConfig`` for ``peft_mode="lora"``.

        peft's parameter adapters take no dropout, so the adapter has none.
        """
        return {
            "r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": 0.0,
            "target_modules": [],
            "target_parameters": list(self.lora_target_parameters),
        }


def run_warmup(
    *,
    model_dir: str | os.PathLike[str],
    pool_files: list[str | os.PathLike[str]],
    output_path: str | os.PathLike[str],
    settings: WarmupSettings,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train the gates and routers on a ``subset_ratio`` sample of the pool; save their weights.

    Parameters
    ----------
    model_dir : path-like
        A converted Select-MoE model (``selectmoe convert``) with its tokenizer.
    pool_files : list of path-like
        LESS-format JSONL files.
    output_path : path-like
        ``full_rank_weights.pt``, written atomically (by the main process only when several
        processes train under ``accelerate launch``).
    checkpoint_dir : path-like, optional
        Where training checkpoints go (default ``{output_path}.checkpoints``); removed once the
        output is written. ``settings.checkpoint_every = 0`` disables them.

    Returns
    -------
    dict
        The saved object without the tensors: peft_mode, target_patterns, config, history.
    """
    register_select_moe()
    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: converted model not found; run the convert stage first")
    info = distributed_info()
    if checkpoint_dir is None:
        checkpoint_dir = Path(f"{os.fspath(output_path)}.checkpoints")
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = SelectMoeForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    for key in MODEL_OVERRIDE_KEYS:
        setattr(model.config, key, getattr(settings, key))
    if settings.gate_init_seed is not None:  # a replicate's own gates (not the conversion's)
        initialize_quality_gates(model, settings.gate_init_seed)

    n_layers = model.config.num_hidden_layers
    lora_config = None
    if settings.peft_mode == "lora":
        lora_config = settings.lora_config_dict()
        model, adapted = apply_router_lora(model, lora_config)
        target_patterns = [*settings.lora_target_parameters, QUALITY_GATE_TARGET]
        if info.is_main:
            logger.info("LoRA r=%d on %d router modules", settings.lora_r, len(adapted))
    else:
        target_patterns = list(FULL_RANK_TARGETS)
        trained = [n for n, _ in model.named_parameters() if n.endswith(FULL_RANK_TARGETS)]
        if len(trained) != 2 * n_layers:
            raise ModelError(
                f"{model_dir}: found {len(trained)} gate/router tensors, expected {2 * n_layers}"
            )
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trained)
    trained_names = [n for n, p in model.named_parameters() if p.requires_grad]

    examples = subset_examples(
        load_pool(pool_files), ratio=settings.subset_ratio, seed=settings.seed
    )
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=settings.full_sequence_prediction,
        mask_special_tokens=settings.mask_special_tokens,
        max_sequence_length=settings.max_sequence_length,
        template=settings.template,
    )
    if info.is_main:
        logger.info("warmup on %d examples (subset_ratio %s)", len(encoded), settings.subset_ratio)

    def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        output = model(**batch, output_router_logits=True)
        with torch.no_grad():
            # the gate output good = sigmoid(quality_score) over the valid tokens, per layer: its
            # mean (the curve that shows the quality loss pulling tokens toward the trash
            # expert) and its mean square, from which the report derives the spread
            # sqrt(good_sq - good_mean**2) (moments, unlike standard deviations, average
            # correctly over micro-batches and processes)
            mask = batch["attention_mask"].to(torch.float32)
            n_valid = mask.sum().clamp(min=1.0)
            good = torch.stack(
                [torch.sigmoid(r["quality_score"].float()[..., 0]) for r in output.router_logits]
            )  # (layers, batch, seq_len)
            layer_mean = (good * mask).sum(dim=(1, 2)) / n_valid
            layer_sq = (good.square() * mask).sum(dim=(1, 2)) / n_valid
            good_mean = layer_mean.mean()
            layer_mean, layer_sq = layer_mean.tolist(), layer_sq.tolist()  # one device sync
        metrics = {
            "lm_loss": output.lm_loss.detach(),
            "quality_loss": output.quality_loss.detach(),
            "good_mean": good_mean,
            **{f"good_mean/layer_{i}": value for i, value in enumerate(layer_mean)},
            **{f"good_sq/layer_{i}": value for i, value in enumerate(layer_sq)},
        }
        return output.loss, metrics

    fingerprint = settings_fingerprint(
        "warmup",
        settings,
        examples=[(e.dataset, e.id) for e in examples],
        model_dir=os.path.abspath(model_dir),
        world_size=info.world_size,
    )
    result = train_loop(
        model,
        encoded,
        parameters=model.parameters(),
        compute_loss=compute_loss,
        pad_token_id=pad_token_id_of(tokenizer),
        optimization=Optimization.of(
            settings,
            micro_batch_size=settings.per_device_batch_size,
            gradient_accumulation_steps=accumulation_steps(
                settings.effective_batch_size, settings.per_device_batch_size, section="warmup"
            ),
        ),
        seed=settings.seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=settings.checkpoint_every,
        fingerprint=fingerprint,
    )
    state = dict(model.named_parameters())
    payload = {
        "weights": {
            name: state[name].detach().to("cpu", torch.float32).clone() for name in trained_names
        },
        "peft_mode": settings.peft_mode,
        "target_patterns": target_patterns,
        "config": {
            "settings": asdict(settings),
            "model_overrides": {key: getattr(settings, key) for key in MODEL_OVERRIDE_KEYS},
            "model_dir": os.fspath(model_dir),
            "n_examples": len(encoded),
            "world_size": info.world_size,
        },
        "history": result["history"],
        "optimizer_steps": result["optimizer_steps"],
        "tokens_seen": result["tokens_seen"],
        "seconds": result["seconds"],
        "resumed_from_step": result["resumed_from_step"],
    }
    if lora_config is not None:
        payload["lora_config"] = lora_config
    if info.is_main:
        atomic_torch_save(payload, output_path)
        clear_checkpoints(checkpoint_dir)
    return {k: v for k, v in payload.items() if k != "weights"}
