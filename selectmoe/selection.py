"""Stage 2b: select a share of the pool from its router data (SPEC §5).

Each sample has a *score* (how good the quality gate finds it) and a *feature vector* (where the
MoE routers send it):

- score ``s_n = mean_l sigmoid(quality_score[n, l])``;
- features ``f_n = moe_probs[n].reshape(L * E)``.

Methods (``method``):

- ``selectmoe``: cluster the features (``clustering_method``, spherical k-means by default, with k
  chosen automatically), then :func:`round_robin` over the clusters by score;
- ``random``: a seeded uniform sample;
- ``quality_topk``: the best scores;
- ``diversity``: the same clusters, but a random order within each cluster;
- ``full``: everything;
- ``oracle`` / ``anti_oracle``: reference selections for a pool with quality labels
  (:mod:`selectmoe.labels`): clean examples first (the best any method could do at that size) or
  planted ones first (the worst), in a seeded random order within each group. They use labels a
  real pool does not have, and every table and plot marks them so.

The budget is global over the pooled router data of all datasets:
``n = round_half_up(selection_percentage * N)`` clipped to ``[1, N]``; the per-dataset counts that
result are reported. :func:`run_selection` writes ``selected_data.jsonl`` (selection order),
``selection.json`` and the plots, all atomically; the same inputs and seed give byte-identical
``selected_data.jsonl``.
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
import torch

from selectmoe.allocation import CLUSTERED_ALLOCATIONS, allocate, round_robin
from selectmoe.clustering import ClusteringResult, get_clustering_method
from selectmoe.errors import RouterDataError, SelectionError
from selectmoe.io import atomic_path, atomic_write_json, atomic_write_jsonl
from selectmoe.labels import PoolLabels, align_labels, describe
from selectmoe.methods import (
    LABEL_METHODS,
    POOL_ONLY_METHODS,
    SELECTION_METHODS,
    method_definitions,
)
from selectmoe.scores import compute_score
from selectmoe.scores import describe as describe_score

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

ROUTER_DATA_KEYS: tuple[str, ...] = ("quality_score", "moe_probs", "sample_ids", "dataset")
#: Per-example statistics a router-data file may add (``[N, L]`` or ``[N]``): the gate over
#: other tokens, and the LM's losses from the same pass (``scoring.compute_example_statistics``).
OPTIONAL_STATISTICS: tuple[str, ...] = (
    "quality_good",
    "quality_score_answer",
    "n_answer_tokens",
    "n_tokens",
    "answer_loss",
    "eos_loss",
    "answer_loss_alone",
)
PLOT_FILES: dict[str, str] = {
    "elbow": "elbow.png",
    "silhouette": "silhouette.png",
    "cluster_sizes": "cluster_sizes.png",
    "score_distribution": "score_distribution.png",
}
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
# Router data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RouterData:
    """The router data of several files, concatenated in the given order.

    Attributes
    ----------
    quality_score : torch.Tensor of shape (N, L), float32
        Mean raw quality-gate score per layer.
    moe_probs : torch.Tensor of shape (N, L, E), float32
        Mean routing distribution per layer.
    sample_ids : list of str, length N
        Sample ids, file order within each file.
    datasets : list of str, length N
        Dataset of each sample.
    files : list of str
        The files, in order.
    file_offsets : list of int
        Start row of each file (length ``len(files) + 1``; the last is N).
    metadata : list of dict
        Each file's ``metadata``.
    statistics : dict of str to torch.Tensor
        The :data:`OPTIONAL_STATISTICS` that every file holds, concatenated (``[N, ...]``).
    """

    quality_score: torch.Tensor
    moe_probs: torch.Tensor
    sample_ids: list[str]
    datasets: list[str]
    files: list[str]
    file_offsets: list[int]
    metadata: list[dict[str, Any]]
    statistics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.quality_score.shape[0])

    @property
    def scores(self) -> np.ndarray:
        """``mean_l sigmoid(quality_score[:, l])`` in float64: shape (N,)."""
        return torch.sigmoid(self.quality_score.to(torch.float64)).mean(dim=1).numpy()

    @property
    def features(self) -> torch.Tensor:
        """``moe_probs.reshape(N, L * E)`` (a view, no copy): shape (N, L*E)."""
        n, layers, experts = self.moe_probs.shape
        return self.moe_probs.reshape(n, layers * experts)

    def file_of(self, row: int) -> str:
        """The file that row ``row`` came from (for error messages)."""
        index = int(np.searchsorted(self.file_offsets, row, side="right")) - 1
        return self.files[min(max(index, 0), len(self.files) - 1)]


def _load_one(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise RouterDataError(f"{path}: router-data file not found; run the score stage first")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive (or, in the legacy format, a pickle): anything else gets a
    # plain message rather than torch's unpickling advice
    if not magic.startswith((b"PK\x03\x04", b"\x80")):
        raise RouterDataError(
            f"{path}: cannot be read as a router-data file (not written by torch.save: it "
            f"starts with {magic!r}); re-run the score stage for this dataset"
        )
    try:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # Files written without the zip format cannot be memory-mapped; read them whole.
            if "mmap" not in str(exc):
                raise
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same one-line error
        # The first line is the useful part (torch's weights_only errors run to a page).
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RouterDataError(
            f"{path}: cannot be read as a router-data file ({type(exc).__name__}: {reason}); "
            "re-run the score stage for this dataset"
        ) from exc
    if not isinstance(payload, dict):
        raise RouterDataError(
            f"{path}: expected a dict with keys {list(ROUTER_DATA_KEYS)}, got "
            f"{type(payload).__name__}"
        )
    missing = [key for key in ROUTER_DATA_KEYS if key not in payload]
    if missing:
        raise RouterDataError(
            f"{path}: missing key(s) {missing}; a router-data file holds "
            f"{[*ROUTER_DATA_KEYS, 'metadata']}"
        )
    return payload


def _check_tensor(path: str, name: str, value: Any, ndim: int, shape_doc: str) -> torch.Tensor:
    fix = "re-run the score stage for this dataset"
    if not isinstance(value, torch.Tensor):
        raise RouterDataError(
            f"{path}: {name} must be a tensor {shape_doc}, got {type(value).__name__}; {fix}"
        )
    if value.ndim != ndim:
        raise RouterDataError(
            f"{path}: {name} must have shape {shape_doc}, got {tuple(value.shape)}; {fix}"
        )
    if not value.is_floating_point():
        raise RouterDataError(f"{path}: {name} must be float32, got dtype {value.dtype}; {fix}")
    return value


def _check_finite(path: str, name: str, value: torch.Tensor, ids: Sequence[str]) -> None:
    finite = torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        first = int(bad[0])
        raise RouterDataError(
            f"{path}: {name} has NaN or infinite values in {bad.numel()} sample(s) (first: row "
            f"{first}, id {ids[first]!r}); re-run the score stage (check the model and its "
            "weights for overflow)"
        )


def find_router_data(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``*_router_data.pt`` files of a directory, sorted by name (for ``selectmoe select``).

    Raises
    ------
    RouterDataError
        When the directory does not exist or holds no router-data file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RouterDataError(f"{root}: router-data directory not found")
    found = sorted(root.glob("*_router_data.pt"))
    if not found:
        raise RouterDataError(
            f"{root}: no *_router_data.pt files; run the score stage or point to its output"
        )
    return found


def load_router_data(paths: Sequence[str | os.PathLike[str]]) -> RouterData:
    """Read, validate and concatenate router-data files (one per dataset, SPEC §5).

    Each file is a ``torch.load``-able dict: ``quality_score`` float32 ``[N, L]``, ``moe_probs``
    float32 ``[N, L, E]``, ``sample_ids`` (N strings, file order), ``dataset`` (str), ``metadata``
    (dict, optional). Other floating dtypes are converted to float32.

    Parameters
    ----------
    paths : sequence of path
        The files, concatenated in this order.

    Returns
    -------
    RouterData

    Raises
    ------
    RouterDataError
        Naming the file and the problem: unreadable, missing keys, wrong types or shapes, layers or
        experts that differ between files, no samples, NaN/Inf values, duplicate ids.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise RouterDataError("no router-data files given; pass at least one *_router_data.pt")
    scores: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    sample_ids: list[str] = []
    datasets: list[str] = []
    metadata: list[dict[str, Any]] = []
    extras: list[dict[str, torch.Tensor]] = []
    offsets = [0]
    seen: dict[tuple[str, str], str] = {}
    layout: tuple[int, int, str] | None = None
    for path in paths:
        payload = _load_one(path)
        quality = _check_tensor(path, "quality_score", payload["quality_score"], 2, "[N, L]")
        moe = _check_tensor(path, "moe_probs", payload["moe_probs"], 3, "[N, L, E]")
        ids = payload["sample_ids"]
        dataset = payload["dataset"]
        if not isinstance(dataset, str) or not dataset:
            raise RouterDataError(f"{path}: dataset must be a non-empty string, got {dataset!r}")
        if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
            raise RouterDataError(f"{path}: sample_ids must be a list of strings")
        n = quality.shape[0]
        if n == 0:
            raise RouterDataError(f"{path}: holds no samples; score a non-empty dataset")
        if moe.shape[0] != n or moe.shape[1] != quality.shape[1] or len(ids) != n:
            raise RouterDataError(
                f"{path}: shapes disagree: quality_score {tuple(quality.shape)}, moe_probs "
                f"{tuple(moe.shape)}, {len(ids)} sample_ids; expected [N, L], [N, L, E] and N ids"
            )
        if layout is None:
            layout = (moe.shape[1], moe.shape[2], path)
        elif (moe.shape[1], moe.shape[2]) != layout[:2]:
            raise RouterDataError(
                f"{path}: {moe.shape[1]} layers x {moe.shape[2]} experts, but {layout[2]} has "
                f"{layout[0]} x {layout[1]}; all files must come from the same model"
            )
        _check_finite(path, "quality_score", quality, ids)
        _check_finite(path, "moe_probs", moe, ids)
        for sample_id in ids:
            key = (dataset, sample_id)
            if key in seen:
                where = "this file" if seen[key] == path else seen[key]
                raise RouterDataError(
                    f"{path}: duplicate sample id {sample_id!r} of dataset {dataset!r} (also in "
                    f"{where}); each (dataset, id) must appear once"
                )
            seen[key] = path
        meta = payload.get("metadata", {})
        extra = {}
        for key in OPTIONAL_STATISTICS:
            value = payload.get(key)
            if isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
                extra[key] = value
            elif value is not None:
                raise RouterDataError(
                    f"{path}: {key} must be a tensor with one row per sample ({n}); re-run the "
                    "score stage for this dataset"
                )
        extras.append(extra)
        scores.append(quality.to(torch.float32))
        probs.append(moe.to(torch.float32))
        sample_ids.extend(ids)
        datasets.extend([dataset] * n)
        metadata.append(dict(meta) if isinstance(meta, Mapping) else {"value": meta})
        offsets.append(offsets[-1] + n)
    # One file: keep its (memory-mapped) tensors; several: one contiguous copy.
    quality_all = scores[0] if len(scores) == 1 else torch.cat(scores)
    probs_all = probs[0] if len(probs) == 1 else torch.cat(probs)
    del scores, probs
    shared = set.intersection(*(set(extra) for extra in extras)) if extras else set()
    statistics = {key: torch.cat([extra[key] for extra in extras]) for key in sorted(shared)}
    return RouterData(
        quality_score=quality_all,
        moe_probs=probs_all,
        sample_ids=sample_ids,
        datasets=datasets,
        files=paths,
        file_offsets=offsets,
        metadata=metadata,
        statistics=statistics,
    )


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
    """Register a selection method under ``name`` (from a plugin module, :mod:`selectmoe.plugins`).

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


def _cluster(
    router: RouterData,
    *,
    clustering_method: str,
    clustering_params: Mapping[str, Any],
    seed: int,
    debug_print: bool,
) -> ClusteringResult:
    method = get_clustering_method(clustering_method)
    params = dict(clustering_params)
    n = router.n_samples
    # Catch k larger than the data here, with the config key in the message.
    is_kmeans = clustering_method == "kmeans"
    k = params.get("k")
    if is_kmeans and not params.get("auto_k", True) and isinstance(k, int) and k < 2:
        raise SelectionError(
            f"clustering_params.k={k} must be >= 2 (one cluster is the quality ranking: use "
            "method quality_topk for that)"
        )
    if is_kmeans and not params.get("auto_k", True) and isinstance(k, int) and k > n:
        raise SelectionError(
            f"clustering_params.k={k} is larger than the number of samples {n} in "
            f"{len(router.files)} router-data file(s); use k <= {n}"
        )
    k_range = params.get("k_range")
    k_max = (
        k_range[1]
        if isinstance(k_range, Sequence) and not isinstance(k_range, str) and len(k_range) == 2
        else None
    )
    if is_kmeans and params.get("auto_k", True) and isinstance(k_max, int) and k_max > n - 1:
        raise SelectionError(
            f"clustering_params.k_range upper bound {k_max} is larger than n_samples - 1 "
            f"= {n - 1} ({n} samples in {len(router.files)} router-data file(s)); lower it"
        )
    if is_kmeans and debug_print:
        params.setdefault("debug_print", True)
    result = method(router.features, params=params, seed=seed)
    labels = np.asarray(result.labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise SelectionError(
            f"clustering method {clustering_method!r} returned labels of shape {labels.shape} "
            f"and dtype {labels.dtype}; expected ({n},) integers"
        )
    return dataclasses.replace(result, labels=labels.astype(np.int64))


def select_indices(
    router: RouterData,
    *,
    method: str,
    selection_percentage: float,
    clustering_method: str = "kmeans",
    clustering_params: Mapping[str, Any] | None = None,
    seed: int = 42,
    debug_print: bool = False,
    quality_labels: PoolLabels | None = None,
    definitions_extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> SelectionResult:
    """Choose samples of the router data by one of the methods (module docstring).

    Parameters
    ----------
    router : RouterData
        Pooled router data of all datasets.
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
        (:func:`selectmoe.methods.method_definitions`).

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
    clustering: ClusteringResult | None = None
    score_name = definition["score"] if definition else "gate"
    score_params = dict(definition.get("score_params") or {}) if definition else {}
    # the method's own score (the seed's gate score for the pool-only and plugged-in methods)
    scores = (
        compute_score(router, score_name, params=score_params, seed=int(seed))
        if definition or method not in POOL_ONLY_METHODS
        else router.scores
    )

    start = time.perf_counter()
    if definition and definition["allocation"] in CLUSTERED_ALLOCATIONS:
        clustering = _cluster(
            router,
            clustering_method=clustering_method,
            clustering_params=clustering_params or {},
            seed=int(seed),
            debug_print=debug_print,
        )
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
        score_definition=describe_score(score_name, score_params),
    )
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


def _summary(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
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
# Plots
# --------------------------------------------------------------------------------------------


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _new_figure(width: float = 6.4, height: float = 4.0) -> Any:
    # The object-oriented API with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


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

    figure = _new_figure()
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
    _save_figure(figure, directory / PLOT_FILES["elbow"])
    written["elbow"] = str(directory / PLOT_FILES["elbow"])

    figure = _new_figure()
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
    _save_figure(figure, directory / PLOT_FILES["silhouette"])
    written["silhouette"] = str(directory / PLOT_FILES["silhouette"])

    figure = _new_figure(max(6.4, 0.12 * (k or 0)), 4.0)
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
    _save_figure(figure, directory / PLOT_FILES["cluster_sizes"])
    written["cluster_sizes"] = str(directory / PLOT_FILES["cluster_sizes"])

    figure = _new_figure()
    axes = figure.add_subplot()
    names = list(dict.fromkeys(datasets))
    dataset_array = np.asarray(datasets)
    low, high = float(scores.min()), float(scores.max())
    bins = np.linspace(low, high if high > low else low + 1e-6, 41)
    for name in names:
        axes.hist(scores[dataset_array == name], bins=bins, histtype="step", label=name)
    axes.set_xlabel("score = mean_l sigmoid(quality_score)")
    axes.set_ylabel("samples")
    axes.set_title("Score distribution per dataset")
    axes.legend()
    _save_figure(figure, directory / PLOT_FILES["score_distribution"])
    written["score_distribution"] = str(directory / PLOT_FILES["score_distribution"])
    return written


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def _pool_placeholder_router(pool_paths: Sequence[str | os.PathLike[str]]) -> RouterData:
    """Router data with the pool's ids and no information, for the pool-only methods."""
    from selectmoe.data import load_pool

    pool = load_pool(pool_paths)
    n_samples = len(pool)
    return RouterData(
        quality_score=torch.zeros(n_samples, 1),
        moe_probs=torch.ones(n_samples, 1, 1),
        sample_ids=[example.id for example in pool],
        datasets=[example.dataset for example in pool],
        files=[os.fspath(p) for p in pool_paths],
        file_offsets=[0, n_samples],
        metadata=[{"source": "pool only: no router data"}],
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
        :func:`selectmoe.data.load_pool`); every router sample must be in them.
    output_jsonl, output_json : path
        Where to write ``selected_data.jsonl`` and ``selection.json``.
    plot_dir : path, optional
        Directory for the PNG plots (:data:`PLOT_FILES`); no plots when None.
    method, selection_percentage, clustering_method, clustering_params, seed, debug_print
        As in :func:`select_indices`.
    labels_path : path, optional
        The pool's quality labels (:mod:`selectmoe.labels`), read only by ``oracle`` and
        ``anti_oracle``; they must label exactly the pool.
    method_definitions : mapping, optional
        The config's ``selection.method_definitions`` (:mod:`selectmoe.methods`).

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
    from selectmoe.data import load_pool

    total_start = time.perf_counter()
    if method not in (method_definitions or {}):
        _check_method(method)
    _check_percentage(selection_percentage)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    if router_data_paths:
        router = load_router_data(router_data_paths)
    elif method in POOL_ONLY_METHODS:
        # random and full need no scores: select straight from the pool, so that these
        # baselines do not depend on any warmup (and on its quality-loss type)
        router = _pool_placeholder_router(pool_paths)
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
