"""A selection's figures and the overview of every selection, made from what the selection wrote
(``selection.json`` and its scores file): elbow curve, silhouette per k, cluster sizes, and the
score distribution per dataset."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selectmoe.errors import SelectionError, SelectMoeError
from selectmoe.evidence.figures import new_figure, save_figure, write_csv
from selectmoe.selection.kinds import kind_of

__all__ = [
    "PLOT_FILES",
    "selection_overview",
    "write_plots",
]

#: The plots of a selection (:func:`write_plots`), by name.
PLOT_FILES: dict[str, str] = {
    "elbow": "elbow.png",
    "silhouette": "silhouette.png",
    "cluster_sizes": "cluster_sizes.png",
    "score_distribution": "score_distribution.png",
}


# --------------------------------------------------------------------------- selections


def _silhouette_at_k(info: Mapping[str, Any]) -> float:
    ks, silhouettes, k = info.get("ks"), info.get("silhouettes"), info.get("k")
    if info.get("silhouette") is not None:
        return float(info["silhouette"])
    if ks and silhouettes and k in ks:
        value = silhouettes[ks.index(k)]
        return math.nan if value is None else float(value)
    return math.nan


def _scored(info: Mapping[str, Any]) -> bool:
    """Whether a selection ranked by a score (a method of the pool, reference or full kinds
    selects without one); ``selection.json`` says so, else the method's kind."""
    if "scored" in info:
        return bool(info["scored"])
    try:
        kind = kind_of(str(info.get("method")))
    except SelectionError:
        return True  # a config's own definition: routed
    return kind.uses_loss or kind.targeted


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
        scored = _scored(info)
        for column, key in (("score_mean", "score"), ("selected_score_mean", "selected_score")):
            row[column] = (info.get(key) or {}).get("mean") if scored else None
        for dataset, counts in (info.get("per_dataset") or {}).items():
            row[f"selected/{dataset}"] = counts.get("selected")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["k"] = frame["k"].astype("Int64")
    if output_csv is not None:
        write_csv(frame, output_csv)
    return frame


# --------------------------------------------------------------------- a selection's plots


def _placeholder(figure: Any, text: str) -> None:
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True)


def write_plots(
    selection_json: str | os.PathLike[str],
    scores_file: str | os.PathLike[str],
    plot_dir: str | os.PathLike[str],
) -> dict[str, str]:
    """Write the four PNGs of a selection into ``plot_dir`` (names in :data:`PLOT_FILES`).

    Elbow curve with the chosen k, silhouette per k, cluster sizes (pool and selected), and the
    score distribution per dataset, from what the selection wrote: its ``selection.json`` and
    its scores file (:func:`selectmoe.selection.select.load_selection_scores`). Methods without
    clusters get a one-line placeholder for the cluster plots, so the set of files is always the
    same. Returns ``{plot: path}``.
    """
    from selectmoe.selection.select import load_selection_scores

    info = json.loads(Path(selection_json).read_text(encoding="utf-8"))
    saved = load_selection_scores(scores_file)
    scores, datasets = saved["score"], saved["dataset"].tolist()
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
