"""OLMoE -> Select-MoE conversion and its verification."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from selectmoe.errors import ModelError
from selectmoe.model.conversion import convert_olmoe, verify_conversion


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_convert_copies_every_weight_and_adds_gates(tiny_olmoe_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    output = tmp_path / "converted"
    summary = convert_olmoe(os.fspath(tiny_olmoe_dir), output, seed=3)
    assert summary["n_copied"] == 25  # every tensor of the 2-layer OLMoE
    assert summary["n_new"] == 2  # one gate per layer
    assert summary["n_gate_parameters"] == 2 * 32
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "select_moe"
    assert config["architectures"] == ["SelectMoeForCausalLM"]
    assert config["num_experts"] == 8 and config["num_experts_per_tok"] == 2
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(tiny_olmoe_dir))
    assert _leftovers(tmp_path) == ["converted"]  # no temporary directory left
    # the gates depend on the seed only
    again = tmp_path / "again"
    convert_olmoe(os.fspath(tiny_olmoe_dir), again, seed=3)
    first, second = load_file(output / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_verify_passes_and_writes_report(
    tiny_olmoe_dir: Path, tiny_converted_dir: Path, tmp_path: Path
) -> None:
    report_path = tmp_path / "verify.json"
    report = verify_conversion(
        os.fspath(tiny_olmoe_dir), tiny_converted_dir, output_json=report_path
    )
    assert report["passed"] is True
    assert report["tensors_bit_identical"] is True
    assert report["n_tensors_compared"] == 25
    assert 0.0 <= report["logits_max_abs_diff"] <= 1e-5
    assert report["tolerance"] == 1e-5
    assert report["input_shape"] == [2, 32]
    assert json.loads(report_path.read_text()) == report


def test_verify_names_a_tampered_tensor(
    tiny_olmoe_dir: Path, tiny_converted_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_converted_dir, tampered)
    weights = load_file(tampered / "model.safetensors")
    name = "model.layers.1.self_attn.v_proj.weight"
    weights[name] = weights[name].clone()
    weights[name][0, 0] += 1e-3  # one element, well within the logits tolerance on its own
    save_file(weights, tampered / "model.safetensors", metadata={"format": "pt"})
    report_path = tmp_path / "verify.json"
    with pytest.raises(ModelError, match=rf"1 tensors differ .*\(first: {re.escape(name)}\)"):
        verify_conversion(os.fspath(tiny_olmoe_dir), tampered, output_json=report_path)
    assert not report_path.exists()


def test_verify_without_converted_model(tiny_olmoe_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(ModelError, match=re.escape(f"{missing}: converted model not found")):
        verify_conversion(os.fspath(tiny_olmoe_dir), missing)


def test_convert_missing_directory(tmp_path: Path) -> None:
    output = tmp_path / "out"
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelError, match=re.escape(f"{missing}: model directory not found")):
        convert_olmoe(os.fspath(missing), output)
    assert _leftovers(tmp_path) == []


def test_convert_unreachable_hub_id_offline(tmp_path: Path) -> None:
    output = tmp_path / "out"
    expected = r"no-such-org/no-such-model: cannot load a model config for the model directory"
    with pytest.raises(ModelError, match=expected):
        convert_olmoe("no-such-org/no-such-model", output)
    assert _leftovers(tmp_path) == []


def test_convert_non_olmoe_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with pytest.raises(
        ModelError,
        match=re.escape(
            f"{tiny_llama_dir}: model_type is 'llama', expected 'olmoe'; give an OLMoE checkpoint"
        ),
    ):
        convert_olmoe(os.fspath(tiny_llama_dir), output)
    assert _leftovers(tmp_path) == []


def test_failure_while_writing_leaves_nothing(
    tiny_olmoe_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selectmoe.model.modeling_select_moe import SelectMoeForCausalLM

    original = SelectMoeForCausalLM.save_pretrained

    def save_then_fail(self, directory, *args, **kwargs):
        original(self, directory, *args, **kwargs)  # a complete-looking model on disk ...
        raise OSError("disk full")  # ... and then the job dies

    monkeypatch.setattr(SelectMoeForCausalLM, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        convert_olmoe(os.fspath(tiny_olmoe_dir), tmp_path / "out")
    assert _leftovers(tmp_path) == []


def test_convert_replaces_an_existing_output(tiny_olmoe_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "stale.txt").write_text("old run")
    convert_olmoe(os.fspath(tiny_olmoe_dir), output)
    assert not (output / "stale.txt").exists()
    assert (output / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == ["out"]


def test_a_sharded_checkpoint_converts_as_the_whole_one(
    tiny_olmoe_dir: Path, tmp_path: Path
) -> None:
    """The paper's OLMoE comes as sharded safetensors with an index: the same checkpoint split in
    shards converts to the same tensors and verifies."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_olmoe_dir).save_pretrained(
        sharded, max_shard_size="20KB"
    )
    AutoTokenizer.from_pretrained(tiny_olmoe_dir).save_pretrained(sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really in several shards
    assert not (sharded / "model.safetensors").exists()
    from_shards, whole = tmp_path / "from_shards", tmp_path / "whole"
    convert_olmoe(os.fspath(sharded), from_shards, seed=3)
    convert_olmoe(os.fspath(tiny_olmoe_dir), whole, seed=3)
    first, second = (
        load_file(from_shards / "model.safetensors"),
        load_file(whole / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    report = verify_conversion(os.fspath(sharded), from_shards)
    assert report["passed"] is True and report["n_tensors_compared"] == 25
