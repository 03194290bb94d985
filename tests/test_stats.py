"""Intervals and paired comparisons (selectmoe.evidence.stats) against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from selectmoe.evidence.stats import bootstrap_means, format_p_value, paired_difference


def _loop_replicates(grids, n_resamples, seed):
    """The two-way bootstrap written as a plain loop over replicates, drawing in the same order
    as the vectorised code (one chunk: seeds, then each task's questions)."""
    rng = np.random.default_rng(seed)
    n_seeds = grids[0].shape[0]
    seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    questions = [rng.integers(0, g.shape[1], size=(n_resamples, g.shape[1])) for g in grids]
    out = np.empty((n_resamples, len(grids)))
    for b in range(n_resamples):
        for t, grid in enumerate(grids):
            out[b, t] = grid[np.ix_(seeds[b], questions[t][b])].mean()
    return out


def _random_grids(rng, n_seeds=3, sizes=(40, 25, 31), p=(0.3, 0.6, 0.8)):
    return [(rng.random((n_seeds, q)) < pt).astype(float) for q, pt in zip(sizes, p, strict=True)]


def test_bootstrap_means_equal_a_plain_loop():
    grids = _random_grids(np.random.default_rng(1))
    overall, per_task = bootstrap_means(grids, n_resamples=300, seed=7, confidence=0.9)
    reference = _loop_replicates(grids, 300, 7)
    for t, interval in enumerate(per_task):
        assert interval.estimate == pytest.approx(grids[t].mean())
        low, high = np.quantile(reference[:, t], [0.05, 0.95])
        assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    low, high = np.quantile(reference.mean(axis=1), [0.05, 0.95])
    assert (overall.low, overall.high) == pytest.approx((low, high), abs=1e-12)
    assert overall.estimate == pytest.approx(np.mean([g.mean() for g in grids]))


def test_paired_difference_equals_a_plain_loop():
    rng = np.random.default_rng(2)
    a, b = _random_grids(rng), _random_grids(rng)
    result = paired_difference(a, b, n_resamples=400, seed=3)
    reference = _loop_replicates([x - y for x, y in zip(a, b, strict=True)], 400, 3).mean(axis=1)
    assert (result.low, result.high) == pytest.approx(
        tuple(np.quantile(reference, [0.025, 0.975])), abs=1e-12
    )
    below, above = np.sum(reference <= 0), np.sum(reference >= 0)
    assert result.p_value == pytest.approx(min(1.0, 2 * min(below + 1, above + 1) / 401))
    differences = [(x - y).mean() for x, y in zip(a, b, strict=True)]
    assert result.difference == pytest.approx(np.mean(differences))


def test_one_seed_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    scores = (rng.random((1, 4000)) < 0.62).astype(float)
    overall, _ = bootstrap_means([scores], n_resamples=4000, seed=0)
    mean = scores.mean()
    half = scipy_stats.norm.ppf(0.975) * np.sqrt(mean * (1 - mean) / scores.shape[1])
    assert overall.low == pytest.approx(mean - half, abs=0.004)
    assert overall.high == pytest.approx(mean + half, abs=0.004)


def test_paired_p_value_matches_a_paired_t_test_on_many_questions():
    rng = np.random.default_rng(4)
    n = 3000
    base = (rng.random((1, n)) < 0.5).astype(float)
    # the other point answers 3% more questions right, flipping some wrong answers
    better = base.copy()
    better[0, rng.choice(np.flatnonzero(base[0] == 0), size=int(0.03 * n), replace=False)] = 1
    better[0, rng.choice(np.flatnonzero(base[0] == 1), size=int(0.01 * n), replace=False)] = 0
    result = paired_difference([better], [base], n_resamples=20_000, seed=0)
    t_test = scipy_stats.ttest_rel(better[0], base[0])
    assert result.difference == pytest.approx(0.02)
    assert result.p_value == pytest.approx(t_test.pvalue, abs=0.01)
    assert result.low > 0


def test_seed_to_seed_variation_widens_the_interval():
    # every question equally hard; seeds differ by a constant: only seed resampling can move it
    grid = np.repeat(np.array([[0.2], [0.5], [0.8]]), 50, axis=1)
    overall, _ = bootstrap_means([grid], n_resamples=2000, seed=0)
    assert overall.estimate == pytest.approx(0.5)
    assert 0.2 <= overall.low < 0.4 and 0.6 < overall.high <= 0.8
    one_seed, _ = bootstrap_means([grid[1:2]], n_resamples=2000, seed=0)
    assert one_seed.low == one_seed.high == pytest.approx(0.5)


def test_identical_points_differ_by_nothing():
    grids = _random_grids(np.random.default_rng(5))
    result = paired_difference(grids, [g.copy() for g in grids], n_resamples=500)
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_deterministic_for_a_seed_and_invariant_to_question_order():
    grids = _random_grids(np.random.default_rng(6))
    first = bootstrap_means(grids, n_resamples=500, seed=11)
    assert bootstrap_means(grids, n_resamples=500, seed=11) == first
    shuffled = [g[:, np.random.default_rng(0).permutation(g.shape[1])] for g in grids]
    assert bootstrap_means(shuffled, n_resamples=500, seed=11)[0].estimate == pytest.approx(
        first[0].estimate
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_means([]), "non-empty list"),
        (lambda: bootstrap_means([np.zeros(3)]), "2-D array"),
        (lambda: bootstrap_means([np.zeros((2, 3)), np.zeros((3, 3))]), "same number of seeds"),
        (lambda: bootstrap_means([np.full((1, 2), np.nan)]), "NaN"),
        (lambda: bootstrap_means([np.zeros((1, 2))], confidence=1.0), "confidence"),
        (lambda: bootstrap_means([np.zeros((1, 2))], n_resamples=0), "n_resamples"),
        (lambda: paired_difference([np.zeros((1, 2))], [np.zeros((1, 3))]), "same seeds"),
        (lambda: paired_difference([np.zeros((1, 2))], [np.zeros((1, 2))] * 2), "tasks"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_p_value_text_stops_at_the_bootstrap_resolution():
    assert format_p_value(0.5, 10_000) == "0.5"
    assert format_p_value(0.0001, 10_000) == "≤0.0002"
    assert format_p_value(float("nan"), 10_000) == ""
