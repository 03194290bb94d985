"""Stage 1: warm up the quality gates and MoE routers of a converted Select-MoE model.

``peft_mode="full_rank"`` trains exactly the tensors whose names end in one of
:data:`FULL_RANK_TARGETS` (every quality gate and every MoE router weight); all other weights stay
frozen and bit-identical. The output ``full_rank_weights.pt`` holds::

    {"weights": {param_name: tensor}, "peft_mode": "full_rank",
     "target_patterns": [...], "config": {...}, "history": [...]}
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import AutoTokenizer

from selectmoe.data import encode_examples, load_pool, pad_token_id_of, subset_examples
from selectmoe.errors import ConfigError, ModelError
from selectmoe.io import atomic_torch_save
from selectmoe.losses import get_quality_loss
from selectmoe.modeling_select_moe import SelectMoeForCausalLM, register_select_moe
from selectmoe.training import resolve_device, seed_everything, train_loop

__all__ = [
    "FULL_RANK_TARGETS",
    "MODEL_OVERRIDE_KEYS",
    "WarmupSettings",
    "load_warmed_model",
    "run_warmup",
]

logger = logging.getLogger(__name__)

FULL_RANK_TARGETS: tuple[str, ...] = ("quality_gate.weight", "mlp.gate.weight")
PEFT_MODES: tuple[str, ...] = ("full_rank",)
# settings that are model-config fields: applied to the model before training and saved with the
# weights so that scoring runs the model exactly as it was trained
MODEL_OVERRIDE_KEYS: tuple[str, ...] = (
    "quality_loss_type",
    "quality_loss_weight",
    "trash_expert_mode",
    "beta_target_mean",
    "beta_target_var",
    "w_mean",
    "w_var",
    "lambda_var",
    "sample_wise_averaging",
    "quality_loss_debug",
    "enable_load_balancing",
)


@dataclass
class WarmupSettings:
    """Stage-1 settings (SPEC §5 defaults)."""

    peft_mode: str = "full_rank"
    learning_rate: float = 1e-4
    subset_ratio: float = 0.05
    epochs: int = 1
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.0
    max_sequence_length: int = 2048
    seed: int = 42
    quality_loss_type: str = "sigmoid"
    quality_loss_weight: float = 0.01
    trash_expert_mode: str = "zero"
    beta_target_mean: float = 0.5
    beta_target_var: float = 0.05
    w_mean: float = 1.0
    w_var: float = 1.0
    lambda_var: float = 0.1
    sample_wise_averaging: bool = True
    quality_loss_debug: bool = False
    enable_load_balancing: bool = False
    full_sequence_prediction: bool = True
    mask_special_tokens: bool = True
    log_every: int = 10
    max_steps: int | None = None
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.peft_mode not in PEFT_MODES:
            raise ConfigError(
                f"warmup.peft_mode is {self.peft_mode!r}; allowed: {', '.join(PEFT_MODES)}"
            )
        get_quality_loss(self.quality_loss_type)  # unknown names fail here, listing valid ones
        for key in ("batch_size", "gradient_accumulation_steps", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"warmup.{key} is {getattr(self, key)}; it must be >= 1")
        if not 0 < self.subset_ratio <= 1:
            raise ConfigError(f"warmup.subset_ratio is {self.subset_ratio}; it must be in (0, 1]")


def run_warmup(
    *,
    model_dir: str | os.PathLike[str],
    pool_files: list[str | os.PathLike[str]],
    output_path: str | os.PathLike[str],
    settings: WarmupSettings,
) -> dict[str, Any]:
    """Train the gates and routers on a ``subset_ratio`` sample of the pool; save their weights.

    Parameters
    ----------
    model_dir : path-like
        A converted Select-MoE model (``selectmoe convert``) with its tokenizer.
    pool_files : list of path-like
        LESS-format JSONL files.
    output_path : path-like
        ``full_rank_weights.pt``, written atomically.

    Returns
    -------
    dict
        The saved object without the tensors: peft_mode, target_patterns, config, history.
    """
    register_select_moe()
    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: converted model not found; run the convert stage first")
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = SelectMoeForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    for key in MODEL_OVERRIDE_KEYS:
        setattr(model.config, key, getattr(settings, key))

    trained_names = [
        name for name, _ in model.named_parameters() if name.endswith(FULL_RANK_TARGETS)
    ]
    expected = 2 * model.config.num_hidden_layers
    if len(trained_names) != expected:
        raise ModelError(
            f"{model_dir}: found {len(trained_names)} gate/router tensors, expected {expected}"
        )
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trained_names)

    examples = subset_examples(
        load_pool(pool_files), ratio=settings.subset_ratio, seed=settings.seed
    )
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=settings.full_sequence_prediction,
        mask_special_tokens=settings.mask_special_tokens,
        max_sequence_length=settings.max_sequence_length,
    )
    logger.info("warmup on %d examples (subset_ratio %s)", len(encoded), settings.subset_ratio)

    def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        output = model(**batch, output_router_logits=True)
        with torch.no_grad():
            # mean gate output over the valid tokens of every layer: the curve that shows the
            # quality loss pulling tokens toward the trash expert
            mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
            good_mean = torch.stack(
                [(torch.sigmoid(r["quality_score"]) * mask).sum() for r in output.router_logits]
            ).mean() / mask.sum().clamp(min=1.0)
        metrics = {
            "lm_loss": output.lm_loss.detach(),
            "quality_loss": output.quality_loss.detach(),
            "good_mean": good_mean,
        }
        return output.loss, metrics

    pad_id = pad_token_id_of(tokenizer)
    result = train_loop(
        model,
        encoded,
        parameters=model.parameters(),
        compute_loss=compute_loss,
        learning_rate=settings.learning_rate,
        epochs=settings.epochs,
        micro_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_ratio=settings.warmup_ratio,
        seed=settings.seed,
        pad_token_id=pad_id,
        device=device,
        log_every=settings.log_every,
        max_steps=settings.max_steps,
    )
    state = dict(model.named_parameters())
    payload = {
        "weights": {
            name: state[name].detach().to("cpu", torch.float32).clone() for name in trained_names
        },
        "peft_mode": settings.peft_mode,
        "target_patterns": list(FULL_RANK_TARGETS),
        "config": {
            "settings": asdict(settings),
            "model_overrides": {key: getattr(settings, key) for key in MODEL_OVERRIDE_KEYS},
            "model_dir": os.fspath(model_dir),
            "n_examples": len(encoded),
        },
        "history": result["history"],
        "optimizer_steps": result["optimizer_steps"],
        "tokens_seen": result["tokens_seen"],
        "seconds": result["seconds"],
    }
    atomic_torch_save(payload, output_path)
    return {k: v for k, v in payload.items() if k != "weights"}


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
    payload = torch.load(weights_path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "weights" not in payload or "peft_mode" not in payload:
        raise ModelError(
            f"{weights_path}: not a warmup weights file (missing 'weights'/'peft_mode')"
        )
    if payload["peft_mode"] != "full_rank":
        raise ModelError(
            f"{weights_path}: peft_mode {payload['peft_mode']!r} is not supported here"
        )
    model = SelectMoeForCausalLM.from_pretrained(model_dir, dtype=dtype)
    params = dict(model.named_parameters())
    unknown = [name for name in payload["weights"] if name not in params]
    if unknown:
        raise ModelError(f"{weights_path}: tensors not in {model_dir}: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in payload["weights"].items():
            if tensor.shape != params[name].shape:
                raise ModelError(
                    f"{weights_path}: {name} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor.to(dtype))
    for key, value in payload.get("config", {}).get("model_overrides", {}).items():
        setattr(model.config, key, value)
    model.eval()
    return model, payload
