"""Configuration of the Select-MoE model: an OLMoE config plus the quality gate and its losses."""

from __future__ import annotations

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import OlmoeConfig

__all__ = [
    "LOSS_SCALINGS",
    "QUALITY_LOSS_PARAMETERS",
    "TRASH_EXPERT_MODES",
    "QualityLossParameters",
    "SelectMoeConfig",
]

TRASH_EXPERT_MODES: tuple[str, ...] = ("zero", "noise", "custom")
LOSS_SCALINGS: tuple[str, ...] = ("separate", "original")
"""How the warmup's losses add up: SPEC §3's (``separate``) or the original code's."""


@dataclasses.dataclass
class QualityLossParameters:
    """Parameters of the quality losses and their defaults (SPEC §3): ``beta_target_mean``,
    ``beta_target_var``, ``w_mean``, ``w_var`` (``beta_moment_matching``), ``lambda_var``
    (``mean_variance_regularization``), ``sample_wise_averaging``. The warmup settings inherit
    them; the model config and the report's curves take their defaults from here."""

    beta_target_mean: float = 0.5
    beta_target_var: float = 0.05
    w_mean: float = 1.0
    w_var: float = 1.0
    lambda_var: float = 0.1
    sample_wise_averaging: bool = True


QUALITY_LOSS_PARAMETERS: dict[str, float | bool] = dataclasses.asdict(QualityLossParameters())


@strict
class SelectMoeConfig(OlmoeConfig):
    r"""OLMoE configuration with a quality gate and a trash expert in every MoE layer.

    Every OLMoE field keeps its meaning. The added fields are read at forward time, so changing
    them on a loaded model (``model.config.quality_loss_type = "mse"``) takes effect at once.

    quality_gate_init_mean, quality_gate_init_std (`float`):
        The gate weight is drawn from ``N(mean, std)`` when it is created (not loaded).
    trash_expert_mode (`str`):
        ``"zero"`` (zeros), ``"noise"`` (per-token Gaussian with the mean and std of the hidden
        state, no gradient) or ``"custom"`` (see ``selectmoe.register_trash_expert``).
    quality_gate_bypass (`bool`):
        Force ``good = 1`` everywhere: the model then computes exactly what OLMoE computes.
    quality_loss_type (`str`):
        A name registered in ``selectmoe.model.losses`` (``sigmoid``, ``mse``,
        ``beta_moment_matching``,
        ``mean_variance_regularization`` or a custom one).
    quality_loss_weight (`float`):
        Weight of the quality loss in the total loss.
    beta_target_mean, beta_target_var, w_mean, w_var (`float`):
        Parameters of ``beta_moment_matching``.
    lambda_var (`float`):
        Parameter of ``mean_variance_regularization``.
    sample_wise_averaging (`bool`):
        Each sample weighs the same in the LM and quality losses (else each token does).
    quality_loss_debug (`bool`):
        Log the parts of the quality loss at every forward with labels.
    enable_load_balancing (`bool`):
        Add OLMoE's load-balancing loss (``router_aux_loss_coef``) to the total loss.
    loss_scaling (`str`):
        ``"separate"`` (SPEC §3): ``CE + quality_loss_weight * L_quality`` (+ the balancing term
        when enabled). ``"original"`` (the original Select-MoE code): ``CE_token_mean +
        router_aux_loss_coef * (L_balance + quality_loss_weight * L_quality)`` with the balancing
        term always in (``enable_load_balancing`` is not read), whose effective quality weight at
        the paper's values (0.01 x 0.01) is 1e-4.
    """

    model_type = "select_moe"

    quality_gate_init_mean: float = 0.0
    quality_gate_init_std: float = 0.02
    trash_expert_mode: str = "zero"
    quality_gate_bypass: bool = False
    quality_loss_type: str = "sigmoid"
    quality_loss_weight: float = 0.01
    beta_target_mean: float = QUALITY_LOSS_PARAMETERS["beta_target_mean"]
    beta_target_var: float = QUALITY_LOSS_PARAMETERS["beta_target_var"]
    w_mean: float = QUALITY_LOSS_PARAMETERS["w_mean"]
    w_var: float = QUALITY_LOSS_PARAMETERS["w_var"]
    lambda_var: float = QUALITY_LOSS_PARAMETERS["lambda_var"]
    sample_wise_averaging: bool = QUALITY_LOSS_PARAMETERS["sample_wise_averaging"]
    quality_loss_debug: bool = False
    enable_load_balancing: bool = False
    loss_scaling: str = "separate"
