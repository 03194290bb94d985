"""Intervals and paired comparisons (selectmoe.evidence.stats): formulas, consistency, coverage."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats as scipy_stats

from selectmoe.evidence.stats import (
    Interval,
    PairedComparison,
    VarianceComponents,
    format_p_value,
    mean_intervals,
    paired_difference,
    replicate_means,
    variance_components,
)


def _t(df: int, confidence: float = 0.95) -> float:
    """Student's t quantile at ``1 - alpha / 2``."""
    return float(scipy_stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, df))


# ---------------------------------------------------------------------------------------------
# 1. every formula on small hand grids
# ---------------------------------------------------------------------------------------------

#: One task, R = 3 replicates, S = 1 seed, Q = 4 questions.
_HAND = np.array([[[1, 0, 1, 1]], [[0, 0, 1, 1]], [[1, 1, 1, 0]]], dtype=float)


def test_three_replicates_one_seed_by_hand():
    # replicate means 3/4, 1/2, 3/4: mean 2/3, squared deviations 1/144 + 4/144 + 1/144 = 1/24,
    # variance (ddof 1) 1/48, V_m = 1/48 / 3 = 1/144 with df 2.
    # question means 2/3, 1/3, 1, 2/3: squared deviations 0 + 1/9 + 1/9 + 0 = 2/9,
    # variance 2/27, V_q = 2/27 / 4 = 1/54 with df 3.
    components = variance_components([_HAND])
    assert components == VarianceComponents(
        between_models=pytest.approx(1 / 144),
        between_questions=pytest.approx(1 / 54),
        model_units=3,
    )
    np.testing.assert_allclose(replicate_means([_HAND]), [0.75, 0.5, 0.75])
    overall, (task,) = mean_intervals([_HAND])
    half = np.sqrt(_t(2) ** 2 / 144 + _t(3) ** 2 / 54)
    assert overall.estimate == pytest.approx(2 / 3)
    assert (overall.low, overall.high) == pytest.approx((2 / 3 - half, 2 / 3 + half))
    assert task == overall
    narrower, _ = mean_intervals([_HAND], confidence=0.8)
    half_80 = np.sqrt(_t(2, 0.8) ** 2 / 144 + _t(3, 0.8) ** 2 / 54)
    assert narrower.high - narrower.estimate == pytest.approx(half_80)


def test_one_replicate_several_seeds_uses_the_seeds_as_units():
    grid = np.array([[1, 1, 0, 1, 0], [0, 1, 0, 1, 0], [1, 1, 1, 1, 0]], dtype=float)  # (S, Q)
    seed_means = grid.mean(axis=1)
    question_means = grid.mean(axis=0)
    v_m = seed_means.var(ddof=1) / 3
    v_q = question_means.var(ddof=1) / 5
    assert variance_components([grid]) == VarianceComponents(
        pytest.approx(v_m), pytest.approx(v_q), 3
    )
    overall, _ = mean_intervals([grid])
    half = np.sqrt(_t(2) ** 2 * v_m + _t(4) ** 2 * v_q)
    assert overall == Interval(
        pytest.approx(grid.mean()),
        pytest.approx(grid.mean() - half),
        pytest.approx(grid.mean() + half),
    )
    # the 2-D grid is the 3-D grid with one replicate
    assert mean_intervals([grid[np.newaxis]]) == mean_intervals([grid])
    np.testing.assert_allclose(replicate_means([grid]), [grid.mean()])


def test_one_model_is_a_t_interval_over_questions():
    scores = np.array([0.2, 0.9, 0.4, 0.4, 1.0, 0.0, 0.7, 0.5])
    components = variance_components([scores[np.newaxis]])
    assert components.between_models == 0.0 and components.model_units == 1
    assert components.between_questions == pytest.approx(scores.var(ddof=1) / scores.size)
    overall, _ = mean_intervals([scores[np.newaxis]], confidence=0.9)
    low, high = scipy_stats.t.interval(
        0.9, scores.size - 1, loc=scores.mean(), scale=scipy_stats.sem(scores)
    )
    assert (overall.low, overall.high) == pytest.approx((low, high))


def test_several_tasks_several_replicates_and_seeds():
    rng = np.random.default_rng(0)
    grids = [rng.random((3, 2, 7)), rng.random((3, 2, 11)), (rng.random((3, 2, 5)) < 0.5) * 1.0]
    task_means = [g.mean() for g in grids]
    estimate = np.mean(task_means)
    units = np.mean([g.mean(axis=(1, 2)) for g in grids], axis=0)
    v_m = units.var(ddof=1) / 3
    v_t = [g.mean(axis=(0, 1)).var(ddof=1) / g.shape[2] for g in grids]
    v_q = sum(v_t) / 9
    df_q = 6 + 10 + 4
    assert variance_components(grids) == VarianceComponents(
        pytest.approx(v_m), pytest.approx(v_q), 3
    )
    np.testing.assert_allclose(replicate_means(grids), units)
    overall, per_task = mean_intervals(grids)
    half = np.sqrt(_t(2) ** 2 * v_m + _t(df_q) ** 2 * v_q)
    assert (overall.estimate, overall.low, overall.high) == pytest.approx(
        (estimate, estimate - half, estimate + half)
    )
    for grid, interval, v in zip(grids, per_task, v_t, strict=True):
        task_v_m = grid.mean(axis=(1, 2)).var(ddof=1) / 3
        task_half = np.sqrt(_t(2) ** 2 * task_v_m + _t(grid.shape[2] - 1) ** 2 * v)
        assert (interval.estimate, interval.low, interval.high) == pytest.approx(
            (grid.mean(), grid.mean() - task_half, grid.mean() + task_half)
        )


def test_paired_difference_is_the_interval_of_the_difference_grids():
    rng = np.random.default_rng(1)
    a = [(rng.random((3, 2, 30)) < 0.6) * 1.0, (rng.random((3, 2, 20)) < 0.5) * 1.0]
    b = [(rng.random((3, 2, 30)) < 0.5) * 1.0, (rng.random((3, 2, 20)) < 0.5) * 1.0]
    result = paired_difference(a, b, confidence=0.9)
    overall, _ = mean_intervals([x - y for x, y in zip(a, b, strict=True)], confidence=0.9)
    assert (result.difference, result.low, result.high) == pytest.approx(
        (overall.estimate, overall.low, overall.high)
    )
    assert result.difference == pytest.approx(
        np.mean([x.mean() - y.mean() for x, y in zip(a, b, strict=True)])
    )
    # the p-value is the level at which the interval's bound touches zero
    at_p = paired_difference(a, b, confidence=1.0 - result.p_value)
    assert 0.0 < result.p_value < 1.0
    assert min(abs(at_p.low), abs(at_p.high)) == pytest.approx(0.0, abs=1e-10)


def test_p_value_with_one_component_is_a_t_test():
    rng = np.random.default_rng(2)
    # one model: the paired t test over questions
    base = (rng.random((1, 1, 300)) < 0.5) * 1.0
    better = np.where(rng.random(base.shape) < 0.08, 1.0, base)
    result = paired_difference([better], [base])
    t_test = scipy_stats.ttest_rel(better.ravel(), base.ravel())
    assert result.p_value == pytest.approx(t_test.pvalue, rel=1e-8)
    # every question alike within a replicate: the one-sample t test over the replicate means
    shifts = np.array([0.03, -0.01, 0.05, 0.02])
    a = [np.broadcast_to((0.5 + shifts)[:, None, None], (4, 1, 10)).copy()]
    b = [np.full((4, 1, 10), 0.5)]
    result = paired_difference(a, b)
    assert variance_components([a[0] - b[0]]).between_questions == 0.0
    assert result.p_value == pytest.approx(scipy_stats.ttest_1samp(shifts, 0.0).pvalue, rel=1e-8)


def test_no_variance_at_all():
    same = [np.ones((1, 1, 1))]
    assert paired_difference(same, same) == PairedComparison(0.0, 0.0, 0.0, 1.0)
    shifted = paired_difference([np.ones((2, 1, 3))], [np.zeros((2, 1, 3))])
    assert shifted == PairedComparison(1.0, 1.0, 1.0, 0.0)
    # one question and one model: nothing to estimate a variance from
    overall, _ = mean_intervals([np.array([[0.7]])])
    assert overall == Interval(0.7, 0.7, 0.7)


def test_identical_points_differ_by_nothing():
    rng = np.random.default_rng(5)
    grids = [(rng.random((3, 1, q)) < 0.6) * 1.0 for q in (40, 25)]
    result = paired_difference(grids, [g.copy() for g in grids])
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_replicate_variation_widens_the_interval_and_one_model_does_not():
    # every question equally hard; replicates differ by a constant: only they can move the mean
    grid = np.repeat(np.array([0.2, 0.5, 0.8])[:, None, None], 50, axis=2)
    overall, _ = mean_intervals([grid])
    assert overall.estimate == pytest.approx(0.5)
    assert overall.high - 0.5 == pytest.approx(_t(2) * np.sqrt(0.09 / 3))
    one, _ = mean_intervals([grid[1:2]])
    assert one.low == one.high == pytest.approx(0.5)


def test_deterministic_and_invariant_to_question_order():
    rng = np.random.default_rng(6)
    grids = [rng.random((3, 2, 40)), rng.random((3, 2, 25))]
    first = mean_intervals(grids)
    assert mean_intervals(grids) == first
    order = np.random.default_rng(0)
    shuffled = [g[:, :, order.permutation(g.shape[2])] for g in grids]
    again = mean_intervals(shuffled)
    assert (again[0].estimate, again[0].low, again[0].high) == pytest.approx(
        (first[0].estimate, first[0].low, first[0].high)
    )


# ---------------------------------------------------------------------------------------------
# 2. the p-value and the interval agree
# ---------------------------------------------------------------------------------------------


def test_p_value_below_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(7)
    outcomes = {True: 0, False: 0}
    for _ in range(200):
        n_replicates, n_seeds = int(rng.integers(1, 5)), int(rng.integers(1, 3))
        sizes = rng.integers(4, 40, size=int(rng.integers(1, 4)))
        base = rng.uniform(0.3, 0.7)
        lift = rng.uniform(0.0, 0.25)
        a = [(rng.random((n_replicates, n_seeds, q)) < base + lift) * 1.0 for q in sizes]
        b = [(rng.random((n_replicates, n_seeds, q)) < base) * 1.0 for q in sizes]
        result = paired_difference(a, b)
        excludes = result.low > 0.0 or result.high < 0.0
        assert (result.p_value < 0.05) == excludes, result
        assert 0.0 <= result.p_value <= 1.0
        outcomes[excludes] += 1
    assert min(outcomes.values()) >= 30, outcomes


# ---------------------------------------------------------------------------------------------
# 3. coverage, measured on synthetic score grids with known variance components
# ---------------------------------------------------------------------------------------------

#: Questions of the two synthetic tasks.
_TASK_SIZES = (60, 90)


@dataclass(frozen=True)
class _Regime:
    """Standard deviations of the effects that make up a synthetic score.

    ``X[r, s, q] = mean + delta [a only] + replicate[r] + seed[r, s] + question[q] (shared by
    a and b) + interaction[q] (per method) + noise[r, s, q]``; with ``binary`` the score is
    ``X > 0`` (accuracy of a latent).
    """

    name: str
    replicates: int
    seeds: int
    replicate: float
    seed: float
    question: float
    interaction: float
    noise: float
    delta: float
    mean: float = 0.5
    binary: bool = False

    @property
    def true_difference(self) -> float:
        """The expected ``a - b`` over replicates, seeds and questions."""
        if not self.binary:
            return self.delta
        total = np.sqrt(
            self.replicate**2
            + self.seed**2
            + self.question**2
            + self.interaction**2
            + self.noise**2
        )
        norm = scipy_stats.norm
        return float(norm.cdf((self.mean + self.delta) / total) - norm.cdf(self.mean / total))


_REGIMES = (
    _Regime("replicates-dominate", 3, 1, 0.05, 0.005, 0.2, 0.01, 0.02, 0.02),
    _Regime("seeds-dominate", 3, 2, 0.005, 0.05, 0.2, 0.01, 0.02, 0.02),
    _Regime("questions-dominate", 3, 1, 0.002, 0.002, 0.2, 0.15, 0.1, 0.02),
    _Regime("all-comparable", 3, 2, 0.014, 0.02, 0.2, 0.1, 0.05, 0.02),
    _Regime("all-comparable-0/1", 3, 1, 0.15, 0.1, 1.0, 0.3, 0.5, 0.1, mean=0.3, binary=True),
)


def _simulate(
    regime: _Regime, n_sims: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Scores of ``a`` and ``b`` in ``n_sims`` simulated comparisons: per task ``[N, R, S, Q_t]``.

    ``N`` is ``n_sims``, ``R`` and ``S`` are the regime's; the tasks have :data:`_TASK_SIZES`
    questions.
    """
    n_questions = sum(_TASK_SIZES)
    shape = (n_sims, regime.replicates, regime.seeds, n_questions)
    question = rng.normal(0.0, regime.question, (n_sims, 1, 1, n_questions))

    def point(shift: float) -> np.ndarray:
        score = (
            regime.mean
            + shift
            + rng.normal(0.0, regime.replicate, (*shape[:2], 1, 1))
            + rng.normal(0.0, regime.seed, (*shape[:3], 1))
            + question
            + rng.normal(0.0, regime.interaction, (n_sims, 1, 1, n_questions))
            + rng.normal(0.0, regime.noise, shape)
        )
        return (score > 0.0) * 1.0 if regime.binary else score

    bounds = np.cumsum(_TASK_SIZES)[:-1]
    a, b = point(regime.delta), point(0.0)
    return np.split(a, bounds, axis=3), np.split(b, bounds, axis=3)


def _bootstrap_counts(rng: np.random.Generator, shape: tuple[int, int], n_items: int) -> np.ndarray:
    """How often each of ``n_items`` items is drawn in ``n_items`` draws with replacement.

    Returns float64 ``[*shape, n_items]``, one independent bootstrap draw per leading index.
    """
    rows = shape[0] * shape[1]
    drawn = rng.integers(0, n_items, (rows, n_items)) + n_items * np.arange(rows)[:, None]
    counts = np.bincount(drawn.ravel(), minlength=rows * n_items)
    return counts.reshape(*shape, n_items).astype(np.float64)


def _two_way_bootstraps(
    variants: dict[str, list[np.ndarray]], rng: np.random.Generator, n_resamples: int = 400
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """95% percentile intervals of two-way bootstraps, for ``N`` simulations at once.

    Each variant holds per task an array ``[N, U, Q_t]``: ``U`` units (drawn with replacement,
    the same draw for every task) crossed with the questions (drawn per task; the question draws
    are shared by the variants to halve the cost). Returns per variant the lows and highs, each
    ``[N]``, of the unweighted mean over tasks.
    """
    first = next(iter(variants.values()))
    n_sims, n_tasks = first[0].shape[0], len(first)
    out = {name: (np.empty(n_sims), np.empty(n_sims)) for name in variants}
    for start in range(0, n_sims, 100):
        chunk = slice(start, min(start + 100, n_sims))
        shape = (chunk.stop - chunk.start, n_resamples)
        questions = [_bootstrap_counts(rng, shape, grid.shape[2]) for grid in first]
        for name, grids in variants.items():
            n_units = grids[0].shape[1]
            units = _bootstrap_counts(rng, shape, n_units)  # [n, B, U]
            statistic = np.zeros(shape)
            for grid, counts in zip(grids, questions, strict=True):
                per_unit = counts @ grid[chunk].transpose(0, 2, 1)  # [n, B, U]
                statistic += (per_unit * units).sum(axis=2) / (n_units * grid.shape[2])
            low, high = np.quantile(statistic / n_tasks, [0.025, 0.975], axis=1)
            out[name][0][chunk], out[name][1][chunk] = low, high
    return out


def _old_and_replicate_bootstraps(differences: list[np.ndarray], rng: np.random.Generator):
    """The former interval and a naive bootstrap over replicates, on ``[N, R, S, Q_t]`` grids.

    ``old``: seeds x questions of the first selection replicate only (what the workflow did with
    one selection draw). ``replicates``: the replicates, each with its seeds, x questions.
    """
    return _two_way_bootstraps(
        {
            "old": [d[:, 0] for d in differences],
            "replicates": [d.mean(axis=2) for d in differences],
        },
        rng,
    )


def test_paired_interval_covers_the_true_difference():
    started = time.perf_counter()
    n_sims = 2000
    rng = np.random.default_rng(20240611)
    lines, coverage = [], {}
    for regime in _REGIMES:
        grids_a, grids_b = _simulate(regime, n_sims, rng)
        truth = regime.true_difference
        new = np.empty(n_sims, dtype=bool)
        for i in range(n_sims):
            result = paired_difference([x[i] for x in grids_a], [y[i] for y in grids_b])
            new[i] = result.low <= truth <= result.high
        differences = [x - y for x, y in zip(grids_a, grids_b, strict=True)]
        bootstraps = _old_and_replicate_bootstraps(differences, rng)
        (old_low, old_high), (rep_low, rep_high) = bootstraps["old"], bootstraps["replicates"]
        coverage[regime.name] = (
            new.mean(),
            np.mean((old_low <= truth) & (truth <= old_high)),
            np.mean((rep_low <= truth) & (truth <= rep_high)),
        )
        new_c, old_c, rep_c = coverage[regime.name]
        lines.append(
            f"coverage {regime.name}: new {new_c:.3f} | old (seeds x questions, one replicate) "
            f"{old_c:.3f} | bootstrap over {regime.replicates} replicates {rep_c:.3f}"
        )
    print()
    print("\n".join(lines))
    print(f"coverage simulation: {time.perf_counter() - started:.1f} s")
    for name, (new_c, _, _) in coverage.items():
        assert new_c >= 0.93, (name, new_c)
    assert coverage["replicates-dominate"][1] < 0.9


# ---------------------------------------------------------------------------------------------
# 4. bad input is named
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mean_intervals([]), "non-empty list"),
        (lambda: mean_intervals(np.zeros((2, 3))), "non-empty list"),
        (lambda: mean_intervals([np.zeros(3)]), "3-D array"),
        (lambda: mean_intervals([np.zeros((1, 1, 2, 3))]), r"shape \(1, 1, 2, 3\)"),
        (lambda: mean_intervals([np.zeros((1, 0))]), "non-empty 3-D"),
        (
            lambda: mean_intervals([np.zeros((3, 1, 4)), np.zeros((2, 1, 4))]),
            r"same number of replicates \(R\): grids\[0\] has 3, grids\[1\] has 2",
        ),
        (
            lambda: mean_intervals([np.zeros((2, 3)), np.zeros((3, 3))]),
            r"same number of seeds \(S\)",
        ),
        (lambda: mean_intervals([np.full((1, 2), np.nan)]), r"grids\[0\] holds NaN"),
        (lambda: variance_components([np.array([[0.0, np.inf]])]), "infinite"),
        (lambda: mean_intervals([np.zeros((1, 2))], confidence=1.0), "confidence"),
        (lambda: mean_intervals([np.zeros((1, 2))], confidence=0), "confidence"),
        (
            lambda: paired_difference(
                [np.zeros((3, 1, 2)), np.zeros((3, 1, 5))],
                [np.zeros((3, 1, 2)), np.zeros((3, 1, 4))],
            ),
            r"task 1: shapes \(3, 1, 5\) and \(3, 1, 4\) differ",
        ),
        (
            lambda: paired_difference([np.zeros((3, 1, 2))], [np.zeros((2, 1, 2))]),
            r"task 0: shapes \(3, 1, 2\) and \(2, 1, 2\)",
        ),
        (lambda: paired_difference([np.zeros((1, 2))], [np.zeros((1, 2))] * 2), "tasks"),
        (lambda: paired_difference([np.zeros((1, 2))], [np.full((1, 2), np.nan)]), "grids_b"),
        (lambda: replicate_means([np.zeros((3, 1, 2)), np.zeros((1, 2))]), "replicates"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_p_value_text():
    assert format_p_value(0.5) == "0.5"
    assert format_p_value(0.0312) == "0.031"
    assert format_p_value(1.0) == "1"
    assert format_p_value(0.00012) == "0.00012"
    assert format_p_value(0.00009) == "<0.0001"
    assert format_p_value(0.0) == "<0.0001"
    assert format_p_value(float("nan")) == ""
