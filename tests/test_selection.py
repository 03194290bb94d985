"""Tests of selectmoe.selection.select: round robin, budgets, router data, methods, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from selectmoe.clustering import ClusteringResult, register_clustering_method
from selectmoe.data.router_data import find_router_data, load_router_data
from selectmoe.errors import RouterDataError, SelectionError
from selectmoe.evidence.selection_plots import PLOT_FILES
from selectmoe.selection import round_robin
from selectmoe.selection.allocation import allocate
from selectmoe.selection.methods import BUILTIN_DEFINITIONS
from selectmoe.selection.scores import compute_score
from selectmoe.selection.select import budget, select_indices
from selectmoe.workflow.select_job import run_select_job

# ------------------------------------------------------------------------------------------
# round robin
# ------------------------------------------------------------------------------------------


def round_robin_loop(scores: np.ndarray, labels: np.ndarray, n: int) -> list[int]:
    """SPEC §5 written as the plain loop it describes."""
    queues = {}
    for label in sorted(set(labels.tolist())):
        members = [i for i in range(len(scores)) if labels[i] == label]
        # sorted() is stable: equal scores keep the lower index first.
        queues[label] = sorted(members, key=lambda i: -scores[i])
    taken: list[int] = []
    while len(taken) < n:
        for label in sorted(queues):
            if queues[label] and len(taken) < n:
                taken.append(queues[label].pop(0))
    return taken


def test_round_robin_known_order():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    labels = np.array([1, 0, 0, 1, 1])
    # round 1: cluster 0 -> 1 (0.9), cluster 1 -> 3 (0.7); round 2: 2 (0.5), 4 (0.3); then 0.
    assert round_robin(scores, labels, 5).tolist() == [1, 3, 2, 4, 0]
    assert round_robin(scores, labels, 3).tolist() == [1, 3, 2]
    assert round_robin(scores, labels, 0).tolist() == []


def test_round_robin_ties_keep_index_order_and_exhausted_clusters_are_skipped():
    scores = np.array([0.5, 0.5, 0.5, 0.2, 0.5])
    labels = np.array([7, 7, -3, 7, 7])
    # cluster -3 has one sample, visited first; afterwards only cluster 7, ties by index.
    assert round_robin(scores, labels, 5).tolist() == [2, 0, 1, 4, 3]


def test_round_robin_matches_plain_loop_on_random_cases():
    rng = np.random.default_rng(1234)
    for case in range(400):
        n_samples = int(rng.integers(1, 60))
        n_clusters = int(rng.integers(1, 8))
        # Very unequal cluster sizes so that clusters run out at different rounds.
        weights = rng.dirichlet(np.full(n_clusters, 0.3))
        labels = rng.choice(rng.integers(-5, 50, size=n_clusters), size=n_samples, p=weights)
        # Few distinct score values: many ties.
        scores = rng.integers(0, 4, size=n_samples) / 4.0
        n = int(rng.integers(0, n_samples + 1))
        expected = round_robin_loop(scores, labels, n)
        assert round_robin(scores, labels, n).tolist() == expected, f"case {case}"


def test_round_robin_takes_everything_once():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(100), rng.integers(0, 9, 100)
    picked = round_robin(scores, labels, 100)
    assert sorted(picked.tolist()) == list(range(100))


@pytest.mark.parametrize(
    ("scores", "labels", "n", "match"),
    [
        (np.array([0.1, np.nan]), np.array([0, 1]), 1, "finite"),
        (np.array([0.1, 0.2]), np.array([0, 1]), 3, r"n must be in \[0, 2\]"),
        (np.array([0.1, 0.2]), np.array([0, 1]), -1, r"n must be in \[0, 2\]"),
        (np.array([0.1, 0.2]), np.array([0.0, 1.0]), 1, "labels must be integers"),
        (np.array([0.1, 0.2]), np.array([0, 1, 2]), 1, "labels must have the shape"),
    ],
)
def test_round_robin_rejects_bad_input(scores, labels, n, match):
    with pytest.raises(SelectionError, match=match):
        round_robin(scores, labels, n)


# ------------------------------------------------------------------------------------------
# budget
# ------------------------------------------------------------------------------------------


def test_budget_rounds_half_up_and_clips():
    assert budget(0.05, 270_679) == 13_534  # 13533.95
    assert budget(0.5, 3) == 2  # 1.5 rounds up (Python's round() would give 2 as well)
    assert budget(0.5, 5) == 3  # 2.5 rounds up (round() would give 2)
    assert budget(0.001, 10) == 1  # at least one
    assert budget(1.0, 10) == 10


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, 5, math.nan, math.inf])
def test_budget_rejects_percentage_out_of_range(value):
    with pytest.raises(SelectionError, match=r"selection_percentage must be in \(0, 1\]"):
        budget(value, 100)


@pytest.mark.parametrize("value", [True, "0.1", None])
def test_budget_rejects_non_numbers(value):
    with pytest.raises(SelectionError, match="selection_percentage must be a number"):
        budget(value, 100)


# ------------------------------------------------------------------------------------------
# router data
# ------------------------------------------------------------------------------------------

N_LAYERS, N_EXPERTS = 3, 4


def make_router_payload(
    dataset: str, n: int, *, seed: int, n_groups: int = 3, id_prefix: str | None = None
) -> dict:
    """Router data with ``n_groups`` routing patterns (so clusters exist), random gate scores and
    random LM answer losses (the statistics the scoring pass records)."""
    gen = torch.Generator().manual_seed(seed)
    groups = torch.arange(n) % n_groups
    logits = torch.randn(n_groups, N_LAYERS, N_EXPERTS, generator=gen) * 3.0
    noise = torch.randn(n, N_LAYERS, N_EXPERTS, generator=gen) * 0.3
    moe_probs = torch.softmax(logits[groups] + noise, dim=-1).float()
    quality = torch.randn(n, N_LAYERS, generator=gen).float()
    answer_loss = (torch.rand(n, generator=gen) * 3.0 + 0.5).float()
    prefix = id_prefix if id_prefix is not None else dataset
    return {
        "quality_score": quality,
        "moe_probs": moe_probs,
        "answer_loss": answer_loss,
        "eos_loss": answer_loss / 2,
        "sample_ids": [f"{prefix}_{i}" for i in range(n)],
        "dataset": dataset,
        "metadata": {"model": "test"},
    }


def save(payload: dict, path: Path) -> Path:
    torch.save(payload, path)
    return path


@pytest.fixture
def router_files(tmp_path: Path) -> list[Path]:
    return [
        save(make_router_payload("alpha", 30, seed=1), tmp_path / "alpha_router_data.pt"),
        save(make_router_payload("beta", 18, seed=2), tmp_path / "beta_router_data.pt"),
    ]


def write_pool(directory: Path, payloads: list[dict]) -> list[Path]:
    paths = []
    for payload in payloads:
        path = directory / f"{payload['dataset']}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for sample_id in payload["sample_ids"]:
                record = {
                    "dataset": payload["dataset"],
                    "id": sample_id,
                    "messages": [
                        {"role": "user", "content": f"question {sample_id} — ü"},
                        {"role": "assistant", "content": f"answer {sample_id}"},
                    ],
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def test_load_router_data_concatenates_in_order(router_files):
    router = load_router_data(router_files)
    alpha = torch.load(router_files[0])
    beta = torch.load(router_files[1])
    assert router.n_samples == 48
    assert router.sample_ids[:2] == ["alpha_0", "alpha_1"] and router.sample_ids[30] == "beta_0"
    assert router.datasets.count("alpha") == 30 and router.datasets.count("beta") == 18
    assert router.file_offsets == [0, 30, 48]
    assert router.file_of(29) == str(router_files[0]) and router.file_of(30) == str(router_files[1])
    assert torch.equal(router.moe_probs[30:], beta["moe_probs"])
    assert router.features.shape == (48, N_LAYERS * N_EXPERTS)
    assert torch.equal(router.features[0], alpha["moe_probs"][0].reshape(-1))
    # score = mean over layers of sigmoid(quality_score)
    q = alpha["quality_score"][0].double().numpy()
    assert router.scores[0] == pytest.approx(np.mean(1.0 / (1.0 + np.exp(-q))), abs=1e-15)


def bad(payload: dict, **changes) -> dict:
    out = dict(payload)
    for key, value in changes.items():
        if value is KeyError:
            out.pop(key)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"moe_probs": KeyError}, r"missing key\(s\) \['moe_probs'\]"),
        ({"quality_score": [[0.0] * 3] * 5}, "quality_score must be a tensor"),
        ({"quality_score": torch.zeros(5, 3, dtype=torch.int64)}, "must be float32"),
        ({"moe_probs": torch.zeros(5, 3)}, r"moe_probs must have shape \[N, L, E\]"),
        ({"moe_probs": torch.zeros(4, 3, 4)}, "shapes disagree"),
        ({"sample_ids": ["a"] * 4}, "shapes disagree"),
        ({"sample_ids": [1, 2, 3, 4, 5]}, "sample_ids must be a list of strings"),
        ({"dataset": ""}, "dataset must be a non-empty string"),
    ],
)
def test_load_router_data_names_file_and_problem(tmp_path, change, match):
    path = save(bad(make_router_payload("alpha", 5, seed=0), **change), tmp_path / "a.pt")
    with pytest.raises(RouterDataError, match=match) as info:
        load_router_data([path])
    assert str(path) in str(info.value)


def test_load_router_data_rejects_nan_and_inf_naming_the_sample(tmp_path):
    payload = make_router_payload("alpha", 6, seed=0)
    payload["moe_probs"][4, 1, 2] = float("nan")
    path = save(payload, tmp_path / "alpha_router_data.pt")
    with pytest.raises(RouterDataError, match=r"a_router_data.pt: moe_probs has NaN.*'alpha_4'"):
        load_router_data([path])
    payload = make_router_payload("alpha", 6, seed=0)
    payload["quality_score"][2, 0] = float("inf")
    path = save(payload, tmp_path / "alpha_router_data.pt")
    with pytest.raises(RouterDataError, match=r"quality_score has NaN or infinite.*'alpha_2'"):
        load_router_data([path])


def test_load_router_data_rejects_duplicates_and_mixed_models(tmp_path):
    a = save(make_router_payload("alpha", 5, seed=0), tmp_path / "a.pt")
    again = save(make_router_payload("alpha", 5, seed=1), tmp_path / "a2.pt")
    with pytest.raises(RouterDataError, match=r"a2.pt: duplicate sample id 'alpha_0'.*a.pt"):
        load_router_data([a, again])
    payload = make_router_payload("alpha", 5, seed=0)
    payload["sample_ids"][3] = "alpha_1"
    dup = save(payload, tmp_path / "dup.pt")
    with pytest.raises(RouterDataError, match=r"dup.pt: duplicate sample id 'alpha_1'.*this file"):
        load_router_data([dup])
    other = make_router_payload("beta", 5, seed=0)
    other["moe_probs"] = torch.softmax(torch.randn(5, N_LAYERS, 8), -1)
    other_path = save(other, tmp_path / "b.pt")
    with pytest.raises(RouterDataError, match=r"b.pt: 3 layers x 8 experts, but .*a.pt has 3 x 4"):
        load_router_data([a, other_path])


def test_find_router_data_lists_sorted_files(tmp_path, router_files):
    assert find_router_data(tmp_path) == sorted(router_files)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RouterDataError, match=r"empty: no \*_router_data.pt files"):
        find_router_data(empty)
    with pytest.raises(RouterDataError, match="missing: router-data directory not found"):
        find_router_data(tmp_path / "missing")


def test_load_router_data_rejects_missing_unreadable_and_empty(tmp_path):
    with pytest.raises(RouterDataError, match=r"nope.pt: router-data file not found"):
        load_router_data([tmp_path / "nope.pt"])
    junk = tmp_path / "junk.pt"
    junk.write_text("not a torch file")
    with pytest.raises(RouterDataError, match=r"junk.pt: cannot be read as a router-data file"):
        load_router_data([junk])
    empty = make_router_payload("alpha", 1, seed=0)
    empty.update(quality_score=torch.zeros(0, 3), moe_probs=torch.zeros(0, 3, 4), sample_ids=[])
    with pytest.raises(RouterDataError, match=r"e.pt: holds no samples"):
        load_router_data([save(empty, tmp_path / "e.pt")])
    with pytest.raises(RouterDataError, match="no router-data files given"):
        load_router_data([])


# ------------------------------------------------------------------------------------------
# select_indices
# ------------------------------------------------------------------------------------------

MANUAL_K = {"auto_k": False, "k": 3, "n_init": 2, "device": "cpu"}


def test_select_quality_topk_random_full(router_files):
    router = load_router_data(router_files)
    scores = router.scores
    top = select_indices(router, method="quality_topk", selection_percentage=0.25, seed=0)
    assert len(top.indices) == 12  # floor(0.25 * 48 + 0.5)
    assert top.indices.tolist() == np.argsort(-scores, kind="stable")[:12].tolist()
    assert (top.labels == -1).all() and top.info["k"] is None

    first = select_indices(router, method="random", selection_percentage=0.25, seed=7)
    again = select_indices(router, method="random", selection_percentage=0.25, seed=7)
    other = select_indices(router, method="random", selection_percentage=0.25, seed=8)
    assert first.indices.tolist() == again.indices.tolist()
    assert first.indices.tolist() != other.indices.tolist()
    assert len(set(first.indices.tolist())) == 12
    expected = np.random.default_rng(7).permutation(48)[:12]
    assert first.indices.tolist() == expected.tolist()

    full = select_indices(router, method="full", selection_percentage=0.01, seed=0)
    assert full.indices.tolist() == list(range(48))
    assert full.info["per_dataset"]["alpha"] == {
        **full.info["per_dataset"]["alpha"],
        "pool": 30,
        "selected": 30,
        "fraction": 1.0,
    }


def test_select_selectmoe_allocates_over_kmeans_clusters(router_files):
    router = load_router_data(router_files)
    result = select_indices(
        router, method="selectmoe", selection_percentage=0.5, clustering_params=MANUAL_K, seed=3
    )
    assert result.info["k"] == 3 and result.info["k_selection"] == "manual"
    assert sorted(set(result.labels.tolist())) == [0, 1, 2]
    # The planted routing groups (sample i of a file is in group i % 3) are recovered exactly.
    for offset, n in ((0, 30), (30, 18)):
        groups = np.arange(n) % 3
        labels = result.labels[offset : offset + n]
        mapping = {g: set(labels[groups == g].tolist()) for g in range(3)}
        assert all(len(m) == 1 for m in mapping.values())
    # selectmoe: quotas by the clusters' score mass; the seed's method: round robin
    expected = allocate("quality_quota", result.scores, result.labels, 24)
    assert result.indices.tolist() == expected.tolist()
    seed = select_indices(
        router,
        method="selectmoe_seed",
        selection_percentage=0.5,
        clustering_params=MANUAL_K,
        seed=3,
    )
    assert seed.indices.tolist() == round_robin(seed.scores, seed.labels, 24).tolist()
    assert sum(result.info["cluster_sizes"]) == 48
    assert sum(result.info["cluster_selected"]) == 24
    counts = result.info["per_dataset"]
    assert counts["alpha"]["selected"] + counts["beta"]["selected"] == 24


def test_select_diversity_balances_clusters_and_is_seeded(router_files):
    router = load_router_data(router_files)
    first = select_indices(
        router, method="diversity", selection_percentage=0.25, clustering_params=MANUAL_K, seed=3
    )
    again = select_indices(
        router, method="diversity", selection_percentage=0.25, clustering_params=MANUAL_K, seed=3
    )
    assert first.indices.tolist() == again.indices.tolist()
    # 12 picks over 3 clusters of 16: 4 each.
    assert first.info["cluster_selected"] == [4, 4, 4]


def test_select_with_a_plugged_in_clustering_method(router_files):
    calls = {}

    def by_dataset(features, *, params, seed):
        calls["params"], calls["seed"] = params, seed
        labels = np.repeat([0, 1], [30, 18])
        return ClusteringResult(labels=labels, k=2, info={"k_selection": "fixed"})

    register_clustering_method("by_dataset_for_test", by_dataset, overwrite=True)
    router = load_router_data(router_files)
    result = select_indices(
        router,
        method="selectmoe_seed",  # round robin: the same number from each cluster
        selection_percentage=0.25,
        clustering_method="by_dataset_for_test",
        clustering_params={"anything": 1},
        seed=5,
    )
    assert calls == {"params": {"anything": 1}, "seed": 5}
    assert result.info["per_dataset"]["alpha"]["selected"] == 6
    assert result.info["per_dataset"]["beta"]["selected"] == 6
    assert result.info["k_selection"] == "fixed"
    assert result.info["cluster_ids"] == [0, 1] and result.info["cluster_sizes"] == [30, 18]


def test_select_reports_any_integer_cluster_ids(router_files):
    def signed(features, *, params, seed):
        return ClusteringResult(labels=np.repeat([7, -2], [30, 18]), k=2, info={})

    register_clustering_method("signed_for_test", signed, overwrite=True)
    router = load_router_data(router_files)
    result = select_indices(
        router,
        method="selectmoe_seed",  # round robin
        selection_percentage=0.5,
        clustering_method="signed_for_test",
        clustering_params={},
        seed=0,
    )
    assert result.info["cluster_ids"] == [-2, 7]
    assert result.info["cluster_sizes"] == [18, 30]
    assert result.info["cluster_selected"] == [12, 12]
    # round robin visits -2 (beta) first
    assert result.indices[0] >= 30 and result.indices[1] < 30


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "best"}, SelectionError, "unknown selection method 'best'; valid: "),
        ({"selection_percentage": 0}, SelectionError, r"must be in \(0, 1\]"),
        ({"selection_percentage": 5}, SelectionError, r"must be in \(0, 1\].*got 5"),
        (
            {"clustering_params": {"auto_k": False, "k": 49}},
            SelectionError,
            "clustering_params.k=49 is larger than the number of samples 48",
        ),
        (
            {"clustering_params": {"auto_k": False, "k": 1}},
            SelectionError,
            r"clustering_params.k=1 must be >= 2 \(one cluster is the quality ranking",
        ),
        (
            {"clustering_params": {"k_range": [2, 60]}},
            SelectionError,
            "k_range upper bound 60 is larger than n_samples - 1 = 47",
        ),
        ({"clustering_method": "dbscan"}, SelectionError, r"unknown clustering_method 'dbscan'"),
        (
            {"clustering_params": {"n_int": 3}},
            SelectionError,
            r"unknown clustering_params for kmeans: \['n_int'\]",
        ),
        ({"seed": -1}, SelectionError, "seed must be an integer >= 0"),
    ],
)
def test_select_indices_rejects_bad_settings(router_files, kwargs, error, match):
    router = load_router_data(router_files)
    options = {"method": "selectmoe", "selection_percentage": 0.1, "seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        select_indices(router, **options)


# ------------------------------------------------------------------------------------------
# run_selection
# ------------------------------------------------------------------------------------------


def test_run_selection_writes_reproducible_outputs(tmp_path, router_files, capsys):
    payloads = [torch.load(p) for p in router_files]
    pool = write_pool(tmp_path, payloads)
    params = {"k_range": [2, 8], "k_step": 1, "n_init": 2, "device": "cpu"}

    def run(name: str) -> tuple[bytes, dict]:
        out = tmp_path / name
        info = run_select_job(
            router_files,
            pool,
            output_jsonl=out / "selected_data.jsonl",
            output_json=out / "selection.json",
            plot_dir=out / "plots",
            method="selectmoe",
            selection_percentage=0.25,
            clustering_method="kmeans",
            clustering_params=params,
            seed=11,
            debug_print=True,
        )
        return (out / "selected_data.jsonl").read_bytes(), info

    data, info = run("a")
    again, _ = run("b")
    assert data == again  # byte-identical
    lines = data.decode("utf-8").splitlines()
    assert len(lines) == 12 == info["n_selected"]
    first = json.loads(lines[0])
    assert list(first) == ["dataset", "id", "score", "cluster", "messages"]
    assert "ü" in lines[0]  # ensure_ascii=False
    assert first["messages"][0]["role"] == "user"
    router = load_router_data(router_files)
    row = router.sample_ids.index(first["id"])
    # the written score is selectmoe's: the blend of the answer and end-of-sequence losses
    # ranked within each dataset (compute_score's own values are checked in test_scores.py)
    definition = BUILTIN_DEFINITIONS["selectmoe"]
    blend = compute_score(router, definition["score"], params=definition["score_params"])
    assert first["score"] == round(float(blend[row]), 8)
    # selection.json: the curves, the chosen k, sizes, counts, timings
    saved = json.loads((tmp_path / "a" / "selection.json").read_text())
    assert saved["ks"] == list(range(2, 9))
    assert len(saved["inertias"]) == len(saved["silhouettes"]) == 7
    assert saved["k"] in saved["ks"] and saved["k_selection"] in ("knee", "silhouette")
    assert sum(saved["cluster_sizes"]) == 48 and sum(saved["cluster_selected"]) == 12
    assert {d: saved["per_dataset"][d]["pool"] for d in ("alpha", "beta")} == {
        "alpha": 30,
        "beta": 18,
    }
    assert {"load_router_data", "clustering", "write_jsonl", "total"} <= set(saved["timings"])
    for name in PLOT_FILES.values():
        assert (tmp_path / "a" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err
    assert "[select] cluster 0: size" in err and "datasets:" in err


def test_run_selection_rejects_ids_missing_from_pool_and_writes_nothing(tmp_path, router_files):
    payloads = [torch.load(p) for p in router_files]
    payloads[1]["sample_ids"] = [f"other_{i}" for i in range(18)]
    pool = write_pool(tmp_path, payloads)
    out = tmp_path / "out"
    with pytest.raises(
        RouterDataError, match=r"beta_router_data.pt: 18 sample id\(s\) of dataset 'beta'"
    ):
        run_select_job(
            router_files,
            pool,
            output_jsonl=out / "selected_data.jsonl",
            output_json=out / "selection.json",
            plot_dir=out / "plots",
            method="random",
            selection_percentage=0.5,
            seed=0,
        )
    assert not (out / "selected_data.jsonl").exists() and not (out / "selection.json").exists()


def test_run_selection_baseline_writes_placeholder_plots(tmp_path, router_files):
    pool = write_pool(tmp_path, [torch.load(p) for p in router_files])
    info = run_select_job(
        router_files,
        pool,
        output_jsonl=tmp_path / "o" / "selected_data.jsonl",
        output_json=tmp_path / "o" / "selection.json",
        plot_dir=tmp_path / "o" / "plots",
        method="quality_topk",
        selection_percentage=0.1,
        seed=0,
    )
    assert info["n_selected"] == 5 and info["k"] is None
    records = [
        json.loads(line)
        for line in (tmp_path / "o" / "selected_data.jsonl").read_text().splitlines()
    ]
    assert [r["cluster"] for r in records] == [-1] * 5
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)
    assert sorted(p.name for p in (tmp_path / "o" / "plots").iterdir()) == sorted(
        PLOT_FILES.values()
    )
