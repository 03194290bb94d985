"""The rehearsal's fixtures (selectmoe.rehearsal): the paper models' stand-ins load as the real ones
would, the archive goes through the fetch code, and the offline plugin serves lm-eval's datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from selectmoe.rehearsal import MANIFEST, build_rehearsal
from selectmoe.rehearsal.models import REHEARSAL_MODELS


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("rehearsal") / "fixtures"
    return directory, build_rehearsal(directory, examples_per_dataset=12)


def _shards(directory: Path) -> list[str]:
    index = directory / "model.safetensors.index.json"
    if not index.exists():
        return []
    return sorted(set(json.loads(index.read_text())["weight_map"].values()))


def test_each_stand_in_has_the_real_class_dtype_and_file_layout(
    fixtures: tuple[Path, dict[str, Any]],
) -> None:
    from transformers import AutoConfig

    directory, manifest = fixtures
    assert set(manifest["models"]) == set(REHEARSAL_MODELS)
    layouts = {}
    for name, spec in REHEARSAL_MODELS.items():
        model_dir = directory / "models" / name
        config = AutoConfig.from_pretrained(model_dir)
        assert config.architectures == [spec.architecture]
        assert str(config.dtype).removeprefix("torch.") == spec.dtype
        layouts[name] = len(_shards(model_dir))
    # OLMoE, Llama-2 and Qwen3 come in shards with an index, Qwen2.5 in one file, as on the Hub
    assert layouts["olmoe-1b-7b-0125"] > 1 and layouts["llama-2-7b-hf"] > 1
    assert layouts["qwen3-1.7b-base"] > 1 and layouts["qwen2.5-1.5b"] == 0
    assert (directory / "models" / "qwen2.5-1.5b" / "model.safetensors").exists()
    olmoe = AutoConfig.from_pretrained(directory / "models" / "olmoe-1b-7b-0125")
    assert olmoe.num_experts_per_tok < olmoe.num_experts and olmoe.bos_token_id is None


def test_the_tokenizers_are_the_real_kinds(fixtures: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    models = fixtures[0] / "models"
    llama = AutoTokenizer.from_pretrained(models / "llama-2-7b-hf")
    assert (models / "llama-2-7b-hf" / "tokenizer.model").exists()
    ids = llama("Hello world")["input_ids"]
    assert ids[0] == llama.bos_token_id == 1 and llama.pad_token_id is None
    assert llama.eos_token == "</s>"
    for name in ("qwen2.5-1.5b", "qwen3-1.7b-base"):
        qwen = AutoTokenizer.from_pretrained(models / name)
        assert type(qwen).__name__ == "Qwen2Tokenizer"
        assert len(qwen) == 151646 and qwen.eos_token_id == qwen.pad_token_id == 151643
        assert qwen.bos_token is None
        # Qwen's real merges: common words are single tokens, ">\n" after a tag is one token
        assert len(qwen(" the")["input_ids"]) == 1
        assert qwen.convert_ids_to_tokens(qwen("<|assistant|>\n")["input_ids"])[-1] == ">Ċ"
        assert AutoConfig.from_pretrained(models / name).vocab_size == 151936
    olmoe = AutoTokenizer.from_pretrained(models / "olmoe-1b-7b-0125")
    assert (olmoe.eos_token_id, olmoe.pad_token_id, olmoe.bos_token) == (0, 1, None)


def test_the_archive_unpacks_through_the_fetch_code(
    fixtures: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from selectmoe.data.fetch import fetch_less_pool
    from selectmoe.data.less_queries import QUERY_TASKS, less_query_records
    from selectmoe.data.pool import load_pool

    directory, manifest = fixtures
    archive = directory / "less-data.zip"
    datasets = ["cot", "dolly", "flan_v2", "oasst1"]
    fetch_less_pool(tmp_path / "pool", datasets, "{dataset}/{dataset}_data.jsonl", archive=archive)
    for dataset in datasets:
        examples = load_pool([tmp_path / "pool" / dataset / f"{dataset}_data.jsonl"])
        assert len(examples) == manifest["pool"][dataset] == 12
    records = less_query_records(archive, QUERY_TASKS)
    by_task: dict[str, int] = {}
    for record in records:
        by_task[record["task"]] = by_task.get(record["task"], 0) + 1
    # 3 mmlu subjects x 5 dev rows, 3 bbh tasks x 3 shots, 3 tydiqa languages x 1
    assert by_task == {"mmlu": 15, "bbh": 9, "tydiqa": 3}


def test_a_second_build_with_the_same_parameters_keeps_the_first(
    fixtures: tuple[Path, dict[str, Any]],
) -> None:
    directory, manifest = fixtures
    stamp = (directory / MANIFEST).stat().st_mtime_ns
    assert build_rehearsal(directory, examples_per_dataset=12) == manifest
    assert (directory / MANIFEST).stat().st_mtime_ns == stamp


def test_the_offline_plugin_serves_the_paper_tasks_datasets() -> None:
    """Imported as a plugin (in a process of its own, as a job), it answers lm-eval's dataset
    ids with the fixtures' real features and splits."""
    code = (
        "import selectmoe.rehearsal.offline_plugin\n"
        "import datasets\n"
        "d = datasets.load_dataset('cais/mmlu', 'anatomy')\n"
        "print(sorted(d), d['dev'].column_names, len(d['dev']))\n"
        "h = datasets.load_dataset('Rowan/hellaswag', split='validation')\n"
        "print(h[0]['label'], h.column_names[:3])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    lines = result.stdout.strip().splitlines()
    assert (
        lines[0] == "['dev', 'test', 'validation'] ['question', 'subject', 'choices', 'answer'] 6"
    )
    label, columns = lines[1].split(" ", 1)
    assert label in {"0", "1", "2", "3"} and columns == "['ind', 'activity_label', 'ctx_a']"
