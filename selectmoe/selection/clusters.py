"""The clusters of the routing features, computed once per loss type and read by every
selection that spends its budget over clusters (``selectmoe``, ``selectmoe_seed``,
``diversity``, ... at every percentage).

:func:`run_clustering` clusters the pooled router data of one loss type (the k sweep, the
chosen k, the labels) and writes ``clusters.json``; :func:`read_clusters` gives the
:class:`~selectmoe.clustering.ClusteringResult` back, after checking that the file belongs to the
router data at hand (same examples in the same order). A selection given the file selects exactly
as one that clusters by itself with the same settings and seed.

``clusters.json``::

    {"clustering_method", "clustering_params", "seed", "n_samples", "sample_keys_sha256",
     "router_files", "k", "labels": [N ints], "info": {...curves, chosen k...}, "timings"}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectmoe.clustering import ClusteringResult, get_clustering_method
from selectmoe.errors import SelectionError
from selectmoe.hashing import text_sha256
from selectmoe.io import atomic_write_json

__all__ = ["cluster_router", "read_clusters", "run_clustering", "sample_keys_sha256"]

logger = logging.getLogger(__name__)


def sample_keys_sha256(router: Any) -> str:
    """Digest of the router data's ``(dataset, id)`` keys in row order."""
    keys = "\n".join(f"{d}\t{i}" for d, i in zip(router.datasets, router.sample_ids, strict=True))
    return text_sha256(keys)


def _check_kmeans_params(params: Mapping[str, Any], n: int, n_files: int) -> None:
    """k against the data, with the config key in the message (before any work)."""
    k = params.get("k")
    auto_k = params.get("auto_k", True)
    if not auto_k and isinstance(k, int) and k < 2:
        raise SelectionError(
            f"clustering_params.k={k} must be >= 2 (one cluster is the quality ranking: use "
            "method quality_topk for that)"
        )
    if not auto_k and isinstance(k, int) and k > n:
        raise SelectionError(
            f"clustering_params.k={k} is larger than the number of samples {n} in "
            f"{n_files} router-data file(s); use k <= {n}"
        )
    k_range = params.get("k_range")
    k_max = (
        k_range[1]
        if isinstance(k_range, Sequence) and not isinstance(k_range, str) and len(k_range) == 2
        else None
    )
    if auto_k and isinstance(k_max, int) and k_max > n - 1:
        raise SelectionError(
            f"clustering_params.k_range upper bound {k_max} is larger than n_samples - 1 "
            f"= {n - 1} ({n} samples in {n_files} router-data file(s)); lower it"
        )


def cluster_router(
    router: Any,
    *,
    clustering_method: str,
    clustering_params: Mapping[str, Any],
    seed: int,
    debug_print: bool = False,
) -> ClusteringResult:
    """Cluster the routing features ``[N, L * E]`` of ``router`` with a registered method.

    Raises
    ------
    SelectionError
        An unknown method, k that does not fit the data, or labels that are not ``N`` integers.
    """
    method = get_clustering_method(clustering_method)
    params = dict(clustering_params)
    n = router.n_samples
    if clustering_method == "kmeans":
        _check_kmeans_params(params, n, len(router.files))
        if debug_print:
            params.setdefault("debug_print", True)
    result = method(router.features, params=params, seed=seed)
    labels = np.asarray(result.labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise SelectionError(
            f"clustering method {clustering_method!r} returned labels of shape {labels.shape} "
            f"and dtype {labels.dtype}; expected ({n},) integers"
        )
    return dataclasses.replace(result, labels=labels.astype(np.int64))


def run_clustering(
    router_data_paths: Sequence[str | os.PathLike[str]],
    output_json: str | os.PathLike[str],
    *,
    clustering_method: str = "kmeans",
    clustering_params: Mapping[str, Any] | None = None,
    seed: int = 42,
    debug_print: bool = False,
) -> dict[str, Any]:
    """Cluster the router data of one loss type and write ``clusters.json`` (atomically).

    Returns
    -------
    dict
        The content of ``clusters.json``.
    """
    from selectmoe.data.router_data import load_router_data

    start = time.perf_counter()
    router = load_router_data(router_data_paths)
    loaded = time.perf_counter()
    result = cluster_router(
        router,
        clustering_method=clustering_method,
        clustering_params=clustering_params or {},
        seed=int(seed),
        debug_print=debug_print,
    )
    record = {
        "clustering_method": clustering_method,
        "clustering_params": dict(clustering_params or {}),
        "seed": int(seed),
        "n_samples": router.n_samples,
        "sample_keys_sha256": sample_keys_sha256(router),
        "router_files": list(router.files),
        "k": int(result.k),
        "labels": result.labels.tolist(),
        "info": result.info,
        "timings": {
            "load_router_data": round(loaded - start, 4),
            "clustering": round(time.perf_counter() - loaded, 4),
        },
    }
    atomic_write_json(output_json, record, indent=None)
    logger.info("k=%d over %d examples -> %s", result.k, router.n_samples, output_json)
    return record


def read_clusters(path: str | os.PathLike[str], router: Any) -> ClusteringResult:
    """The clustering of ``path`` (written by :func:`run_clustering`) for ``router``.

    Raises
    ------
    SelectionError
        When the file is not a clusters file, or was computed from other examples.
    """
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        labels = np.asarray(record["labels"], dtype=np.int64)
        k, digest = int(record["k"]), record["sample_keys_sha256"]
        info = dict(record["info"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SelectionError(
            f"{path}: not a clusters file written by the cluster stage ({error}); rerun it"
        ) from None
    if labels.shape != (router.n_samples,) or digest != sample_keys_sha256(router):
        raise SelectionError(
            f"{path}: its {labels.shape[0]} labels belong to other router data than the "
            f"{router.n_samples} examples of {', '.join(router.files)}; rerun the cluster stage "
            "on the same router data"
        )
    return ClusteringResult(labels=labels, k=k, info=info)
