"""Scores and allocations (the parts of a selection method) and methods defined in a config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from selectmoe.data.router_data import load_router_data
from selectmoe.errors import RouterDataError, SelectionError
from selectmoe.selection.allocation import allocate, round_robin
from selectmoe.selection.methods import (
    BUILTIN_DEFINITIONS,
    SEED_METHOD,
    method_definitions,
    uses_score,
)
from selectmoe.selection.scores import attach_reference_loss, compute_score
from selectmoe.selection.select import select_indices
from tests.test_selection import MANUAL_K, make_router_payload, save

N = 40


def with_statistics(payload: dict, *, seed: int) -> dict:
    """The payload with the statistics scoring records (random, NaN where undefined)."""
    gen = torch.Generator().manual_seed(seed)
    n, n_layers = payload["quality_score"].shape
    answer_loss = torch.rand(n, generator=gen) * 4 + 0.5
    alone = answer_loss + torch.randn(n, generator=gen) * 0.5
    eos = torch.rand(n, generator=gen) * 3
    answer_loss[3] = alone[5] = eos[4] = float("nan")
    quantiles = torch.sort(torch.rand(n, 6, generator=gen) * 5, dim=1).values
    quantiles[3] = float("nan")
    worst_turn = answer_loss + torch.rand(n, generator=gen)
    return {
        **payload,
        "quality_good": torch.rand(n, n_layers, generator=gen),
        "quality_score_answer": torch.randn(n, n_layers, generator=gen),
        "n_answer_tokens": torch.randint(0, 50, (n,), generator=gen),
        "answer_loss": answer_loss,
        "eos_loss": eos,
        "answer_loss_alone": alone,
        "answer_loss_quantiles": quantiles,
        "answer_loss_worst_turn": worst_turn,
    }


@pytest.fixture
def router(tmp_path: Path):
    payload = with_statistics(make_router_payload("alpha", N, seed=1), seed=2)
    return load_router_data([save(payload, tmp_path / "alpha_router_data.pt")])


# ------------------------------------------------------------------------------------------
# scores


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_default_gate_score_is_the_seeds(router):
    """mean over layers of sigmoid(token-mean raw score): what the seed ranks by."""
    expected = sigmoid(router.quality_score.double().numpy()).mean(axis=1)
    np.testing.assert_allclose(compute_score(router, "gate"), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(compute_score(router, "gate"), router.scores, rtol=0, atol=1e-6)


def test_gate_score_variants(router):
    raw = router.quality_score.double().numpy()
    answer = router.statistics["quality_score_answer"].double().numpy()
    good = router.statistics["quality_good"].double().numpy()
    last = compute_score(router, "gate", params={"layers": [2]})
    np.testing.assert_allclose(last, sigmoid(raw[:, 2]), atol=1e-12)
    weighted = compute_score(router, "gate", params={"layers": [0, 2], "layer_weights": [1, 3]})
    np.testing.assert_allclose(weighted, 0.25 * sigmoid(raw[:, 0]) + 0.75 * sigmoid(raw[:, 2]))
    on_answer = compute_score(router, "gate", params={"tokens": "answer"})
    np.testing.assert_allclose(on_answer, sigmoid(answer).mean(axis=1), atol=1e-12)
    of_tokens = compute_score(router, "gate", params={"aggregation": "mean_of_sigmoid"})
    np.testing.assert_allclose(of_tokens, good.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"layers": [5]}, r"gate layers \[5\]: choose among 0\.\.2"),
        ({"layers": []}, r"gate layers \[\]"),
        ({"layers": [0, 1], "layer_weights": [1]}, "one weight per chosen layer"),
        ({"layer_weights": [0, 0, 0]}, "must be >= 0 and not all 0"),
        ({"tokens": "question"}, "gate tokens 'question': use 'all' or 'answer'"),
        ({"aggregation": "max"}, "gate aggregation 'max'"),
        ({"tokens": "answer", "aggregation": "mean_of_sigmoid"}, "recorded for all tokens"),
        ({"temperature": 2}, r"unknown parameter\(s\) temperature of score 'gate'; valid: "),
    ],
)
def test_gate_score_rejects_bad_params(router, params, match):
    with pytest.raises(SelectionError, match=match):
        compute_score(router, "gate", params=params)


def test_lm_scores_follow_their_definitions(router):
    loss = router.statistics["answer_loss"].double().numpy()
    alone = router.statistics["answer_loss_alone"].double().numpy()
    eos = router.statistics["eos_loss"].double().numpy()
    perplexity = compute_score(router, "lm_loss")
    assert perplexity[3] == -math.inf  # no answer loss: ranked last
    np.testing.assert_allclose(np.delete(perplexity, 3), -np.delete(loss, 3), atol=1e-12)
    eos_score = compute_score(router, "eos_loss")
    assert eos_score[4] == -math.inf
    np.testing.assert_allclose(np.delete(eos_score, 4), -np.delete(eos, 4), atol=1e-12)
    # IFD = PPL(A|Q) / PPL(A), perplexities as exp of the mean token loss
    ifd = compute_score(router, "ifd")
    assert math.isnan(ifd[3]) and math.isnan(ifd[5])
    row = 7
    assert ifd[row] == pytest.approx(math.exp(loss[row]) / math.exp(alone[row]), rel=1e-12)
    seeded = compute_score(router, "random", seed=4)
    np.testing.assert_array_equal(seeded, np.random.default_rng(4).random(N))


def test_loss_profile_scores_follow_their_definitions(router):
    quantiles = router.statistics["answer_loss_quantiles"].double().numpy()
    top = compute_score(router, "loss_quantile", params={"q": 0.9})
    assert top[3] == -math.inf
    np.testing.assert_allclose(np.delete(top, 3), -np.delete(quantiles[:, 4], 3), atol=1e-12)
    largest = compute_score(router, "loss_quantile", params={"q": 1.0})
    np.testing.assert_allclose(np.delete(largest, 3), -np.delete(quantiles[:, 5], 3), atol=1e-12)
    assert compute_score(router, "loss_quantile")[7] == top[7]  # q=0.9 is the default
    with pytest.raises(SelectionError, match=r"loss_quantile q=0.3: .*0.1, 0.25, 0.5"):
        compute_score(router, "loss_quantile", params={"q": 0.3})
    worst = router.statistics["answer_loss_worst_turn"].double().numpy()
    expected = np.where(np.isfinite(worst), -worst, -np.inf)
    np.testing.assert_allclose(compute_score(router, "worst_turn_loss"), expected, atol=1e-12)


def test_excess_loss_is_the_loss_above_the_reference_models(router, tmp_path: Path):
    """excess_loss = loss_warm - loss_converted, high first as RHO-1 selects; the reference is
    aligned by (dataset, id)."""
    with pytest.raises(SelectionError, match="needs the converted model's answer loss"):
        compute_score(router, "excess_loss")
    reversed_payload = make_router_payload("alpha", N, seed=1)
    reversed_payload["sample_ids"] = reversed_payload["sample_ids"][::-1]
    reference_loss = torch.linspace(1.0, 3.0, N)
    reversed_payload["answer_loss"] = reference_loss
    reference = load_router_data([save(reversed_payload, tmp_path / "ref_router_data.pt")])
    attach_reference_loss(router, reference)
    warm = router.statistics["answer_loss"].double().numpy()
    expected = warm - reference_loss.double().numpy()[::-1]
    excess = compute_score(router, "excess_loss")
    assert excess[3] == -math.inf  # the warm loss is undefined there
    np.testing.assert_allclose(np.delete(excess, 3), np.delete(expected, 3), atol=1e-6)
    short = make_router_payload("alpha", N - 1, seed=1)
    short["answer_loss"] = torch.ones(N - 1)
    partial = load_router_data([save(short, tmp_path / "short_router_data.pt")])
    with pytest.raises(SelectionError, match="reference router data lacks 1 example"):
        attach_reference_loss(router, partial)


def test_length_residual_removes_what_length_explains(router):
    loss = router.statistics["answer_loss"].double().numpy()
    length = np.log(np.maximum(router.statistics["n_answer_tokens"].double().numpy(), 1.0))
    finite = np.isfinite(loss)
    design = np.stack([length[finite], np.ones(finite.sum())], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, -loss[finite], rcond=None)
    expected = -loss[finite] - design @ coefficients
    residual = compute_score(router, "length_residual")  # default: of lm_loss
    assert residual[3] == -math.inf
    np.testing.assert_allclose(residual[finite], expected, atol=1e-9)
    # no linear trend with length is left
    assert abs(np.corrcoef(residual[finite], length[finite])[0, 1]) < 1e-9
    of_eos = compute_score(router, "length_residual", params={"score": "eos_loss"})
    assert of_eos[4] == -math.inf
    with pytest.raises(SelectionError, match="length_residual of 'rank_blend'"):
        compute_score(router, "length_residual", params={"score": "rank_blend"})


def test_rank_blend_averages_percentile_ranks_over_the_pool_or_each_dataset(tmp_path: Path):
    from scipy.stats import rankdata

    files = [
        save(with_statistics(make_router_payload(d, n, seed=i), seed=10 + i), tmp_path / f"{d}.pt")
        for i, (d, n) in enumerate((("alpha", 30), ("beta", 20)))
    ]
    router = load_router_data(files)
    loss = router.statistics["answer_loss"].double().numpy()
    eos = router.statistics["eos_loss"].double().numpy()

    def ranks(values: np.ndarray) -> np.ndarray:  # NaN (unrankable) lowest, ties averaged
        return (rankdata(np.where(np.isnan(values), -np.inf, values)) - 1) / (len(values) - 1)

    parts = [{"score": "lm_loss", "weight": 3}, {"score": "eos_loss", "weight": 1}]
    pooled = compute_score(router, "rank_blend", params={"scores": parts})
    np.testing.assert_allclose(pooled, (3 * ranks(-loss) + ranks(-eos)) / 4, atol=1e-12)
    per_dataset = compute_score(router, "rank_blend", params={"scores": parts, "within": "dataset"})
    for rows in (slice(0, 30), slice(30, 50)):
        expected = (3 * ranks(-loss[rows]) + ranks(-eos[rows])) / 4
        np.testing.assert_allclose(per_dataset[rows], expected, atol=1e-12)
    # every dataset's blended ranks average 0.5: no dataset is ranked below another as a whole
    assert per_dataset[:30].mean() == pytest.approx(0.5) == per_dataset[30:].mean()
    with pytest.raises(SelectionError, match="rank_blend within 'cluster'"):
        compute_score(router, "rank_blend", params={"scores": parts, "within": "cluster"})


def test_lm_scores_name_the_missing_statistics(tmp_path: Path):
    payload = make_router_payload("a", 6, seed=1)
    for key in ("answer_loss", "eos_loss"):  # router data scored with lm_statistics: false
        del payload[key]
    plain = load_router_data([save(payload, tmp_path / "a.pt")])
    with pytest.raises(SelectionError, match=r"needs 'answer_loss' .*scoring.lm_statistics: true"):
        compute_score(plain, "lm_loss")
    partial = dict(payload, answer_loss=torch.ones(6))
    router = load_router_data([save(partial, tmp_path / "b.pt")])
    with pytest.raises(
        SelectionError, match=r"needs 'answer_loss_alone' .*ranks by ifd in selection.methods"
    ):
        compute_score(router, "ifd")
    with pytest.raises(
        SelectionError, match="unknown score 'nope'; valid: eos_loss, excess_loss, gate"
    ):
        compute_score(router, "nope")


def test_router_data_statistics_are_concatenated_and_checked(tmp_path: Path):
    first = with_statistics(make_router_payload("a", 6, seed=1), seed=1)
    second = with_statistics(make_router_payload("b", 6, seed=2), seed=2)
    del second["eos_loss"]  # older file: only the statistics both files have are kept
    router = load_router_data([save(first, tmp_path / "a.pt"), save(second, tmp_path / "b.pt")])
    assert "eos_loss" not in router.statistics
    torch.testing.assert_close(
        router.statistics["answer_loss"],
        torch.cat([first["answer_loss"], second["answer_loss"]]),
        equal_nan=True,
    )
    assert router.statistics["quality_good"].shape == (12, 3)
    broken = dict(first, answer_loss=torch.ones(2))
    with pytest.raises(RouterDataError, match=r"c\.pt: answer_loss must be a tensor with one row"):
        load_router_data([save(broken, tmp_path / "c.pt")])


# ------------------------------------------------------------------------------------------
# allocations, against plain loops


def proportional_loop(scores, clusters, n):
    """Quotas by largest remainder, each cluster's best; then round robin over the chosen."""
    ids = sorted(set(clusters.tolist()))
    sizes = [int((clusters == c).sum()) for c in ids]
    exact = [n * s / sum(sizes) for s in sizes]
    quotas = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(ids)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: n - sum(quotas)]:
        quotas[i] += 1
    chosen = []
    for cluster, quota in zip(ids, quotas, strict=True):
        members = [i for i in range(len(scores)) if clusters[i] == cluster]
        members.sort(key=lambda i: (-scores[i], i))
        chosen += members[:quota]
    chosen.sort()
    order = round_robin(scores[chosen], clusters[chosen], len(chosen))
    return [chosen[i] for i in order]


def drop_loop(scores, clusters, n, share):
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = sorted(ranked[: max(len(scores) - math.floor(share * len(scores)), n)])
    order = round_robin(scores[keep], clusters[keep], n)
    return [keep[i] for i in order]


def ifd_loop(scores, n, threshold):
    below = sorted(
        (i for i in range(len(scores)) if scores[i] < threshold), key=lambda i: (-scores[i], i)
    )
    above = sorted(
        (i for i in range(len(scores)) if scores[i] >= threshold), key=lambda i: (scores[i], i)
    )
    undefined = [i for i in range(len(scores)) if math.isnan(scores[i])]
    return (below + above + undefined)[:n]


@pytest.mark.parametrize("case", range(20))
def test_allocations_match_plain_loops(case):
    rng = np.random.default_rng(case)
    size = int(rng.integers(5, 60))
    scores = np.round(rng.normal(size=size), 1)  # ties happen
    clusters = rng.integers(0, int(rng.integers(1, 6)), size=size)
    n = int(rng.integers(0, size + 1))
    top = allocate("topk", scores, None, n)
    assert top.tolist() == sorted(range(size), key=lambda i: (-scores[i], i))[:n]
    assert allocate("round_robin", scores, clusters, n).tolist() == (
        round_robin(scores, clusters, n).tolist()
    )
    assert allocate("proportional", scores, clusters, n).tolist() == proportional_loop(
        scores, clusters, n
    )
    share = float(rng.choice([0.0, 0.3, 0.9]))
    dropped = allocate("drop_then_round_robin", scores, clusters, n, params={"drop_share": share})
    assert dropped.tolist() == drop_loop(scores, clusters, n, share)
    ratios = np.where(rng.random(size) < 0.1, np.nan, rng.uniform(0.3, 1.6, size=size))
    assert allocate("ifd_filter", ratios, None, n).tolist() == ifd_loop(ratios, n, 1.0)


def test_proportional_quotas_follow_cluster_sizes():
    clusters = np.array([0] * 60 + [1] * 30 + [2] * 10)
    scores = np.arange(100, dtype=float)
    chosen = allocate("proportional", scores, clusters, 20)
    assert np.bincount(clusters[chosen]).tolist() == [12, 6, 2]
    assert set(chosen[clusters[chosen] == 2].tolist()) == {98, 99}  # each cluster's best


def floor_round_robin_loop(scores, clusters, n, floor):
    """floor_round_robin with plain loops: eligible rows of eligible clusters in turn, then
    the rest by score."""
    size = len(scores)
    ranks = [
        (sum(s < scores[i] for s in scores) + (sum(s == scores[i] for s in scores) - 1) / 2)
        / max(size - 1, 1)
        for i in range(size)
    ]
    eligible = []
    for cluster in sorted(set(clusters.tolist())):
        members = [i for i in range(size) if clusters[i] == cluster]
        if np.median([ranks[i] for i in members]) >= floor:
            eligible += [i for i in members if ranks[i] >= floor]
    order: list[int] = []
    by_cluster = {
        c: sorted((i for i in eligible if clusters[i] == c), key=lambda i: (-scores[i], i))
        for c in sorted({int(clusters[i]) for i in eligible})
    }
    turn = 0
    while any(turn < len(members) for members in by_cluster.values()):
        order += [members[turn] for members in by_cluster.values() if turn < len(members)]
        turn += 1
    rest = sorted(set(range(size)) - set(order), key=lambda i: (-scores[i], i))
    return (order + rest)[:n]


@pytest.mark.parametrize("case", range(15))
def test_floor_round_robin_matches_a_plain_loop(case):
    rng = np.random.default_rng(100 + case)
    size = int(rng.integers(5, 50))
    scores = np.round(rng.normal(size=size), 1)
    clusters = rng.integers(0, int(rng.integers(1, 6)), size=size)
    n = int(rng.integers(0, size + 1))
    floor = float(rng.choice([0.0, 0.25, 0.5]))
    chosen = allocate("floor_round_robin", scores, clusters, n, params={"floor_quantile": floor})
    assert chosen.tolist() == floor_round_robin_loop(scores, clusters, n, floor)


@pytest.mark.parametrize("allocation", ["floor_round_robin", "quality_quota"])
@pytest.mark.parametrize("case", range(25))
def test_a_cluster_of_the_worst_examples_gets_no_more_than_under_topk(allocation, case):
    """The property round robin lacks: a cluster made only of the pool's lowest-scored
    examples (all below the floor quantile) gets no more of the budget than top-k gives it."""
    rng = np.random.default_rng(case)
    clean_clusters = int(rng.integers(1, 6))
    clean = rng.normal(1.0, 1.0, size=int(rng.integers(20, 200)))
    # at most a third of the clean count: all of it below the pool's lower quartile
    n_worst = int(rng.integers(1, len(clean) // 3))
    worst = np.sort(clean)[0] - rng.exponential(1.0, size=n_worst)
    scores = np.concatenate([clean, worst])
    clusters = np.concatenate(
        [rng.integers(0, clean_clusters, size=len(clean)), np.full(len(worst), clean_clusters)]
    )
    noise = clusters == clean_clusters
    for n in (1, len(scores) // 10, len(scores) // 2, len(scores) - 1, len(scores)):
        chosen = allocate(allocation, scores, clusters, n)
        top = allocate("topk", scores, None, n)
        assert noise[chosen].sum() <= noise[top].sum(), (n, noise[chosen].sum())
        round_robin_takes = noise[allocate("round_robin", scores, clusters, n)].sum()
        if 0 < n < len(clean):
            assert noise[chosen].sum() == 0
            assert round_robin_takes >= min(len(worst), n // (clean_clusters + 1))


@pytest.mark.parametrize("allocation", ["floor_round_robin", "quality_quota"])
def test_quality_aware_allocations_keep_round_robins_spread_over_clean_clusters(allocation):
    """Clusters alike in quality share the budget as round robin (or size) would share it."""
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(4), [100, 100, 100, 100])
    scores = rng.normal(size=400)
    chosen = allocate(allocation, scores, clusters, 80)
    counts = np.bincount(clusters[chosen], minlength=4)
    assert counts.min() >= 15 and counts.max() <= 25, counts
    # each cluster gives its best: within a cluster the chosen outrank the rest
    for cluster in range(4):
        members = clusters == cluster
        picked = np.zeros(400, dtype=bool)
        picked[chosen] = True
        assert scores[members & picked].min() > scores[members & ~picked].max()


def test_quality_quota_follows_score_mass():
    """A cluster of middling examples gets less than one of the best, none below the floor."""
    scores = np.concatenate([np.linspace(3, 4, 100), np.linspace(1, 2, 100), np.zeros(60) - 1])
    clusters = np.repeat([0, 1, 2], [100, 100, 60])
    counts = np.bincount(clusters[allocate("quality_quota", scores, clusters, 50)], minlength=3)
    assert counts[2] == 0 and counts[0] > counts[1] > 0, counts
    assert counts.sum() == 50


def test_allocations_reject_bad_input():
    scores = np.zeros(4)
    with pytest.raises(SelectionError, match="allocation 'round_robin' needs clusters"):
        allocate("round_robin", scores, None, 2)
    with pytest.raises(SelectionError, match=r"drop_share is 1\.0; it must be in"):
        allocate("drop_then_round_robin", scores, np.zeros(4, int), 2, params={"drop_share": 1})
    for allocation in ("floor_round_robin", "quality_quota"):
        with pytest.raises(SelectionError, match=r"floor_quantile is 1\.0; it must be in"):
            allocate(allocation, scores, np.zeros(4, int), 2, params={"floor_quantile": 1})
    with pytest.raises(SelectionError, match=r"unknown parameter\(s\) k of allocation 'topk'"):
        allocate("topk", scores, None, 2, params={"k": 3})
    with pytest.raises(SelectionError, match="unknown allocation 'best'; valid: "):
        allocate("best", scores, None, 2)


# ------------------------------------------------------------------------------------------
# methods as definitions


def test_builtin_methods_are_definitions_and_the_seed_method_is_fixed():
    assert BUILTIN_DEFINITIONS[SEED_METHOD] == {"score": "gate", "allocation": "round_robin"}
    assert BUILTIN_DEFINITIONS["quality_topk"]["allocation"] == "topk"
    with pytest.raises(ValueError, match="'selectmoe_seed' cannot be redefined"):
        method_definitions({SEED_METHOD: {"score": "lm_loss", "allocation": "topk"}})
    with pytest.raises(ValueError, match="'random' cannot be redefined"):
        method_definitions({"random": {"score": "gate", "allocation": "topk"}})
    with pytest.raises(ValueError, match=r"'mine': unknown key\(s\) k; missing allocation"):
        method_definitions({"mine": {"score": "gate", "k": 1}})


def test_uses_score_looks_into_blends_and_config_definitions():
    assert uses_score("ifd", ["selectmoe", "ifd"]) and not uses_score("ifd", ["selectmoe"])
    blend = {
        "score": "rank_blend",
        "score_params": {"scores": [{"score": "gate"}, {"score": "ifd", "weight": 2}]},
        "allocation": "topk",
    }
    assert uses_score("ifd", ["blended"], {"blended": blend})
    assert not uses_score("ifd", ["random", "oracle"], {"blended": blend})  # not in the sweep
    assert uses_score("gate", ["selectmoe_seed"]) and not uses_score("gate", ["perplexity"])


def test_a_method_defined_in_the_config_selects_by_its_definition(router):
    definitions = {
        "last_layer_topk": {
            "score": "gate",
            "score_params": {"layers": [-1]},
            "allocation": "topk",
        },
        "pruned": {
            "score": "lm_loss",
            "allocation": "drop_then_round_robin",
            "allocation_params": {"drop_share": 0.5},
        },
    }
    result = select_indices(
        router,
        method="last_layer_topk",
        selection_percentage=0.25,
        seed=0,
        definitions_extra=definitions,
    )
    last = sigmoid(router.quality_score.double().numpy()[:, -1])
    assert result.indices.tolist() == np.lexsort((np.arange(N), -last))[:10].tolist()
    assert (
        result.info["score_definition"].startswith("gate(")
        and "layers=[-1]" in (result.info["score_definition"])
    )
    assert result.info["allocation"] == {"name": "topk", "params": {}}
    pruned = select_indices(
        router,
        method="pruned",
        selection_percentage=0.25,
        clustering_params=MANUAL_K,
        seed=0,
        definitions_extra=definitions,
    )
    loss = router.statistics["answer_loss"].numpy()
    # every pick is in the half of the pool with the lowest answer loss (row 3 has none)
    kept = set(np.argsort(np.where(np.isnan(loss), np.inf, loss), kind="stable")[: N // 2])
    assert set(pruned.indices.tolist()) <= kept
    assert pruned.info["k"] == 3
    seed_result = select_indices(
        router, method=SEED_METHOD, selection_percentage=0.25, clustering_params=MANUAL_K, seed=0
    )
    current = select_indices(
        router, method="selectmoe", selection_percentage=0.25, clustering_params=MANUAL_K, seed=0
    )
    # the same clusters; the seed ranks by its gate score in round robin, selectmoe by the
    # blend of the answer and end-of-sequence losses (ranked within each dataset), in
    # quotas by the clusters' score mass
    assert seed_result.labels.tolist() == current.labels.tolist()
    clusters = seed_result.labels
    assert seed_result.indices.tolist() == round_robin(router.scores, clusters, 10).tolist()
    parts = [{"score": "lm_loss"}, {"score": "eos_loss"}]
    blend = compute_score(router, "rank_blend", params={"scores": parts, "within": "dataset"})
    expected = allocate("quality_quota", blend, clusters, 10)
    assert current.indices.tolist() == expected.tolist()
    np.testing.assert_allclose(current.scores, blend, atol=1e-12)
    assert seed_result.indices.tolist() != current.indices.tolist()
