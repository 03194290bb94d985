"""Clustering methods by name; ``kmeans`` (automatic or manual k) is registered here."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from selectmoe.catalogue import register_name
from selectmoe.clustering._inputs import (
    DEFAULT_K_RANGE,
    ArrayLike,
    _check_features,
    _check_int,
)
from selectmoe.clustering.auto_k import (
    choose_k,
)
from selectmoe.clustering.kmeans import (
    KMeans,
)
from selectmoe.clustering.silhouette import (
    silhouette_score,
)
from selectmoe.errors import SelectionError


@dataclasses.dataclass
class ClusteringResult:
    """What a clustering method returns.

    Attributes
    ----------
    labels : numpy.ndarray of shape (n_samples,), int64
        Cluster of each sample, ``0..k-1``.
    k : int
        Number of clusters.
    info : dict
        JSON-ready details for ``selection.json`` (curves, inertia, silhouette, timings, ...).
    """

    labels: np.ndarray
    k: int
    info: dict[str, Any]


ClusteringMethod = Callable[..., ClusteringResult]
"""``method(features [N, F], *, params: dict, seed: int) -> ClusteringResult``."""

_REGISTRY: dict[str, ClusteringMethod] = {}


def register_clustering_method(name: str, fn: ClusteringMethod, *, overwrite: bool = False) -> None:
    """Make ``fn`` available to selection as ``clustering_method: name``.

    ``fn(features, *, params, seed)`` gets the feature matrix (numpy or torch, shape [N, F]), the
    ``clustering_params`` dict of the config and the seed, and returns a :class:`ClusteringResult`.
    """
    if not isinstance(name, str) or not name:
        raise SelectionError(f"clustering method name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise SelectionError(f"clustering method {name!r} must be callable, got {fn!r}")
    if name in _REGISTRY and not overwrite:
        raise SelectionError(
            f"clustering method {name!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[name] = fn
    register_name("clustering_method", name)


def get_clustering_method(name: str) -> ClusteringMethod:
    """The registered method ``name``; an error lists the valid names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise SelectionError(
            f"unknown clustering_method {name!r}; valid: {list_clustering_methods()}"
        ) from None


def list_clustering_methods() -> list[str]:
    """Names of the registered clustering methods, sorted."""
    return sorted(_REGISTRY)


KMEANS_PARAM_DEFAULTS: dict[str, Any] = {
    "auto_k": True,
    "k": None,
    "k_range": list(DEFAULT_K_RANGE),
    "k_step": None,
    "max_iters": 300,
    "n_init": 1,
    "tol": 1e-4,
    "enable_parallel_kmeans": False,
    "parallel_processes": 1,
    "gpu_allocation_strategy": "round_robin",
    "compute_silhouette": True,
    "device": "auto",
    "debug_print": False,
}


def resolve_kmeans_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``clustering_params`` with defaults filled in; unknown keys are an error naming them."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(KMEANS_PARAM_DEFAULTS))
    if unknown:
        raise SelectionError(
            f"unknown clustering_params for kmeans: {unknown}; valid: "
            f"{sorted(KMEANS_PARAM_DEFAULTS)}"
        )
    resolved = {**KMEANS_PARAM_DEFAULTS, **params}
    if not isinstance(resolved["auto_k"], bool):
        raise SelectionError(
            f"clustering_params.auto_k must be true or false, got {resolved['auto_k']!r}"
        )
    if not resolved["auto_k"] and resolved["k"] is None:
        raise SelectionError("clustering_params.k must be set when auto_k is false")
    if resolved["k"] is not None:
        _check_int(resolved["k"], "clustering_params.k", 1)
    return resolved


def _kmeans_method(
    features: ArrayLike, *, params: Mapping[str, Any], seed: int
) -> ClusteringResult:
    """The ``kmeans`` method: :func:`choose_k` (``auto_k``) or :class:`KMeans` (manual ``k``)."""
    p = resolve_kmeans_params(params)
    tensor = _check_features(features, name="features")
    n_samples = tensor.shape[0]
    common = {
        "n_init": p["n_init"],
        "max_iter": p["max_iters"],
        "tol": p["tol"],
        "seed": seed,
        "device": p["device"],
    }
    if p["auto_k"]:
        sweep = choose_k(
            tensor,
            k_range=p["k_range"],
            k_step=p["k_step"],
            parallel_processes=p["parallel_processes"] if p["enable_parallel_kmeans"] else 1,
            gpu_allocation_strategy=p["gpu_allocation_strategy"],
            compute_silhouette=p["compute_silhouette"],
            verbose=bool(p["debug_print"]),
            **common,
        )
        index = sweep.ks.index(sweep.k)
        summary = sweep.to_dict()
        info = {
            "k_selection": summary.pop("method"),
            **summary,
            "inertia": sweep.inertias[index],
            "silhouette": None if sweep.silhouettes is None else sweep.silhouettes[index],
            "params": p,
        }
        return ClusteringResult(labels=sweep.labels, k=sweep.k, info=info)
    k = p["k"]
    if k > n_samples:
        raise SelectionError(
            f"clustering_params.k={k} is larger than the number of samples {n_samples}; "
            f"use at most {n_samples}"
        )
    start = time.perf_counter()
    model = KMeans(k, **common).fit(tensor)
    seconds = {"kmeans": time.perf_counter() - start}
    silhouette = None
    if p["compute_silhouette"] and 2 <= k <= n_samples - 1:
        start = time.perf_counter()
        silhouette = silhouette_score(tensor, model.labels_, device=p["device"])
        seconds["silhouette"] = time.perf_counter() - start
    info = {
        "k_selection": "manual",
        "k": k,
        "ks": [k],
        "inertias": [model.inertia_],
        "silhouettes": None if silhouette is None else [silhouette],
        "n_iters": [model.n_iter_],
        "inertia": model.inertia_,
        "silhouette": silhouette,
        "seconds": seconds,
        "params": p,
    }
    return ClusteringResult(labels=model.labels_, k=k, info=info)


register_clustering_method("kmeans", _kmeans_method)
