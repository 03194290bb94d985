"""Input checks and helpers shared by the clustering modules (features, labels, devices)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from selectmoe.errors import SelectionError, check_int

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
    return check_int(value, name, minimum=low, maximum=high, error=SelectionError, wording="got")
