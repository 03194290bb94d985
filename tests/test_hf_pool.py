"""A Hugging Face dataset as the pool (selectmoe.data.hf_pool), offline: a locally saved dataset
with Tulu-3's columns (id, messages, source), exported to the per-dataset pool files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from selectmoe.data.hf_pool import dataset_name, export_hf_pool
from selectmoe.data.pool import load_pool
from selectmoe.errors import DataError

SOURCES = ("ai2-adapt-dev/oasst1_converted", "allenai/tulu-3-sft-personas-math", "other/x")


def _rows(n: int = 12) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
        if i % 4 == 0:
            messages = [{"role": "system", "content": "Be brief."}, *messages]
        rows.append({"id": f"tulu_{i}", "messages": messages, "source": SOURCES[i % 3]})
    return rows


def _save(rows: list[dict[str, Any]], directory: Path) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(directory)
    return directory


def _export(source: Path | str, pool: Path, **changes: Any) -> dict[str, Any]:
    arguments = {
        "dataset_id": str(source),
        "dataset_map": {"ai2-adapt-dev/oasst1_converted": "oasst1"},
    }
    arguments.update(changes)
    datasets = arguments.pop("datasets", ["oasst1", "allenai_tulu-3-sft-personas-math"])
    return export_hf_pool(pool, datasets, "{dataset}/{dataset}_data.jsonl", **arguments)


def test_a_saved_dataset_becomes_the_pool_files(tmp_path: Path) -> None:
    source = _save(_rows(), tmp_path / "tulu")
    report = _export(source, tmp_path / "pool")
    assert report["rows"] == 12
    assert report["written"] == {"oasst1": 4, "allenai_tulu-3-sft-personas-math": 4}
    assert report["skipped"] == {"other_x": 4}
    assert report["source"]["rows"] == 12 and report["source"]["fingerprint"]
    oasst = tmp_path / "pool/oasst1/oasst1_data.jsonl"
    examples = load_pool([oasst, tmp_path / "pool/allenai_tulu-3-sft-personas-math/"
                          "allenai_tulu-3-sft-personas-math_data.jsonl"])  # fmt: skip
    assert [e.id for e in examples[:4]] == ["tulu_0", "tulu_3", "tulu_6", "tulu_9"]
    first = json.loads(oasst.read_text().splitlines()[0])
    assert first == {"dataset": "oasst1", "id": "tulu_0", "messages": _rows()[0]["messages"]}


def test_parquet_files_and_rows_without_ids(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = [{k: v for k, v in row.items() if k != "id"} for row in _rows(6)]
    (tmp_path / "parquet").mkdir()
    Dataset.from_list(rows).to_parquet(tmp_path / "parquet" / "part-0.parquet")
    report = _export(tmp_path / "parquet", tmp_path / "pool", datasets=["oasst1"])
    assert report["written"] == {"oasst1": 2} and report["source"]["files"]
    lines = (tmp_path / "pool/oasst1/oasst1_data.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["oasst1_1", "oasst1_4"]  # row numbers


def test_a_bad_row_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    rows = _rows()
    rows[6]["messages"][1]["role"] = "robot"
    source = _save(rows, tmp_path / "tulu")
    expected = f"{source}[train] row:7: messages[1].role is 'robot'"
    with pytest.raises(DataError, match=re.escape(expected)):
        _export(source, tmp_path / "pool")
    assert not (tmp_path / "pool").exists() or not list((tmp_path / "pool").rglob("*.jsonl"))


def test_repeated_ids_missing_datasets_and_bad_sources_are_clear(tmp_path: Path) -> None:
    rows = _rows()
    rows[3]["id"] = "tulu_0"
    source = _save(rows, tmp_path / "dup")
    with pytest.raises(DataError, match=r"row:4: duplicate id 'tulu_0' in dataset 'oasst1' \(first"
                       r" in row 1\)"):  # fmt: skip
        _export(source, tmp_path / "pool")
    source = _save(_rows(), tmp_path / "tulu")
    with pytest.raises(DataError, match=r"no row of flan_v2 among 12 rows \(the datasets found: "
                       r"allenai_tulu-3-sft-personas-math, other_x\)"):  # fmt: skip
        _export(source, tmp_path / "pool", datasets=["oasst1", "flan_v2"])
    with pytest.raises(DataError, match=r"dataset_column is null but data\.datasets lists 2"):
        _export(source, tmp_path / "pool", dataset_column=None)
    (tmp_path / "not_a_dataset").mkdir()
    with pytest.raises(DataError, match="neither a dataset saved with save_to_disk nor parquet"):
        _export(tmp_path / "not_a_dataset", tmp_path / "pool")


def test_a_dataset_dict_is_read_by_its_split(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(_rows(3))}).save_to_disk(tmp_path / "dict")
    report = _export(tmp_path / "dict", tmp_path / "pool", datasets=["oasst1"])
    assert report["written"] == {"oasst1": 1}
    with pytest.raises(DataError, match=r"no split 'test' \(it has train\)"):
        _export(tmp_path / "dict", tmp_path / "pool", datasets=["oasst1"], split="test")


def test_dataset_names_are_file_safe() -> None:
    assert dataset_name("ai2-adapt-dev/oasst1_converted", {}) == "ai2-adapt-dev_oasst1_converted"
    assert dataset_name("a b.c", {"a b.c": "abc"}) == "abc"


def test_the_config_needs_a_dataset_for_the_hf_source() -> None:
    from selectmoe.errors import ConfigError
    from selectmoe.workflow.config import check_config

    with pytest.raises(ConfigError, match=r"data\.hf\.dataset_id: data\.source is hf but no"):
        check_config({"data": {"source": "hf", "hf": {"dataset_id": None}}})
    check_config({"data": {"source": "hf", "hf": {"dataset_id": "allenai/tulu-3-sft-mixture"}}})
