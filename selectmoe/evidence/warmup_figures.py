"""The warmup's training curves: LM and quality loss per step, and mean and spread of the gate
output per layer, from the ``history`` in ``full_rank_weights.pt``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from selectmoe.errors import SelectMoeError
from selectmoe.evidence.figures import layer_colors, new_figure, save_figure

__all__ = [
    "load_warmup_history",
    "plot_warmup_history",
]

_LAYER_MEAN = "good_mean/layer_{}"
_LAYER_SQUARE = "good_sq/layer_{}"


# --------------------------------------------------------------------------- warmup history


def load_warmup_history(weights_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The warmup's per-step metrics as a table, with the per-layer spread of the gate output.

    Parameters
    ----------
    weights_path : path
        ``full_rank_weights.pt`` written by :func:`selectmoe.stages.warmup.run_warmup`.

    Returns
    -------
    pandas.DataFrame
        One row per logged optimizer step, sorted by ``step``: the history's columns (``step``,
        ``epoch``, ``lr``, ``loss``, ``lm_loss``, ``quality_loss``, ``good_mean``, and per layer
        ``good_mean/layer_{i}`` and ``good_sq/layer_{i}`` when logged) plus ``good_std/layer_{i}``
        ``= sqrt(max(good_sq - good_mean**2, 0))``. The number of layers is in
        ``frame.attrs["n_layers"]`` (0 when the history has no per-layer metrics) and the loss type
        in ``frame.attrs["quality_loss_type"]``.

    Raises
    ------
    SelectMoeError
        When the file is missing or unreadable, or holds no history.
    """
    import torch

    path = Path(weights_path)
    if not path.is_file():
        raise SelectMoeError(f"warmup weights not found: {path}; run the warmup stage first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file gets the same one-line error
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise SelectMoeError(
            f"{path}: cannot be read as warmup weights ({type(error).__name__}: {reason}); "
            "re-run the warmup stage"
        ) from error
    history = payload.get("history") if isinstance(payload, dict) else None
    if (
        not isinstance(history, list)
        or not history
        or not all(isinstance(r, dict) for r in history)
    ):
        raise SelectMoeError(
            f"{path}: no training history (a list of per-step records); re-run the warmup stage"
        )
    frame = pd.DataFrame(history)
    if "step" not in frame.columns:
        raise SelectMoeError(f"{path}: history records have no 'step'; re-run the warmup stage")
    frame = frame.sort_values("step", kind="stable").reset_index(drop=True)
    n_layers = 0
    while _LAYER_MEAN.format(n_layers) in frame.columns:
        n_layers += 1
    for layer in range(n_layers):
        mean = frame[_LAYER_MEAN.format(layer)].astype("float64")
        square = frame.get(_LAYER_SQUARE.format(layer))
        if square is None:
            frame[f"good_std/layer_{layer}"] = math.nan
        else:
            variance = (square.astype("float64") - mean**2).clip(lower=0.0)
            frame[f"good_std/layer_{layer}"] = np.sqrt(variance)
    overrides = (payload.get("config") or {}).get("model_overrides") or {}
    frame.attrs["n_layers"] = n_layers
    frame.attrs["quality_loss_type"] = overrides.get("quality_loss_type")
    frame.attrs["quality_loss_weight"] = overrides.get("quality_loss_weight")
    return frame


def plot_warmup_history(
    weights_path: str | os.PathLike[str],
    *,
    losses_png: str | os.PathLike[str],
    good_ratio_png: str | os.PathLike[str],
    title: str | None = None,
) -> pd.DataFrame:
    """Draw the warmup's training curves into two PNGs.

    Parameters
    ----------
    weights_path : path
        ``full_rank_weights.pt`` (its ``history``, see :func:`load_warmup_history`).
    losses_png : path
        Two panels over the optimizer step: the LM loss (cross entropy; the total loss dashed)
        and the quality loss (before its weight ``quality_loss_weight``).
    good_ratio_png : path
        Two panels over the step, one line per MoE layer: the mean gate output
        ``good = sigmoid(quality_score)`` over the valid tokens (the share of each token sent to
        the experts rather than the trash expert) and its spread (standard deviation over the
        tokens). A history without per-layer metrics gets the mean over layers only, with a note.
    title : str, optional
        Prefix of the figure titles (default: the quality-loss type of the weights).

    Returns
    -------
    pandas.DataFrame
        The history as :func:`load_warmup_history` returns it.
    """
    frame = load_warmup_history(weights_path)
    loss_type = frame.attrs.get("quality_loss_type")
    heading = title or (f"warmup, quality loss '{loss_type}'" if loss_type else "warmup")
    steps = frame["step"].to_numpy(dtype=float)

    figure = new_figure(11.0, 4.0)
    left, right = figure.subplots(1, 2)
    if "lm_loss" in frame:
        left.plot(steps, frame["lm_loss"], marker="o", markersize=3, label="LM loss")
    if "loss" in frame:
        left.plot(steps, frame["loss"], linestyle="--", color="tab:gray", label="total loss")
    left.set_xlabel("optimizer step")
    left.set_ylabel("loss")
    left.set_title("LM loss (cross entropy)")
    left.legend(fontsize="small")
    if "quality_loss" in frame:
        right.plot(steps, frame["quality_loss"], marker="o", markersize=3, color="tab:orange")
    weight = frame.attrs.get("quality_loss_weight")
    right.set_title(
        "quality loss" + (f" (enters the total x {weight:g})" if weight is not None else "")
    )
    right.set_xlabel("optimizer step")
    right.set_ylabel("quality loss (mean over layers)")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    figure.suptitle(f"{heading}: loss per step")
    save_figure(figure, losses_png)

    figure = new_figure(11.0, 4.0)
    left, right = figure.subplots(1, 2)
    n_layers = frame.attrs["n_layers"]
    if n_layers:
        colors = layer_colors(n_layers)
        for layer in range(n_layers):
            left.plot(
                steps,
                frame[_LAYER_MEAN.format(layer)],
                color=colors[layer],
                marker="o",
                markersize=2,
                label=f"layer {layer}",
            )
            right.plot(
                steps,
                frame[f"good_std/layer_{layer}"],
                color=colors[layer],
                marker="o",
                markersize=2,
                label=f"layer {layer}",
            )
        if n_layers <= 12:
            left.legend(fontsize="x-small", ncols=2)
        else:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize

            mappable = ScalarMappable(Normalize(0, n_layers - 1), cmap="viridis")
            figure.colorbar(mappable, ax=right, label="layer")
    else:
        if "good_mean" in frame:
            left.plot(steps, frame["good_mean"], marker="o", markersize=3, label="all layers")
            left.legend(fontsize="small")
        right.axis("off")
        right.text(
            0.5,
            0.5,
            "per-layer gate statistics were not logged\n(weights from an older selectmoe)",
            ha="center",
            va="center",
        )
    left.set_title("mean gate output good = sigmoid(quality_score)")
    left.set_xlabel("optimizer step")
    left.set_ylabel("mean over valid tokens")
    right.set_title("spread of the gate output")
    right.set_xlabel("optimizer step")
    right.set_ylabel("standard deviation over valid tokens")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    figure.suptitle(f"{heading}: good ratio per layer")
    save_figure(figure, good_ratio_png)
    return frame
