"""Stage 2b: select a share of the pool from its router data (SPEC §5).

A method that reads the router data is a *score* (:mod:`selectmoe.selection.scores`: what it ranks
by) and
an *allocation* (:mod:`selectmoe.selection.allocation`: how it spends the budget), named in
:mod:`selectmoe.selection.methods`: ``selectmoe`` ranks by the MoE's answer loss and takes the best
of
every cluster of the routing features (``moe_probs[n].reshape(L * E)``) in turn; ``selectmoe_seed``
does the same with the seed's gate score ``mean_l sigmoid(quality_score[n, l])``;
``quality_topk``, ``diversity``, ``perplexity`` and ``ifd`` are references. The clusters come
from :mod:`selectmoe.selection.clusters` (computed once per loss type) or are computed here. The
other
methods select from the pool alone: ``random`` (a seeded uniform sample), ``full`` (everything),
and ``oracle`` / ``anti_oracle``, reference selections for a pool with quality labels
(:mod:`selectmoe.data.labels`): clean examples first (the best any method could do at that size) or
planted ones first (the worst), in a seeded random order within each group. They use labels a
real pool does not have, and every table and plot marks them so.

The budget is global over the pooled router data of all datasets:
``n = round_half_up(selection_percentage * N)`` clipped to ``[1, N]``; the per-dataset counts that
result are reported. :func:`run_selection` writes ``selected_data.jsonl`` (selection order),
``selection.json`` and the plots (:func:`selectmoe.evidence.report.write_plots`), all atomically;
the same
inputs and seed give byte-identical ``selected_data.jsonl``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectmoe.clustering import ClusteringResult
from selectmoe.data.labels import PoolLabels, align_labels, describe
from selectmoe.data.router_data import (
    OPTIONAL_STATISTICS,
    ROUTER_DATA_KEYS,
    RouterData,
    find_router_data,
    load_router_data,
)
from selectmoe.errors import RouterDataError, SelectionError
from selectmoe.evidence.report import PLOT_FILES, write_plots
from selectmoe.io import atomic_write_json, atomic_write_jsonl
from selectmoe.selection.allocation import CLUSTERED_ALLOCATIONS, allocate, round_robin
from selectmoe.selection.clusters import cluster_router, read_clusters
from selectmoe.selection.methods import (
    LABEL_METHODS,
    POOL_ONLY_METHODS,
    SELECTION_METHODS,
    TARGETED_METHODS,
    method_definitions,
    uses_clusters,
)
from selectmoe.selection.scores import compute_score
from selectmoe.selection.scores import describe as describe_score
from selectmoe.selection.targeted import TargetedFeatures, load_features, select_targeted

__all__ = [
    "LABEL_METHODS",
    "OPTIONAL_STATISTICS",
    "PLOT_FILES",
    "ROUTER_DATA_KEYS",
    "SELECTION_METHODS",
    "RouterData",
    "SelectionResult",
    "available_selection_methods",
    "budget",
    "find_router_data",
    "load_router_data",
    "register_selection_method",
    "round_robin",
    "run_selection",
    "select_indices",
    "write_plots",
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
    _check_percentage(selection_percentage)
    return int(min(n_samples, max(1, math.floor(selection_percentage * n_samples + 0.5))))


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


#: ``(router, *, n, scores, seed) -> indices``: a plugged-in selection method.
SelectionMethod = Callable[..., np.ndarray]
_CUSTOM_METHODS: dict[str, SelectionMethod] = {}


def register_selection_method(name: str, fn: SelectionMethod, *, overwrite: bool = False) -> None:
    """Register a selection method under ``name`` (from a plugin module,
    :mod:`selectmoe.workflow.plugins`).

    ``fn(router, *, n, scores, seed)`` gets the pooled :class:`RouterData`, the budget ``n``, the
    seed's score of every sample (``[N]``) and the selection seed, and returns ``n`` distinct row
    indices in selection order. In the workflow it is a method that reads the router data (one
    selection per quality-loss type and percentage).

    Raises
    ------
    SelectionError
        For a built-in name, or a name registered before (unless ``overwrite``).
    """
    if name in SELECTION_METHODS:
        raise SelectionError(f"{name!r} is a built-in selection method; choose another name")
    if name in _CUSTOM_METHODS and not overwrite:
        raise SelectionError(f"selection method {name!r} is already registered")
    _CUSTOM_METHODS[name] = fn


def available_selection_methods() -> list[str]:
    """Built-in and registered selection methods."""
    return [*SELECTION_METHODS, *sorted(_CUSTOM_METHODS)]


def _check_method(method: str) -> None:
    if method not in SELECTION_METHODS and method not in _CUSTOM_METHODS:
        raise SelectionError(
            f"unknown selection method {method!r}; valid: {available_selection_methods()}"
        )


def select_indices(
    router: RouterData | PoolExamples | TargetedFeatures,
    *,
    method: str,
    selection_percentage: float,
    clustering_method: str = "kmeans",
    clustering_params: Mapping[str, Any] | None = None,
    seed: int = 42,
    debug_print: bool = False,
    quality_labels: PoolLabels | None = None,
    definitions_extra: Mapping[str, Mapping[str, Any]] | None = None,
    clustering: ClusteringResult | None = None,
    queries: TargetedFeatures | None = None,
) -> SelectionResult:
    """Choose samples of the router data by one of the methods (module docstring).

    Parameters
    ----------
    router : RouterData or PoolExamples
        Pooled router data of all datasets, or the pool's examples alone (enough for
        ``random``, ``full``, ``oracle`` and ``anti_oracle``).
    method : {"selectmoe", "random", "quality_topk", "diversity", "full"}
        Selection method.
    selection_percentage : float
        Fraction of all samples to select, in (0, 1]; the budget is
        ``floor(p * N + 0.5)`` clipped to ``[1, N]`` (see :func:`budget`). Ignored by ``full``.
    clustering_method : str, default="kmeans"
        A registered clustering method (``selectmoe`` and ``diversity``).
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
        The query examples' features; with ``router`` the pool's features (of the same kind),
        required by the targeted methods ``rds`` and ``less`` (:mod:`selectmoe.selection.targeted`).

    Returns
    -------
    SelectionResult
    """
    if method not in (definitions_extra or {}):
        _check_method(method)
    percentage = _check_percentage(selection_percentage)
    if method in LABEL_METHODS and quality_labels is None:
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
    n = n_samples if method == "full" else budget(percentage, n_samples)
    timings: dict[str, float] = {}
    definitions = method_definitions(definitions_extra)
    definition = definitions.get(method)
    labels = np.full(n_samples, -1, dtype=np.int64)
    clustered = bool(definition) and definition["allocation"] in CLUSTERED_ALLOCATIONS
    score_name = definition["score"] if definition else "gate"
    score_params = dict(definition.get("score_params") or {}) if definition else {}
    targeted_info: dict[str, Any] = {}
    # the method's own score (the seed's gate score for the pool-only and plugged-in methods)
    if method in TARGETED_METHODS:
        if not isinstance(router, TargetedFeatures) or queries is None:
            raise SelectionError(
                f"method {method!r} needs the pool's and the queries' features (rules "
                "represent / less_gradients), not router data"
            )
        targeted_indices, scores, targeted_info = select_targeted(method, router, queries, n)
    elif definition or method not in POOL_ONLY_METHODS:
        if not isinstance(router, RouterData):
            raise SelectionError(f"method {method!r} needs router data, not the pool alone")
        scores = compute_score(router, score_name, params=score_params, seed=int(seed))
    elif isinstance(router, RouterData):
        scores = router.scores
    else:  # the pool alone: nothing is scored
        scores = np.full(router.n_samples, np.nan)

    start = time.perf_counter()
    if not clustered:
        clustering = None
    elif clustering is None:
        clustering = cluster_router(
            router,
            clustering_method=clustering_method,
            clustering_params=clustering_params or {},
            seed=int(seed),
            debug_print=debug_print,
        )
    elif clustering.labels.shape != (n_samples,):
        raise SelectionError(
            f"the given clustering labels {clustering.labels.shape[0]} rows; the router data "
            f"has {n_samples}"
        )
    if clustering is not None:
        labels = clustering.labels
    timings["clustering"] = time.perf_counter() - start

    start = time.perf_counter()
    rng = np.random.default_rng(int(seed))
    if definition:
        indices = allocate(
            definition["allocation"],
            scores,
            labels if clustering is not None else None,
            n,
            params=definition.get("allocation_params") or {},
            seed=int(seed),
        )
    elif method in TARGETED_METHODS:
        indices = targeted_indices
    elif method == "random":
        indices = rng.permutation(n_samples)[:n].astype(np.int64)
    elif method in LABEL_METHODS:
        assert quality_labels is not None  # checked above
        planted = quality_labels.planted
        first = ~planted if method == "oracle" else planted
        # the preferred group first, a seeded random order within each group
        indices = np.lexsort((rng.random(n_samples), ~first))[:n].astype(np.int64)
    elif method in _CUSTOM_METHODS:
        indices = np.asarray(
            _CUSTOM_METHODS[method](router, n=n, scores=scores, seed=int(seed)), dtype=np.int64
        )
        if indices.shape != (n,) or len(np.unique(indices)) != n:
            raise SelectionError(
                f"selection method {method!r} returned {indices.shape} indices; expected {n} "
                "distinct rows"
            )
        if n and (indices.min() < 0 or indices.max() >= n_samples):
            raise SelectionError(f"selection method {method!r} returned rows outside the data")
    else:  # full
        indices = np.arange(n_samples, dtype=np.int64)
    timings["selection"] = time.perf_counter() - start

    info = _selection_info(
        router,
        method=method,
        percentage=percentage,
        n=n,
        indices=indices,
        scores=scores,
        labels=labels,
        clustering=clustering,
        clustering_method=clustering_method if clustering is not None else None,
        seed=int(seed),
        timings=timings,
        score_definition=(
            _TARGETED_SCORES[method]
            if method in TARGETED_METHODS
            else describe_score(score_name, score_params)
            if definition or method not in POOL_ONLY_METHODS
            else "none (selects without a score)"
        ),
    )
    info.update(targeted_info)
    if definition:
        info["allocation"] = {
            "name": definition["allocation"],
            "params": dict(definition.get("allocation_params") or {}),
        }
    if method in LABEL_METHODS:
        assert quality_labels is not None
        info["uses_labels"] = True
        info["labels"] = describe(quality_labels)
        info["n_planted_selected"] = int(quality_labels.planted[indices].sum())
    if debug_print:
        _debug_print(info, router, scores, labels, indices)
    return SelectionResult(indices=indices, scores=scores, labels=labels, info=info)


_TARGETED_SCORES = {
    "rds": "RDS+: max over tasks of the max cosine of the target's position-weighted mean-pooled "
    "final hidden states to the task's query examples; tasks take turns (round robin)",
    "less": "LESS: max over query subtasks of the mean checkpoint-weighted cosine of projected "
    "LoRA gradients (Adam-normalised for the pool); top n",
}


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
    router: RouterData,
    *,
    method: str,
    percentage: float,
    n: int,
    indices: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    clustering: ClusteringResult | None,
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
    router: RouterData,
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
    router_data_paths: Sequence[str | os.PathLike[str]],
    pool_paths: Sequence[str | os.PathLike[str]],
    *,
    output_jsonl: str | os.PathLike[str],
    output_json: str | os.PathLike[str],
    plot_dir: str | os.PathLike[str] | None = None,
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
) -> dict[str, Any]:
    """Select from router data and write ``selected_data.jsonl``, ``selection.json`` and plots.

    ``selected_data.jsonl`` has one line per selected example, in selection order:
    ``{"dataset", "id", "score", "cluster", "messages"}`` (``score`` rounded to 8 decimals,
    ``cluster`` -1 for methods without clusters). Same inputs and seed give a byte-identical file.
    ``selection.json`` holds the method, budget, k and both curves, cluster sizes, per-dataset
    counts, timings and seed. Every file is written atomically; nothing is written on error.

    Parameters
    ----------
    router_data_paths : sequence of path
        ``{dataset}_router_data.pt`` files.
    pool_paths : sequence of path
        The pool JSONL files the router data was computed from (read with
        :func:`selectmoe.data.pool.load_pool`); every router sample must be in them.
    output_jsonl, output_json : path
        Where to write ``selected_data.jsonl`` and ``selection.json``.
    plot_dir : path, optional
        Directory for the PNG plots (:data:`PLOT_FILES`); no plots when None.
    method, selection_percentage, clustering_method, clustering_params, seed, debug_print
        As in :func:`select_indices`.
    labels_path : path, optional
        The pool's quality labels (:mod:`selectmoe.data.labels`), read only by ``oracle`` and
        ``anti_oracle``; they must label exactly the pool.
    method_definitions : mapping, optional
        The config's ``selection.method_definitions`` (:mod:`selectmoe.selection.methods`).
    clusters_path : path, optional
        ``clusters.json`` of this router data
        (:func:`selectmoe.selection.clusters.run_clustering`), read
        by a clustered method instead of clustering again.
    queries_path : path, optional
        The query examples' features file; the targeted methods (``rds``, ``less``) read it with
        ``router_data_paths`` holding the pool's features files.

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
    if method not in (method_definitions or {}):
        _check_method(method)
    _check_percentage(selection_percentage)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    queries = None
    if method in TARGETED_METHODS:
        if not router_data_paths or queries_path is None:
            raise RouterDataError(
                f"method {method!r} needs the pool's features files and the queries' features "
                "file (rules represent / less_gradients)"
            )
        router = load_features(router_data_paths)
        queries = load_features([queries_path])
    elif router_data_paths:
        router = load_router_data(router_data_paths)
    elif method in POOL_ONLY_METHODS:
        # random and full need no scores: select straight from the pool, so that these
        # baselines do not depend on any warmup (and on its quality-loss type)
        router = PoolExamples.of_pool(pool_paths)
    else:
        raise RouterDataError(
            f"method {method!r} needs router data; pass the *_router_data.pt files "
            f"(only {', '.join(POOL_ONLY_METHODS)} can select from the pool alone)"
        )
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

    quality_labels = None
    if method in LABEL_METHODS:
        if labels_path is None:
            raise SelectionError(
                f"method {method!r} needs the pool's quality labels; set data.labels (the demo "
                "provides its own)"
            )
        quality_labels = align_labels(
            labels_path, list(zip(router.datasets, router.sample_ids, strict=True))
        )
    clustering = None
    if clusters_path is not None and uses_clusters(method, method_definitions):
        clustering = read_clusters(clusters_path, router)
    result = select_indices(
        router,
        method=method,
        selection_percentage=selection_percentage,
        clustering_method=clustering_method,
        clustering_params=clustering_params,
        seed=seed,
        debug_print=debug_print,
        quality_labels=quality_labels,
        definitions_extra=method_definitions,
        clustering=clustering,
        queries=queries,
    )
    timings.update(result.info["timings"])

    records = (
        {
            "dataset": pool[rows[i]].dataset,
            "id": pool[rows[i]].id,
            "score": round(float(result.scores[i]), _SCORE_DECIMALS) if router_data_paths else None,
            "cluster": int(result.labels[i]),
            "messages": [dict(message) for message in pool[rows[i]].messages],
        }
        for i in result.indices
    )
    info = dict(result.info)
    info["n_pool_examples"] = len(pool)
    info["n_unscored_pool_examples"] = unscored
    info["pool_files"] = [os.fspath(p) for p in pool_paths]
    info["output"] = os.fspath(output_jsonl)
    written: list[Path] = []
    try:
        # Plots, then the data, then selection.json: the JSON is the last file to appear, and a
        # failure part-way removes what this call wrote.
        if plot_dir is not None:
            start = time.perf_counter()
            info["plots"] = write_plots(
                info, scores=result.scores, datasets=router.datasets, plot_dir=plot_dir
            )
            written += [Path(p) for p in info["plots"].values()]
            timings["plots"] = time.perf_counter() - start
        start = time.perf_counter()
        atomic_write_jsonl(output_jsonl, records)
        written.append(Path(output_jsonl))
        timings["write_jsonl"] = time.perf_counter() - start
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
