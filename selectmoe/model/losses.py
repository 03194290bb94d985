"""Quality-gate losses.

Every loss is a function ``(good, mask, config) -> scalar tensor`` of one layer's gate output
``good = sigmoid(quality_score)`` (shape ``[B, T]``) and the attention mask (``[B, T]``, 1 on real
tokens). :func:`quality_loss` averages it over layers. Statistics are taken over the valid tokens
with weights that make each *sample* count the same (``sample_wise_averaging=True``) or each *token*
count the same (``False``); padding has weight zero, so adding padding changes nothing.

Built-in types (SPEC §3):

- ``sigmoid``: :math:`E[g]`, pushes tokens toward the trash path;
- ``mse``: :math:`E[g^2]`;
- ``beta_moment_matching``: :math:`w_m (E[g]-\\mu^*)^2 + w_v (Var[g]-\\sigma^{2*})^2`;
- ``mean_variance_regularization``: :math:`(E[g]-0.5)^2 - \\lambda Var[g]`.

Users add their own with :func:`register_quality_loss`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from selectmoe.catalogue import register_name
from selectmoe.errors import ConfigError

__all__ = [
    "QualityLossFn",
    "available_quality_losses",
    "causal_lm_loss",
    "get_quality_loss",
    "quality_loss",
    "register_quality_loss",
    "token_weights",
    "weighted_mean_var",
]

logger = logging.getLogger(__name__)

QualityLossFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
_REGISTRY: dict[str, QualityLossFn] = {}


def register_quality_loss(name: str, fn: QualityLossFn | None = None, *, overwrite: bool = False):
    """Register a quality loss under ``name``; usable as a decorator.

    The function receives ``good`` (``[B, T]``, in (0, 1)), ``mask`` (``[B, T]``) and the model
    config, and returns a scalar tensor that must be differentiable with respect to ``good``.
    """

    def decorator(function: QualityLossFn) -> QualityLossFn:
        if name in _REGISTRY and not overwrite:
            raise ConfigError(f"quality loss {name!r} is already registered; pass overwrite=True")
        _REGISTRY[name] = function
        register_name("quality_loss", name)
        return function

    return decorator(fn) if fn is not None else decorator


def available_quality_losses() -> list[str]:
    """Names of the registered quality losses, sorted."""
    return sorted(_REGISTRY)


def get_quality_loss(name: str) -> QualityLossFn:
    """The loss registered under ``name``.

    Raises
    ------
    ConfigError
        For an unknown name; the message lists the valid ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(available_quality_losses())
        raise ConfigError(
            f"unknown quality_loss_type {name!r}; valid types: {valid} "
            "(or register one with selectmoe.model.losses.register_quality_loss)"
        ) from None


def token_weights(mask: torch.Tensor, *, sample_wise: bool) -> torch.Tensor:
    """Weights ``[B, T]`` that sum to 1 over the valid tokens.

    With ``sample_wise`` each sample with at least one valid token gets total weight ``1 / B'``
    (``B'`` such samples), split evenly over its tokens; otherwise all valid tokens weigh the same.
    """
    mask = mask.to(torch.float32)
    if sample_wise:
        lengths = mask.sum(dim=-1, keepdim=True)  # (B, 1)
        per_sample = mask / lengths.clamp(min=1.0)
        n_samples = (lengths > 0).sum().clamp(min=1)
        return per_sample / n_samples
    return mask / mask.sum().clamp(min=1.0)


def weighted_mean_var(
    good: torch.Tensor, mask: torch.Tensor, *, sample_wise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and (biased) variance of ``good`` over valid tokens, differentiable."""
    weights = token_weights(mask, sample_wise=sample_wise).to(good.dtype)
    mean = (weights * good).sum()
    var = (weights * (good - mean) ** 2).sum()
    return mean, var


def _sample_wise(config: Any) -> bool:
    return bool(getattr(config, "sample_wise_averaging", True))


@register_quality_loss("sigmoid")
def sigmoid_loss(good: torch.Tensor, mask: torch.Tensor, config: Any) -> torch.Tensor:
    """Mean gate output: minimising it pushes tokens toward the trash expert."""
    return (token_weights(mask, sample_wise=_sample_wise(config)).to(good.dtype) * good).sum()


@register_quality_loss("mse")
def mse_loss(good: torch.Tensor, mask: torch.Tensor, config: Any) -> torch.Tensor:
    """Mean squared gate output."""
    return (token_weights(mask, sample_wise=_sample_wise(config)).to(good.dtype) * good**2).sum()


@register_quality_loss("beta_moment_matching")
def beta_moment_matching_loss(good: torch.Tensor, mask: torch.Tensor, config: Any) -> torch.Tensor:
    """Match the gate's batch mean and variance to a target Beta distribution's moments."""
    mean, var = weighted_mean_var(good, mask, sample_wise=_sample_wise(config))
    return (
        config.w_mean * (mean - config.beta_target_mean) ** 2
        + config.w_var * (var - config.beta_target_var) ** 2
    )


@register_quality_loss("mean_variance_regularization")
def mean_variance_regularization_loss(
    good: torch.Tensor, mask: torch.Tensor, config: Any
) -> torch.Tensor:
    """Keep the batch mean near 0.5 while rewarding spread (a decisive gate)."""
    mean, var = weighted_mean_var(good, mask, sample_wise=_sample_wise(config))
    return (mean - 0.5) ** 2 - config.lambda_var * var


def quality_loss(
    good_per_layer: Sequence[torch.Tensor], mask: torch.Tensor | None, config: Any
) -> torch.Tensor:
    """The configured quality loss, averaged over layers.

    Parameters
    ----------
    good_per_layer : sequence of tensors ``[B, T]``
        ``sigmoid(quality_score)`` of each MoE layer.
    mask : tensor ``[B, T]`` or None
        Attention mask; None means every token is valid.
    config : SelectMoeConfig
        Read at call time: ``quality_loss_type``, ``sample_wise_averaging`` and the loss parameters.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    loss_fn = get_quality_loss(config.quality_loss_type)
    if mask is None:
        mask = torch.ones_like(good_per_layer[0])
    mask = mask.to(good_per_layer[0].device)
    per_layer = torch.stack([loss_fn(good, mask, config) for good in good_per_layer])
    if getattr(config, "quality_loss_debug", False):
        with torch.no_grad():
            stats = [
                weighted_mean_var(g.float(), mask, sample_wise=_sample_wise(config))
                for g in good_per_layer
            ]
            logger.info(
                "quality loss %s: per layer %s; good mean %s; good var %s",
                config.quality_loss_type,
                [round(v, 6) for v in per_layer.detach().float().tolist()],
                [round(float(m), 4) for m, _ in stats],
                [round(float(v), 6) for _, v in stats],
            )
    return per_layer.mean()


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, sample_wise: bool
) -> torch.Tensor:
    """Next-token cross entropy of ``logits`` ``[B, T, V]`` and ``labels`` ``[B, T]`` (-100: none).

    With ``sample_wise`` it is the mean over samples (that have a label) of each sample's mean
    token loss, so a short and a long sample weigh the same; otherwise the mean over label tokens.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shift_labels.shape)  # (batch, seq_len - 1)
    valid = (shift_labels != -100).to(token_loss.dtype)
    if sample_wise:
        counts = valid.sum(dim=-1)
        has_labels = counts > 0
        per_sample = (token_loss * valid).sum(dim=-1) / counts.clamp(min=1)
        return per_sample[has_labels].sum() / has_labels.sum().clamp(min=1)
    return (token_loss * valid).sum() / valid.sum().clamp(min=1)
