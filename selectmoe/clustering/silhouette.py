"""Exact cosine silhouette in O(N·K·D) time (scikit-learn's ``metric="cosine"``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from selectmoe.clustering._inputs import (
    ArrayLike,
    DeviceLike,
    _check_features,
    _check_metric,
    _chunk_rows,
    _encode_labels,
    _resolve_device,
    _unit_rows,
)
from selectmoe.errors import SelectionError

logger = logging.getLogger(__name__)


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
