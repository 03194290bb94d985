"""Quality-labels files and the reference selections that read them (oracle, anti_oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selectmoe.data.labels import align_labels, load_labels
from selectmoe.errors import DataError, SelectionError
from selectmoe.selection.select import run_selection
from tests.test_selection import make_router_payload, save, write_pool


def write_labels(path: Path, rows: list[dict | str]) -> Path:
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    )
    return path


def pool_and_labels(tmp_path: Path, planted_every: int = 3) -> tuple[list[Path], Path, dict]:
    payloads = [make_router_payload("alpha", 30, seed=1), make_router_payload("beta", 18, seed=2)]
    pool = write_pool(tmp_path, payloads)
    rows, planted = [], {}
    for payload in payloads:
        for position, sample_id in enumerate(payload["sample_ids"]):
            is_planted = position % planted_every == 0
            kind = ("junk" if position % 2 else "wrong_answer") if is_planted else "clean"
            rows.append(
                {
                    "dataset": payload["dataset"],
                    "id": sample_id,
                    "planted": is_planted,
                    "kind": kind,
                }
            )
            planted[(payload["dataset"], sample_id)] = is_planted
    return pool, write_labels(tmp_path / "labels.jsonl", rows), planted


def select(tmp_path: Path, pool, labels, method: str, percentage: float, seed: int = 0) -> dict:
    out = tmp_path / f"{method}_{percentage}_{seed}"
    info = run_selection(
        [],
        pool,
        output_jsonl=out / "selected_data.jsonl",
        output_json=out / "selection.json",
        method=method,
        selection_percentage=percentage,
        seed=seed,
        labels_path=labels,
    )
    records = [json.loads(line) for line in (out / "selected_data.jsonl").read_text().splitlines()]
    return {"info": info, "keys": [(r["dataset"], r["id"]) for r in records]}


def test_oracle_takes_clean_examples_and_anti_oracle_planted_ones_first(tmp_path):
    pool, labels, planted = pool_and_labels(tmp_path)
    n_planted = sum(planted.values())  # 10 + 6 of 48
    oracle = select(tmp_path, pool, labels, "oracle", 0.5)
    assert len(oracle["keys"]) == 24 and not any(planted[k] for k in oracle["keys"])
    assert oracle["info"]["uses_labels"] and oracle["info"]["n_planted_selected"] == 0
    anti = select(tmp_path, pool, labels, "anti_oracle", 0.5)
    assert sum(planted[k] for k in anti["keys"]) == n_planted  # every planted one, then clean
    assert all(planted[k] for k in anti["keys"][:n_planted])
    assert anti["info"]["n_planted_selected"] == n_planted
    # a budget beyond the clean examples: all of them, then planted ones
    full = select(tmp_path, pool, labels, "oracle", 0.9)
    assert sum(not planted[k] for k in full["keys"]) == 48 - n_planted
    assert full["info"]["labels"]["kinds"] == {"clean": 32, "junk": 8, "wrong_answer": 8}


def test_reference_selections_are_seeded(tmp_path):
    pool, labels, _ = pool_and_labels(tmp_path)
    first = select(tmp_path, pool, labels, "oracle", 0.25, seed=1)["keys"]
    assert select(tmp_path, pool, labels, "oracle", 0.25, seed=1)["keys"] == first
    assert select(tmp_path, pool, labels, "oracle", 0.25, seed=2)["keys"] != first


def test_label_methods_need_labels(tmp_path):
    pool, _, _ = pool_and_labels(tmp_path)
    with pytest.raises(SelectionError, match=r"needs the pool.s quality labels; set data\.labels"):
        select(tmp_path, pool, None, "oracle", 0.5)
    assert not list(tmp_path.glob("oracle*/selected_data.jsonl"))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (["{not json"], r"labels.jsonl:1: invalid JSON"),
        (["[1, 2]"], r":1: expected a JSON object"),
        ([{"id": "x", "planted": True}], r":1: missing or empty field 'dataset'"),
        ([{"dataset": "alpha", "planted": True}], r":1: missing or empty field 'id'"),
        ([{"dataset": "alpha", "id": "x", "planted": "yes"}], r"'planted' is 'yes', not true"),
        ([{"dataset": "alpha", "id": "x", "planted": True, "kind": 3}], r"field 'kind' is 3"),
        (
            [{"dataset": "alpha", "id": "x", "planted": True, "kind": "clean"}],
            r"planted is true but kind is 'clean'",
        ),
        (
            [
                {"dataset": "a", "id": "x", "planted": False},
                {"dataset": "a", "id": "x", "planted": False},
            ],
            r":2: example 'x' of dataset 'a' is labelled twice \(first on line 1\)",
        ),
        ([], r"labels file is empty"),
    ],
)
def test_bad_labels_files_name_the_line_and_problem(tmp_path, rows, match):
    path = write_labels(tmp_path / "labels.jsonl", rows)
    with pytest.raises(DataError, match=match):
        load_labels(path)


def test_labels_must_describe_exactly_the_pool(tmp_path):
    pool, labels, planted = pool_and_labels(tmp_path)
    keys = list(planted)
    aligned = align_labels(labels, keys)
    assert aligned.planted.tolist() == [planted[k] for k in keys]
    assert aligned.planted_share == pytest.approx(16 / 48)
    with pytest.raises(DataError, match=r"1 of 49 pool examples have no label \(e.g. gamma/g_0\)"):
        align_labels(labels, [*keys, ("gamma", "g_0")])
    with pytest.raises(DataError, match=r"2 labelled examples are not in the pool"):
        align_labels(labels, keys[2:])
    with pytest.raises(DataError, match=r"labels file not found; set data\.labels"):
        align_labels(tmp_path / "missing.jsonl", keys)
    # a mismatching file is refused before anything is written
    other = write_labels(
        tmp_path / "other.jsonl", [{"dataset": "alpha", "id": "zz", "planted": True}]
    )
    with pytest.raises(DataError, match="have no label"):
        select(tmp_path, pool, other, "anti_oracle", 0.5)
    assert not list(tmp_path.glob("anti_oracle*/selected_data.jsonl"))


def test_planted_order_within_groups_is_random_not_file_order(tmp_path):
    pool, labels, planted = pool_and_labels(tmp_path, planted_every=2)
    keys = select(tmp_path, pool, labels, "anti_oracle", 0.25)["keys"]
    positions = [list(planted).index(k) for k in keys]
    assert positions != sorted(positions)
    assert np.all([planted[k] for k in keys])


def test_router_data_methods_ignore_labels(tmp_path):
    payload = make_router_payload("alpha", 12, seed=3)
    router = save(payload, tmp_path / "alpha_router_data.pt")
    pool = write_pool(tmp_path, [torch.load(router)])
    info = run_selection(
        [router],
        pool,
        output_jsonl=tmp_path / "q" / "selected_data.jsonl",
        output_json=tmp_path / "q" / "selection.json",
        method="quality_topk",
        selection_percentage=0.5,
        seed=0,
        labels_path=tmp_path / "does-not-exist.jsonl",
    )
    assert "uses_labels" not in info
