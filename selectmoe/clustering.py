"""Clustering for selection: exact cosine silhouette, spherical k-means and automatic k.

Everything here works on the *directions* of the feature rows (cosine geometry), runs the heavy
arithmetic in torch so that the same code serves CPU and CUDA, and takes numpy or torch input.

- :func:`silhouette_samples` / :func:`silhouette_score`: scikit-learn's silhouette with
  ``metric="cosine"``, exact, in O(N·K·D) time and O(chunk·K + K·D) memory instead of O(N²), through
  the cluster-sum identity ``sum_{j in C} (1 - x̂_i·x̂_j) = |C| - x̂_i·S_C`` (``S_C`` the sum of the
  unit rows of cluster ``C``).
- :class:`KMeans`: spherical k-means (unit centroids, cosine similarity) with scikit-learn's API:
  greedy k-means++ seeding, ``n_init`` restarts, ``max_iter``, ``tol``, re-seeding of empty
  clusters. Lloyd iterations skip the points whose assignment provably cannot change (Elkan's
  bounds, on angles), which keeps the result of plain Lloyd but does a fraction of its work after
  the first iterations.
- :func:`choose_k`: k-means over a range of k, the elbow of the inertia curve by Kneedle, the best
  silhouette as a fallback; the k-means++ seeding is computed once for the largest k and its
  prefixes seed every smaller k, and the sweep can run in several processes over the visible GPUs.
- A registry of clustering methods (:func:`register_clustering_method`) so that selection can use
  another algorithm without changes; ``"kmeans"`` is registered by default.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from selectmoe.errors import SelectionError

__all__ = [
    "DEFAULT_K_RANGE",
    "KMEANS_PARAM_DEFAULTS",
    "ClusteringMethod",
    "ClusteringResult",
    "KMeans",
    "KSweepResult",
    "SilhouetteCheck",
    "SilhouetteValidationReport",
    "available_devices",
    "choose_k",
    "default_k_step",
    "get_clustering_method",
    "list_clustering_methods",
    "register_clustering_method",
    "resolve_kmeans_params",
    "silhouette_samples",
    "silhouette_score",
    "validate_silhouette",
]

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
DeviceLike = str | torch.device | None

DEFAULT_K_RANGE: tuple[int, int] = (10, 100)
_METRICS = ("cosine",)
_ALLOCATION_STRATEGIES = ("round_robin", "balanced")
# Rows per block of the [rows, K] similarity matrices: bounds the extra memory whatever N is.
_CHUNK_ELEMENTS = 1 << 23
# k-means keeps Elkan's bounds from this many features on (see _lloyd).
_BOUNDS_MIN_FEATURES = 256


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _resolve_device(device: DeviceLike, like: object = None) -> torch.device:
    """``None``: the device of ``like`` when it is a tensor, else CPU; ``"auto"``: CUDA if any."""
    if device is None:
        return like.device if isinstance(like, torch.Tensor) else torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SelectionError(
            f"device {device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SelectionError(
            f"device {device!r} was requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    return resolved


def available_devices() -> list[str]:
    """The devices :func:`validate_silhouette` checks: ``"cpu"`` and every visible CUDA device."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def _check_features(X: ArrayLike, *, name: str = "X") -> torch.Tensor:
    """A 2-D floating tensor view of ``X`` (no copy when possible): finite, non-empty."""
    if isinstance(X, torch.Tensor):
        tensor = X.detach()
    else:
        array = np.asarray(X)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        ):
            raise SelectionError(f"{name} must hold numbers, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim != 2:
        raise SelectionError(
            f"{name} must be 2-D [n_samples, n_features], got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise SelectionError(
            f"{name} must have at least one sample and one feature, got shape {tuple(tensor.shape)}"
        )
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.int16)):
        raise SelectionError(f"{name} must hold numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    finite = torch.isfinite(tensor).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise SelectionError(
            f"{name} contains NaN or infinity in {bad.numel()} row(s) (first: row {int(bad[0])}); "
            "clean the features before clustering"
        )
    return tensor


def _encode_labels(labels: ArrayLike, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels as codes ``0..K-1`` (in the order of the sorted distinct labels) and the classes."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise SelectionError(f"labels must be 1-D, got shape {array.shape}")
    if array.shape[0] != n_samples:
        raise SelectionError(
            f"labels has {array.shape[0]} entries but X has {n_samples} rows; they must match"
        )
    classes, codes = np.unique(array, return_inverse=True)
    return codes.astype(np.int64, copy=False), classes


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; rows of (near-)zero norm are left as they are.

    Like scikit-learn's ``normalize``, a norm below ``10 * eps`` counts as zero, so an all-zero row
    stays all-zero: its cosine similarity with every row is 0.
    """
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    tiny = 10 * torch.finfo(x.dtype).eps
    return x / torch.where(norms < tiny, torch.ones_like(norms), norms)


def _chunk_rows(width: int) -> int:
    return max(1024, _CHUNK_ELEMENTS // max(1, width))


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise SelectionError(f"metric must be one of {list(_METRICS)}, got {metric!r}")


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise SelectionError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise SelectionError(f"{name} must be {bound}, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Silhouette
# --------------------------------------------------------------------------------------------


def _block_silhouette(
    dots: torch.Tensor,
    self_term: torch.Tensor,
    own: torch.Tensor,
    counts: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Silhouette of a block of rows from ``dots[i, c] = x̂_i·S_c`` ([rows, K])."""
    # dist_sums[i, c] = sum_{j in c} (1 - x̂_i·x̂_j) = |c| - x̂_i·S_c: [rows, K]
    dist_sums = counts - dots
    dist_sums = torch.where(dist_sums.abs() <= noise, 0.0, dist_sums).clamp_(min=0.0)
    own_counts = counts[own]
    # The identity counts d(i, i) = 1 - |x̂_i|² (0 for unit rows, 1 for zero rows); a point's
    # distance to itself is 0, so remove that term from its own cluster's sum.
    intra = (dist_sums.gather(1, own[:, None]).squeeze(1) - self_term).clamp_(min=0.0)
    singleton = own_counts <= 1
    a = intra / torch.where(singleton, torch.ones_like(own_counts), own_counts - 1)
    mean_dist = dist_sums / counts
    mean_dist.scatter_(1, own[:, None], math.inf)
    b = mean_dist.min(dim=1).values
    denom = torch.maximum(a, b)
    s = (b - a) / torch.where(denom > 0, denom, torch.ones_like(denom))
    # scikit-learn's convention: a cluster of one sample scores 0 (its a is undefined), and so
    # does 0/0 (a = b = 0, e.g. duplicated points in two clusters).
    return torch.where(singleton | (denom <= 0), torch.zeros_like(s), s)


def _silhouette_blocks(
    X: torch.Tensor,
    labelings: Sequence[tuple[torch.Tensor, int]],
    *,
    dtype: torch.dtype,
    normalized: bool,
    per_sample: bool,
) -> list[torch.Tensor]:
    """Cosine silhouettes of several labelings of ``X`` in two passes over the data.

    Each labeling is ``(codes [N] on the run device, K)`` with codes ``0..K-1``, all present.
    Pass one sums each cluster's unit rows (``S_c``); pass two gets ``x̂_i·S_c`` of every
    labeling from one matrix product per block of rows. Returns, per labeling, the values ``[N]``
    (``per_sample``) or their sum (a 0-d float64 tensor). ``normalized=True`` says the rows of
    ``X`` are already unit (or zero) rows, which saves a normalisation per block.
    """
    device = labelings[0][0].device
    n_samples, n_features = X.shape
    offsets = np.cumsum([0] + [k for _, k in labelings]).tolist()
    total_k = offsets[-1]
    chunk = _chunk_rows(max(total_k, n_features))
    eps = torch.finfo(dtype).eps

    def unit_block(start: int) -> torch.Tensor:
        block = X[start : start + chunk].to(device=device, dtype=dtype)
        return block if normalized else _unit_rows(block)

    # sums[offset_l + c] = S_c of labeling l, the sum of the unit rows of its cluster c: [ΣK, D]
    sums = torch.zeros(total_k, n_features, dtype=dtype, device=device)
    for start in range(0, n_samples, chunk):
        unit = unit_block(start)
        for (codes, _), offset in zip(labelings, offsets, strict=False):
            sums.index_add_(0, codes[start : start + chunk] + offset, unit)
    counts = torch.cat([torch.bincount(codes, minlength=k) for codes, k in labelings]).to(dtype)
    # The identity subtracts two numbers of size |C|; below this the result is rounding noise.
    noise = 4.0 * eps * counts * math.sqrt(n_features)
    outs = [
        torch.empty(n_samples, dtype=dtype, device=device)
        if per_sample
        else torch.zeros((), dtype=torch.float64, device=device)
        for _ in labelings
    ]
    for start in range(0, n_samples, chunk):
        unit = unit_block(start)
        dots = unit @ sums.T  # [rows, ΣK]
        self_term = 1.0 - (unit * unit).sum(dim=1)
        for index, (codes, _) in enumerate(labelings):
            cols = slice(offsets[index], offsets[index + 1])
            values = _block_silhouette(
                dots[:, cols], self_term, codes[start : start + chunk], counts[cols], noise[cols]
            )
            if per_sample:
                outs[index][start : start + chunk] = values
            else:
                outs[index] += values.sum(dtype=torch.float64)
    return outs


def _silhouette_core(
    X: torch.Tensor, codes: torch.Tensor, n_clusters: int, *, dtype: torch.dtype
) -> torch.Tensor:
    """Per-sample cosine silhouette of ``X`` (any dtype, on the device of ``codes``)."""
    labelings = [(codes, n_clusters)]
    return _silhouette_blocks(X, labelings, dtype=dtype, normalized=False, per_sample=True)[0]


def silhouette_samples(
    X: ArrayLike,
    labels: ArrayLike,
    *,
    metric: str = "cosine",
    device: DeviceLike = None,
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    r"""Silhouette coefficient of every sample with cosine distance, exact, on any device.

    With ``d(i, j) = 1 - x̂_i·x̂_j`` (``x̂`` the unit rows), sample ``i`` in cluster ``C_i`` has

    .. math::

        a_i = \frac{1}{|C_i| - 1} \sum_{j \in C_i, j \ne i} d(i, j), \qquad
        b_i = \min_{C \ne C_i} \frac{1}{|C|} \sum_{j \in C} d(i, j), \qquad
        s_i = \frac{b_i - a_i}{\max(a_i, b_i)},

    and ``s_i = 0`` for a cluster of one sample. The cluster sums come from the identity
    ``sum_{j in C} d(i, j) = |C| - x̂_i·S_C`` with ``S_C = sum_{j in C} x̂_j``, which needs
    O(N·K·D) time and O(K·D) memory plus one block of ``[rows, K]`` at a time, instead of
    scikit-learn's O(N²·D) pairwise distances. Equal to
    ``sklearn.metrics.silhouette_samples(X, labels, metric="cosine")`` to about 1e-12 in float64.

    All-zero rows (norm below ``10 * eps``) have no direction: their cosine similarity with every
    other row is 0 (distance 1) and their distance to themselves is 0. That is what scikit-learn
    computes when its distance matrix fits in one block; for larger inputs scikit-learn's chunked
    path gives such a row distance 1 to itself, while this function does not depend on chunking.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)
        Feature rows (any scale; only their directions matter). Must be finite.
    labels : array or tensor of shape (n_samples,)
        Cluster label of each sample, any integer (or sortable) values, not necessarily 0..K-1.
    metric : {"cosine"}, default="cosine"
        Distance; only cosine is implemented.
    device : str or torch.device, optional
        Where to compute: ``None`` uses the device of ``X`` when it is a tensor, else CPU;
        ``"auto"`` uses CUDA when available.
    dtype : torch.dtype, default=torch.float64
        Accumulation precision. float32 is faster on GPUs, with errors of about 1e-5.

    Returns
    -------
    numpy.ndarray of shape (n_samples,), float64
        The silhouette of each sample, in [-1, 1].

    Raises
    ------
    SelectionError
        (a ``ValueError``) when the metric is not cosine, shapes do not match, ``X`` is not finite,
        or the number of distinct labels is not in ``[2, n_samples - 1]``.

    References
    ----------
    Rousseeuw, P. J. (1987). Silhouettes: a graphical aid to the interpretation and validation of
    cluster analysis. Journal of Computational and Applied Mathematics 20, 53-65.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> silhouette_samples(X, [0, 0, 1, 1]).round(3)
    array([0.992, 0.992, 0.992, 0.992])
    """
    _check_metric(metric)
    tensor = _check_features(X)
    codes, classes = _encode_labels(labels, tensor.shape[0])
    n_labels, n_samples = len(classes), tensor.shape[0]
    if not 2 <= n_labels <= n_samples - 1:
        raise SelectionError(
            f"number of distinct labels is {n_labels}; the silhouette needs 2 to n_samples - 1 "
            f"= {n_samples - 1} (inclusive)"
        )
    if not dtype.is_floating_point:
        raise SelectionError(f"dtype must be a floating torch dtype, got {dtype}")
    run_device = _resolve_device(device, like=X)
    codes_t = torch.from_numpy(codes).to(run_device)
    values = _silhouette_core(tensor, codes_t, n_labels, dtype=dtype)
    return values.to(torch.float64).cpu().numpy()


def silhouette_score(
    X: ArrayLike,
    labels: ArrayLike,
    *,
    metric: str = "cosine",
    device: DeviceLike = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Mean silhouette coefficient over all samples (cosine distance), exact, on any device.

    ``silhouette_score(X, labels) = mean_i s_i`` with ``s_i`` from :func:`silhouette_samples`,
    whose parameters, conventions (singletons score 0, all-zero rows) and errors it shares.

    Returns
    -------
    float
        The mean silhouette, in [-1, 1]; equal to
        ``sklearn.metrics.silhouette_score(X, labels, metric="cosine")`` within 1e-6.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> round(silhouette_score(X, [0, 0, 1, 1]), 3)
    0.992
    """
    return float(np.mean(silhouette_samples(X, labels, metric=metric, device=device, dtype=dtype)))


@dataclasses.dataclass(frozen=True)
class SilhouetteCheck:
    """One comparison of :func:`silhouette_samples` with scikit-learn.

    ``score_diff`` is ``|ours - sklearn|`` of the mean; ``max_sample_diff`` the largest difference
    of a single sample's value.
    """

    case: str
    device: str
    n_samples: int
    n_features: int
    n_clusters: int
    score: float
    reference: float
    score_diff: float
    max_sample_diff: float
    seconds: float
    reference_seconds: float

    @property
    def worst(self) -> float:
        return max(self.score_diff, self.max_sample_diff)


@dataclasses.dataclass(frozen=True)
class SilhouetteValidationReport:
    """Result of :func:`validate_silhouette`: every check, the worst difference, pass or fail."""

    checks: list[SilhouetteCheck]
    tolerance: float

    @property
    def worst(self) -> float:
        return max((c.worst for c in self.checks), default=0.0)

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            "worst": self.worst,
            "passed": self.passed,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def format(self) -> str:
        """A plain-text table, one line per check, and the verdict."""
        lines = [
            f"{'case':<34} {'device':<8} {'N':>7} {'D':>4} {'K':>4} {'ours':>12} "
            f"{'sklearn':>12} {'|diff|':>9} {'max|diff_i|':>11} {'ours s':>8} {'skl s':>8}"
        ]
        for c in self.checks:
            lines.append(
                f"{c.case:<34} {c.device:<8} {c.n_samples:>7} {c.n_features:>4} "
                f"{c.n_clusters:>4} {c.score:>12.9f} {c.reference:>12.9f} {c.score_diff:>9.2e} "
                f"{c.max_sample_diff:>11.2e} {c.seconds:>8.3f} {c.reference_seconds:>8.3f}"
            )
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"worst difference {self.worst:.3e} (tolerance {self.tolerance:.0e}): {verdict}"
        )
        return "\n".join(lines)


def _validation_cases(
    *, include_large: bool, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The inputs :func:`validate_silhouette` compares (small ones first)."""
    rng = np.random.default_rng(seed)

    def blobs(sizes: Sequence[int], n_features: int, spread: float) -> np.ndarray:
        centres = rng.normal(size=(len(sizes), n_features))
        return np.concatenate(
            [
                c + spread * rng.normal(size=(n, n_features))
                for c, n in zip(centres, sizes, strict=True)
            ]
        )

    cases: list[tuple[str, np.ndarray, np.ndarray]] = []
    cases.append(
        ("10 samples x 3 features x 2 clusters", blobs([5, 5], 3, 0.5), np.repeat([0, 1], 5))
    )
    sizes = [1, 6, 1, 7, 1]
    cases.append(("clusters of one sample", blobs(sizes, 4, 0.4), np.repeat(np.arange(5), sizes)))
    sizes = [3, 1, 496]
    cases.append(("very unbalanced clusters", blobs(sizes, 8, 1.0), np.repeat(np.arange(3), sizes)))
    x = blobs([40, 60, 50, 50], 6, 0.8)
    labels = np.repeat(np.array([1000, -7, 3, 42]), [40, 60, 50, 50])
    order = rng.permutation(len(labels))
    cases.append(("labels not 0..K-1 (-7, 3, 42, 1000)", x[order], labels[order]))
    x = blobs([20, 30], 5, 0.7)
    x[[3, 31]] = 0.0
    cases.append(("all-zero rows", x, np.repeat([0, 1], [20, 30])))
    if include_large:
        x = blobs([400] * 50, 64, 3.0)
        cases.append(("N=20,000 D=64 K=50", x, np.repeat(np.arange(50), 400)))
    return cases


def validate_silhouette(
    *,
    devices: Sequence[str] | None = None,
    tolerance: float = 1e-6,
    include_large: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> SilhouetteValidationReport:
    """Compare :func:`silhouette_samples` with scikit-learn on every device.

    The cases: 10 samples x 3 features x 2 clusters; clusters of one sample; very unbalanced
    clusters; labels that are not 0..K-1; all-zero rows; and (``include_large``) N=20,000, D=64,
    K=50. scikit-learn's values are computed once per case on the CPU in float64.

    Parameters
    ----------
    devices : sequence of str, optional
        Devices to check; default :func:`available_devices` (CPU and every visible GPU).
    tolerance : float, default=1e-6
        The largest allowed absolute difference (of the mean and of any single sample).
    include_large : bool, default=True
        Include the N=20,000 case (scikit-learn needs several seconds for it).
    seed : int, default=0
        Seed of the generated data.
    dtype : torch.dtype, default=torch.float64
        Accumulation precision of our implementation.

    Returns
    -------
    SilhouetteValidationReport
        ``.passed`` is False when any difference exceeds ``tolerance``; ``.format()`` prints it.
    """
    from sklearn.metrics import silhouette_samples as sk_silhouette_samples

    if not tolerance > 0:
        raise SelectionError(f"tolerance must be > 0, got {tolerance}")
    devices = list(devices) if devices is not None else available_devices()
    checks: list[SilhouetteCheck] = []
    for name, x, labels in _validation_cases(include_large=include_large, seed=seed):
        start = time.perf_counter()
        reference = sk_silhouette_samples(x, labels, metric="cosine")
        reference_seconds = time.perf_counter() - start
        for device in devices:
            start = time.perf_counter()
            ours = silhouette_samples(x, labels, device=device, dtype=dtype)
            seconds = time.perf_counter() - start
            checks.append(
                SilhouetteCheck(
                    case=name,
                    device=str(device),
                    n_samples=x.shape[0],
                    n_features=x.shape[1],
                    n_clusters=len(np.unique(labels)),
                    score=float(ours.mean()),
                    reference=float(reference.mean()),
                    score_diff=float(abs(ours.mean() - reference.mean())),
                    max_sample_diff=float(np.max(np.abs(ours - reference))),
                    seconds=seconds,
                    reference_seconds=reference_seconds,
                )
            )
    return SilhouetteValidationReport(checks=checks, tolerance=tolerance)


# --------------------------------------------------------------------------------------------
# Spherical k-means
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Automatic k
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class KSweepResult:
    """Result of :func:`choose_k`.

    Attributes
    ----------
    k : int
        The chosen number of clusters.
    method : {"knee", "silhouette"}
        How ``k`` was chosen: the Kneedle elbow of the inertia curve, or the best silhouette when
        the curve has no knee.
    ks : list of int
        Candidate k values, ascending.
    inertias : list of float
        Best inertia (over restarts) of each candidate, see :class:`KMeans`.
    silhouettes : list of float or None
        Cosine silhouette of each candidate's best labels (None when not computed).
    n_iters : list of int
        Lloyd iterations of each candidate's kept restart.
    labels : numpy.ndarray of shape (n_samples,), int64
        Labels of the chosen k.
    centers : numpy.ndarray of shape (k, n_features), float64
        Unit centroids of the chosen k.
    knee_k : int or None
        The Kneedle elbow (None when there is none).
    silhouette_k : int or None
        The candidate with the best silhouette (None when not computed).
    seconds : dict
        Wall time of the seeding, the k-means runs and the silhouettes.
    """

    k: int
    method: str
    ks: list[int]
    inertias: list[float]
    silhouettes: list[float] | None
    n_iters: list[int]
    labels: np.ndarray
    centers: np.ndarray
    knee_k: int | None
    silhouette_k: int | None
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the labels and centres, as JSON-ready values."""
        return {
            "k": self.k,
            "method": self.method,
            "knee_k": self.knee_k,
            "silhouette_k": self.silhouette_k,
            "ks": list(self.ks),
            "inertias": list(self.inertias),
            "silhouettes": None if self.silhouettes is None else list(self.silhouettes),
            "n_iters": list(self.n_iters),
            "seconds": dict(self.seconds),
        }


def default_k_step(k_min: int, k_max: int) -> int:
    """At most about 20 candidates: ``max(1, (k_max - k_min) // 20)`` (Select-MoE's choice)."""
    return max(1, (k_max - k_min) // 20)


def _knee(ks: Sequence[int], inertias: Sequence[float], sensitivity: float) -> int | None:
    """Kneedle elbow (Satopää et al. 2011) of a decreasing convex curve, or None."""
    if len(ks) < 3:
        return None
    from kneed import KneeLocator

    with warnings.catch_warnings():
        # kneed warns "No knee/elbow found"; None says the same.
        warnings.simplefilter("ignore")
        locator = KneeLocator(
            list(ks), list(inertias), S=sensitivity, curve="convex", direction="decreasing"
        )
    return None if locator.knee is None else int(locator.knee)


@dataclasses.dataclass
class _KFit:
    k: int
    inertia: float
    silhouette: float | None
    n_iter: int
    labels: np.ndarray
    centers: np.ndarray
    seconds: float


def _fit_one_k(
    unit: torch.Tensor,
    k: int,
    seedings: Sequence[np.ndarray],
    *,
    max_iter: int,
    tol: float,
) -> _KFit:
    start = time.perf_counter()
    best = _fit_best(unit, k, seedings, max_iter=max_iter, tol=tol)
    return _KFit(
        k=k,
        inertia=best.inertia,
        silhouette=None,
        n_iter=best.n_iter,
        labels=best.labels.cpu().numpy().astype(np.int64),
        centers=best.centers.cpu().numpy(),
        seconds=time.perf_counter() - start,
    )


def _mean_silhouettes(unit: torch.Tensor, label_sets: Sequence[np.ndarray]) -> list[float]:
    """Mean cosine silhouette (float64) of each labeling of the unit rows, in one data pass.

    Empty clusters are dropped first; a labeling with fewer than 2 or more than N - 1 clusters
    scores 0.
    """
    n_samples = unit.shape[0]
    results = [0.0] * len(label_sets)
    labelings: list[tuple[torch.Tensor, int]] = []
    where: list[int] = []
    for index, labels in enumerate(label_sets):
        codes, classes = _encode_labels(labels, n_samples)
        if 2 <= len(classes) <= n_samples - 1:
            labelings.append((torch.from_numpy(codes).to(unit.device), len(classes)))
            where.append(index)
    if labelings:
        totals = _silhouette_blocks(
            unit, labelings, dtype=torch.float64, normalized=True, per_sample=False
        )
        for index, total in zip(where, totals, strict=True):
            results[index] = float(total) / n_samples
    return results


def _fit_share(
    unit: torch.Tensor,
    ks: Sequence[int],
    seedings: Sequence[np.ndarray],
    *,
    max_iter: int,
    tol: float,
    compute_silhouette: bool,
    verbose: bool,
) -> tuple[list[_KFit], float]:
    """Fit every k of ``ks``; then, optionally, all their silhouettes in one pass over the data.

    Returns the fits and the seconds spent on the silhouettes.
    """
    fits = []
    for k in ks:
        fits.append(_fit_one_k(unit, k, seedings, max_iter=max_iter, tol=tol))
        if verbose:
            _print_fit(fits[-1])
    start = time.perf_counter()
    if compute_silhouette:
        values = _mean_silhouettes(unit, [fit.labels for fit in fits])
        for fit, value in zip(fits, values, strict=True):
            fit.silhouette = value
    return fits, time.perf_counter() - start


def _sweep_worker(payload: dict[str, Any]) -> tuple[list[_KFit], float]:
    """Fit the ks of one process (runs in a spawned process; module level so it pickles)."""
    torch.set_num_threads(payload["threads"])
    device = torch.device(payload["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    unit = payload["unit"].to(device)
    return _fit_share(
        unit,
        payload["ks"],
        payload["seedings"],
        max_iter=payload["max_iter"],
        tol=payload["tol"],
        compute_silhouette=payload["compute_silhouette"],
        verbose=False,
    )


def _process_devices(n_processes: int, devices: Sequence[str], strategy: str) -> list[str]:
    """Device of each process: ``round_robin`` cycles through the devices; ``balanced`` gives each
    device a contiguous block of processes, the first ``n_processes % n_devices`` one more."""
    if strategy == "round_robin":
        return [devices[p % len(devices)] for p in range(n_processes)]
    per, extra = divmod(n_processes, len(devices))
    out: list[str] = []
    for index, device in enumerate(devices):
        out += [device] * (per + (1 if index < extra else 0))
    return out


def _split_ks(ks: Sequence[int], n_processes: int) -> list[list[int]]:
    """Share the ks so each process gets about the same work (cost grows with k): the largest
    remaining k goes to the least loaded process."""
    loads = [0] * n_processes
    shares: list[list[int]] = [[] for _ in range(n_processes)]
    for k in sorted(ks, reverse=True):
        target = loads.index(min(loads))
        shares[target].append(k)
        loads[target] += k
    return [sorted(share) for share in shares]


def choose_k(
    X: ArrayLike,
    *,
    k_range: Sequence[int] = DEFAULT_K_RANGE,
    k_step: int | None = None,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    device: DeviceLike = None,
    dtype: torch.dtype = torch.float32,
    parallel_processes: int = 1,
    gpu_allocation_strategy: str = "round_robin",
    compute_silhouette: bool = True,
    knee_sensitivity: float = 1.0,
    verbose: bool = False,
) -> KSweepResult:
    """Spherical k-means for every k of a range; choose k by the elbow of the inertia curve.

    Candidates are ``range(k_min, k_max + 1, k_step)``. For each, :class:`KMeans` with ``n_init``
    restarts is fitted (the best inertia is kept) and, with ``compute_silhouette``, the cosine
    silhouette of its labels. The chosen k is the Kneedle elbow of the inertia curve
    (``curve="convex", direction="decreasing"``); when there is none, the k of the best silhouette.

    Work shared across k: the data is normalised once, and each restart's greedy k-means++ seeding
    is computed once for the largest k; its first ``k`` centres seed every smaller k (the draws of
    a seeding step do not depend on the final k). So the result for k equals
    ``KMeans(k, n_init=n_init, seed=seed, n_local_trials=2 + int(log(max(ks))), ...)``. The
    silhouettes of all candidates come from one two-pass sweep over the data (one matrix product
    per block of rows for all candidates together).

    With ``parallel_processes > 1`` the ks are shared among that many spawned processes (about the
    same total k each), placed on the visible GPUs by ``gpu_allocation_strategy`` (``round_robin``:
    process p on GPU ``p % n_gpus``; ``balanced``: contiguous blocks of processes per GPU), or all
    on the CPU when the run device is the CPU, each with ``torch.get_num_threads() //
    parallel_processes`` threads. The results do not depend on the split.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)
        Feature rows.
    k_range : (int, int), default=(10, 100)
        Smallest and largest candidate, ``2 <= k_min <= k_max <= n_samples - 1``.
    k_step : int, optional
        Step between candidates; default :func:`default_k_step` (at most about 20 candidates).
    n_init, max_iter, tol, seed, device, dtype
        As in :class:`KMeans`.
    parallel_processes : int, default=1
        Processes for the sweep (1 runs it in this process).
    gpu_allocation_strategy : {"round_robin", "balanced"}, default="round_robin"
        How processes are placed on GPUs.
    compute_silhouette : bool, default=True
        Compute every candidate's silhouette (if False it is computed only when there is no knee),
        exactly in float64 on the run's unit rows (in ``dtype``: float32 rounding of the rows
        moves it by about 1e-8 from :func:`silhouette_score` of the raw features).
    knee_sensitivity : float, default=1.0
        Kneedle's ``S``.
    verbose : bool, default=False
        Print one line per candidate to stderr.

    Returns
    -------
    KSweepResult
        The chosen k and how, both curves, and the chosen k's labels and centres.
    """
    tensor = _check_features(X)
    n_samples = tensor.shape[0]
    if isinstance(k_range, str) or len(k_range) != 2:
        raise SelectionError(f"k_range must be two integers [k_min, k_max], got {k_range!r}")
    k_min = _check_int(k_range[0], "k_range[0] (k_min)", 2)
    k_max = _check_int(k_range[1], "k_range[1] (k_max)", k_min)
    if k_max > n_samples - 1:
        raise SelectionError(
            f"k_range upper bound {k_max} is larger than n_samples - 1 = {n_samples - 1} "
            f"({n_samples} samples); lower k_range to at most [{min(k_min, n_samples - 1)}, "
            f"{n_samples - 1}]"
        )
    step = default_k_step(k_min, k_max) if k_step is None else _check_int(k_step, "k_step", 1)
    n_init = _check_int(n_init, "n_init", 1)
    max_iter = _check_int(max_iter, "max_iter", 1)
    parallel_processes = _check_int(parallel_processes, "parallel_processes", 1)
    if gpu_allocation_strategy not in _ALLOCATION_STRATEGIES:
        raise SelectionError(
            f"gpu_allocation_strategy must be one of {list(_ALLOCATION_STRATEGIES)}, "
            f"got {gpu_allocation_strategy!r}"
        )
    if not (isinstance(tol, int | float) and tol >= 0):
        raise SelectionError(f"tol must be a number >= 0, got {tol!r}")
    ks = list(range(k_min, k_max + 1, step))
    run_device = _resolve_device(device, like=X)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    n_processes = min(parallel_processes, len(ks))
    unit = _prepare_unit(tensor, run_device, dtype, shared=n_processes > 1)
    tol_abs = _tolerance(unit, tol)
    trials = _default_trials(ks[-1])
    seedings = [
        _kmeans_plusplus(unit, ks[-1], np.random.default_rng(s), trials)
        for s in _init_seeds(_check_int(seed, "seed", 0), n_init)
    ]
    seconds["prepare_and_seed"] = time.perf_counter() - start

    start = time.perf_counter()
    if n_processes <= 1:
        fits, seconds["silhouette"] = _fit_share(
            unit,
            ks,
            seedings,
            max_iter=max_iter,
            tol=tol_abs,
            compute_silhouette=compute_silhouette,
            verbose=verbose,
        )
    else:
        fits, seconds["silhouette"] = _parallel_sweep(
            unit,
            ks,
            seedings,
            n_processes=n_processes,
            run_device=run_device,
            strategy=gpu_allocation_strategy,
            max_iter=max_iter,
            tol=tol_abs,
            compute_silhouette=compute_silhouette,
        )
        if verbose:
            for fit in fits:
                _print_fit(fit)
    seconds["kmeans"] = sum(f.seconds for f in fits)
    seconds["sweep_wall"] = time.perf_counter() - start

    inertias = [f.inertia for f in fits]
    knee_k = _knee(ks, inertias, knee_sensitivity)
    silhouettes: list[float] | None = None
    if not compute_silhouette and knee_k is None:
        # No knee: the fallback needs the silhouettes after all.
        start = time.perf_counter()
        for fit, value in zip(fits, _mean_silhouettes(unit, [f.labels for f in fits]), strict=True):
            fit.silhouette = value
        seconds["silhouette"] = time.perf_counter() - start
    if compute_silhouette or knee_k is None:
        silhouettes = [0.0 if f.silhouette is None else f.silhouette for f in fits]
    silhouette_k = None if silhouettes is None else ks[int(np.argmax(silhouettes))]
    if knee_k is not None:
        chosen, method = knee_k, "knee"
    else:
        assert silhouette_k is not None
        chosen, method = silhouette_k, "silhouette"
    fit = fits[ks.index(chosen)]
    logger.info(
        "choose_k: k=%d by %s (knee %s, best silhouette %s) over %d candidates in %.1f s",
        chosen,
        method,
        knee_k,
        silhouette_k,
        len(ks),
        seconds["sweep_wall"] + seconds["prepare_and_seed"],
    )
    return KSweepResult(
        k=chosen,
        method=method,
        ks=ks,
        inertias=inertias,
        silhouettes=silhouettes,
        n_iters=[f.n_iter for f in fits],
        labels=fit.labels,
        centers=fit.centers,
        knee_k=knee_k,
        silhouette_k=silhouette_k,
        seconds=seconds,
    )


def _print_fit(fit: _KFit) -> None:
    silhouette = "n/a" if fit.silhouette is None else f"{fit.silhouette:.4f}"
    print(
        f"[kmeans] k={fit.k:>4} inertia={fit.inertia:.4f} silhouette={silhouette} "
        f"iterations={fit.n_iter} ({fit.seconds:.2f} s)",
        file=sys.stderr,
        flush=True,
    )


def _parallel_sweep(
    unit: torch.Tensor,
    ks: Sequence[int],
    seedings: Sequence[np.ndarray],
    *,
    n_processes: int,
    run_device: torch.device,
    strategy: str,
    max_iter: int,
    tol: float,
    compute_silhouette: bool,
) -> tuple[list[_KFit], float]:
    """Run :func:`_fit_share` for shares of the ks in ``n_processes`` spawned processes.

    Returns the fits in the order of ``ks`` and the wall time the processes spent on silhouettes
    (the longest of them).
    """
    import torch.multiprocessing as mp

    if run_device.type == "cuda":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        devices = [str(run_device)]
    placement = _process_devices(n_processes, devices, strategy)
    shares = _split_ks(ks, n_processes)
    # CPU processes share the cores this process would use; GPU processes need few threads.
    threads = max(1, torch.get_num_threads() // n_processes)
    # The data travels once through shared memory (torch's reducer), not once per process.
    on_cpu = unit.device.type == "cpu"
    shared = unit if on_cpu and unit.is_shared() else unit.cpu().share_memory_()
    payloads = [
        {
            "unit": shared,
            "ks": share,
            "seedings": list(seedings),
            "device": placement[p],
            "threads": threads,
            "max_iter": max_iter,
            "tol": tol,
            "compute_silhouette": compute_silhouette,
        }
        for p, share in enumerate(shares)
        if share
    ]
    logger.info(
        "choose_k: %d processes, devices %s, ks %s",
        len(payloads),
        [p["device"] for p in payloads],
        [p["ks"] for p in payloads],
    )
    context = mp.get_context("spawn")
    with context.Pool(len(payloads)) as pool:
        results = pool.map(_sweep_worker, payloads, chunksize=1)
    by_k = {fit.k: fit for share, _ in results for fit in share}
    return [by_k[k] for k in ks], max(seconds for _, seconds in results)


# --------------------------------------------------------------------------------------------
# Registry of clustering methods
# --------------------------------------------------------------------------------------------


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
