"""How much two selections share: the stability of a method over its replicates, and the overlap
between methods at the same size.

The overlap of two selections is their Jaccard index ``|A & B| / |A | B|`` over the examples'
``(dataset, id)`` keys: 1 for the same examples, 0 for disjoint ones. Two random selections of
``n`` of ``N`` examples share about ``n / (2N - n)`` of their union (0.18 at 30%), the level
below which a method's replicates agree no more than chance.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from selectmoe.data.pool import read_selected_keys

__all__ = ["SelectionRun", "jaccard", "selection_overlap", "stability"]


def jaccard(a: Sequence[tuple[str, str]], b: Sequence[tuple[str, str]]) -> float:
    """The Jaccard index of two selections' keys (NaN when both are empty)."""
    left, right = set(a), set(b)
    union = len(left | right)
    return len(left & right) / union if union else math.nan


def stability(paths: Sequence[str | os.PathLike[str]]) -> float:
    """The mean Jaccard index over every pair of replicates' selections (``selected_data.jsonl``).

    A method without chance shares one file among its replicates: its stability is 1. NaN for
    fewer than two replicates.
    """
    keys = [read_selected_keys(path) for path in paths]
    pairs = [jaccard(a, b) for a, b in itertools.combinations(keys, 2)]
    return float(sum(pairs) / len(pairs)) if pairs else math.nan


@dataclass(frozen=True)
class SelectionRun:
    """One selection of the sweep, for :func:`selection_overlap`.

    Attributes
    ----------
    name : str
        The selection (its ``{selection}`` path, replicate included).
    row : str
        The summary row it belongs to (method, loss type and size).
    percentage : float
    replicate : int or None
        Its replicate; None for a method that selects once for every replicate.
    path : str
        Its ``selected_data.jsonl``.
    """

    name: str
    row: str
    percentage: float
    replicate: int | None
    path: str


def selection_overlap(runs: Sequence[SelectionRun]) -> pd.DataFrame:
    """The overlap of every pair of rows at the same size, paired by replicate.

    Replicate ``r`` of one row is compared with replicate ``r`` of the other (a row without
    replicates with each replicate of the other); a row with itself gives its stability (every
    pair of its replicates; no row for a method that selects once).

    Parameters
    ----------
    runs : sequence of SelectionRun

    Returns
    -------
    pandas.DataFrame
        Columns ``percentage``, ``a``, ``b`` (rows, ``a <= b`` in sweep order), ``jaccard`` (the
        mean over pairs), ``jaccard_min``, ``jaccard_max`` and ``n_pairs``.
    """
    keys: dict[str, list[tuple[str, str]]] = {}
    by_row: dict[str, dict[int | None, str]] = {}
    size: dict[str, float] = {}
    for run in runs:
        by_row.setdefault(run.row, {})[run.replicate] = run.path
        size[run.row] = run.percentage

    def read(path: str) -> list[tuple[str, str]]:
        if path not in keys:
            keys[path] = read_selected_keys(path)
        return keys[path]

    rows = list(by_row)
    records = []
    for i, a in enumerate(rows):
        for b in rows[i:]:
            if size[a] != size[b]:
                continue
            if a == b:
                pairs = list(itertools.combinations(by_row[a].values(), 2))
            else:
                pairs = _paired(by_row[a], by_row[b])
            values = [jaccard(read(x), read(y)) for x, y in pairs]
            if not values:
                continue
            records.append(
                {
                    "percentage": size[a],
                    "a": a,
                    "b": b,
                    "jaccard": sum(values) / len(values),
                    "jaccard_min": min(values),
                    "jaccard_max": max(values),
                    "n_pairs": len(values),
                }
            )
    columns = ["percentage", "a", "b", "jaccard", "jaccard_min", "jaccard_max", "n_pairs"]
    return pd.DataFrame(records, columns=columns)


def _paired(a: Mapping[int | None, str], b: Mapping[int | None, str]) -> list[tuple[str, str]]:
    """Replicate r of ``a`` with replicate r of ``b``; a shared selection with every replicate."""
    if None in a and None in b:
        return [(a[None], b[None])]
    if None in a:
        return [(a[None], path) for path in b.values()]
    if None in b:
        return [(path, b[None]) for path in a.values()]
    return [(a[r], b[r]) for r in a if r in b]
