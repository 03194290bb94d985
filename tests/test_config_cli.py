"""Config validation against the schema, the command line's error contract, atomic output."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from selectmoe.cli import main
from selectmoe.errors import ConfigError
from selectmoe.io import (
    atomic_output_dir,
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_jsonl,
)
from selectmoe.workflow.config import (
    check_config,
    coerce_command_line_strings,
    load_schema,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_schema(REPO / "config" / "schema.yaml")


@pytest.fixture
def config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(schema: dict[str, Any], name: str) -> None:
    loaded = yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))
    assert validate_config(loaded, schema) is None


def test_the_small_scenario_is_valid_read_after_the_default(
    schema: dict[str, Any], config: dict[str, Any]
) -> None:
    from selectmoe.workflow.config import merge_configs

    small = yaml.safe_load((REPO / "config" / "small.yaml").read_text(encoding="utf-8"))
    merged = merge_configs(config, small)
    assert validate_config(merged, schema) is None
    assert merged["selection"]["loss_types"] == ["sigmoid", "beta_moment_matching"]
    assert merged["finetune"]["lora_r"] == config["finetune"]["lora_r"]  # kept from the default
    # lists are replaced, not appended, and by a copy of the update's
    assert merged["selection"]["replicates"] == [1, 2]
    small["selection"]["replicates"].append(9)
    assert merged["selection"]["replicates"] == [1, 2]


@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_percentage_out_of_range(schema: dict[str, Any], config: dict[str, Any], value) -> None:
    config["selection"]["percentages"] = [0.1, value]
    pattern = re.escape(
        f"config key selection.percentages[1]: {value!r} is out of range; "
        "allowed: values > 0 and <= 1"
    )
    with pytest.raises(ConfigError, match=pattern):
        validate_config(config, schema)


def test_subset_ratio_out_of_range(schema: dict[str, Any], config: dict[str, Any]) -> None:
    config["warmup"]["subset_ratio"] = 0
    with pytest.raises(
        ConfigError, match=re.escape("config key warmup.subset_ratio: 0 is out of range")
    ):
        validate_config(config, schema)


def test_unknown_loss_type(config: dict[str, Any]) -> None:
    from selectmoe.model.losses import available_quality_losses

    config["selection"]["loss_types"] = ["sigmoid", "focal"]
    # the built-in losses (and any a test's plugin registered in this process)
    assert {"beta_moment_matching", "mean_variance_regularization", "mse", "sigmoid"} <= set(
        available_quality_losses()
    )
    pattern = re.escape(
        "config key selection.loss_types: 'focal' is not registered; valid: "
        f"{', '.join(available_quality_losses())} (a plugin module listed in plugins can "
        "register more)"
    )
    with pytest.raises(ConfigError, match=pattern):
        check_config(config)


def test_unknown_method_and_clustering(config: dict[str, Any]) -> None:
    from selectmoe.selection.kinds import available_methods

    config["selection"]["methods"] = ["kmeans_magic"]
    pattern = re.escape(
        "config key selection.methods: 'kmeans_magic' is not registered; valid: "
        + ", ".join(available_methods())
    )
    with pytest.raises(ConfigError, match=pattern):
        check_config(config)
    config["selection"]["methods"] = ["selectmoe"]
    config["selection"]["clustering_method"] = "dbscan"
    with pytest.raises(ConfigError, match=r"selection\.clustering_method: 'dbscan'"):
        check_config(config)


def test_custom_trash_expert_and_the_control_name(config: dict[str, Any]) -> None:
    from selectmoe.model import modeling_select_moe

    config["warmup"]["trash_expert_mode"] = "custom"
    from selectmoe import catalogue

    saved = list(modeling_select_moe._CUSTOM_TRASH_EXPERT)
    saved_names = set(catalogue._REGISTERED["trash_expert"])
    modeling_select_moe._CUSTOM_TRASH_EXPERT.clear()
    catalogue._REGISTERED["trash_expert"].clear()
    try:
        with pytest.raises(ConfigError, match=r"warmup\.trash_expert_mode: .*no trash expert"):
            check_config(config)
        config["warmup"]["trash_expert_mode"] = "garbage"
        with pytest.raises(ConfigError, match="unknown trash_expert_mode 'garbage'"):
            check_config(config)
    finally:
        modeling_select_moe._CUSTOM_TRASH_EXPERT[:] = saved
        catalogue._REGISTERED["trash_expert"] |= saved_names
    config["warmup"]["trash_expert_mode"] = "zero"
    config["selection"]["loss_types"] = ["untrained"]
    from selectmoe.model.losses import _REGISTRY

    _REGISTRY["untrained"] = _REGISTRY["sigmoid"]
    try:
        with pytest.raises(ConfigError, match="'untrained' names the control"):
            check_config(config)
    finally:
        del _REGISTRY["untrained"]


def test_command_line_strings_become_numbers(schema: dict[str, Any], config: dict[str, Any]):
    """Snakemake's --config reads nested values as strings: the schema's types are restored."""
    config["warmup"].update(epochs="4", learning_rate="2e-3", quality_loss_debug="true")
    config["selection"]["percentages"] = ["0.1", "0.5"]
    config["finetune"]["max_steps"] = "null"
    config["resources"] = {"gpus": {"warmup": "2"}}
    coerced = coerce_command_line_strings(config, schema)
    assert coerced["warmup"]["epochs"] == 4 and coerced["warmup"]["learning_rate"] == 0.002
    assert coerced["warmup"]["quality_loss_debug"] is True
    assert coerced["selection"]["percentages"] == [0.1, 0.5]
    assert coerced["finetune"]["max_steps"] is None
    assert coerced["resources"]["gpus"]["warmup"] == 2
    assert coerced["warmup"]["device"] == "auto"  # strings stay strings
    validate_config(coerced, schema)
    config["warmup"]["epochs"] = "four"  # not a number: left as it is, and refused by its key
    with pytest.raises(ConfigError, match=r"warmup\.epochs: 'four' has the wrong type"):
        validate_config(coerce_command_line_strings(config, schema), schema)


def test_misspelt_key(schema: dict[str, Any], config: dict[str, Any]) -> None:
    config["warmup"]["learning_rat"] = config["warmup"].pop("learning_rate")
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    message = str(info.value)
    assert "config key warmup: unknown key(s) learning_rat; allowed keys: " in message
    allowed = message.split("allowed keys: ", 1)[1].split(", ")
    assert "learning_rate" in allowed and "subset_ratio" in allowed
    assert "\n" not in message

    top = copy.deepcopy(config)
    top["warmup"]["learning_rate"] = top["warmup"].pop("learning_rat")
    top["selecton"] = {}
    with pytest.raises(
        ConfigError, match=re.escape("config key (top level): unknown key(s) selecton")
    ):
        validate_config(top, schema)


def test_several_problems_are_reported_together(
    schema: dict[str, Any], config: dict[str, Any]
) -> None:
    config["selection"]["percentages"] = [2]
    config["finetune"]["lora_r"] = 0
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    message = str(info.value)
    assert message.startswith("invalid configuration: ")
    assert "finetune.lora_r: 0 is out of range; allowed: values >= 1" in message
    assert "selection.percentages[0]: 2 is out of range" in message


# ----------------------------------------------------------------------------------------------
# command line


def _pool_file(path: Path, bad_line: str | None = None) -> Path:
    lines = [
        json.dumps(
            {
                "dataset": "d",
                "id": f"d_{i}",
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ],
            }
        )
        for i in range(2)
    ]
    if bad_line is not None:
        lines.append(bad_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_bad_pool_file_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _pool_file(tmp_path / "pool.jsonl", '{"dataset": "d", "id": "d_9", "messages": []}')
    report = tmp_path / "report.json"
    status = main(["validate-data", str(bad), "--report", str(report)])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("selectmoe: error: ")
    assert f"{bad}:3: field 'messages' is empty or not a list" in lines[0]
    assert captured.out == ""
    assert not report.exists()


def test_cli_good_pool_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _pool_file(tmp_path / "pool.jsonl")
    report = tmp_path / "report.json"
    assert main(["validate-data", str(good), "--report", str(report)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    printed = json.loads(captured.out)
    assert printed["n_examples"] == 2 and printed["per_dataset"] == {"d": 2}
    assert json.loads(report.read_text()) == printed


def test_cli_convert_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_model"
    output = tmp_path / "out"
    status = main(["convert", "--source", str(missing), "--output", str(output)])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"selectmoe: error: {missing}: model directory not found; ")
    assert not output.exists()


def test_cli_unknown_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(
        [
            "warmup",
            "--model",
            str(tmp_path),
            "--pool",
            str(tmp_path / "p.jsonl"),
            "--output",
            str(tmp_path / "w.pt"),
            "--set",
            "learning_rat=0.1",
        ]
    )
    (line,) = capsys.readouterr().err.splitlines()
    assert status == 2
    assert line.startswith("selectmoe: error: unknown warmup setting(s) learning_rat; valid: ")
    assert "learning_rate" in line


# ----------------------------------------------------------------------------------------------
# atomic output


class Boom(RuntimeError):
    pass


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("half")
        assert tmp.parent == tmp_path and tmp != target
        raise Boom
    assert list(tmp_path.iterdir()) == []
    # an existing file is left untouched
    target.write_text("old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise Boom
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_writers(tmp_path: Path) -> None:
    import torch

    atomic_write_json(tmp_path / "sub" / "a.json", {"x": 1, "path": tmp_path})
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"x": 1, "path": str(tmp_path)}

    def records():
        yield {"id": 1}
        yield {"id": 2}
        raise Boom

    with pytest.raises(Boom):
        atomic_write_jsonl(tmp_path / "b.jsonl", records())
    assert not (tmp_path / "b.jsonl").exists()
    assert atomic_write_jsonl(tmp_path / "c.jsonl", [{"é": 1}, {"id": 2}]) == 2
    assert (tmp_path / "c.jsonl").read_text(encoding="utf-8") == '{"é": 1}\n{"id": 2}\n'
    atomic_torch_save({"t": torch.arange(3)}, tmp_path / "d.pt")
    assert torch.equal(torch.load(tmp_path / "d.pt")["t"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "d.pt", "sub"]


def test_atomic_output_dir(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(Boom), atomic_output_dir(target) as tmp:
        (tmp / "weights.bin").write_text("partial")
        raise Boom
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(target) as tmp:
        (tmp / "weights.bin").write_text("v1")
    with pytest.raises(Boom), atomic_output_dir(target) as tmp:
        (tmp / "weights.bin").write_text("v2")
        raise Boom
    assert (target / "weights.bin").read_text() == "v1"
    with atomic_output_dir(target) as tmp:
        (tmp / "other.bin").write_text("v3")
    assert [p.name for p in target.iterdir()] == ["other.bin"]  # replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_cli_validate_silhouette_prints_the_verdict(capsys) -> None:
    from selectmoe.cli import main

    assert main(["validate-silhouette", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "10 samples x 3 features x 2 clusters" in out
    assert out.strip().splitlines()[-1].endswith("PASS")


def test_method_definitions_are_checked(config: dict[str, Any]) -> None:
    config["selection"]["method_definitions"] = {
        "gate_topk_last": {"score": "gate", "score_params": {"layers": [-1]}, "allocation": "topk"}
    }
    config["selection"]["methods"] = ["gate_topk_last", "selectmoe"]
    check_config(config)  # a defined method is a valid method name
    config["selection"]["method_definitions"]["bad"] = {"score": "loss", "allocation": "topk"}
    with pytest.raises(
        ConfigError, match=r"selection\.method_definitions \(score\): 'loss' is not registered"
    ):
        check_config(config)
    config["selection"]["method_definitions"]["bad"] = {"score": "gate", "allocation": "greedy"}
    with pytest.raises(ConfigError, match=r"\(allocation\): 'greedy' is not registered"):
        check_config(config)
    config["selection"]["methods"] = ["selectmoe"]
    config["selection"]["method_definitions"] = {
        "selectmoe_seed": {"score": "gate", "allocation": "topk"}
    }
    with pytest.raises(ConfigError, match="'selectmoe_seed' cannot be redefined"):
        check_config(config)
    config["selection"]["method_definitions"] = {}
    config["selection"]["methods"] = ["selectmoe", "random"]
    config.setdefault("scoring", {})["lm_statistics"] = False
    with pytest.raises(
        ConfigError, match=r"lm_statistics is false, but method\(s\) selectmoe rank by the LM"
    ):
        check_config(config)
