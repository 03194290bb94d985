"""For a pool with planted noise (the demo): the share of the planted examples each selection
kept (``noise_labels.jsonl`` against each ``selected_data.jsonl``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from selectmoe.data.pool import iter_jsonl_objects, read_selected_keys
from selectmoe.errors import SelectMoeError
from selectmoe.evidence.figures import new_figure, save_figure, write_csv

__all__ = [
    "load_noise_labels",
    "load_selected_ids",
    "noise_kept",
    "plot_noise_kept",
]


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
        write_csv(table, output_csv)
    return table
