"""Shared fixtures of the package's unit tests: a tiny tokenizer, tiny models and a tiny pool.

Everything is built locally in a few seconds (no network, no model hub). Fixture names start with
``tiny_`` so that they do not clash with the fixtures of other test modules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# huggingface_hub reads HF_HUB_OFFLINE once, when it is imported (test modules import transformers
# at collection time, before any fixture runs): set it here, before anything imports it
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>"]
TINY_CHAT_TAGS = ["<|system|>", "<|user|>", "<|assistant|>"]
TINY_DATASETS = ("alpha", "beta")

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is two plus three? the answer is five.",
    "write a short poem about the sea and the sky",
    "sure, here is a poem: the sea is blue, the sky is too.",
    "you are a helpful assistant that answers briefly",
    "list three colours: red, green, blue",
    "translate hello into french: bonjour",
    "explain why the sun is hot in one sentence",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 11 12",
]


@pytest.fixture(autouse=True)
def _tiny_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _tiny_single_thread() -> Any:
    """Run torch on one thread: the models here are tiny, and on a busy 2-core machine OpenMP's
    spinning threads make every small op tens of times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (vocab about 300) with the chat tags as special tokens."""
    from selectmoe.demo.models import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(
        _CORPUS * 4, vocab_size=300, special_tokens=TINY_SPECIAL_TOKENS
    )
    tokenizer.add_special_tokens({"additional_special_tokens": TINY_CHAT_TAGS})
    return tokenizer


@pytest.fixture(scope="session")
def tiny_build_tokenizer() -> Callable[[], Any]:
    """The :func:`build_tiny_tokenizer` factory, for tests that need a tokenizer to modify."""
    return build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """The tiny tokenizer, session-wide: do not mutate it (``build_tiny_tokenizer`` makes one)."""
    return build_tiny_tokenizer()


def tiny_olmoe_config(tokenizer: Any) -> Any:
    """Config of a tiny OLMoE: hidden 32, 2 layers, 4 heads, 8 experts, top-2."""
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_select_moe(tiny_tokenizer: Any) -> Callable[..., Any]:
    """Factory: ``tiny_select_moe(seed=0, **config_changes)`` -> a fresh tiny SelectMoeForCausalLM
    with the architecture of ``tiny_olmoe_dir``."""

    def make(seed: int = 0, **changes: Any) -> Any:
        import torch

        from selectmoe import SelectMoeConfig, SelectMoeForCausalLM

        values = tiny_olmoe_config(tiny_tokenizer).to_dict()
        for key in ("model_type", "architectures", "transformers_version", "dtype"):
            values.pop(key, None)
        values.update(changes)
        torch.manual_seed(seed)
        return SelectMoeForCausalLM(SelectMoeConfig(**values))

    return make


@pytest.fixture(scope="session")
def tiny_olmoe_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    """A saved tiny ``OlmoeForCausalLM`` (float32) with the tokenizer."""
    import torch
    from transformers import OlmoeForCausalLM

    directory = tmp_path_factory.mktemp("tiny_olmoe")
    torch.manual_seed(0)
    model = OlmoeForCausalLM(tiny_olmoe_config(tiny_tokenizer)).eval()
    model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_converted_dir(tmp_path_factory: pytest.TempPathFactory, tiny_olmoe_dir: Path) -> Path:
    """The tiny OLMoE converted to Select-MoE (default gate init)."""
    from selectmoe.model.conversion import convert_olmoe

    directory = tmp_path_factory.mktemp("tiny_converted") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        convert_olmoe(os.fspath(tiny_olmoe_dir), directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    """A saved tiny ``LlamaForCausalLM`` (hidden 32, 2 layers) with the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=tiny_tokenizer.pad_token_id,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def tiny_pool_records(dataset: str, n: int) -> list[dict[str, Any]]:
    """``n`` LESS-format records of ``dataset``: single-turn, multi-turn and with a system turn."""
    records = []
    for i in range(n):
        kind = i % 3
        words = " ".join(_CORPUS[(i + j) % len(_CORPUS)] for j in range(1 + i % 2))
        if kind == 0:
            messages = [
                {"role": "user", "content": f"{dataset} question {i}: {words}"},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        elif kind == 1:
            messages = [
                {"role": "user", "content": f"first {i}"},
                {"role": "assistant", "content": f"reply {words}"},
                {"role": "user", "content": "and then?"},
                {"role": "assistant", "content": f"then {i}"},
            ]
        else:
            messages = [
                {"role": "system", "content": "you are a helpful assistant"},
                {"role": "user", "content": f"{words} {i}"},
                {"role": "assistant", "content": "ok"},
            ]
        records.append({"dataset": dataset, "id": f"{dataset}_{i}", "messages": messages})
    return records


def write_pool(directory: str | Path, n_per_dataset: int) -> dict[str, Path]:
    """Write ``{directory}/{ds}/{ds}_data.jsonl`` for the tiny datasets; return ds -> file."""
    files = {}
    for dataset in TINY_DATASETS:
        path = Path(directory) / dataset / f"{dataset}_data.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r) for r in tiny_pool_records(dataset, n_per_dataset)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[dataset] = path
    return files


@pytest.fixture
def tiny_write_pool() -> Callable[[str | Path, int], dict[str, Path]]:
    """The :func:`write_pool` helper, for tests that take it as a fixture."""
    return write_pool


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A shared pool of 6 examples per dataset (read-only)."""
    return write_pool(tmp_path_factory.mktemp("tiny_pool"), 6)


@pytest.fixture(scope="session")
def finished_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The small demo (``SMALL_DEMO`` of test_workflow.py) run to completion once, shared by
    every test that inspects a finished run (workflow outputs, reruns, resume, the report).

    It runs from another project's directory that imports the workflow as a Snakemake module,
    so that every test of a finished run also checks the workflow's use as a module."""
    from tests.test_workflow import _small_demo_dir, _snakemake

    workflow_dir, config = _small_demo_dir(tmp_path_factory.mktemp("finished_demo"), as_module=True)
    result = _snakemake(workflow_dir, "--cores", "2", "--configfile", "small.yaml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return workflow_dir, config
