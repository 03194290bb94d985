"""Intervals and paired comparisons of scores over selection replicates, seeds and questions.

A sweep point (method, target, percentage) is *selected* ``R`` times with different seeds
(selection replicates); each replicate's selection is finetuned with ``S`` seeds, and every
finetuned model answers the same ``Q_t`` questions of each task. The scores of one task therefore
form a grid ``X[r, s, q]`` of shape ``(R, S, Q_t)`` (0/1 for accuracy, or any real metric). The
model without adapter has ``R = S = 1``. A 2-D grid ``(S, Q_t)`` is read as ``R = 1``.

Statistic
    Per task, the mean of its grid; overall, the unweighted mean over tasks of the task means.

Interval: two variance components with t quantiles
    Two sources of chance are crossed: which models one got (the selection draw, with the
    finetune seeds nested inside it) and which questions the benchmark happened to ask.

    - *Models.* The units are the replicates: replicate ``r``'s value is the statistic on
      ``X[r]`` (its mean over its seeds and questions, unweighted over tasks; see
      :func:`replicate_means`). ``V_m = var(unit values, ddof=1) / R`` with ``df_m = R - 1``.
      With ``R = 1`` and ``S > 1`` the seeds are the units instead (``V_m = var(seed
      means) / S``, ``df_m = S - 1``). With ``R = S = 1`` there is nothing to estimate it from
      and ``V_m = 0``: the interval is then over questions only.
    - *Questions.* Per task, the question means ``X[:, :, q]`` averaged over replicates and seeds
      have sample variance ``v_t`` (ddof=1). For a task mean ``V_q = v_t / Q_t`` with
      ``df_q = Q_t - 1``; for the overall mean ``V_q = sum_t (v_t / Q_t) / T**2`` with
      ``df_q = sum_t (Q_t - 1)`` (the pooled degrees of freedom of the ``T`` independent
      question samples). A task with a single question adds nothing to ``V_q`` nor to ``df_q``.

    The half-width at level ``alpha`` is ``h(alpha) = sqrt(t_m**2 V_m + t_q**2 V_q)`` with
    ``t_m, t_q`` the ``1 - alpha/2`` quantiles of Student's t with ``df_m`` and ``df_q`` degrees
    of freedom, and the interval is ``estimate -+ h(1 - confidence)``.

What is conservative
    Each variance is unbiased for its own source *plus* the model-by-question interaction and the
    residual: the spread of the replicate means contains them averaged over that replicate's
    seeds and questions, and the spread of the question means contains them averaged over the
    replicates and seeds. They are therefore counted twice. Giving each term its own t quantile
    is, in addition, never narrower than one t quantile with Welch-Satterthwaite degrees of
    freedom on the same two variances (checked numerically over a wide range of variances and
    dfs). The interval thus errs on the wide side; it is close to exact when one component
    dominates (a simulation in ``tests/test_stats.py`` measures its coverage).

Why not a bootstrap over replicates
    With ``R = 3`` a bootstrap over replicates has only ten distinct resamples, its variance is
    the plug-in ``(R - 1) / R`` of the unbiased one, and its percentiles behave like normal
    quantiles where a t with 2 degrees of freedom (``4.30`` instead of ``1.96`` at 95%) is
    needed: it covers far below the nominal level when the selection draw matters (about 0.73
    for a nominal 0.95 in the simulation of ``tests/test_stats.py``). The former
    interval, a two-way bootstrap over seeds and questions of one selection draw, ignored the
    selection draw altogether.

Paired comparison
    Two points ``a`` and ``b`` (a method and ``random`` at the same target and percentage) are
    compared on the difference grids ``D = X_a - X_b`` per task: replicate ``r`` of ``a`` with
    replicate ``r`` of ``b``, seed ``s`` with seed ``s`` and question ``q`` with question ``q``
    (the shapes must agree). The interval is the one above on ``D``. The p-value of "no
    difference" is two-sided: the ``alpha`` in ``(0, 1]`` at which the interval's bound touches
    zero, ``h(alpha) = |d|``. As ``h`` decreases strictly in ``alpha``, ``p < 1 - confidence``
    exactly when the interval at ``confidence`` excludes zero, so the p-value and the interval
    never disagree. When one component is zero it is the p-value of a one-sample t test. It is
    solved by Brent's method on ``log(alpha)``; a p-value below ``1e-300`` is returned as 0.

Everything here is deterministic: no resampling, no random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq
from scipy.special import stdtrit

__all__ = [
    "Interval",
    "PairedComparison",
    "VarianceComponents",
    "format_p_value",
    "mean_intervals",
    "paired_difference",
    "replicate_means",
    "variance_components",
]

#: Smallest level the p-value is solved down to; below it the p-value is reported as 0.
_P_FLOOR = 1e-300


@dataclass(frozen=True)
class Interval:
    """A mean score with its variance-components t interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedComparison:
    """The mean difference ``a - b`` of two points on the same replicates, seeds and questions.

    ``low`` and ``high`` bound the interval at the requested confidence; ``p_value`` is the
    two-sided level at which that interval's bound touches zero.
    """

    difference: float
    low: float
    high: float
    p_value: float


@dataclass(frozen=True)
class VarianceComponents:
    """The two estimated variances of the overall statistic (the mean over tasks).

    Attributes
    ----------
    between_models : float
        ``V_m``: the variance of the statistic due to the selection replicates with their seeds
        nested inside (or to the seeds when there is one replicate); 0 with one model.
    between_questions : float
        ``V_q``: the variance of the statistic due to the questions asked.
    model_units : int
        The number of model units ``V_m`` was estimated from: ``R``, or ``S`` when ``R == 1``.
    """

    between_models: float
    between_questions: float
    model_units: int


@dataclass(frozen=True)
class _Components:
    """A statistic with both its variances and their degrees of freedom."""

    estimate: float
    model_variance: float
    model_df: int
    question_variance: float
    question_df: int
    model_units: int


def _check_grids(grids: Sequence[ArrayLike], name: str) -> list[np.ndarray]:
    """Validate ``grids`` and return them as float64 arrays of shape ``(R, S, Q_t)``."""
    if isinstance(grids, np.ndarray) or not isinstance(grids, Sequence) or not grids:
        raise ValueError(
            f"{name} must be a non-empty list of per-task arrays [replicates, seeds, questions]"
        )
    checked = []
    for index, grid in enumerate(grids):
        array = np.asarray(grid, dtype=np.float64)
        if array.ndim == 2:
            array = array[np.newaxis]
        if array.ndim != 3 or 0 in array.shape:
            raise ValueError(
                f"{name}[{index}] must be a non-empty 3-D array [replicates, seeds, questions] "
                f"or 2-D array [seeds, questions], got shape {np.shape(grid)}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}[{index}] holds NaN or infinite scores")
        checked.append(array)
    for axis, what in ((0, "replicates (R)"), (1, "seeds (S)")):
        first = checked[0].shape[axis]
        for index, array in enumerate(checked):
            if array.shape[axis] != first:
                raise ValueError(
                    f"every task of {name} must have the same number of {what}: "
                    f"{name}[0] has {first}, {name}[{index}] has {array.shape[axis]} "
                    f"(shape {array.shape})"
                )
    return checked


def _check_confidence(confidence: float) -> None:
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0.0 < confidence < 1.0
    ):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _components(grids: Sequence[np.ndarray]) -> _Components:
    """The statistic of checked grids ``(R, S, Q_t)`` with ``V_m, df_m, V_q, df_q``."""
    n_replicates, n_seeds = grids[0].shape[:2]
    n_tasks = len(grids)
    estimate = float(np.mean([grid.mean() for grid in grids]))
    if n_replicates > 1:
        units = np.mean([grid.mean(axis=(1, 2)) for grid in grids], axis=0)  # [R]
    elif n_seeds > 1:
        units = np.mean([grid[0].mean(axis=1) for grid in grids], axis=0)  # [S]
    else:
        units = np.zeros(1)
    n_units = units.size
    model_variance = float(np.var(units, ddof=1)) / n_units if n_units > 1 else 0.0
    question_variance = 0.0
    question_df = 0
    for grid in grids:
        n_questions = grid.shape[2]
        if n_questions > 1:
            question_means = grid.mean(axis=(0, 1))  # [Q_t]
            question_variance += float(np.var(question_means, ddof=1)) / n_questions
            question_df += n_questions - 1
    return _Components(
        estimate=estimate,
        model_variance=model_variance,
        model_df=n_units - 1,
        question_variance=question_variance / n_tasks**2,
        question_df=question_df,
        model_units=n_units,
    )


def _half_width(components: _Components, alpha: float) -> float:
    """``h(alpha) = sqrt(t_m**2 V_m + t_q**2 V_q)``, t quantiles at ``1 - alpha / 2``.

    The quantile is taken as ``-stdtrit(df, alpha / 2)`` (the same number by symmetry), which
    stays accurate for tiny ``alpha``. A zero variance contributes nothing, whatever its df.
    """
    total = 0.0
    for variance, df in (
        (components.model_variance, components.model_df),
        (components.question_variance, components.question_df),
    ):
        if variance > 0.0:
            quantile = -float(stdtrit(df, alpha / 2.0))
            total += quantile * quantile * variance
    return math.sqrt(total)


def _interval(components: _Components, confidence: float) -> Interval:
    half = _half_width(components, 1.0 - confidence)
    return Interval(components.estimate, components.estimate - half, components.estimate + half)


def _p_value(components: _Components) -> float:
    """The ``alpha`` in ``(0, 1]`` with ``h(alpha) = |estimate|`` (two-sided p of zero)."""
    distance = abs(components.estimate)
    if components.model_variance == 0.0 and components.question_variance == 0.0:
        return 0.0 if distance > 0.0 else 1.0
    if distance == 0.0:
        return 1.0
    low = math.log(_P_FLOOR)
    if _half_width(components, _P_FLOOR) <= distance:
        return 0.0
    # h(exp(u)) - |d| is positive at u = log(floor) and -|d| < 0 at u = 0 (h(1) = 0).
    root = brentq(
        lambda u: _half_width(components, math.exp(u)) - distance,
        low,
        0.0,
        xtol=1e-13,
        rtol=1e-13,
    )
    return min(1.0, math.exp(root))


def mean_intervals(
    grids: Sequence[ArrayLike], *, confidence: float = 0.95
) -> tuple[Interval, list[Interval]]:
    """Mean score overall and per task, each with its variance-components t interval.

    Parameters
    ----------
    grids : sequence of array-like, each of shape (R, S, Q_t) or (S, Q_t)
        Per task, the score of every replicate and seed on every question. All tasks have the
        same ``R`` and ``S``; a 2-D grid is one replicate.
    confidence : float, default 0.95
        Nominal coverage of the intervals, in (0, 1).

    Returns
    -------
    overall : Interval
        The unweighted mean of the task means.
    per_task : list of Interval
        One per grid, in order; each from that task's grid alone (``df_q = Q_t - 1``).

    Raises
    ------
    ValueError
        On an empty list, a grid that is not 2-D or 3-D, a NaN or infinite score, tasks with
        different ``R`` or ``S``, or ``confidence`` outside (0, 1).

    Examples
    --------
    >>> overall, (task,) = mean_intervals([np.array([[1, 0, 1, 1], [1, 1, 0, 1]])])
    >>> overall.estimate
    0.75
    """
    checked = _check_grids(grids, "grids")
    _check_confidence(confidence)
    overall = _interval(_components(checked), confidence)
    per_task = [_interval(_components([grid]), confidence) for grid in checked]
    return overall, per_task


def variance_components(grids: Sequence[ArrayLike]) -> VarianceComponents:
    """The two variance components of the overall mean, as used by :func:`mean_intervals`.

    Parameters
    ----------
    grids : sequence of array-like, each of shape (R, S, Q_t) or (S, Q_t)
        As in :func:`mean_intervals`.

    Returns
    -------
    VarianceComponents
        ``V_m``, ``V_q`` and the number of model units.
    """
    components = _components(_check_grids(grids, "grids"))
    return VarianceComponents(
        between_models=components.model_variance,
        between_questions=components.question_variance,
        model_units=components.model_units,
    )


def replicate_means(grids: Sequence[ArrayLike]) -> np.ndarray:
    """The overall statistic of every selection replicate.

    Parameters
    ----------
    grids : sequence of array-like, each of shape (R, S, Q_t) or (S, Q_t)
        As in :func:`mean_intervals`.

    Returns
    -------
    numpy.ndarray, shape (R,)
        Entry ``r``: the unweighted mean over tasks of ``X_t[r]``'s mean over its seeds and
        questions.
    """
    checked = _check_grids(grids, "grids")
    return np.mean([grid.mean(axis=(1, 2)) for grid in checked], axis=0)


def paired_difference(
    grids_a: Sequence[ArrayLike],
    grids_b: Sequence[ArrayLike],
    *,
    confidence: float = 0.95,
) -> PairedComparison:
    """Overall mean of ``a`` minus that of ``b``, paired on replicates, seeds and questions.

    Parameters
    ----------
    grids_a, grids_b : sequence of array-like, each of shape (R, S, Q_t) or (S, Q_t)
        Per task, the scores of the two points; task ``t`` of both has the same shape, and
        element ``[r, s, q]`` of ``a`` is paired with element ``[r, s, q]`` of ``b``.
    confidence : float, default 0.95
        Nominal coverage of the interval, in (0, 1).

    Returns
    -------
    PairedComparison
        ``difference`` (``a - b``, unweighted mean over tasks), the interval of
        :func:`mean_intervals` on the difference grids, and its two-sided p-value of no
        difference (below ``1 - confidence`` exactly when the interval excludes zero).

    Raises
    ------
    ValueError
        On invalid grids (as in :func:`mean_intervals`), a different number of tasks, or a task
        whose two grids differ in shape (the message names the task and both shapes).

    Examples
    --------
    >>> same = [np.array([[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]])]
    >>> paired_difference(same, same)
    PairedComparison(difference=0.0, low=0.0, high=0.0, p_value=1.0)
    """
    a = _check_grids(grids_a, "grids_a")
    b = _check_grids(grids_b, "grids_b")
    _check_confidence(confidence)
    if len(a) != len(b):
        raise ValueError(f"the points have {len(a)} and {len(b)} tasks; pair the same tasks")
    for task, (left, right) in enumerate(zip(a, b, strict=True)):
        if left.shape != right.shape:
            raise ValueError(
                f"task {task}: shapes {left.shape} and {right.shape} differ; a paired comparison "
                "needs the same replicates, seeds and questions"
            )
    components = _components([left - right for left, right in zip(a, b, strict=True)])
    interval = _interval(components, confidence)
    return PairedComparison(interval.estimate, interval.low, interval.high, _p_value(components))


def format_p_value(p_value: float) -> str:
    """A p-value as text: two significant digits, ``'<0.0001'`` below 1e-4, ``''`` for NaN.

    Examples
    --------
    >>> format_p_value(0.0312), format_p_value(0.00002), format_p_value(float("nan"))
    ('0.031', '<0.0001', '')
    """
    if not math.isfinite(p_value):
        return ""
    if p_value < 1e-4:
        return "<0.0001"
    return f"{p_value:.2g}"
