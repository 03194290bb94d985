"""Stage 2b: select a share of the pool (SPEC §5).

Every method has a *kind* (:mod:`selectmoe.selection.kinds`) that reads its inputs and chooses:
a method that reads the router data is a *score* (:mod:`selectmoe.selection.scores`) and an
*allocation* (:mod:`selectmoe.selection.allocation`), named in
:mod:`selectmoe.selection.methods`; ``selectmoe`` ranks by the MoE's answer loss and takes the
best of every cluster of the routing features (``moe_probs[n].reshape(L * E)``) in turn,
``selectmoe_seed`` does the same with the seed's gate score ``mean_l sigmoid(quality_score[n,
l])``. The clusters come from :mod:`selectmoe.selection.clusters` (computed once per loss type)
or are computed here. The other kinds select from the pool alone: ``random`` (a seeded uniform
sample), ``full`` (everything), and ``oracle`` / ``anti_oracle``, reference selections for a
pool with quality labels (:mod:`selectmoe.data.labels`): clean examples first (the best any
method could do at that size) or planted ones first (the worst), in a seeded random order within
each group; or they are targeted (``rds``, ``less``, :mod:`selectmoe.selection.targeted`).

The budget is global over the pooled router data of all datasets:
``n = round_half_up(selection_percentage * N)`` clipped to ``[1, N]``; the per-dataset counts that
result are reported. :func:`run_selection` writes ``selected_data.jsonl`` (selection order),
``selection.json`` and the scores of every candidate, all atomically; the same inputs and seed
give byte-identical ``selected_data.jsonl``. The plots of a selection are the report's
(:mod:`selectmoe.evidence.selection_plots`), made from these files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectmoe.errors import RouterDataError, SelectionError
from selectmoe.io import atomic_save_npz, atomic_write_json, atomic_write_jsonl
from selectmoe.selection.kinds import (
    Loaded,
    SelectionRequest,
    available_methods,
    kind_of,
    register_selection_method,
)

__all__ = [
    "PoolExamples",
    "SelectionResult",
    "available_selection_methods",
    "budget",
    "load_selection_scores",
    "register_selection_method",
    "run_selection",
    "select_indices",
]

logger = logging.getLogger(__name__)

# Decimal places of the score written to selected_data.jsonl: far below any meaningful difference,
# and it keeps the file byte-identical across machines whose float kernels differ in the last ulp.
_SCORE_DECIMALS = 8


def budget(selection_percentage: float, n_samples: int) -> int:
    """Samples to select: ``floor(p * N + 0.5)`` (round half up) clipped to ``[1, N]``.

    Examples
    --------
    >>> budget(0.05, 270679)
    13534
    >>> budget(0.001, 10)
    1
    """
    return _budget(_check_percentage(selection_percentage), n_samples)


def _budget(percentage: float, n_samples: int) -> int:
    return int(min(n_samples, max(1, math.floor(percentage * n_samples + 0.5))))


def _check_percentage(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise SelectionError(f"selection_percentage must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise SelectionError(
            f"selection_percentage must be in (0, 1] (a fraction: 0.05 selects 5%), got {value}"
        )
    return value


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SelectionResult:
    """Result of :func:`select_indices`.

    Attributes
    ----------
    indices : numpy.ndarray of shape (n,), int64
        Selected rows of the router data, in selection order.
    scores : numpy.ndarray of shape (N,), float64
        Score of every sample.
    labels : numpy.ndarray of shape (N,), int64
        Cluster of every sample, -1 for methods without clusters.
    info : dict
        JSON-ready details (method, budget, k and curves, cluster sizes, per-dataset counts,
        timings) for ``selection.json``.
    """

    indices: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    info: dict[str, Any]


def available_selection_methods() -> list[str]:
    """Built-in and registered selection methods (:func:`.kinds.available_methods`)."""
    return available_methods()


def select_indices(
    router: Any,
    *,
    method: str,
    selection_percentage: float,
    clustering_method: str = "kmeans",
    clustering_params: Mapping[str, Any] | None = None,
    seed: int = 42,
    debug_print: bool = False,
    quality_labels: Any = None,
    definitions_extra: Mapping[str, Mapping[str, Any]] | None = None,
    clustering: Any = None,
    queries: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> SelectionResult:
    """Choose samples by one of the methods: its kind (:mod:`selectmoe.selection.kinds`) chooses.

    Parameters
    ----------
    router : RouterData, PoolExamples or TargetedFeatures
        The candidates: pooled router data of all datasets, the pool's examples alone (enough
        for ``random``, ``full``, ``oracle`` and ``anti_oracle``), or the pool's features of a
        targeted method.
    method : str
        A built-in, registered or defined selection method.
    selection_percentage : float
        Fraction of all samples to select, in (0, 1]; the budget is
        ``floor(p * N + 0.5)`` clipped to ``[1, N]`` (see :func:`budget`). Ignored by ``full``.
    clustering_method : str, default="kmeans"
        A registered clustering method (methods whose allocation is clustered).
    clustering_params : dict, optional
        Its parameters (for ``kmeans``: ``auto_k``, ``k``, ``k_range``, ``k_step``,
        ``max_iters``, ``n_init``, ``tol``, ``enable_parallel_kmeans``, ``parallel_processes``,
        ``gpu_allocation_strategy``, ``compute_silhouette``, ``device``).
    seed : int, default=42
        Seed of the clustering and of the random methods (``numpy.random.default_rng(seed)``).
    debug_print : bool, default=False
        Print per-cluster sizes, score ranges and dataset mix to stderr.
    quality_labels : PoolLabels, optional
        Quality labels aligned to the router rows; required by ``oracle`` and ``anti_oracle``
        (and read by no other method).
    definitions_extra : mapping, optional
        Method definitions that add to or replace the built-in ones
        (:func:`selectmoe.selection.methods.method_definitions`).
    clustering : ClusteringResult, optional
        The clusters of these router rows, computed once for every clustered selection
        (:mod:`selectmoe.selection.clusters`); without it a clustered method clusters here, with
        ``clustering_method``, ``clustering_params`` and ``seed``.
    queries : TargetedFeatures, optional
        The query examples' features, required by the targeted methods ``rds`` and ``less``.
    extra : mapping, optional
        What a plugin kind's loader read beside the candidates.

    Returns
    -------
    SelectionResult
    """
    percentage = _check_percentage(selection_percentage)
    return _select(
        router,
        method=method,
        percentage=percentage,
        clustering_method=clustering_method,
        clustering_params=clustering_params,
        seed=seed,
        debug_print=debug_print,
        quality_labels=quality_labels,
        definitions_extra=definitions_extra,
        clustering=clustering,
        queries=queries,
        extra=extra,
    )


def _select(
    router: Any,
    *,
    method: str,
    percentage: float,
    clustering_method: str,
    clustering_params: Mapping[str, Any] | None,
    seed: int,
    debug_print: bool,
    quality_labels: Any,
    definitions_extra: Mapping[str, Mapping[str, Any]] | None,
    clustering: Any,
    queries: Any,
    extra: Mapping[str, Any] | None,
) -> SelectionResult:
    """:func:`select_indices` with ``percentage`` checked by the caller."""
    kind = kind_of(method, definitions_extra)
    if kind.uses_labels and quality_labels is None:
        raise SelectionError(
            f"method {method!r} needs the pool's quality labels; set data.labels (the demo "
            "provides its own)"
        )
    if quality_labels is not None and quality_labels.planted.shape != (router.n_samples,):
        raise SelectionError(
            f"the quality labels cover {quality_labels.planted.shape[0]} examples, the router "
            f"data {router.n_samples}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SelectionError(f"seed must be an integer >= 0, got {seed!r}")
    n_samples = router.n_samples
    n = _budget(percentage, n_samples) if kind.uses_percentage else n_samples
    request = SelectionRequest(
        method=method,
        n=n,
        seed=int(seed),
        definitions=dict(definitions_extra or {}),
        clustering_method=clustering_method,
        clustering_params=dict(clustering_params or {}),
        debug_print=debug_print,
    )
    loaded = Loaded(
        candidates=router,
        queries=queries,
        quality_labels=quality_labels,
        clustering=clustering,
        extra=dict(extra or {}),
    )
    chosen = kind.choose(loaded, request)
    indices = np.asarray(chosen.indices, dtype=np.int64)
    scores = np.asarray(chosen.scores, dtype=np.float64)
    labels = (
        chosen.clustering.labels
        if chosen.clustering is not None
        else np.full(n_samples, -1, dtype=np.int64)
    )
    info = _selection_info(
        router,
        method=method,
        percentage=percentage,
        n=n,
        indices=indices,
        scores=scores,
        labels=labels,
        clustering=chosen.clustering,
        clustering_method=clustering_method if chosen.clustering is not None else None,
        seed=int(seed),
        timings=dict(chosen.timings),
        score_definition=chosen.score_definition,
    )
    info.update(chosen.info)
    if debug_print:
        _debug_print(info, router, scores, labels, indices)
    return SelectionResult(indices=indices, scores=scores, labels=labels, info=info)


def _summary(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0 or np.isnan(values).all():
        return {"min": None, "mean": None, "max": None}
    return {
        "min": float(values.min()),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def _cluster_ids(labels: np.ndarray, k: int) -> list[int]:
    """The cluster ids to report: ``0..max(k, max label + 1) - 1`` for non-negative labels (so
    empty clusters show up), else the distinct labels (a plugged-in method may use any ints)."""
    if labels.size and labels.min() >= 0:
        return list(range(max(int(k), int(labels.max()) + 1)))
    return [int(c) for c in np.unique(labels)]


def _selection_info(
    router: Any,
    *,
    method: str,
    percentage: float,
    n: int,
    indices: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    clustering: Any,
    clustering_method: str | None,
    seed: int,
    timings: dict[str, float],
    score_definition: str,
) -> dict[str, Any]:
    datasets = np.asarray(router.datasets)
    names = list(dict.fromkeys(router.datasets))
    selected_mask = np.zeros(router.n_samples, dtype=bool)
    selected_mask[indices] = True
    per_dataset = {}
    for name in names:
        in_pool = datasets == name
        chosen = in_pool & selected_mask
        per_dataset[name] = {
            "pool": int(in_pool.sum()),
            "selected": int(chosen.sum()),
            "fraction": float(chosen.sum() / in_pool.sum()),
            "score": _summary(scores[in_pool]),
            "selected_score": _summary(scores[chosen]),
        }
    info: dict[str, Any] = {
        "method": method,
        "selection_percentage": percentage,
        "budget_rule": "n = floor(p * N + 0.5) clipped to [1, N]; full selects all",
        "seed": seed,
        "n_pool": router.n_samples,
        "n_selected": int(n),
        "score_definition": score_definition,
        "score": _summary(scores),
        "selected_score": _summary(scores[indices]),
        "per_dataset": per_dataset,
        "clustering_method": clustering_method,
        "k": None,
    }
    if clustering is not None:
        k = clustering.k
        ids = _cluster_ids(labels, k)
        chosen_labels = labels[indices]
        if labels.min() >= 0:
            sizes = np.bincount(labels, minlength=len(ids))
            chosen = np.bincount(chosen_labels, minlength=len(ids))
        else:
            sizes = np.array([np.count_nonzero(labels == c) for c in ids])
            chosen = np.array([np.count_nonzero(chosen_labels == c) for c in ids])
        info.update(
            {
                "k": int(k),
                "k_selection": clustering.info.get("k_selection"),
                "ks": clustering.info.get("ks"),
                "inertias": clustering.info.get("inertias"),
                "silhouettes": clustering.info.get("silhouettes"),
                "knee_k": clustering.info.get("knee_k"),
                "silhouette_k": clustering.info.get("silhouette_k"),
                "inertia": clustering.info.get("inertia"),
                "silhouette": clustering.info.get("silhouette"),
                "cluster_ids": ids,
                "cluster_sizes": sizes.tolist(),
                "cluster_selected": chosen.tolist(),
                "clustering": {
                    key: value
                    for key, value in clustering.info.items()
                    if key not in {"ks", "inertias", "silhouettes"}
                },
            }
        )
    info["router_files"] = list(router.files)
    info["timings"] = {key: round(value, 4) for key, value in timings.items()}
    return info


def _debug_print(
    info: Mapping[str, Any],
    router: Any,
    scores: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
) -> None:
    def out(line: str) -> None:
        print(f"[select] {line}", file=sys.stderr, flush=True)

    out(
        f"method={info['method']} pool={info['n_pool']} selected={info['n_selected']} "
        f"({info['selection_percentage']:.4g}) k={info['k']}"
    )
    for name, row in info["per_dataset"].items():
        out(
            f"dataset {name}: {row['selected']}/{row['pool']} selected "
            f"({row['fraction']:.2%}), score min/mean/max "
            f"{row['score']['min']:.4f}/{row['score']['mean']:.4f}/{row['score']['max']:.4f}"
        )
    if info.get("k") is None:
        return
    datasets = np.asarray(router.datasets)
    chosen = np.zeros(router.n_samples, dtype=bool)
    chosen[indices] = True
    for cluster in info["cluster_ids"]:
        members = labels == cluster
        if not members.any():
            out(f"cluster {cluster}: empty")
            continue
        mix = Counter(datasets[members].tolist())
        mix_text = ", ".join(f"{name} {count}" for name, count in sorted(mix.items()))
        s = scores[members]
        out(
            f"cluster {cluster}: size {int(members.sum())}, selected "
            f"{int((members & chosen).sum())}, score {s.min():.4f}..{s.max():.4f} "
            f"(mean {s.mean():.4f}), datasets: {mix_text}"
        )


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolExamples:
    """The examples of a pool without router data: what ``random``, ``full``, ``oracle`` and
    ``anti_oracle`` select from (they read no score and no routing).

    Attributes
    ----------
    sample_ids, datasets : list of str, length N
    files : list of str
        The pool files, in order.
    """

    sample_ids: list[str]
    datasets: list[str]
    files: list[str]

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)

    def file_of(self, row: int) -> str:
        """The pool files (a pool example's file is not tracked)."""
        return ", ".join(self.files)

    @classmethod
    def of_pool(cls, pool_paths: Sequence[str | os.PathLike[str]]) -> PoolExamples:
        from selectmoe.data.pool import load_pool

        pool = load_pool(pool_paths)
        return cls(
            sample_ids=[example.id for example in pool],
            datasets=[example.dataset for example in pool],
            files=[os.fspath(p) for p in pool_paths],
        )


def run_selection(
    router_data_paths: Sequence[str | os.PathLike[str]] = (),
    pool_paths: Sequence[str | os.PathLike[str]] = (),
    *,
    output_jsonl: str | os.PathLike[str],
    output_json: str | os.PathLike[str],
    output_scores: str | os.PathLike[str] | None = None,
    method: str,
    selection_percentage: float,
    clustering_method: str = "kmeans",
    clustering_params: Mapping[str, Any] | None = None,
    seed: int = 42,
    debug_print: bool = False,
    labels_path: str | os.PathLike[str] | None = None,
    method_definitions: Mapping[str, Mapping[str, Any]] | None = None,
    clusters_path: str | os.PathLike[str] | None = None,
    queries_path: str | os.PathLike[str] | None = None,
    reference_router_data_paths: Sequence[str | os.PathLike[str]] = (),
    inputs: Mapping[str, Sequence[str | os.PathLike[str]]] | None = None,
) -> dict[str, Any]:
    """Select and write ``selected_data.jsonl``, ``selection.json`` and the scores.

    ``selected_data.jsonl`` has one line per selected example, in selection order:
    ``{"dataset", "id", "score", "cluster", "messages"}`` (``score`` rounded to 8 decimals,
    ``cluster`` -1 for methods without clusters). Same inputs and seed give a byte-identical file.
    ``selection.json`` holds the method, budget, k and both curves, cluster sizes, per-dataset
    counts, timings and seed. The scores file (:func:`load_selection_scores`) holds the score
    and cluster of every candidate, which the evidence (plots, diagnostics) reads. Every file is
    written atomically; nothing is written on error.

    Parameters
    ----------
    router_data_paths : sequence of path
        ``{dataset}_router_data.pt`` files, or a targeted method's pool features files.
    pool_paths : sequence of path
        The pool JSONL files the router data was computed from (read with
        :func:`selectmoe.data.pool.load_pool`); every router sample must be in them.
    output_jsonl, output_json : path
        Where to write ``selected_data.jsonl`` and ``selection.json``.
    output_scores : path, optional
        Where to write the scores file (``.npz``); none when None.
    method, selection_percentage, clustering_method, clustering_params, seed, debug_print
        As in :func:`select_indices`.
    labels_path : path, optional
        The pool's quality labels (:mod:`selectmoe.data.labels`), read only by ``oracle`` and
        ``anti_oracle``; they must label exactly the pool.
    method_definitions : mapping, optional
        The config's ``selection.method_definitions`` (:mod:`selectmoe.selection.methods`).
    clusters_path : path, optional
        ``clusters.json`` of this router data (:func:`selectmoe.selection.clusters.run_clustering`),
        read by a clustered method instead of clustering again.
    queries_path : path, optional
        The query examples' features file (targeted methods).
    reference_router_data_paths : sequence of path, optional
        The converted model's router data with LM statistics, for a method that ranks by
        ``excess_loss``.
    inputs : mapping, optional
        The select job's named inputs as the method's kind declares them
        (:attr:`selectmoe.selection.kinds.MethodKind.inputs`); replaces the path arguments above.

    Returns
    -------
    dict
        The content of ``selection.json``.

    Raises
    ------
    RouterDataError
        Bad router data, or router ids missing from the pool (names the file and ids).
    DataError
        A labels file that is malformed or does not match the pool.
    SelectionError
        Bad settings (method, percentage, k larger than the data, a label method without
        labels, ...).
    """
    from selectmoe.data.pool import load_pool

    total_start = time.perf_counter()
    kind = kind_of(method, method_definitions)
    percentage = _check_percentage(selection_percentage)  # before anything is read
    if inputs is None:
        inputs = {
            "router_data": list(router_data_paths),
            "pool": list(pool_paths),
            "labels": [labels_path] if labels_path is not None else [],
            "clusters": [clusters_path] if clusters_path is not None else [],
            "queries": [queries_path] if queries_path is not None else [],
            "reference_router_data": list(reference_router_data_paths),
        }
    files = {name: [os.fspath(p) for p in paths] for name, paths in inputs.items()}
    pool_paths = files.get("pool", [])
    request = SelectionRequest(
        method=method,
        n=0,
        seed=int(seed) if isinstance(seed, int | np.integer) else 0,
        definitions=dict(method_definitions or {}),
        clustering_method=clustering_method,
        clustering_params=dict(clustering_params or {}),
        debug_print=debug_print,
    )
    timings: dict[str, float] = {}

    start = time.perf_counter()
    loaded = kind.load(files, request)
    router = loaded.candidates
    timings["load_router_data"] = time.perf_counter() - start

    start = time.perf_counter()
    pool = load_pool(pool_paths)
    position = {(example.dataset, example.id): i for i, example in enumerate(pool)}
    rows = np.empty(router.n_samples, dtype=np.int64)
    missing: list[int] = []
    for row, key in enumerate(zip(router.datasets, router.sample_ids, strict=True)):
        found = position.get(key, -1)
        rows[row] = found
        if found < 0:
            missing.append(row)
    if missing:
        first = missing[0]
        examples = ", ".join(repr(router.sample_ids[r]) for r in missing[:3])
        raise RouterDataError(
            f"{router.file_of(first)}: {len(missing)} sample id(s) of dataset "
            f"{router.datasets[first]!r} are not in the pool files (e.g. {examples}); score the "
            "same pool you select from, or pass the matching pool files"
        )
    unscored = len(pool) - router.n_samples
    if unscored:
        logger.warning("%d pool example(s) have no router data and cannot be selected", unscored)
    timings["load_pool"] = time.perf_counter() - start

    result = _select(
        router,
        method=method,
        percentage=percentage,
        clustering_method=clustering_method,
        clustering_params=clustering_params,
        seed=seed,
        debug_print=debug_print,
        quality_labels=loaded.quality_labels,
        definitions_extra=method_definitions,
        clustering=loaded.clustering,
        queries=loaded.queries,
        extra=loaded.extra,
    )
    timings.update(result.info["timings"])
    scored = bool(np.isfinite(result.scores).any())  # a pool method scores nothing
    records = (
        {
            "dataset": pool[rows[i]].dataset,
            "id": pool[rows[i]].id,
            "score": round(float(result.scores[i]), _SCORE_DECIMALS) if scored else None,
            "cluster": int(result.labels[i]),
            "messages": [dict(message) for message in pool[rows[i]].messages],
        }
        for i in result.indices
    )
    info = dict(result.info)
    info["n_pool_examples"] = len(pool)
    info["n_unscored_pool_examples"] = unscored
    info["pool_files"] = list(pool_paths)
    info["output"] = os.fspath(output_jsonl)
    info["scored"] = scored
    written: list[Path] = []
    try:
        # The data, the scores, then selection.json: the JSON is the last file to appear, and a
        # failure part-way removes what this call wrote.
        start = time.perf_counter()
        atomic_write_jsonl(output_jsonl, records)
        written.append(Path(output_jsonl))
        timings["write_jsonl"] = time.perf_counter() - start
        if output_scores is not None:
            selected = np.zeros(router.n_samples, dtype=bool)
            selected[result.indices] = True
            atomic_save_npz(
                output_scores,
                dataset=np.asarray(router.datasets, dtype=str),
                id=np.asarray(router.sample_ids, dtype=str),
                score=result.scores,
                cluster=result.labels,
                selected=selected,
                method=np.asarray(method),
                score_definition=np.asarray(info["score_definition"]),
            )
            written.append(Path(output_scores))
            info["scores_file"] = os.fspath(output_scores)
        timings["total"] = time.perf_counter() - total_start
        info["timings"] = {key: round(value, 4) for key, value in timings.items()}
        atomic_write_json(output_json, info)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    logger.info(
        "selected %d of %d (%s, k=%s) -> %s",
        info["n_selected"],
        info["n_pool"],
        method,
        info["k"],
        output_jsonl,
    )
    return info


_SCORES_KEYS = ("dataset", "id", "score", "cluster", "selected", "method", "score_definition")


def load_selection_scores(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The scores file a selection wrote: per candidate (router-data row order) its ``dataset``,
    ``id``, ``score`` (float64, NaN where the method reads none), ``cluster`` (int64, -1 without
    clusters) and ``selected`` (bool); and the ``method`` and its ``score_definition`` (0-d).

    Raises
    ------
    SelectionError
        When the file is missing or lacks a key (rerun the select job).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            values = {key: data[key] for key in _SCORES_KEYS}
    except (OSError, KeyError, ValueError) as error:
        raise SelectionError(
            f"{path}: not a scores file written by a selection ({error}); rerun the select job"
        ) from None
    return values
