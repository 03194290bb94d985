"""Intervals and paired comparisons of evaluation scores over finetune seeds and questions.

A sweep point is evaluated once per finetune seed on the same questions, so its per-question
scores form a grid ``X[s, q]`` per task (``S`` seeds by ``Q_t`` questions; a score is 0/1 for
accuracy). The mean accuracy of a task is the mean of that grid, and the overall accuracy is the
unweighted mean of the task means.

Both sources of chance enter the interval: which finetune run one got (seed) and which questions
the benchmark happened to ask. The interval is a *two-way* (crossed) percentile bootstrap: each
replicate draws ``S`` seeds with replacement and, independently, ``Q_t`` questions of each task
with replacement, and takes the same statistic on the drawn grid (Owen 2007, "The pigeonhole
bootstrap"; it slightly overstates the variance, so the interval errs on the wide side). With one
seed (the model without an adapter) it is the ordinary bootstrap over questions.

A *paired* comparison of two points (a method and ``random`` at the same target and
percentage) uses the same draws for both, so that a question that is hard for both, or a seed
that is lucky for both, cancels out: the statistic is the mean of ``X_a[s, q] - X_b[s, q]``.
Seeds are paired by their position (the same finetune seed), questions by their id. The p-value
is the two-sided bootstrap p-value of "no difference", ``2 * min(P(d* <= 0), P(d* >= 0))`` with
the ``+1`` correction: it is below ``1 - confidence`` exactly when the interval excludes zero (up
to the bootstrap's resolution), so the p-value and the interval never disagree.

Every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interval",
    "PairedComparison",
    "bootstrap_means",
    "format_p_value",
    "paired_difference",
]

#: Bootstrap replicates drawn at once (bounds the memory of the ``[chunk, Q]`` count matrix).
_CHUNK = 512


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedComparison:
    """The mean difference of two points on the same seeds and questions.

    ``p_value`` is two-sided; ``difference`` is ``a - b``.
    """

    difference: float
    low: float
    high: float
    p_value: float


def _check_grids(grids: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(grids, np.ndarray) or not isinstance(grids, Sequence) or not grids:
        raise ValueError(f"{name} must be a non-empty list of [seeds, questions] arrays")
    checked = []
    for index, grid in enumerate(grids):
        array = np.asarray(grid, dtype=np.float64)
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(
                f"{name}[{index}] must be a non-empty 2-D array [seeds, questions], got shape "
                f"{array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}[{index}] holds NaN or infinite scores")
        checked.append(array)
    n_seeds = {array.shape[0] for array in checked}
    if len(n_seeds) != 1:
        raise ValueError(
            f"every task of {name} must have the same number of seeds, got {sorted(n_seeds)}"
        )
    return checked


def _check_options(confidence: float, n_resamples: int) -> None:
    if not (isinstance(confidence, int | float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")


def _counts(indices: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` items was drawn in each row of ``indices`` ``[C, n]``.

    Returns float64 ``[C, size]``.
    """
    rows = indices.shape[0]
    flat = indices + size * np.arange(rows)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * size).reshape(rows, size).astype(np.float64)


def _replicate_task_means(
    grids: Sequence[np.ndarray], n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Two-way bootstrap replicates of every task mean: ``[n_resamples, n_tasks]``.

    Replicate ``b`` draws seed indices ``[S]`` (shared by all tasks: a seed is one model) and,
    per task, question indices ``[Q_t]``; its task mean is the mean of ``X[seeds][:, questions]``,
    computed as ``v^T X w / (S Q)`` from the draw counts ``v`` and ``w``. The draws come in chunks
    of :data:`_CHUNK` replicates, in this order: seeds, then each task's questions.
    """
    n_seeds = grids[0].shape[0]
    out = np.empty((n_resamples, len(grids)))
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        seed_counts = _counts(rng.integers(0, n_seeds, size=(size, n_seeds)), n_seeds)
        for task, grid in enumerate(grids):
            n_questions = grid.shape[1]
            question_counts = _counts(
                rng.integers(0, n_questions, size=(size, n_questions)), n_questions
            )
            # per replicate: sum_s v_s * (X w)_s ; X w for all replicates at once: [S, size]
            weighted = grid @ question_counts.T
            out[start : start + size, task] = np.einsum("cs,sc->c", seed_counts, weighted) / (
                n_seeds * n_questions
            )
    return out


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_means(
    grids: Sequence[np.ndarray],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[Interval, list[Interval]]:
    """Mean score per task and overall, each with a two-way bootstrap interval.

    Parameters
    ----------
    grids : sequence of array-like, each of shape (S, Q_t)
        Per task, the score of every seed (rows, the same ``S`` for all tasks) on every question.
    confidence : float, default 0.95
        Coverage of the percentile interval.
    n_resamples : int, default 10000
        Bootstrap replicates.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    overall : Interval
        The unweighted mean of the task means.
    per_task : list of Interval
        One per grid, in order.

    Examples
    --------
    >>> overall, (task,) = bootstrap_means([np.array([[1, 0, 1, 1], [1, 1, 0, 1]])])
    >>> overall.estimate
    0.75
    """
    checked = _check_grids(grids, "grids")
    _check_options(confidence, n_resamples)
    rng = np.random.default_rng(seed)
    replicates = _replicate_task_means(checked, n_resamples, rng)
    task_means = [float(grid.mean()) for grid in checked]
    per_task = [
        Interval(mean, *_percentile_interval(replicates[:, task], confidence))
        for task, mean in enumerate(task_means)
    ]
    overall = Interval(
        float(np.mean(task_means)), *_percentile_interval(replicates.mean(axis=1), confidence)
    )
    return overall, per_task


def paired_difference(
    grids_a: Sequence[np.ndarray],
    grids_b: Sequence[np.ndarray],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Overall mean of ``a`` minus that of ``b``, paired on seeds and questions.

    Parameters
    ----------
    grids_a, grids_b : sequence of array-like, each of shape (S, Q_t)
        Per task, the scores of the two points on the same questions in the same order and the
        same number of seeds (row ``s`` of ``a`` is paired with row ``s`` of ``b``).
    confidence, n_resamples, seed
        As in :func:`bootstrap_means`.

    Returns
    -------
    PairedComparison
        ``difference`` (a - b, unweighted mean over tasks), its interval and the two-sided
        bootstrap p-value of no difference.

    Raises
    ------
    ValueError
        When the two points differ in tasks, seeds or questions.
    """
    a = _check_grids(grids_a, "grids_a")
    b = _check_grids(grids_b, "grids_b")
    _check_options(confidence, n_resamples)
    if len(a) != len(b):
        raise ValueError(f"the points have {len(a)} and {len(b)} tasks; pair the same tasks")
    for task, (left, right) in enumerate(zip(a, b, strict=True)):
        if left.shape != right.shape:
            raise ValueError(
                f"task {task}: shapes {left.shape} and {right.shape} differ; a paired comparison "
                "needs the same seeds and questions"
            )
    differences = [left - right for left, right in zip(a, b, strict=True)]
    rng = np.random.default_rng(seed)
    replicates = _replicate_task_means(differences, n_resamples, rng).mean(axis=1)
    low, high = _percentile_interval(replicates, confidence)
    below = int(np.count_nonzero(replicates <= 0.0))
    above = int(np.count_nonzero(replicates >= 0.0))
    p_value = min(1.0, 2.0 * min(below + 1, above + 1) / (n_resamples + 1))
    estimate = float(np.mean([grid.mean() for grid in differences]))
    return PairedComparison(estimate, low, high, p_value)


def format_p_value(p_value: float, n_resamples: int) -> str:
    """``p`` as text, never finer than the bootstrap resolves: ``2 / (n + 1)`` is its floor.

    Examples
    --------
    >>> format_p_value(0.0312, 10_000), format_p_value(0.0002, 10_000)
    ('0.031', '≤0.0002')
    """
    floor = 2.0 / (n_resamples + 1)
    if not math.isfinite(p_value):
        return ""
    if p_value <= floor:
        return f"≤{floor:.1g}"
    return f"{p_value:.2g}"
