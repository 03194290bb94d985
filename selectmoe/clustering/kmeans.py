"""Spherical k-means (unit centroids, cosine similarity) with scikit-learn's API."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from selectmoe.clustering._inputs import (
    _BOUNDS_MIN_FEATURES,
    ArrayLike,
    DeviceLike,
    _check_features,
    _check_int,
    _check_metric,
    _chunk_rows,
    _resolve_device,
    _unit_rows,
)
from selectmoe.errors import SelectionError


def _prepare_unit(
    X: torch.Tensor, device: torch.device, dtype: torch.dtype, *, shared: bool = False
) -> torch.Tensor:
    """Unit rows of ``X`` in ``dtype`` on ``device``, normalised in float64 block by block.

    ``shared=True`` (CPU only) allocates the result in shared memory, so that worker processes
    can use it without a copy.
    """
    n_samples, n_features = X.shape
    out = torch.empty(n_samples, n_features, dtype=dtype, device=device)
    if shared and out.device.type == "cpu":
        out.share_memory_()
    chunk = _chunk_rows(n_features)
    for start in range(0, n_samples, chunk):
        block = X[start : start + chunk].to(device=device, dtype=torch.float64)
        out[start : start + chunk] = _unit_rows(block).to(dtype)
    return out


def _tolerance(unit: torch.Tensor, tol: float) -> float:
    """scikit-learn's absolute tolerance: ``tol`` times the mean per-feature variance."""
    n_samples, n_features = unit.shape
    col_sum = torch.zeros(n_features, dtype=torch.float64, device=unit.device)
    sq_sum = 0.0
    for start in range(0, n_samples, _chunk_rows(n_features)):
        block = unit[start : start + _chunk_rows(n_features)].to(torch.float64)
        col_sum += block.sum(dim=0)
        sq_sum += float((block * block).sum())
    mean = col_sum / n_samples
    mean_var = (sq_sum / n_samples - float((mean * mean).sum())) / n_features
    return tol * max(mean_var, 0.0)


def _kmeans_plusplus(
    unit: torch.Tensor, n_centers: int, rng: np.random.Generator, n_local_trials: int
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's greedy variant).

    Distances are squared euclidean between unit rows, ``2 (1 - cos)``. Each step draws
    ``n_local_trials`` candidates with probability proportional to the distance to the nearest
    chosen centre and keeps the one that lowers the total most. The random draws of a step do not
    depend on ``n_centers``, so the first ``k`` centres of a seeding for ``n_centers`` are exactly
    the seeding for ``k``; :func:`choose_k` uses this to seed once for the largest k.

    Returns
    -------
    numpy.ndarray of shape (n_centers,), int64
        Row indices of the chosen centres.
    """
    n_samples = unit.shape[0]
    chosen = np.empty(n_centers, dtype=np.int64)
    chosen[0] = int(rng.integers(n_samples))
    closest = (2.0 - 2.0 * (unit @ unit[chosen[0]]).to(torch.float64)).clamp_(min=0.0)  # [N]
    potential = closest.sum()
    for c in range(1, n_centers):
        draws = torch.from_numpy(rng.random(n_local_trials)).to(unit.device) * potential
        candidates = torch.searchsorted(torch.cumsum(closest, 0), draws).clamp_(max=n_samples - 1)
        # dist[i, t]: distance of row i to candidate t, capped by its current closest: [N, trials]
        dist = (2.0 - 2.0 * (unit @ unit[candidates].T).to(torch.float64)).clamp_(min=0.0)
        torch.minimum(dist, closest[:, None], out=dist)
        potentials = dist.sum(dim=0)
        best = int(torch.argmin(potentials))
        chosen[c] = int(candidates[best])
        closest = dist[:, best].contiguous()
        potential = potentials[best]
    return chosen


@dataclasses.dataclass
class _LloydResult:
    labels: torch.Tensor  # [N] int64
    centers: torch.Tensor  # [K, D] float64, unit rows
    inertia: float
    n_iter: int
    converged: bool


def _own_similarity(
    unit: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> torch.Tensor:
    """``x̂_i · c_{labels_i}`` for every row, block by block: [N] in the dtype of ``unit``."""
    out = torch.empty(unit.shape[0], dtype=unit.dtype, device=unit.device)
    chunk = _chunk_rows(unit.shape[1])
    for start in range(0, unit.shape[0], chunk):
        block = unit[start : start + chunk]
        out[start : start + chunk] = (block * centers[labels[start : start + chunk]]).sum(dim=1)
    return out


class _Bounds:
    """Bounds on angles that let spherical k-means skip settled points (Elkan 2003).

    ``upper[i]`` is at least the angle between ``x̂_i`` and its own centre, ``lower[i, j]`` at most
    the angle to centre ``j`` (the own column is +inf). Angles on the sphere obey the triangle
    inequality, so when centre ``j`` moves by the angle ``β_j`` the bounds stay valid as
    ``upper += β_own`` and ``lower[:, j] -= β_j``. Centre ``j`` cannot take row ``i`` when
    ``upper[i] <= lower[i, j]`` or ``upper[i] <= angle(c_own, c_j) / 2`` (then ``x̂_i`` is
    nearer its own centre); a row where every other centre is ruled out keeps its centre and is
    not looked at. Similarities computed in floating point are off by less than ``margin``, which
    the bounds absorb, and ``slack`` covers the rounding of the float32 table; so labels are those
    of plain Lloyd up to ties within rounding.
    """

    def __init__(
        self, n_samples: int, n_clusters: int, n_features: int, like: torch.Tensor
    ) -> None:
        self.margin = 16.0 * torch.finfo(like.dtype).eps * math.sqrt(n_features)
        self.slack = 8.0 * torch.finfo(torch.float32).eps * math.pi
        self.upper = torch.empty(n_samples, dtype=torch.float64, device=like.device)
        # float32 halves the memory of the [N, K] table; slack keeps it conservative.
        self.lower = torch.empty(n_samples, n_clusters, dtype=torch.float32, device=like.device)

    def set_rows(self, rows: slice | torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
        """Exact bounds of ``rows`` from their similarities to all centres; returns the labels."""
        best = sims.argmax(dim=1)  # first maximum on ties, as numpy's argmax
        best_val = sims.gather(1, best[:, None]).squeeze(1).to(torch.float64)
        self.upper[rows] = torch.acos((best_val - self.margin).clamp_(-1.0, 1.0))
        lower = torch.acos((sims.to(torch.float32) + self.margin).clamp_(-1.0, 1.0))
        lower.sub_(self.slack).scatter_(1, best[:, None], math.inf)
        self.lower[rows] = lower
        return best

    def move(self, labels: torch.Tensor, moved: torch.Tensor) -> None:
        """Update after the centres moved by the angles ``moved`` [K]."""
        self.upper += moved[labels]
        self.lower.sub_((moved + self.slack).to(torch.float32)[None, :])

    def candidates(self, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Rows whose bounds do not settle their assignment."""
        # half_angle[a, j] = angle(c_a, c_j) / 2 = asin(|c_a - c_j| / 2): [K, K]
        gram = (centers @ centers.T).clamp_(-1.0, 1.0)
        chord = (2.0 - 2.0 * gram).clamp_(min=0.0).sqrt_()
        half_angle = torch.asin((chord / 2.0).clamp_(max=1.0)) - self.slack
        half_angle.fill_diagonal_(math.inf)
        threshold = self.upper + self.slack
        # Cheap tests first, O(N): the nearest lower bound, and the nearest other centre.
        open_ = (self.lower.min(dim=1).values <= threshold.to(torch.float32)) & (
            threshold > half_angle.min(dim=1).values[labels]
        )
        rows = torch.nonzero(open_).flatten()
        # Then centre by centre for the rows left: [rows, K].
        half_angle32 = half_angle.to(torch.float32)
        open_rows = [rows[:0]]
        for index in rows.split(_chunk_rows(self.lower.shape[1])):
            limit = threshold[index].to(torch.float32)[:, None]
            near = (self.lower[index] <= limit) & (half_angle32[labels[index]] <= limit)
            open_rows.append(index[near.any(dim=1)])
        return torch.cat(open_rows)


def _lloyd(
    unit: torch.Tensor,
    init_centers: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
) -> _LloydResult:
    """Spherical Lloyd iterations from ``init_centers``, skipping settled points (:class:`_Bounds`,
    for ``n_features >= 256``; shorter rows are all recomputed, which is cheaper than the bounds).

    One iteration is an M-step (unit centroids from running float64 cluster sums) followed by an
    E-step on the points whose bounds leave their assignment open; the loop stops when no label
    changes (strict convergence) or when the squared centre shift summed over clusters is at most
    ``tol`` (the labels are then those of the final centres, as scikit-learn's final E-step gives).
    """
    n_samples, n_features = unit.shape
    n_clusters = init_centers.shape[0]
    device, dtype = unit.device, unit.dtype
    chunk = _chunk_rows(max(n_clusters, n_features))
    # Keeping a bound costs a few elementwise operations per (sample, centre) and iteration; it
    # pays only when a similarity (2·D flops) costs more, i.e. for long feature vectors.
    bounds = (
        _Bounds(n_samples, n_clusters, n_features, unit)
        if n_features >= _BOUNDS_MIN_FEATURES
        else None
    )

    def assign(rows: slice | torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
        if bounds is None:
            return sims.argmax(dim=1)  # first maximum on ties, as numpy's argmax
        return bounds.set_rows(rows, sims)

    centers = init_centers.to(torch.float64)
    centers_c = centers.to(dtype)
    labels = torch.empty(n_samples, dtype=torch.int64, device=device)
    sums = torch.zeros(n_clusters, n_features, dtype=torch.float64, device=device)
    for start in range(0, n_samples, chunk):
        rows = slice(start, start + chunk)
        block = unit[rows]
        labels[rows] = best = assign(rows, block @ centers_c.T)
        # Per-block sums in the data's dtype, accumulated in float64 across blocks.
        block_sums = torch.zeros(n_clusters, n_features, dtype=dtype, device=device)
        sums += block_sums.index_add_(0, best, block).to(torch.float64)
    counts = torch.bincount(labels, minlength=n_clusters)

    def reassign(rows: slice | torch.Tensor, block: torch.Tensor) -> int:
        """Recompute the rows' labels and bounds; move changed rows between the sums."""
        old = labels[rows]
        best = assign(rows, block @ centers_c.T)
        changed = best != old
        if not bool(changed.any()):
            return 0
        # The change of the sums in the data's dtype (index_add_ of float64 rows is several
        # times slower on CPU), then accumulated in float64.
        moved_rows = block[changed]
        delta = torch.zeros(n_clusters, n_features, dtype=dtype, device=device)
        delta.index_add_(0, best[changed], moved_rows)
        delta.index_add_(0, old[changed], moved_rows, alpha=-1)
        sums.add_(delta.to(torch.float64))
        ones = torch.ones(moved_rows.shape[0], dtype=counts.dtype, device=device)
        counts.index_add_(0, best[changed], ones)
        counts.index_add_(0, old[changed], -ones)
        labels[rows] = best
        return int(changed.sum())

    converged = False
    n_iter = 0
    for iteration in range(max_iter):
        n_iter = iteration + 1
        # ---- M-step
        relocated = None
        if bool((counts == 0).any()):
            relocated = _relocate_empty(unit, labels, sums, counts, centers_c)
        norms = torch.linalg.vector_norm(sums, dim=1, keepdim=True)
        # A cluster whose sum vanishes (opposite directions cancelling) keeps its centre.
        new_centers = torch.where(norms > 0, sums / torch.where(norms > 0, norms, 1.0), centers)
        shift_sq = ((new_centers - centers) ** 2).sum(dim=1)  # [K]
        moved = 2.0 * torch.asin((shift_sq.sqrt() / 2.0).clamp_(max=1.0))  # angle moved, [K]
        centers, centers_c = new_centers, new_centers.to(dtype)
        if bounds is not None:
            bounds.move(labels, moved)
            if relocated is not None:
                bounds.upper[relocated] = math.inf
        # ---- E-step
        n_changed = 0
        open_rows = None if bounds is None else bounds.candidates(labels, centers)
        if open_rows is None or open_rows.numel() > n_samples // 2:
            # Most rows are open: contiguous blocks beat gathering them.
            for start in range(0, n_samples, chunk):
                rows = slice(start, start + chunk)
                n_changed += reassign(rows, unit[rows])
        else:
            for index in open_rows.split(chunk):
                n_changed += reassign(index, unit[index])
        if n_changed == 0:
            converged = True
            break
        if float(shift_sq.sum()) <= tol:
            converged = True
            break

    # inertia = sum_i ||x̂_i - c_{l_i}||² = sum_i 2 (1 - x̂_i·c_{l_i}) = sum_k 2 (n_k - c_k·S_k),
    # with S_k the running sum of cluster k's unit rows (consistent with the final labels).
    dots = (centers * sums).sum(dim=1)
    inertia = float((2.0 * (counts.to(torch.float64) - dots)).sum().clamp_(min=0.0))
    return _LloydResult(labels, centers, inertia, n_iter, converged)


def _relocate_empty(
    unit: torch.Tensor,
    labels: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    centers_c: torch.Tensor,
) -> torch.Tensor:
    """Give every empty cluster the point farthest from its centre (as scikit-learn does).

    Points are taken farthest first (stable order on ties), skipping points whose cluster would
    become empty; ``labels``, ``sums`` and ``counts`` are updated in place. Returns the moved rows.
    """
    empty = torch.nonzero(counts == 0).flatten().tolist()
    own = _own_similarity(unit, labels, centers_c)
    order = torch.sort(own, stable=True).indices.tolist()
    remaining = counts.clone()
    moved: list[int] = []
    for row in order:
        if len(moved) == len(empty):
            break
        donor = int(labels[row])
        if int(remaining[donor]) > 1:
            remaining[donor] -= 1
            moved.append(row)
    for row, target in zip(moved, empty, strict=False):
        donor = int(labels[row])
        x = unit[row].to(torch.float64)
        sums[donor] -= x
        sums[target] += x
        counts[donor] -= 1
        counts[target] += 1
        labels[row] = target
    return torch.tensor(moved, dtype=torch.int64, device=unit.device)


def _init_centers(unit: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    centers = unit[torch.from_numpy(rows).to(unit.device)].to(torch.float64)
    return _unit_rows(centers)


def _default_trials(n_clusters: int) -> int:
    # scikit-learn's choice for greedy k-means++.
    return 2 + int(math.log(n_clusters))


def _init_seeds(seed: int, n_init: int) -> list[np.random.SeedSequence]:
    """Independent, reproducible seed streams, one per restart."""
    return np.random.SeedSequence(seed).spawn(n_init)


def _fit_best(
    unit: torch.Tensor,
    n_clusters: int,
    seedings: Sequence[np.ndarray],
    *,
    max_iter: int,
    tol: float,
) -> _LloydResult:
    """The lowest-inertia run over the seedings (each truncated to ``n_clusters`` centres)."""
    best: _LloydResult | None = None
    for rows in seedings:
        result = _lloyd(unit, _init_centers(unit, rows[:n_clusters]), max_iter=max_iter, tol=tol)
        # Strictly lower: ties keep the earlier restart, so the choice is deterministic.
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


class KMeans:
    r"""Spherical k-means: k-means with cosine similarity and unit-norm centroids.

    Minimises, over labels ``l`` and unit centroids ``c_k``,

    .. math::

        \text{inertia} = \sum_i \lVert \hat x_i - c_{l_i} \rVert^2
                       = \sum_i 2 (1 - \cos(x_i, c_{l_i}))

    where ``x̂_i`` are the L2-normalised rows. ``inertia_`` is this sum of squared euclidean
    distances between unit vectors: scikit-learn's definition of inertia applied to normalised data
    and unit centres, so it is on the scale of ``sklearn.cluster.KMeans(...).fit(normalize(X))``'s
    ``inertia_``. (For one partition, ours equals scikit-learn's times ``2 / (1 + |m_k|)`` per
    cluster, ``m_k`` the mean of the unit rows; the two agree as clusters tighten.)

    Seeding is greedy k-means++; each of ``n_init`` restarts uses its own seed stream derived from
    ``seed`` and the run with the lowest inertia is kept. With 256 features or more, the Lloyd
    iterations skip points whose assignment cannot change (Elkan's bounds, on angles), with the
    labels of plain Lloyd. An empty cluster takes the point farthest from its centre.
    Deterministic for a seed on CPU (the order of floating-point sums on GPUs is not fixed).
    All-zero rows have similarity 0 with every centre.

    Parameters
    ----------
    n_clusters : int
        Number of clusters ``k``, at least 1 and at most the number of samples.
    metric : {"cosine"}, default="cosine"
        Only cosine is implemented.
    n_init : int, default=1
        Restarts with distinct seeds (scikit-learn's ``n_init="auto"`` is 1 for k-means++).
    max_iter : int, default=300
        Maximum Lloyd iterations per restart.
    tol : float, default=1e-4
        Relative tolerance, as scikit-learn's: stop when the summed squared centre shift is at most
        ``tol`` times the mean per-feature variance of the normalised data.
    seed : int, default=0
        Seed of all randomness.
    device : str or torch.device, optional
        ``None``: the device of ``X`` when it is a tensor, else CPU; ``"auto"``: CUDA when present.
    dtype : torch.dtype, default=torch.float32
        Precision of the similarity products (cluster sums and inertia are always float64).
    n_local_trials : int, optional
        Candidates per k-means++ step; default ``2 + int(log(n_clusters))`` as scikit-learn.

    Attributes
    ----------
    labels_ : numpy.ndarray of shape (n_samples,), int64
        Cluster of each training sample (consistent with ``cluster_centers_``).
    cluster_centers_ : numpy.ndarray of shape (n_clusters, n_features), float64
        Unit-norm centroids.
    inertia_ : float
        ``sum_i 2 (1 - cos(x_i, c_{labels_i}))`` (see above).
    n_iter_ : int
        Lloyd iterations of the kept restart.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.

    Examples
    --------
    >>> X = np.array([[1.0, 0.1], [2.0, 0.0], [0.0, 1.0], [0.1, 3.0]])
    >>> km = KMeans(2, seed=0).fit(X)
    >>> len(set(km.labels_[:2])) == 1 and km.labels_[0] != km.labels_[2]
    True
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        metric: str = "cosine",
        n_init: int = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        seed: int = 0,
        device: DeviceLike = None,
        dtype: torch.dtype = torch.float32,
        n_local_trials: int | None = None,
    ) -> None:
        self.n_clusters = _check_int(n_clusters, "n_clusters", 1)
        _check_metric(metric)
        self.metric = metric
        self.n_init = _check_int(n_init, "n_init", 1)
        self.max_iter = _check_int(max_iter, "max_iter", 1)
        if not (isinstance(tol, int | float) and tol >= 0):
            raise SelectionError(f"tol must be a number >= 0, got {tol!r}")
        self.tol = float(tol)
        self.seed = _check_int(seed, "seed", 0)
        self.device = device
        if not dtype.is_floating_point:
            raise SelectionError(f"dtype must be a floating torch dtype, got {dtype}")
        self.dtype = dtype
        self.n_local_trials = (
            None if n_local_trials is None else _check_int(n_local_trials, "n_local_trials", 1)
        )

    def fit(self, X: ArrayLike) -> KMeans:
        """Cluster the rows of ``X`` (array or tensor of shape (n_samples, n_features))."""
        tensor = _check_features(X)
        if self.n_clusters > tensor.shape[0]:
            raise SelectionError(
                f"n_clusters={self.n_clusters} is larger than the number of samples "
                f"{tensor.shape[0]}; use at most {tensor.shape[0]} clusters"
            )
        device = _resolve_device(self.device, like=X)
        unit = _prepare_unit(tensor, device, self.dtype)
        trials = self.n_local_trials or _default_trials(self.n_clusters)
        seedings = [
            _kmeans_plusplus(unit, self.n_clusters, np.random.default_rng(s), trials)
            for s in _init_seeds(self.seed, self.n_init)
        ]
        best = _fit_best(
            unit,
            self.n_clusters,
            seedings,
            max_iter=self.max_iter,
            tol=_tolerance(unit, self.tol),
        )
        self.labels_ = best.labels.cpu().numpy().astype(np.int64)
        self.cluster_centers_ = best.centers.cpu().numpy()
        self.inertia_ = best.inertia
        self.n_iter_ = best.n_iter
        self.n_features_in_ = tensor.shape[1]
        return self

    def fit_predict(self, X: ArrayLike) -> np.ndarray:
        """:meth:`fit` and return ``labels_``."""
        return self.fit(X).labels_

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The nearest centroid (highest cosine similarity) of each row: int64 (n_samples,)."""
        if not hasattr(self, "cluster_centers_"):
            raise SelectionError("this KMeans is not fitted yet; call fit(X) first")
        tensor = _check_features(X)
        if tensor.shape[1] != self.n_features_in_:
            raise SelectionError(
                f"X has {tensor.shape[1]} features but KMeans was fitted with {self.n_features_in_}"
            )
        device = _resolve_device(self.device, like=X)
        unit = _prepare_unit(tensor, device, torch.float64)
        centers = torch.from_numpy(self.cluster_centers_).to(device)
        return (unit @ centers.T).argmax(dim=1).cpu().numpy().astype(np.int64)
