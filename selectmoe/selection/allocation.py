"""Allocations: how a selection method spends its budget, given a score (and clusters).

An allocation is ``(scores, clusters, n, *, params, seed) -> indices`` (``n`` distinct rows in
selection order):

- ``topk``: the ``n`` best scores (ties: lower index first);
- ``round_robin``: the seed's: each cluster sorted by score, clusters visited in turn taking
  their next best (:func:`round_robin`); every cluster gets the same number of picks while it
  lasts;
- ``proportional``: each cluster gets a share of ``n`` proportional to its size (largest
  remainders), its best examples; then the same round-robin order;
- ``drop_then_round_robin``: drop the lowest-scored ``drop_share`` of the pool (default 0.3),
  then round robin over the clusters of what remains;
- ``floor_round_robin``: round robin that cannot hand noise a turn: an example whose score
  is below the pool's ``floor_quantile`` (default 0.25) is not eligible, nor is a whole cluster
  whose median score is; round robin over the eligible examples of the eligible clusters, then
  (if the budget is not met) the rest by score, as top-k would take them;
- ``quality_quota``: each cluster's quota is proportional to its *score mass*, the sum over its
  members of ``max(0, r - floor_quantile)`` with ``r`` the member's percentile rank in the
  pool (largest remainders, capped at the cluster's eligible members and the overflow passed
  on); each cluster's best eligible examples, in round-robin order; then the rest by score. A
  cluster of clean examples gets a quota near its size's share, a cluster of noise none.

Both quality-aware allocations keep the property that a cluster made only of examples below
the pool's ``floor_quantile`` gets no more of the budget than top-k would give it.
- ``ifd_filter``: Cherry-LLM / Superfiltering's IFD selection: keep ``score < threshold``
  (default 1: the question must help), highest first; the authors stop there (a smaller set);
  with a fixed budget the rest is filled with the examples at or above the threshold, those
  closest to it first, and examples whose IFD is undefined come last;
- ``random``: a seeded random order (the score is not read).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from selectmoe.catalogue import register_name
from selectmoe.errors import SelectionError

__all__ = [
    "ALLOCATION_PARAMS",
    "CLUSTERED_ALLOCATIONS",
    "allocate",
    "available_allocations",
    "percentile_ranks",
    "register_allocation",
    "round_robin",
]

AllocationFn = Callable[..., np.ndarray]
_REGISTRY: dict[str, AllocationFn] = {}
#: Allocations that spread the budget over clusters (they need the clustering of the features).
CLUSTERED_ALLOCATIONS: set[str] = {
    "round_robin",
    "proportional",
    "drop_then_round_robin",
    "floor_round_robin",
    "quality_quota",
}
#: The parameters each built-in allocation takes, with their defaults.
ALLOCATION_PARAMS: dict[str, dict[str, Any]] = {
    "topk": {},
    "round_robin": {},
    "proportional": {},
    "drop_then_round_robin": {"drop_share": 0.3},
    "floor_round_robin": {"floor_quantile": 0.25},
    "quality_quota": {"floor_quantile": 0.25},
    "ifd_filter": {"threshold": 1.0},
    "random": {},
}


def register_allocation(
    name: str, fn: AllocationFn, *, clustered: bool = False, overwrite: bool = False
) -> None:
    """Register ``fn(scores, clusters, n, *, params, seed) -> indices`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise SelectionError(f"allocation {name!r} is already registered")
    _REGISTRY[name] = fn
    register_name("allocation", name)
    if clustered:
        CLUSTERED_ALLOCATIONS.add(name)


def available_allocations() -> list[str]:
    return sorted(_REGISTRY)


def round_robin(scores: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Indices chosen by taking each cluster's next best sample in turn (SPEC §5).

    Each cluster is sorted by score, descending and stable (ties keep the lower index first).
    Clusters are visited in ascending label order; round ``r`` takes the ``r``-th best of every
    cluster that still has one (exhausted clusters are skipped), until ``n`` are taken. Vectorised:
    with ``rank_i`` the position of sample ``i`` in its cluster's order, the result is the first
    ``n`` samples sorted by ``(rank_i, label_i)``.

    Parameters
    ----------
    scores : numpy.ndarray of shape (N,)
        Finite score of each sample (higher is better).
    labels : numpy.ndarray of shape (N,)
        Integer cluster of each sample (any integers; visited in ascending order).
    n : int
        How many to take, ``0 <= n <= N``.

    Returns
    -------
    numpy.ndarray of shape (n,), int64
        Sample indices in selection order.

    Examples
    --------
    >>> round_robin(np.array([0.1, 0.9, 0.5, 0.7, 0.3]), np.array([1, 0, 0, 1, 1]), 4)
    array([1, 3, 2, 4])
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1:
        raise SelectionError(f"scores must be 1-D, got shape {scores.shape}")
    if labels.shape != scores.shape:
        raise SelectionError(
            f"labels must have the shape of scores {scores.shape}, got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise SelectionError(f"labels must be integers, got dtype {labels.dtype}")
    if not np.issubdtype(scores.dtype, np.number) or not np.all(np.isfinite(scores)):
        raise SelectionError("scores must be finite numbers (no NaN or infinity)")
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise SelectionError(f"n must be an integer, got {n!r}")
    total = scores.shape[0]
    if not 0 <= n <= total:
        raise SelectionError(f"n must be in [0, {total}] (the number of samples), got {n}")
    index = np.arange(total)
    # Within-cluster order: label ascending, score descending, index ascending (lexsort: last key
    # is the primary one).
    order = np.lexsort((index, -scores.astype(np.float64), labels))
    sorted_labels = labels[order]
    group_start = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[group_start, total])
    rank = index - np.repeat(group_start, sizes)
    # Round r (rank) first, then clusters in label order; lexsort is stable.
    picked = order[np.lexsort((sorted_labels, rank))]
    return picked[:n].astype(np.int64)


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores with NaN and infinities replaced by the lowest finite value minus one."""
    finite = np.isfinite(scores)
    if finite.all():
        return scores
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    return np.where(finite, scores, floor)


def _topk(scores, clusters, n, *, params, seed):
    return np.lexsort((np.arange(scores.shape[0]), -_finite(scores)))[:n]


def _round_robin(scores, clusters, n, *, params, seed):
    return round_robin(_finite(scores), clusters, n)


def _quotas(sizes: np.ndarray, n: int) -> np.ndarray:
    """Largest-remainder quotas of ``n`` proportional to ``sizes`` (ties: lower cluster first)."""
    exact = n * sizes / sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(sizes)), -(exact - quotas)))
    quotas[order[: n - quotas.sum()]] += 1
    return np.minimum(quotas, sizes)


def _proportional(scores, clusters, n, *, params, seed):
    scores = _finite(scores)
    ids, inverse = np.unique(clusters, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(ids))
    quotas = _quotas(sizes, n)
    chosen = np.zeros(scores.shape[0], dtype=bool)
    for cluster, quota in enumerate(quotas):
        members = np.flatnonzero(inverse == cluster)
        best = members[np.lexsort((members, -scores[members]))][:quota]
        chosen[best] = True
    # the chosen ones in round-robin order (each cluster's best first)
    within = round_robin(scores[chosen], clusters[chosen], int(chosen.sum()))
    return np.flatnonzero(chosen)[within]


def _drop_then_round_robin(scores, clusters, n, *, params, seed):
    share = float(params["drop_share"])
    if not 0.0 <= share < 1.0:
        raise SelectionError(f"drop_share is {share}; it must be in [0, 1)")
    scores = _finite(scores)
    total = scores.shape[0]
    keep = total - int(np.floor(share * total))
    keep = max(keep, n)  # never drop so much that the budget cannot be met
    kept = np.lexsort((np.arange(total), -scores))[:keep]
    kept = np.sort(kept)
    within = round_robin(scores[kept], clusters[kept], n)
    return kept[within]


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank in ``[0, 1]`` (ties share their mean rank; NaN and -inf rank lowest)."""
    from scipy.stats import rankdata

    finite = np.where(np.isfinite(values), values, -np.inf)
    ranks = rankdata(finite, method="average")
    return (ranks - 1.0) / max(len(values) - 1, 1)


def _floor(params: Mapping[str, Any]) -> float:
    floor = float(params["floor_quantile"])
    if not 0.0 <= floor < 1.0:
        raise SelectionError(f"floor_quantile is {floor}; it must be in [0, 1)")
    return floor


def _then_the_rest(scores: np.ndarray, picked: np.ndarray, n: int) -> np.ndarray:
    """``picked``, then the best-scored of the other rows until there are ``n``."""
    picked = picked[:n]
    if len(picked) == n:
        return picked
    rest = np.setdiff1d(np.arange(scores.shape[0]), picked)
    rest = rest[np.lexsort((rest, -scores[rest]))]
    return np.concatenate([picked, rest[: n - len(picked)]])


def _floor_round_robin(scores, clusters, n, *, params, seed):
    scores = _finite(scores)
    ranks = percentile_ranks(scores)
    floor = _floor(params)
    ids, inverse = np.unique(clusters, return_inverse=True)
    median_rank = np.array([np.median(ranks[inverse == c]) for c in range(len(ids))])
    eligible = np.flatnonzero((ranks >= floor) & (median_rank[inverse] >= floor))
    within = round_robin(scores[eligible], clusters[eligible], min(n, len(eligible)))
    return _then_the_rest(scores, eligible[within], n)


def _quality_quota(scores, clusters, n, *, params, seed):
    scores = _finite(scores)
    ranks = percentile_ranks(scores)
    floor = _floor(params)
    eligible = ranks >= floor
    ids, inverse = np.unique(clusters, return_inverse=True)
    mass = np.bincount(inverse, weights=np.maximum(ranks - floor, 0.0), minlength=len(ids))
    capacity = np.bincount(inverse, weights=eligible, minlength=len(ids)).astype(np.int64)
    capacity[mass <= 0] = 0
    quotas = np.zeros(len(ids), dtype=np.int64)
    left = min(n, int(capacity.sum()))
    while left > 0:  # largest remainders over the clusters with room; the overflow moves on
        open_ = (quotas < capacity) & (mass > 0)
        share = np.where(open_, mass, 0.0)
        exact = left * share / share.sum()
        extra = np.floor(exact).astype(np.int64)
        order = np.lexsort((np.arange(len(ids)), -(exact - extra)))
        extra[order[: left - extra.sum()]] += 1
        extra = np.minimum(extra, capacity - quotas)
        quotas += extra
        left -= int(extra.sum())
    chosen = np.zeros(scores.shape[0], dtype=bool)
    for cluster, quota in enumerate(quotas):
        members = np.flatnonzero((inverse == cluster) & eligible)
        chosen[members[np.lexsort((members, -scores[members]))][:quota]] = True
    within = round_robin(scores[chosen], clusters[chosen], int(chosen.sum()))
    return _then_the_rest(scores, np.flatnonzero(chosen)[within], n)


def _ifd_filter(scores, clusters, n, *, params, seed):
    threshold = float(params["threshold"])
    total = scores.shape[0]
    index = np.arange(total)
    defined = np.isfinite(scores)
    below = defined & (scores < threshold)
    # 0: below the threshold, highest first; 1: at or above it, closest first; 2: undefined
    group = np.where(below, 0, np.where(defined, 1, 2))
    key = np.where(group == 0, -scores, np.where(group == 1, scores, 0.0))
    return np.lexsort((index, np.nan_to_num(key), group))[:n]


def _random_order(scores, clusters, n, *, params, seed):
    return np.random.default_rng(seed).permutation(scores.shape[0])[:n]


for _name, _fn in (
    ("topk", _topk),
    ("round_robin", _round_robin),
    ("proportional", _proportional),
    ("drop_then_round_robin", _drop_then_round_robin),
    ("floor_round_robin", _floor_round_robin),
    ("quality_quota", _quality_quota),
    ("ifd_filter", _ifd_filter),
    ("random", _random_order),
):
    _REGISTRY[_name] = _fn


def allocate(
    name: str,
    scores: np.ndarray,
    clusters: np.ndarray | None,
    n: int,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Run the allocation ``name``; check that it returned ``n`` distinct rows.

    Raises
    ------
    SelectionError
        For an unknown allocation or parameter, a clustered allocation without clusters, or a
        result that is not ``n`` distinct valid rows.
    """
    if name not in _REGISTRY:
        raise SelectionError(
            f"unknown allocation {name!r}; valid: {', '.join(available_allocations())}"
        )
    defaults = ALLOCATION_PARAMS.get(name)
    given = dict(params or {})
    if defaults is not None:
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise SelectionError(
                f"unknown parameter(s) {', '.join(unknown)} of allocation {name!r}; valid: "
                f"{', '.join(sorted(defaults)) or 'none'}"
            )
        given = {**defaults, **given}
    if name in CLUSTERED_ALLOCATIONS and clusters is None:
        raise SelectionError(f"allocation {name!r} needs clusters")
    indices = np.asarray(
        _REGISTRY[name](np.asarray(scores, dtype=np.float64), clusters, n, params=given, seed=seed),
        dtype=np.int64,
    )
    total = np.asarray(scores).shape[0]
    if (
        indices.shape != (n,)
        or len(np.unique(indices)) != n
        or (n and (indices.min() < 0 or indices.max() >= total))
    ):
        raise SelectionError(f"allocation {name!r} did not return {n} distinct rows")
    return indices
