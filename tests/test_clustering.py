"""Tests of selectmoe.clustering: silhouette parity with scikit-learn, k-means, choose_k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.metrics import silhouette_samples as sk_silhouette_samples
from sklearn.metrics import silhouette_score as sk_silhouette_score
from sklearn.preprocessing import normalize

from selectmoe.clustering import (
    ClusteringResult,
    KMeans,
    auto_k,
    choose_k,
    get_clustering_method,
    kmeans,
    list_clustering_methods,
    register_clustering_method,
    silhouette_samples,
    silhouette_score,
    validate_silhouette,
)
from selectmoe.errors import SelectionError


def blobs(sizes, n_features, spread, seed=0):
    """Gaussian blobs around random centres, rows in blob order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), n_features))
    x = np.concatenate(
        [c + spread * rng.normal(size=(n, n_features)) for c, n in zip(centres, sizes, strict=True)]
    )
    return x, np.repeat(np.arange(len(sizes)), sizes)


def directional_blobs(n_clusters, per_cluster, n_features, spread, seed=0):
    """Points scattered around unit directions (the geometry spherical k-means is for)."""
    rng = np.random.default_rng(seed)
    directions = normalize(rng.normal(size=(n_clusters, n_features)))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    x = directions[labels] + spread * rng.normal(size=(len(labels), n_features))
    scale = rng.uniform(0.5, 3.0, size=(len(labels), 1))  # cosine ignores the length
    return x * scale, labels


# ------------------------------------------------------------------------------------------
# silhouette
# ------------------------------------------------------------------------------------------


def assert_matches_sklearn(x, labels, tol=1e-9, **kwargs):
    ours = silhouette_samples(x, labels, **kwargs)
    reference = sk_silhouette_samples(x, labels, metric="cosine")
    assert ours.dtype == np.float64 and ours.shape == (len(labels),)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=tol)
    assert silhouette_score(x, labels, **kwargs) == pytest.approx(reference.mean(), abs=tol)


def test_silhouette_ten_samples_three_features_two_clusters():
    x, labels = blobs([5, 5], 3, 0.5)
    assert_matches_sklearn(x, labels)


def test_silhouette_known_value():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # a = 0 inside each pair, b = 1 to the other pair: every sample scores 1.
    np.testing.assert_allclose(silhouette_samples(x, [0, 0, 1, 1]), 1.0, atol=1e-15)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1e-9], [0.0, 2.0]])
    # Mixed pairs: a = 1 (orthogonal partner), b = (0 + 1) / 2 -> s = (0.5 - 1) / 1 = -0.5.
    np.testing.assert_allclose(silhouette_samples(x, [0, 0, 1, 1]), -0.5, atol=1e-8)


def test_silhouette_clusters_of_one_sample_score_zero():
    sizes = [1, 6, 1, 7, 1]
    x, labels = blobs(sizes, 4, 0.4, seed=1)
    ours = silhouette_samples(x, labels)
    assert ours[0] == 0.0 and ours[7] == 0.0 and ours[-1] == 0.0
    assert_matches_sklearn(x, labels)


def test_silhouette_very_unbalanced_clusters():
    x, labels = blobs([3, 1, 496], 8, 1.0, seed=2)
    assert_matches_sklearn(x, labels)


def test_silhouette_labels_not_zero_to_k_minus_one():
    x, labels = blobs([40, 60, 50, 50], 6, 0.8, seed=3)
    values = np.array([1000, -7, 3, 42])[labels]
    order = np.random.default_rng(0).permutation(len(values))
    assert_matches_sklearn(x[order], values[order])
    # strings work too (any sortable labels)
    assert_matches_sklearn(x, np.array(["d", "a", "c", "b"])[labels])


def test_silhouette_all_zero_rows_follow_sklearn():
    x, labels = blobs([20, 30], 5, 0.7, seed=4)
    x[[3, 31]] = 0.0
    assert_matches_sklearn(x, labels)
    # By hand, with d(zero row, anything else) = 1 and d(i, i) = 0:
    # s_0 = b - a = (3 - 1/sqrt2)/3 - 1 = -1/(3 sqrt2); s_3 = 1 - (2 - 1/sqrt2)/2 = 1/(2 sqrt2);
    # the zero rows and [1, 1] have a = b.
    x = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    expected = [-1 / (3 * math.sqrt(2)), 0.0, 0.0, 1 / (2 * math.sqrt(2)), 0.0]
    np.testing.assert_allclose(silhouette_samples(x, [0, 0, 1, 1, 1]), expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_silhouette_input_types(dtype, as_tensor):
    x, labels = blobs([30, 20, 25], 7, 1.0, seed=5)
    x = x.astype(dtype)
    reference = sk_silhouette_samples(x.astype(np.float64), labels, metric="cosine")
    data = torch.from_numpy(x) if as_tensor else x
    lab = torch.from_numpy(labels) if as_tensor else labels
    np.testing.assert_allclose(silhouette_samples(data, lab), reference, atol=1e-12)


def test_silhouette_float32_accumulation_is_close():
    x, labels = blobs([300, 200, 500], 16, 1.5, seed=6)
    reference = sk_silhouette_score(x, labels, metric="cosine")
    assert silhouette_score(x, labels, dtype=torch.float32) == pytest.approx(reference, abs=1e-5)


def test_silhouette_invariances():
    x, labels = blobs([30, 20, 25, 25], 5, 1.2, seed=7)
    base = silhouette_samples(x, labels)
    # relabelling
    renamed = np.array([9, -1, 4, 100])[labels]
    np.testing.assert_allclose(silhouette_samples(x, renamed), base, atol=1e-13)
    # scaling rows (cosine sees directions only)
    scale = np.random.default_rng(0).uniform(0.01, 100, size=(len(x), 1))
    np.testing.assert_allclose(silhouette_samples(x * scale, labels), base, atol=1e-12)
    # permuting samples permutes the values
    order = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_allclose(silhouette_samples(x[order], labels[order]), base[order], atol=1e-13)


@pytest.fixture(scope="module")
def large_case():
    """N=20,000, D=64, K=50 and scikit-learn's values (computed once, several seconds)."""
    x, labels = blobs([400] * 50, 64, 3.0, seed=8)
    return x, labels, sk_silhouette_samples(x, labels, metric="cosine")


def test_silhouette_large_matches_sklearn(large_case):
    x, labels, reference = large_case
    ours = silhouette_samples(x, labels)
    assert np.max(np.abs(ours - reference)) < 1e-6
    assert abs(ours.mean() - reference.mean()) < 1e-6


@pytest.mark.parametrize(
    ("x", "labels", "kwargs", "match"),
    [
        (np.ones((4, 2)), [0, 0, 0, 0], {}, "number of distinct labels is 1; .* 2 to .* = 3"),
        (np.ones((4, 2)), [0, 1, 2, 3], {}, "number of distinct labels is 4"),
        (np.ones((4, 2)), [0, 1], {}, "labels has 2 entries but X has 4 rows"),
        (np.ones(4), [0, 1, 0, 1], {}, r"X must be 2-D \[n_samples, n_features\]"),
        (np.ones((4, 2)), [0, 1, 0, 1], {"metric": "euclidean"}, r"metric must be one of"),
        (np.array([[1.0, np.nan]] * 4), [0, 1, 0, 1], {}, "NaN or infinity in 4 row"),
        (np.ones((4, 2)), [0, 1, 0, 1], {"device": "tpu"}, "device 'tpu' is not a torch device"),
    ],
)
def test_silhouette_rejects_bad_input(x, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        silhouette_samples(x, labels, **kwargs)


def test_validate_silhouette_report():
    report = validate_silhouette(devices=["cpu"], include_large=False)
    assert report.passed and report.worst < 1e-9
    assert len(report.checks) == 5
    assert {c.case for c in report.checks} >= {"10 samples x 3 features x 2 clusters"}
    text = report.format()
    assert "PASS" in text and "clusters of one sample" in text
    assert report.to_dict()["passed"] is True


# ------------------------------------------------------------------------------------------
# KMeans
# ------------------------------------------------------------------------------------------


def test_kmeans_recovers_directional_clusters_and_reports_consistent_attributes():
    x, truth = directional_blobs(5, 60, 12, 0.15, seed=0)
    model = KMeans(5, n_init=3, seed=0).fit(x)
    # the partition equals the truth up to renaming
    pairs = set(zip(model.labels_.tolist(), truth.tolist(), strict=True))
    assert len(pairs) == 5
    assert model.labels_.dtype == np.int64 and model.labels_.shape == (300,)
    assert model.cluster_centers_.shape == (5, 12)
    np.testing.assert_allclose(np.linalg.norm(model.cluster_centers_, axis=1), 1.0, atol=1e-12)
    # inertia is sum_i 2 (1 - cos(x_i, c_{l_i}))
    unit = normalize(x)
    cos = np.sum(unit * model.cluster_centers_[model.labels_], axis=1)
    assert model.inertia_ == pytest.approx(np.sum(2 - 2 * cos), rel=1e-6)
    # labels are the nearest centres; predict agrees
    assert model.predict(x).tolist() == model.labels_.tolist()
    assert np.argmax(unit @ model.cluster_centers_.T, axis=1).tolist() == model.labels_.tolist()
    assert 1 <= model.n_iter_ <= 300


def test_kmeans_is_deterministic_and_seeds_differ():
    x, _ = directional_blobs(8, 40, 10, 0.6, seed=1)
    a = KMeans(8, n_init=2, seed=3).fit(x)
    b = KMeans(8, n_init=2, seed=3).fit(torch.from_numpy(x))
    assert a.labels_.tolist() == b.labels_.tolist() and a.inertia_ == b.inertia_
    inertias = {KMeans(8, n_init=1, seed=s).fit(x).inertia_ for s in range(4)}
    assert len(inertias) > 1  # distinct seeds explore distinct starts


def test_kmeans_more_restarts_never_worse():
    x, _ = directional_blobs(10, 30, 8, 0.8, seed=2)
    one = KMeans(10, n_init=1, seed=0).fit(x).inertia_
    many = KMeans(10, n_init=5, seed=0).fit(x).inertia_
    assert many <= one  # restart 0 is shared, so the best of five is at most it


def test_kmeans_inertia_close_to_sklearn_on_normalised_data():
    x, _ = directional_blobs(6, 150, 16, 0.35, seed=3)
    unit = normalize(x)
    ours = KMeans(6, n_init=4, seed=0).fit(x)
    theirs = SklearnKMeans(6, n_init=4, random_state=0).fit(unit)
    # The same objective for both partitions: unit centroids, sum of 2 (1 - cos).
    sums = np.zeros((6, 16))
    np.add.at(sums, theirs.labels_, unit)
    theirs_cosine = np.sum(2 - 2 * np.sum(unit * normalize(sums)[theirs.labels_], axis=1))
    assert ours.inertia_ <= theirs_cosine * 1.01
    # scikit-learn's objective (mean centroids) for our partition is as good as theirs
    counts = np.bincount(ours.labels_, minlength=6)[:, None]
    means = np.zeros((6, 16))
    np.add.at(means, ours.labels_, unit)
    ours_euclidean = np.sum((unit - (means / counts)[ours.labels_]) ** 2)
    assert ours_euclidean <= theirs.inertia_ * 1.01
    # For one partition, inertia_ exceeds scikit-learn's by 2 / (1 + |m_k|) per cluster.
    m = np.linalg.norm(means / counts, axis=1)
    expected = np.sum(counts[:, 0] * (1 - m**2) * 2 / (1 + m))
    assert ours.inertia_ == pytest.approx(expected, rel=1e-6)


def test_kmeans_reseeds_empty_clusters():
    x, _ = directional_blobs(4, 50, 6, 0.2, seed=4)
    unit = torch.from_numpy(normalize(x))
    # Two identical initial centres: the second gets no point at the first E-step.
    init = unit[[0, 0, 60, 120]].clone()
    result = kmeans._lloyd(unit, init, max_iter=100, tol=0.0)
    assert torch.bincount(result.labels, minlength=4).min() > 0


def test_kmeans_single_cluster_and_k_equals_n():
    x, _ = directional_blobs(3, 10, 5, 0.3, seed=5)
    one = KMeans(1).fit(x)
    assert set(one.labels_.tolist()) == {0}
    mean_direction = normalize(normalize(x).sum(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(one.cluster_centers_[0], mean_direction, atol=1e-6)
    every = KMeans(30, seed=0).fit(x)
    assert sorted(every.labels_.tolist()) == list(range(30))
    assert every.inertia_ == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_clusters": 0}, r"n_clusters must be >= 1, got 0"),
        ({"n_clusters": 2.5}, "n_clusters must be an integer"),
        ({"n_clusters": 3, "n_init": 0}, r"n_init must be >= 1, got 0"),
        ({"n_clusters": 3, "metric": "euclidean"}, r"metric must be one of \['cosine'\]"),
        ({"n_clusters": 3, "tol": -1}, "tol must be a number >= 0"),
        ({"n_clusters": 3, "max_iter": 0}, "max_iter must be >= 1"),
    ],
)
def test_kmeans_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KMeans(**kwargs)


def test_kmeans_rejects_more_clusters_than_samples():
    with pytest.raises(SelectionError, match="n_clusters=6 is larger than the number of samples 5"):
        KMeans(6).fit(np.random.default_rng(0).random((5, 3)))
    with pytest.raises(SelectionError, match="not fitted yet"):
        KMeans(2).predict(np.ones((2, 2)))


# ------------------------------------------------------------------------------------------
# choose_k
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def six_directions():
    return directional_blobs(6, 50, 10, 0.12, seed=9)


def test_choose_k_finds_the_elbow_and_records_both_curves(six_directions):
    x, truth = six_directions
    sweep = choose_k(x, k_range=(2, 12), k_step=1, n_init=2, seed=0)
    assert sweep.ks == list(range(2, 13))
    assert sweep.k == 6 and sweep.method == "knee" and sweep.knee_k == 6
    assert len(sweep.inertias) == len(sweep.silhouettes) == len(sweep.n_iters) == 11
    assert sweep.silhouette_k == 6
    pairs = set(zip(sweep.labels.tolist(), truth.tolist(), strict=True))
    assert len(pairs) == 6
    # the recorded silhouette of a candidate is the silhouette of its labels (computed on the
    # float32 unit rows of the sweep, hence not to the last float64 digit)
    assert sweep.silhouettes[4] == pytest.approx(silhouette_score(x, sweep.labels), abs=1e-7)
    assert set(sweep.to_dict()) >= {"k", "method", "ks", "inertias", "silhouettes", "seconds"}


def test_choose_k_reuses_the_largest_seeding_exactly(six_directions):
    x, _ = six_directions
    sweep = choose_k(x, k_range=(3, 9), k_step=3, n_init=2, seed=5)
    # The result for each k is KMeans(k) with the sweep's k-means++ trial count.
    for k, inertia in zip(sweep.ks, sweep.inertias, strict=True):
        model = KMeans(k, n_init=2, seed=5, n_local_trials=2 + int(math.log(9))).fit(x)
        assert model.inertia_ == pytest.approx(inertia, rel=1e-12)
    model = KMeans(sweep.k, n_init=2, seed=5, n_local_trials=2 + int(math.log(9))).fit(x)
    assert model.labels_.tolist() == sweep.labels.tolist()


def test_choose_k_falls_back_to_best_silhouette_without_knee(six_directions, monkeypatch):
    x, _ = six_directions
    monkeypatch.setattr(auto_k, "_knee", lambda ks, inertias, sensitivity: None)
    sweep = choose_k(x, k_range=(2, 8), k_step=2, seed=0, compute_silhouette=False)
    assert sweep.method == "silhouette" and sweep.knee_k is None
    assert sweep.silhouettes is not None  # computed because it was needed
    assert sweep.k == sweep.ks[int(np.argmax(sweep.silhouettes))]


def test_knee_of_a_straight_line_is_none():
    assert auto_k._knee([1, 2, 3, 4, 5], [5.0, 4.0, 3.0, 2.0, 1.0], 1.0) is None
    assert auto_k._knee([1, 2], [2.0, 1.0], 1.0) is None
    assert auto_k._knee([1, 2, 3, 4, 5, 6], [100, 20, 10, 8, 7, 6.5], 1.0) == 2


def test_choose_k_parallel_processes_give_the_serial_result(six_directions):
    x, _ = six_directions
    options = {"k_range": (2, 10), "k_step": 2, "n_init": 2, "seed": 1}
    serial = choose_k(x, **options)
    parallel = choose_k(x, parallel_processes=2, gpu_allocation_strategy="balanced", **options)
    assert parallel.k == serial.k and parallel.method == serial.method
    assert parallel.inertias == pytest.approx(serial.inertias, rel=1e-9)
    assert parallel.silhouettes == pytest.approx(serial.silhouettes, abs=1e-9)
    assert parallel.labels.tolist() == serial.labels.tolist()


def test_process_placement_and_k_split():
    assert auto_k._process_devices(5, ["cuda:0", "cuda:1"], "round_robin") == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]
    assert auto_k._process_devices(5, ["cuda:0", "cuda:1"], "balanced") == [
        "cuda:0",
        "cuda:0",
        "cuda:0",
        "cuda:1",
        "cuda:1",
    ]
    shares = auto_k._split_ks(list(range(10, 101, 10)), 3)
    assert sorted(k for share in shares for k in share) == list(range(10, 101, 10))
    loads = [sum(share) for share in shares]
    assert max(loads) - min(loads) <= 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k_range": (1, 5)}, r"k_range\[0\] \(k_min\) must be >= 2, got 1"),
        ({"k_range": (6, 5)}, r"k_range\[1\] \(k_max\) must be >= 6, got 5"),
        ({"k_range": (2, 40)}, "k_range upper bound 40 is larger than n_samples - 1 = 29"),
        ({"k_range": (2,)}, "k_range must be two integers"),
        ({"k_step": 0}, "k_step must be >= 1"),
        ({"gpu_allocation_strategy": "greedy"}, "gpu_allocation_strategy must be one of"),
        ({"parallel_processes": 0}, "parallel_processes must be >= 1"),
    ],
)
def test_choose_k_rejects_bad_settings(kwargs, match):
    x = np.random.default_rng(0).random((30, 4))
    options = {"k_range": (2, 5), **kwargs}
    with pytest.raises(SelectionError, match=match):
        choose_k(x, **options)


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


def test_registry_has_kmeans_and_accepts_new_methods():
    assert "kmeans" in list_clustering_methods()

    def halves(features, *, params, seed):
        n = len(features)
        return ClusteringResult(labels=np.arange(n) * 2 // n, k=2, info={})

    register_clustering_method("halves_for_test", halves, overwrite=True)
    assert get_clustering_method("halves_for_test") is halves
    with pytest.raises(SelectionError, match="already registered"):
        register_clustering_method("halves_for_test", halves)
    with pytest.raises(SelectionError, match=r"unknown clustering_method 'nope'; valid: \["):
        get_clustering_method("nope")


def test_kmeans_method_manual_and_auto(six_directions):
    x, _ = six_directions
    method = get_clustering_method("kmeans")
    manual = method(x, params={"auto_k": False, "k": 4, "n_init": 2}, seed=0)
    assert manual.k == 4 and manual.info["k_selection"] == "manual"
    assert manual.labels.tolist() == KMeans(4, n_init=2, seed=0).fit(x).labels_.tolist()
    assert manual.info["silhouette"] == pytest.approx(silhouette_score(x, manual.labels))
    auto = method(x, params={"k_range": [2, 10], "k_step": 1, "device": "cpu"}, seed=0)
    assert auto.k == 6 and auto.info["k_selection"] == "knee"
    assert auto.info["ks"] == list(range(2, 11))
    with pytest.raises(SelectionError, match=r"unknown clustering_params for kmeans: \['kk'\]"):
        method(x, params={"kk": 3}, seed=0)
    with pytest.raises(SelectionError, match=r"clustering_params.k must be set"):
        method(x, params={"auto_k": False}, seed=0)
    with pytest.raises(SelectionError, match=r"clustering_params.k=301 is larger than"):
        method(x, params={"auto_k": False, "k": 301}, seed=0)
