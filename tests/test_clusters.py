"""The clustering job (selectmoe.selection.clusters): computed once, read by every clustered
selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selectmoe.data.router_data import load_router_data
from selectmoe.errors import SelectionError
from selectmoe.selection.clusters import read_clusters, run_clustering, sample_keys_sha256
from selectmoe.selection.select import run_selection, select_indices
from tests.test_selection import make_router_payload, save, write_pool

PARAMS = {"k_range": [2, 8], "k_step": 1, "n_init": 2, "device": "cpu"}


@pytest.fixture
def router_files(tmp_path: Path) -> list[Path]:
    """Two datasets' router data with three routing groups each (48 examples)."""
    payloads = {"alpha": (30, 1), "beta": (18, 2)}
    return [
        save(make_router_payload(name, n, seed=seed), tmp_path / f"{name}_router_data.pt")
        for name, (n, seed) in payloads.items()
    ]


def test_clusters_once_select_as_clustering_in_the_selection(tmp_path: Path, router_files):
    clusters = tmp_path / "clusters.json"
    record = run_clustering(router_files, clusters, clustering_params=PARAMS, seed=11)
    router = load_router_data(router_files)
    assert record["n_samples"] == 48 and len(record["labels"]) == 48
    assert record["sample_keys_sha256"] == sample_keys_sha256(router)
    assert record["k"] in record["info"]["ks"] == list(range(2, 9))
    stored = read_clusters(clusters, router)
    assert stored.k == record["k"] and stored.labels.dtype == np.int64
    for method in ("selectmoe", "selectmoe_seed", "diversity"):
        for percentage in (0.1, 0.5):
            alone = select_indices(
                router,
                method=method,
                selection_percentage=percentage,
                clustering_params=PARAMS,
                seed=11,
            )
            given = select_indices(
                router,
                method=method,
                selection_percentage=percentage,
                clustering_params=PARAMS,
                seed=11,
                clustering=stored,
            )
            assert given.indices.tolist() == alone.indices.tolist(), (method, percentage)
            assert given.labels.tolist() == alone.labels.tolist()
            for key in ("k", "ks", "inertias", "silhouettes", "cluster_sizes"):
                assert given.info[key] == alone.info[key], key


def test_a_selection_reading_the_clusters_writes_the_same_files(tmp_path: Path, router_files):
    payloads = [torch.load(p) for p in router_files]
    pool = write_pool(tmp_path, payloads)
    clusters = tmp_path / "clusters.json"
    run_clustering(router_files, clusters, clustering_params=PARAMS, seed=11)

    def run(name: str, clusters_path: Path | None) -> tuple[bytes, dict]:
        out = tmp_path / name
        info = run_selection(
            router_files,
            pool,
            output_jsonl=out / "selected_data.jsonl",
            output_json=out / "selection.json",
            method="selectmoe",
            selection_percentage=0.25,
            clustering_params=PARAMS,
            seed=11,
            clusters_path=clusters_path,
        )
        return (out / "selected_data.jsonl").read_bytes(), info

    alone, alone_info = run("alone", None)
    given, given_info = run("given", clusters)
    assert given == alone
    assert given_info["cluster_selected"] == alone_info["cluster_selected"]
    # a method without clusters ignores the file
    run_selection(
        router_files,
        pool,
        output_jsonl=tmp_path / "topk/selected_data.jsonl",
        output_json=tmp_path / "topk/selection.json",
        method="perplexity",
        selection_percentage=0.25,
        clusters_path=clusters,
    )
    assert json.loads((tmp_path / "topk/selection.json").read_text())["k"] is None


def test_clusters_of_other_router_data_are_refused(tmp_path: Path, router_files):
    clusters = tmp_path / "clusters.json"
    run_clustering(router_files, clusters, clustering_params=PARAMS, seed=11)
    other = load_router_data(
        [save(make_router_payload("alpha", 48, seed=3, id_prefix="x"), tmp_path / "x.pt")]
    )
    with pytest.raises(SelectionError, match=r"clusters.json: its 48 labels belong to other"):
        read_clusters(clusters, other)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SelectionError, match=r"bad.json: not a clusters file"):
        read_clusters(tmp_path / "bad.json", other)


def test_clustering_settings_are_checked_before_any_work(tmp_path: Path, router_files):
    output = tmp_path / "clusters.json"
    with pytest.raises(SelectionError, match=r"clustering_params\.k=49 is larger than"):
        run_clustering(router_files, output, clustering_params={"auto_k": False, "k": 49})
    with pytest.raises(SelectionError, match="unknown clustering_method 'dbscan'"):
        run_clustering(router_files, output, clustering_method="dbscan")
    assert not output.exists()


def test_the_command_line_clusters_once_and_selects_with_the_file(
    tmp_path: Path, router_files, capsys
):
    from selectmoe.cli import main

    payloads = [torch.load(p) for p in router_files]
    pool = write_pool(tmp_path, payloads)
    clusters = tmp_path / "clusters.json"
    sets = ["--set", "k_range=[2, 8]", "--set", "k_step=1", "--set", "n_init=2"]
    router_dir = str(router_files[0].parent)
    assert main(["cluster", "--router-data", router_dir, "--output", str(clusters), *sets]) == 0
    assert json.loads(capsys.readouterr().out)["k"] == json.loads(clusters.read_text())["k"]
    common = ["select", "--router-data", router_dir, "--pool", *map(str, pool)]
    common += ["--percentage", "0.25", "--method", "selectmoe", *sets]
    assert main([*common, "--output", str(tmp_path / "a/selected_data.jsonl")]) == 0
    given = ["--clusters", str(clusters), "--output", str(tmp_path / "b/selected_data.jsonl")]
    assert main([*common, *given]) == 0
    alone = (tmp_path / "a/selected_data.jsonl").read_bytes()
    assert (tmp_path / "b/selected_data.jsonl").read_bytes() == alone
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["cluster", "--router-data", str(empty), "--output", str(clusters)]) == 2
    assert "no *_router_data.pt files; run the score stage" in capsys.readouterr().err
