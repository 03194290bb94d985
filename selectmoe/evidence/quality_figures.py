"""The quality scores per dataset and layer (from the router data), and every quality-loss type
of :mod:`selectmoe.model.losses` drawn as a function of the gate output."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from selectmoe.errors import SelectMoeError
from selectmoe.evidence.figures import new_figure, save_figure, write_csv
from selectmoe.model.configuration_select_moe import QUALITY_LOSS_PARAMETERS

__all__ = [
    "LOSS_PARAMETER_DEFAULTS",
    "plot_quality_losses",
    "plot_quality_scores",
    "quality_loss_curves",
    "quality_score_stats",
]

#: Parameters of the quality losses (SPEC §3 defaults), as :func:`quality_loss_curves` uses them.
LOSS_PARAMETER_DEFAULTS: dict[str, Any] = dict(QUALITY_LOSS_PARAMETERS)


# --------------------------------------------------------------------------- quality scores


def _router_good(router_data_paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, list]:
    """``sigmoid(quality_score)`` ``[N, L]`` (float64) and the dataset of every row."""
    import torch

    from selectmoe.data.router_data import load_router_data

    router = load_router_data(router_data_paths)
    good = torch.sigmoid(router.quality_score.to(torch.float64)).numpy()
    return good, list(router.datasets)


def quality_score_stats(router_data_paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Summary statistics of the per-layer quality score of every dataset.

    The per-layer quality score of a sample is ``sigmoid(quality_score[n, l])`` (the router data
    hold the mean raw gate score over the sample's valid tokens); the selection score is its mean
    over layers.

    Parameters
    ----------
    router_data_paths : sequence of path
        ``{dataset}_router_data.pt`` files (read with
        :func:`selectmoe.selection.select.load_router_data`).

    Returns
    -------
    pandas.DataFrame
        One row per (dataset, layer), datasets in file order, then ``layer="mean"`` (the selection
        score): ``n``, ``mean``, ``std`` (population), ``min``, ``q25``, ``median``, ``q75``,
        ``max``.
    """
    return _score_stats(*_router_good(router_data_paths))


def _score_stats(good: np.ndarray, datasets: Sequence[str]) -> pd.DataFrame:
    """:func:`quality_score_stats` of ``sigmoid(quality_score)`` ``[N, L]`` and the datasets."""
    dataset_array = np.asarray(datasets)
    rows = []
    layers: list[Any] = [*range(good.shape[1]), "mean"]
    for dataset in dict.fromkeys(datasets):
        values = good[dataset_array == dataset]
        for layer in layers:
            column = values.mean(axis=1) if layer == "mean" else values[:, layer]
            q25, median, q75 = np.quantile(column, [0.25, 0.5, 0.75])
            rows.append(
                {
                    "dataset": dataset,
                    "layer": str(layer),
                    "n": int(column.size),
                    "mean": float(column.mean()),
                    "std": float(column.std()),
                    "min": float(column.min()),
                    "q25": float(q25),
                    "median": float(median),
                    "q75": float(q75),
                    "max": float(column.max()),
                }
            )
    return pd.DataFrame(rows)


def plot_quality_scores(
    router_data_paths: Sequence[str | os.PathLike[str]],
    output_png: str | os.PathLike[str],
    *,
    stats_csv: str | os.PathLike[str] | None = None,
    title: str | None = None,
    bins: int = 30,
) -> pd.DataFrame:
    """Histogram of the quality score per dataset, one panel per layer plus the layer mean.

    Parameters
    ----------
    router_data_paths : sequence of path
        ``{dataset}_router_data.pt`` files of one warmup (one quality-loss type).
    output_png : path
        The figure: per MoE layer ``l`` a panel with one step histogram (density) per dataset of
        ``sigmoid(quality_score[:, l])``; the last panel is the selection score
        ``mean_l sigmoid(quality_score[:, l])``. Each panel has ``bins`` bins over its range.
    stats_csv : path, optional
        Where to write :func:`quality_score_stats` as CSV.
    title : str, optional
        Figure title (default: "Quality score per dataset and layer").
    bins : int
        Number of histogram bins over the observed range.

    Returns
    -------
    pandas.DataFrame
        :func:`quality_score_stats` of the same files.
    """
    good, datasets = _router_good(router_data_paths)
    stats = _score_stats(good, datasets)
    dataset_array = np.asarray(datasets)
    names = list(dict.fromkeys(datasets))
    n_layers = good.shape[1]
    n_panels = n_layers + 1
    n_cols = min(4, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    figure = new_figure(3.4 * n_cols, 2.7 * n_rows + 0.6)
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for panel in range(n_panels):
        axis = axes[panel]
        column = good.mean(axis=1) if panel == n_layers else good[:, panel]
        low, high = float(column.min()), float(column.max())
        edges = np.linspace(low, high if high > low else low + 1e-6, bins + 1)
        for name in names:
            axis.hist(
                column[dataset_array == name], bins=edges, histtype="step", density=True, label=name
            )
        axis.set_title(
            "mean over layers (selection score)" if panel == n_layers else f"layer {panel}"
        )
        axis.set_xlabel("sigmoid(quality_score)")
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize="x-small")
    for axis in axes[n_panels:]:
        axis.axis("off")
    figure.suptitle(title or "Quality score per dataset and layer")
    save_figure(figure, output_png)
    if stats_csv is not None:
        write_csv(stats, stats_csv)
    return stats


# --------------------------------------------------------------------------- quality losses


def _loss_config(params: Mapping[str, Any] | None) -> SimpleNamespace:
    values = dict(LOSS_PARAMETER_DEFAULTS)
    for key, value in (params or {}).items():
        if key in values:
            values[key] = value
    return SimpleNamespace(**values)


def quality_loss_curves(
    loss_types: Sequence[str] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    n_points: int = 101,
) -> dict[str, Any]:
    """Evaluate quality losses of :mod:`selectmoe.model.losses` on a grid of gate outputs.

    A quality loss is a function of a whole batch of gate outputs ``good`` (the batch mean and,
    for ``beta_moment_matching`` and ``mean_variance_regularization``, the batch variance), not of
    one value. Two batches stand in for "the loss as a function of the gate output ``g``":

    - ``uniform``: every valid token of the batch has ``good = g``: the batch mean is ``g`` and
      the variance 0 (``sigmoid`` gives ``g``, ``mse`` ``g**2``, ``beta_moment_matching``
      ``w_mean (g - mu)**2 + w_var * var_target**2``, ``mean_variance_regularization``
      ``(g - 0.5)**2``);
    - ``two_point``: half the tokens at ``g`` and half at ``1 - g``: the batch mean stays 0.5 and
      the variance is ``(g - 0.5)**2``, which shows the variance terms of the batch-statistic losses
      (``sigmoid`` is 0.5 throughout; ``mean_variance_regularization`` rewards spread with
      ``-lambda_var (g - 0.5)**2``).

    The registered loss functions themselves are called (``mask`` all ones, one sample), so the
    curves are what training optimises.

    Parameters
    ----------
    loss_types : sequence of str, optional
        Registered loss names; default: all
        (:func:`selectmoe.model.losses.available_quality_losses`).
    params : mapping, optional
        Loss parameters (keys of :data:`LOSS_PARAMETER_DEFAULTS`; other keys are ignored), e.g.
        the warmup settings of the config.
    n_points : int
        Grid size over ``g`` in [0, 1] (at least 2).

    Returns
    -------
    dict
        ``{"g": array, "uniform": {loss: array}, "two_point": {loss: array}, "params": dict}``.

    Raises
    ------
    ConfigError
        For an unknown loss type (listing the valid ones).
    SelectMoeError
        For ``n_points < 2``.
    """
    import torch

    from selectmoe.model.losses import available_quality_losses, get_quality_loss

    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise SelectMoeError(f"n_points must be an integer >= 2, got {n_points!r}")
    names = list(loss_types) if loss_types is not None else available_quality_losses()
    functions = {name: get_quality_loss(name) for name in names}
    config = _loss_config(params)
    grid = np.linspace(0.0, 1.0, n_points)
    mask = torch.ones(1, 2, dtype=torch.float64)
    curves: dict[str, dict[str, np.ndarray]] = {"uniform": {}, "two_point": {}}
    for name, function in functions.items():
        uniform, two_point = [], []
        with torch.no_grad():
            for g in grid:
                batch = torch.tensor([[g, g]], dtype=torch.float64)
                uniform.append(float(function(batch, mask, config)))
                batch = torch.tensor([[g, 1.0 - g]], dtype=torch.float64)
                two_point.append(float(function(batch, mask, config)))
        curves["uniform"][name] = np.asarray(uniform)
        curves["two_point"][name] = np.asarray(two_point)
    return {"g": grid, **curves, "params": vars(config).copy()}


def plot_quality_losses(
    output_png: str | os.PathLike[str],
    *,
    loss_types: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    n_points: int = 101,
) -> dict[str, Any]:
    """Plot every quality-loss type against the gate output (see :func:`quality_loss_curves`).

    Parameters
    ----------
    output_png : path
        Two panels: left, a batch whose tokens all have gate output ``g`` (variance 0); right, a
        batch split half at ``g`` and half at ``1 - g`` (mean 0.5, variance ``(g - 0.5)**2``).
        The panel titles say so; the figure title gives the loss parameters.
    loss_types, params, n_points
        As in :func:`quality_loss_curves`.

    Returns
    -------
    dict
        The curves (:func:`quality_loss_curves`).
    """
    curves = quality_loss_curves(loss_types, params=params, n_points=n_points)
    grid = curves["g"]
    figure = new_figure(11.0, 4.4)
    left, right = figure.subplots(1, 2, sharey=True)
    styles = ["-", "--", "-.", ":"]
    for index, name in enumerate(curves["uniform"]):
        style = styles[index % len(styles)]
        (line,) = left.plot(grid, curves["uniform"][name], linestyle=style, label=name)
        right.plot(grid, curves["two_point"][name], color=line.get_color(), linestyle=style)
    left.set_title("batch with every token at g\n(batch mean g, variance 0)", fontsize="medium")
    right.set_title(
        "batch with half the tokens at g, half at 1 - g\n(batch mean 0.5, variance (g - 0.5)²)",
        fontsize="medium",
    )
    for axis in (left, right):
        axis.set_xlabel("gate output g = sigmoid(quality_score)")
        axis.axhline(0.0, color="black", linewidth=0.6)
        axis.grid(True, alpha=0.3)
    left.set_ylabel("quality loss of the batch")
    left.legend(fontsize="small")
    p = curves["params"]
    figure.suptitle(
        "Quality-loss types as functions of the gate output "
        f"(beta target mean {p['beta_target_mean']:g}, var {p['beta_target_var']:g}, "
        f"w_mean {p['w_mean']:g}, w_var {p['w_var']:g}, lambda_var {p['lambda_var']:g})",
        fontsize="medium",
    )
    save_figure(figure, output_png)
    return curves
