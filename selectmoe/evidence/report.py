"""Figures and tables of the workflow's report (``snakemake --report report.html``).

Every function reads the files that the stages wrote, computes what it draws (returned, so that it
can be tested and tabulated) and writes its PNGs (and CSVs) atomically through
:mod:`selectmoe.io`: a killed job leaves no file that looks finished.

- :func:`plot_warmup_history`: warmup training curves from ``full_rank_weights.pt``'s ``history``:
  LM loss and quality loss per step; mean and spread of the gate output per layer.
- :func:`plot_quality_scores`: the distribution of the per-layer quality score of every dataset,
  from the router data.
- :func:`plot_quality_losses`: every quality-loss type of :mod:`selectmoe.model.losses` as a
function of
  the gate output (see :func:`quality_loss_curves` for how batch-statistic losses are drawn).
- :func:`plot_noise_kept`: for the embedded demo, how much of the planted low-quality data each
  selection kept (``noise_labels.jsonl`` against each ``selected_data.jsonl``).
- :func:`selection_overview`: one row per selection (k, silhouette, scores, per-dataset counts).

Plots are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no display,
no global state).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from selectmoe.data.pool import iter_jsonl_objects, read_selected_keys
from selectmoe.errors import SelectMoeError
from selectmoe.evidence.figures import new_figure, save_figure
from selectmoe.io import atomic_write_text
from selectmoe.model.configuration_select_moe import QUALITY_LOSS_PARAMETERS
from selectmoe.selection.methods import POOL_ONLY_METHODS

__all__ = [
    "LOSS_PARAMETER_DEFAULTS",
    "PLOT_FILES",
    "load_noise_labels",
    "load_selected_ids",
    "load_warmup_history",
    "noise_kept",
    "plot_noise_kept",
    "plot_quality_losses",
    "plot_quality_scores",
    "plot_warmup_history",
    "quality_loss_curves",
    "quality_score_stats",
    "selection_overview",
    "write_plots",
]

#: Parameters of the quality losses (SPEC §3 defaults), as :func:`quality_loss_curves` uses them.
LOSS_PARAMETER_DEFAULTS: dict[str, Any] = dict(QUALITY_LOSS_PARAMETERS)
#: The plots of a selection (:func:`write_plots`), by name.
PLOT_FILES: dict[str, str] = {
    "elbow": "elbow.png",
    "silhouette": "silhouette.png",
    "cluster_sizes": "cluster_sizes.png",
    "score_distribution": "score_distribution.png",
}
_DPI = 100
_LAYER_MEAN = "good_mean/layer_{}"
_LAYER_SQUARE = "good_sq/layer_{}"


# --------------------------------------------------------------------------- helpers


def _write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def _layer_colors(n_layers: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n_layers - 1)) for i in range(n_layers)]


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
        colors = _layer_colors(n_layers)
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
        _write_csv(stats, stats_csv)
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


# --------------------------------------------------------------------------- planted noise


def load_noise_labels(path: str | os.PathLike[str]) -> dict[tuple[str, str], str]:
    """``(dataset, id) -> kind`` from the demo's ``noise_labels.jsonl`` (``"clean"``: not planted).

    Each line is ``{"dataset", "id", "planted": bool, "kind": str}``; a planted line without a
    kind gets ``"planted"``.

    Raises
    ------
    SelectMoeError
        On a missing file, invalid JSON, a line without ``dataset``/``id``/``planted``, a
        duplicate ``(dataset, id)`` or an empty file.
    """
    labels: dict[tuple[str, str], str] = {}
    for number, record in iter_jsonl_objects(path, "noise labels"):
        if not all(key in record for key in ("dataset", "id", "planted")):
            raise SelectMoeError(
                f"{path}:{number}: a noise label needs 'dataset', 'id' and 'planted'"
            )
        key = (str(record["dataset"]), str(record["id"]))
        if key in labels:
            raise SelectMoeError(f"{path}:{number}: duplicate noise label for {key}")
        labels[key] = str(record.get("kind") or "planted") if record["planted"] else "clean"
    if not labels:
        raise SelectMoeError(f"{path}: no noise labels")
    return labels


def load_selected_ids(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The ``(dataset, id)`` of every line of a ``selected_data.jsonl``, in file order
    (:func:`selectmoe.data.pool.read_selected_keys`)."""
    return read_selected_keys(path)


def noise_kept(
    noise_labels_path: str | os.PathLike[str],
    selections: Mapping[str, str | os.PathLike[str]],
) -> pd.DataFrame:
    """How much of the planted low-quality data each selection kept.

    Parameters
    ----------
    noise_labels_path : path
        The demo's ``noise_labels.jsonl`` (every pool example, planted or clean).
    selections : mapping of str to path
        Selection name (e.g. ``"selectmoe/sigmoid/p0.25"``) -> its ``selected_data.jsonl``.

    Returns
    -------
    pandas.DataFrame
        One row per selection, in the given order: ``selection``, ``n_pool``, ``n_selected``,
        ``selected_share`` (``n_selected / n_pool``: what a random selection would keep of any
        subset), ``n_planted_pool``, ``n_planted_selected``, ``planted_kept_share``
        (``n_planted_selected / n_planted_pool``: the share of the planted examples that was
        kept), ``planted_share_of_selection`` (``n_planted_selected / n_selected``),
        ``pool_planted_share`` (``n_planted_pool / n_pool``), and per noise kind ``kept/{kind}``
        (number selected).

    Raises
    ------
    SelectMoeError
        On unreadable files, a selection with an example that has no noise label (the selection
        was not made from this pool), or a repeated example in one selection.
    """
    if not selections:
        raise SelectMoeError("noise_kept needs at least one selection")
    labels = load_noise_labels(noise_labels_path)
    kinds = sorted({kind for kind in labels.values() if kind != "clean"})
    n_pool = len(labels)
    n_planted_pool = sum(kind != "clean" for kind in labels.values())
    rows = []
    for name, path in selections.items():
        selected = load_selected_ids(path)
        if len(set(selected)) != len(selected):
            raise SelectMoeError(f"{path}: an example is selected twice")
        unknown = [key for key in selected if key not in labels]
        if unknown:
            raise SelectMoeError(
                f"{path}: {len(unknown)} selected example(s) have no noise label (first: "
                f"{unknown[0]}); was the selection made from the pool of {noise_labels_path}?"
            )
        chosen = [labels[key] for key in selected]
        n_planted = sum(kind != "clean" for kind in chosen)
        row: dict[str, Any] = {
            "selection": name,
            "n_pool": n_pool,
            "n_selected": len(chosen),
            "selected_share": len(chosen) / n_pool,
            "n_planted_pool": n_planted_pool,
            "n_planted_selected": n_planted,
            "planted_kept_share": n_planted / n_planted_pool if n_planted_pool else math.nan,
            "planted_share_of_selection": n_planted / len(chosen) if chosen else math.nan,
            "pool_planted_share": n_planted_pool / n_pool,
        }
        for kind in kinds:
            row[f"kept/{kind}"] = sum(k == kind for k in chosen)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_noise_kept(
    noise_labels_path: str | os.PathLike[str],
    selections: Mapping[str, str | os.PathLike[str]],
    output_png: str | os.PathLike[str],
    *,
    output_csv: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Plot (and optionally tabulate) the planted noise each selection kept.

    Parameters
    ----------
    noise_labels_path, selections
        As in :func:`noise_kept`.
    output_png : path
        Two panels, one bar per selection: left, the share of the selection that is planted noise,
        stacked by noise kind, with the pool's share dashed (a random selection's expectation);
        right, the share of all planted examples that the selection kept, beside the share of the
        pool it kept (what a random selection would keep).
    output_csv : path, optional
        The table of :func:`noise_kept`.

    Returns
    -------
    pandas.DataFrame
        The table of :func:`noise_kept`.
    """
    table = noise_kept(noise_labels_path, selections)
    kinds = [c.removeprefix("kept/") for c in table.columns if c.startswith("kept/")]
    names = table["selection"].tolist()
    positions = np.arange(len(names))
    figure = new_figure(11.0, 0.9 + 0.45 * len(names) + 1.5)
    left, right = figure.subplots(1, 2, sharey=True)
    start = np.zeros(len(names))
    sizes = table["n_selected"].to_numpy(dtype=float)
    for kind in kinds:
        share = np.divide(
            table[f"kept/{kind}"].to_numpy(dtype=float),
            sizes,
            out=np.zeros(len(names)),
            where=sizes > 0,
        )
        left.barh(positions, share, left=start, label=kind)
        start += share
    left.axvline(
        table["pool_planted_share"].iloc[0],
        color="black",
        linestyle="--",
        label="share in the pool",
    )
    left.set_xlabel("planted examples / selected examples")
    left.set_title("planted noise in the selection", fontsize="medium")
    left.legend(fontsize="x-small", loc="lower right")
    height = 0.4
    right.barh(
        positions - height / 2,
        table["planted_kept_share"],
        height=height,
        color="tab:red",
        label="of the planted examples",
    )
    right.barh(
        positions + height / 2,
        table["selected_share"],
        height=height,
        color="lightgray",
        label="of the pool (random would keep this of the planted)",
    )
    right.set_xlabel("share kept")
    right.set_title("planted examples kept", fontsize="medium")
    right.legend(fontsize="x-small", loc="lower right")
    left.set_yticks(positions, names)
    left.invert_yaxis()
    for axis in (left, right):
        axis.set_xlim(0.0, 1.0)
        axis.grid(True, axis="x", alpha=0.3)
    figure.suptitle("Planted low-quality examples kept by each selection (demo)", fontsize="medium")
    save_figure(figure, output_png)
    if output_csv is not None:
        _write_csv(table, output_csv)
    return table


# --------------------------------------------------------------------------- selections


def _silhouette_at_k(info: Mapping[str, Any]) -> float:
    ks, silhouettes, k = info.get("ks"), info.get("silhouettes"), info.get("k")
    if info.get("silhouette") is not None:
        return float(info["silhouette"])
    if ks and silhouettes and k in ks:
        value = silhouettes[ks.index(k)]
        return math.nan if value is None else float(value)
    return math.nan


def selection_overview(
    selections: Mapping[str, str | os.PathLike[str]],
    output_csv: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """One row per selection, from its ``selection.json``.

    Parameters
    ----------
    selections : mapping of str to path
        Selection name (e.g. ``"selectmoe/sigmoid/p0.25"``) -> its ``selection.json``.
    output_csv : path, optional
        Where to write the table.

    Returns
    -------
    pandas.DataFrame
        Columns ``selection``, ``method``, ``percentage``, ``n_pool``, ``n_selected``, ``k``,
        ``k_selection``, ``silhouette`` (at the chosen k), ``score_mean`` (pool),
        ``selected_score_mean`` (both empty for ``random`` and ``full``, which use no scores) and
        per dataset ``selected/{dataset}``.

    Raises
    ------
    SelectMoeError
        On a missing or invalid file.
    """
    if not selections:
        raise SelectMoeError("selection_overview needs at least one selection")
    rows = []
    for name, path in selections.items():
        file = Path(path)
        if not file.is_file():
            raise SelectMoeError(f"selection file not found: {file}; run the selection step")
        try:
            info = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SelectMoeError(f"invalid JSON in selection file {file}: {error}") from None
        if not isinstance(info, dict) or "n_selected" not in info:
            raise SelectMoeError(f"{file}: not a selection.json (no 'n_selected')")
        row: dict[str, Any] = {
            "selection": name,
            "method": info.get("method"),
            "percentage": info.get("selection_percentage"),
            "n_pool": info.get("n_pool"),
            "n_selected": info["n_selected"],
            "k": info.get("k"),
            "k_selection": info.get("k_selection"),
            "silhouette": _silhouette_at_k(info),
        }
        # pool-only methods score nothing (older selection.json files hold placeholder scores)
        scored = info.get("method") not in POOL_ONLY_METHODS
        for column, key in (("score_mean", "score"), ("selected_score_mean", "selected_score")):
            row[column] = (info.get(key) or {}).get("mean") if scored else None
        for dataset, counts in (info.get("per_dataset") or {}).items():
            row[f"selected/{dataset}"] = counts.get("selected")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["k"] = frame["k"].astype("Int64")
    if output_csv is not None:
        _write_csv(frame, output_csv)
    return frame


# --------------------------------------------------------------------- a selection's plots


def _placeholder(figure: Any, text: str) -> None:
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True)


def write_plots(
    info: Mapping[str, Any],
    *,
    scores: np.ndarray,
    datasets: Sequence[str],
    plot_dir: str | os.PathLike[str],
) -> dict[str, str]:
    """Write the four PNGs of a selection into ``plot_dir`` (names in :data:`PLOT_FILES`).

    Elbow curve with the chosen k, silhouette per k, cluster sizes (pool and selected), and the
    score distribution per dataset. Methods without clusters get a one-line placeholder for the
    cluster plots, so the set of files is always the same. Returns ``{plot: path}``.
    """
    directory = Path(plot_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    ks, k = info.get("ks"), info.get("k")
    no_clusters = f"method {info['method']!r} does not cluster"

    figure = new_figure(constrained=False)
    if ks:
        axes = figure.add_subplot()
        axes.plot(ks, info["inertias"], marker="o")
        axes.axvline(k, color="tab:red", linestyle="--", label=f"k = {k} ({info['k_selection']})")
        axes.set_xlabel("k")
        axes.set_ylabel("inertia  (sum of 2(1 - cos))")
        axes.set_title("Elbow curve")
        axes.legend()
    else:
        _placeholder(figure, no_clusters)
    save_figure(figure, directory / PLOT_FILES["elbow"])
    written["elbow"] = str(directory / PLOT_FILES["elbow"])

    figure = new_figure(constrained=False)
    silhouettes = info.get("silhouettes")
    if ks and silhouettes:
        axes = figure.add_subplot()
        axes.plot(ks, silhouettes, marker="o", color="tab:green")
        axes.axvline(k, color="tab:red", linestyle="--", label=f"k = {k}")
        axes.set_xlabel("k")
        axes.set_ylabel("mean silhouette (cosine)")
        axes.set_title("Silhouette per k")
        axes.legend()
    else:
        _placeholder(figure, no_clusters if not ks else "silhouette not computed")
    save_figure(figure, directory / PLOT_FILES["silhouette"])
    written["silhouette"] = str(directory / PLOT_FILES["silhouette"])

    figure = new_figure(max(6.4, 0.12 * (k or 0)), 4.0, constrained=False)
    if info.get("cluster_sizes") is not None:
        axes = figure.add_subplot()
        positions = np.arange(len(info["cluster_sizes"]))
        axes.bar(positions, info["cluster_sizes"], color="lightgray", label="pool")
        axes.bar(positions, info["cluster_selected"], color="tab:blue", label="selected")
        axes.set_xlabel("cluster")
        axes.set_ylabel("samples")
        axes.set_title(f"Cluster sizes (k = {k})")
        axes.legend()
    else:
        _placeholder(figure, no_clusters)
    save_figure(figure, directory / PLOT_FILES["cluster_sizes"])
    written["cluster_sizes"] = str(directory / PLOT_FILES["cluster_sizes"])

    figure = new_figure(constrained=False)
    if np.isfinite(scores).any():
        axes = figure.add_subplot()
        names = list(dict.fromkeys(datasets))
        dataset_array = np.asarray(datasets)
        low, high = float(np.nanmin(scores)), float(np.nanmax(scores))
        bins = np.linspace(low, high if high > low else low + 1e-6, 41)
        for name in names:
            axes.hist(scores[dataset_array == name], bins=bins, histtype="step", label=name)
        axes.set_xlabel(f"score: {info.get('score_definition') or 'the method score'}")
        axes.set_ylabel("samples")
        axes.set_title("Score distribution per dataset")
        axes.legend()
    else:
        _placeholder(figure, f"method {info['method']!r} scores nothing")
    save_figure(figure, directory / PLOT_FILES["score_distribution"])
    written["score_distribution"] = str(directory / PLOT_FILES["score_distribution"])
    return written
