"""The silhouette checked against scikit-learn on random and structured cases."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from selectmoe.clustering._inputs import (
    available_devices,
)
from selectmoe.clustering.silhouette import (
    silhouette_samples,
)
from selectmoe.errors import SelectionError


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
