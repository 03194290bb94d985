"""Training runs: checkpoints and resume, the LoRA warmup mode, several processes (DDP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import selectmoe.training.checkpoints as checkpoints_module
from selectmoe.errors import ConfigError, ModelError
from selectmoe.model.warmed import apply_router_lora, load_warmed_model
from selectmoe.stages.warmup import WarmupSettings, run_warmup
from selectmoe.training.checkpoints import latest_checkpoint, run_fingerprint
from selectmoe.training.distributed import local_share as _local_share
from selectmoe.workflow.launch import launch_command, run_training_stage


def _settings(**changes: Any) -> WarmupSettings:
    values: dict[str, Any] = {
        "subset_ratio": 1.0,
        "per_device_batch_size": 2,
        "effective_batch_size": 2,
        "learning_rate": 1e-2,
        "epochs": 3,
        "quality_loss_type": "mse",
        "quality_loss_weight": 0.5,
        "device": "cpu",
        "log_every": 1,
        "checkpoint_every": 2,
    }
    values.update(changes)
    return WarmupSettings(**values)


def _pool(tiny_pool: dict[str, Path]) -> list[Path]:
    return [tiny_pool["alpha"], tiny_pool["beta"]]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["weights"]


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, tiny_converted_dir: Path, tiny_pool: dict[str, Path]
) -> dict[str, Any]:
    """A warmup run of 18 optimizer steps (12 examples / batch 2 x 3 epochs), never stopped."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    output = directory / "full_rank_weights.pt"
    returned = run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=_pool(tiny_pool),
        output_path=output,
        settings=_settings(),
        checkpoint_dir=directory / "ckpt",
    )
    return {"path": output, "returned": returned, "checkpoints": directory / "ckpt"}


def _transformers_rates(base_lr: float, *, total_steps: int, warmup_steps: int) -> list[float]:
    """The learning rate of each optimizer step as transformers' Trainer applies it: a scheduler
    stepped once after every optimizer step."""
    from transformers import get_linear_schedule_with_warmup

    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([parameter], lr=base_lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        parameter.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    return rates


def test_the_learning_rate_of_every_step_is_transformers_schedule(
    uninterrupted: dict[str, Any],
) -> None:
    """18 optimizer steps, the schema's warmup ratio: every logged rate equals the rate
    transformers' linear schedule gives that step (0 at the first step of a warmup)."""
    import math

    from selectmoe.training.loop import linear_schedule

    history = uninterrupted["returned"]["history"]
    assert [entry["step"] for entry in history] == list(range(1, 19))
    ratio = _settings().warmup_ratio
    warmup_steps = math.ceil(ratio * 18)
    expected = _transformers_rates(1e-2, total_steps=18, warmup_steps=warmup_steps)
    assert [entry["lr"] for entry in history] == pytest.approx(expected, rel=1e-12, abs=0)
    # a longer warmup: the rise and the decay, step by step
    multiplier = linear_schedule(total_steps=40, warmup_steps=10)
    rates = _transformers_rates(1.0, total_steps=40, warmup_steps=10)
    assert [multiplier(step) for step in range(40)] == pytest.approx(rates, rel=1e-12, abs=0)
    assert rates[0] == 0.0 and rates[10] == 1.0 and rates[39] == pytest.approx(1 / 30)


# ----------------------------------------------------------------------------------------------
# checkpoints and resume


def test_finished_run_removes_its_checkpoints(uninterrupted: dict[str, Any]) -> None:
    assert uninterrupted["returned"]["optimizer_steps"] == 18
    assert uninterrupted["returned"]["resumed_from_step"] == 0
    assert not uninterrupted["checkpoints"].exists()


def test_resume_after_an_interrupt_equals_the_uninterrupted_run(
    tmp_path: Path,
    tiny_converted_dir: Path,
    tiny_pool: dict[str, Path],
    uninterrupted: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = tmp_path / "full_rank_weights.pt"
    checkpoints = tmp_path / "ckpt"
    original_save = checkpoints_module.save_checkpoint
    saves: list[int] = []

    def save_then_die(directory: Path, state: dict[str, Any], *, step: int, keep: int = 2):
        path = original_save(directory, state, step=step, keep=keep)
        saves.append(step)
        if step == 8:  # in the second epoch, between two checkpoints' worth of steps
            raise KeyboardInterrupt("simulated kill")
        return path

    monkeypatch.setattr(checkpoints_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_warmup(
            model_dir=tiny_converted_dir,
            pool_files=_pool(tiny_pool),
            output_path=output,
            settings=_settings(),
            checkpoint_dir=checkpoints,
        )
    assert saves == [2, 4, 6, 8]
    assert not output.exists()
    assert sorted(p.name for p in checkpoints.glob("step_*.pt")) == [
        "step_000000006.pt",
        "step_000000008.pt",
    ]  # only the newest two are kept
    monkeypatch.setattr(checkpoints_module, "save_checkpoint", original_save)

    returned = run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=_pool(tiny_pool),
        output_path=output,
        settings=_settings(),
        checkpoint_dir=checkpoints,
    )
    assert returned["resumed_from_step"] == 8
    assert returned["optimizer_steps"] == 18
    resumed, reference = _weights(output), _weights(uninterrupted["path"])
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    # the history continues where it stopped: the same logged steps and values as one run
    assert returned["history"] == uninterrupted["returned"]["history"]
    assert returned["tokens_seen"] == uninterrupted["returned"]["tokens_seen"]
    assert not checkpoints.exists()


def test_checkpoint_of_other_settings_is_not_resumed(
    tmp_path: Path,
    tiny_converted_dir: Path,
    tiny_pool: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    checkpoints = tmp_path / "ckpt"

    save = checkpoints_module.save_checkpoint

    def die_at_4(directory: Path, state: dict[str, Any], *, step: int, keep: int = 2):
        save(directory, state, step=step, keep=keep)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints_module, "save_checkpoint", die_at_4)
    with pytest.raises(KeyboardInterrupt):
        run_warmup(
            model_dir=tiny_converted_dir,
            pool_files=_pool(tiny_pool),
            output_path=tmp_path / "w.pt",
            settings=_settings(),
            checkpoint_dir=checkpoints,
        )
    monkeypatch.undo()
    caplog.set_level("WARNING")
    returned = run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=_pool(tiny_pool),
        output_path=tmp_path / "w.pt",
        settings=_settings(learning_rate=5e-3),  # another run: must start from scratch
        checkpoint_dir=checkpoints,
    )
    assert returned["resumed_from_step"] == 0
    assert "belongs to another run" in caplog.text


def test_unreadable_checkpoint_falls_back_to_an_older_one(tmp_path: Path) -> None:
    state = {"format": checkpoints_module.CHECKPOINT_FORMAT, "fingerprint": "abc", "step": 2}
    checkpoints_module.save_checkpoint(tmp_path, state, step=2)
    (tmp_path / "step_000000004.pt").write_bytes(b"truncated")
    found = latest_checkpoint(tmp_path, "abc")
    assert found is not None and found[0].name == "step_000000002.pt"
    assert latest_checkpoint(tmp_path, "other") is None


def test_a_checkpoint_with_bytes_flipped_inside_a_tensor_is_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """torch.load reads a checkpoint whose tensor bytes were overwritten without complaint; the
    digest sidecar catches it, the warning names the file and both digests, and the older
    intact checkpoint is used."""
    for step in (2, 4):
        state = {
            "format": checkpoints_module.CHECKPOINT_FORMAT,
            "fingerprint": "abc",
            "step": step,
            "trainable": {"w": torch.full((64, 64), float(step))},
        }
        checkpoints_module.save_checkpoint(tmp_path, state, step=step)
    newest = tmp_path / "step_000000004.pt"
    data = bytearray(newest.read_bytes())
    middle = data.index(torch.full((1,), 4.0).numpy().tobytes() * 8) + 64
    data[middle : middle + 8] = bytes(range(1, 9))
    newest.write_bytes(bytes(data))
    loaded = torch.load(newest, weights_only=False)  # loads: the damage is silent without digests
    assert not torch.equal(loaded["trainable"]["w"], torch.full((64, 64), 4.0))
    caplog.set_level("WARNING")
    found = latest_checkpoint(tmp_path, "abc")
    assert found is not None and found[0].name == "step_000000002.pt"
    assert torch.equal(found[1]["trainable"]["w"], torch.full((64, 64), 2.0))
    recorded = (tmp_path / "step_000000004.pt.sha256").read_text().split()[0]
    assert f"{newest}: content sha256 " in caplog.text and f"recorded {recorded}" in caplog.text
    # a checkpoint without its sidecar (a kill between the two writes) is not trusted either
    (tmp_path / "step_000000002.pt.sha256").unlink()
    assert latest_checkpoint(tmp_path, "abc") is None
    assert "no digest recorded" in caplog.text


def test_fingerprint_depends_on_every_part() -> None:
    base = run_fingerprint(settings={"lr": 1e-4}, examples=[("a", "1")])
    assert base == run_fingerprint(examples=[("a", "1")], settings={"lr": 1e-4})
    assert base != run_fingerprint(settings={"lr": 2e-4}, examples=[("a", "1")])
    assert base != run_fingerprint(settings={"lr": 1e-4}, examples=[("a", "2")])


def test_sigkill_during_training_then_rerun_finishes_with_the_same_weights(
    tmp_path: Path,
    tiny_converted_dir: Path,
    tiny_pool: dict[str, Path],
    uninterrupted: dict[str, Any],
) -> None:
    """A real kill -9 of ``selectmoe warmup`` after its first checkpoint; the rerun resumes."""
    output = tmp_path / "full_rank_weights.pt"
    checkpoints = tmp_path / "ckpt"
    settings = _settings()
    command = [
        sys.executable,
        "-m",
        "selectmoe",
        "warmup",
        "--model",
        os.fspath(tiny_converted_dir),
        "--pool",
        *map(os.fspath, _pool(tiny_pool)),
        "--output",
        os.fspath(output),
        "--checkpoint-dir",
        os.fspath(checkpoints),
    ]
    for key in (
        "subset_ratio",
        "per_device_batch_size",
        "effective_batch_size",
        "learning_rate",
        "epochs",
        "quality_loss_type",
    ):
        command += ["--set", f"{key}={getattr(settings, key)}"]
    command += [
        "--set",
        f"quality_loss_weight={settings.quality_loss_weight}",
        "--set",
        "device=cpu",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=1",  # a checkpoint after every step: the kill lands mid-run
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("step_*.pt.sha256")) and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not output.exists()
    killed_at = latest_checkpoint(checkpoints, _fingerprint_of(checkpoints))
    assert killed_at is not None and 1 <= killed_at[1]["step"] < 18

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stderr
    resumed, reference = _weights(output), _weights(uninterrupted["path"])
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    assert not checkpoints.exists()


def _fingerprint_of(checkpoints: Path) -> str:
    newest = sorted(checkpoints.glob("step_*.pt"))[-1]
    return torch.load(newest, weights_only=False)["fingerprint"]


# ----------------------------------------------------------------------------------------------
# LoRA warmup


def test_router_lora_finds_every_router(tiny_select_moe) -> None:
    model = tiny_select_moe()
    settings = WarmupSettings(peft_mode="lora", lora_r=4)
    peft_model, adapted = apply_router_lora(model, settings.lora_config_dict())
    assert adapted == [
        "base_model.model.model.layers.0.mlp.gate",
        "base_model.model.model.layers.1.mlp.gate",
    ]
    trainable = sorted(n for n, p in peft_model.named_parameters() if p.requires_grad)
    assert trainable == sorted(
        [
            f"base_model.model.model.layers.{i}.mlp.gate.lora_{ab}.default.weight"
            for i in range(2)
            for ab in "AB"
        ]
        + [f"base_model.model.model.layers.{i}.quality_gate.weight" for i in range(2)]
    )
    a = dict(peft_model.named_parameters())[
        "base_model.model.model.layers.0.mlp.gate.lora_A.default.weight"
    ]
    assert tuple(a.shape) == (4, 32)  # rank x hidden


def test_router_lora_with_no_matching_parameter(tiny_select_moe) -> None:
    settings = WarmupSettings(peft_mode="lora", lora_target_parameters=["mlp.router.kernel"])
    with pytest.raises(ModelError, match=r"mlp\.gate\.weight"):
        apply_router_lora(tiny_select_moe(), settings.lora_config_dict())


def test_lora_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="peft_mode"):
        WarmupSettings(peft_mode="qlora")
    with pytest.raises(ConfigError, match="lora_target_parameters"):
        WarmupSettings(peft_mode="lora", lora_target_parameters=[])


def test_lora_warmup_trains_adapters_and_gates_only(
    tmp_path: Path, tiny_converted_dir: Path, tiny_pool: dict[str, Path]
) -> None:
    from selectmoe import SelectMoeForCausalLM

    output = tmp_path / "full_rank_weights.pt"
    run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=_pool(tiny_pool),
        output_path=output,
        settings=_settings(peft_mode="lora", lora_r=4, epochs=1, checkpoint_every=0),
    )
    payload = torch.load(output, weights_only=False)
    assert payload["peft_mode"] == "lora"
    assert payload["lora_config"]["target_parameters"] == ["mlp.gate.weight"]
    assert payload["target_patterns"] == ["mlp.gate.weight", "quality_gate.weight"]
    names = sorted(payload["weights"])
    assert len(names) == 6 and all(
        ("lora_" in n) or n.endswith("quality_gate.weight") for n in names
    )
    lora_b = [t for n, t in payload["weights"].items() if "lora_B" in n]
    assert all(t.abs().max() > 0 for t in lora_b)  # B starts at zero: training moved it

    base = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir).eval()
    merged, _ = load_warmed_model(tiny_converted_dir, output)
    base_state, merged_state = base.state_dict(), merged.state_dict()
    assert base_state.keys() == merged_state.keys()
    changed = sorted(n for n in base_state if not torch.equal(base_state[n], merged_state[n]))
    assert changed == sorted(
        f"model.layers.{i}.{s}"
        for i in range(2)
        for s in ("mlp.gate.weight", "quality_gate.weight")
    )
    # the merged router equals base + scaling * B @ A
    scaling = payload["lora_config"]["lora_alpha"] / payload["lora_config"]["r"]
    prefix = "base_model.model.model.layers.0.mlp.gate"
    delta = (
        scaling
        * payload["weights"][f"{prefix}.lora_B.default.weight"]
        @ payload["weights"][f"{prefix}.lora_A.default.weight"]
    )
    torch.testing.assert_close(
        merged_state["model.layers.0.mlp.gate.weight"],
        base_state["model.layers.0.mlp.gate.weight"] + delta,
        rtol=0,
        atol=1e-6,
    )

    # the merged model computes what the adapted model computed
    peft_model, _ = apply_router_lora(
        SelectMoeForCausalLM.from_pretrained(tiny_converted_dir), payload["lora_config"]
    )
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, tensor in payload["weights"].items():
            params[name].copy_(tensor)
    peft_model.eval()
    input_ids = torch.randint(0, 200, (2, 9))
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids, output_router_logits=True)
        got = merged(input_ids=input_ids, output_router_logits=True)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-5)
    for a, b in zip(got.router_logits, expected.router_logits, strict=True):
        torch.testing.assert_close(a["moe_logits"], b["moe_logits"], rtol=0, atol=1e-5)


def test_lora_weights_missing_an_adapter_tensor(
    tmp_path: Path, tiny_converted_dir: Path, tiny_pool: dict[str, Path]
) -> None:
    output = tmp_path / "w.pt"
    run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=_pool(tiny_pool),
        output_path=output,
        settings=_settings(peft_mode="lora", max_steps=1, checkpoint_every=0),
    )
    payload = torch.load(output, weights_only=False)
    dropped = next(n for n in payload["weights"] if "lora_A" in n)
    del payload["weights"][dropped]
    torch.save(payload, output)
    with pytest.raises(ModelError, match="LoRA tensors missing"):
        load_warmed_model(tiny_converted_dir, output)


# ----------------------------------------------------------------------------------------------
# several processes


def test_local_share_splits_a_global_batch() -> None:
    batch = list(range(5))
    assert _local_share(batch, rank=0, world_size=2, micro_batch_size=3) == ([0, 1, 2], 1.2)
    assert _local_share(batch, rank=1, world_size=2, micro_batch_size=3) == ([3, 4], 0.8)
    # a process without examples runs one with weight 0
    assert _local_share([7], rank=1, world_size=2, micro_batch_size=1) == ([7], 0.0)
    assert _local_share(batch, rank=0, world_size=1, micro_batch_size=5) == (batch, 1.0)


def test_launch_command_is_complete() -> None:
    command = launch_command(["warmup", "--model", "m"], num_processes=4, port=29511)
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[command.index("--main_process_port") + 1] == "29511"
    assert command[-4:] == ["selectmoe", "warmup", "--model", "m"]


def test_two_process_ddp_warmup_equals_one_process_with_the_same_global_batch(
    tmp_path: Path, tiny_converted_dir: Path, tiny_pool: dict[str, Path]
) -> None:
    """DDP over 2 CPU processes (gloo) with batch 2 each == 1 process with batch 4.

    The loss is a mean over samples (sample-wise LM loss, sigmoid quality loss), so averaging the
    two processes' gradients gives the gradient of the whole batch.
    """
    settings = {
        "subset_ratio": 1.0,
        "learning_rate": 1e-2,
        "epochs": 2,
        "quality_loss_type": "sigmoid",
        "quality_loss_weight": 0.5,
        "device": "cpu",
        "log_every": 1,
        "checkpoint_every": 0,
    }
    inputs = {"model_dir": tiny_converted_dir, "pool_files": _pool(tiny_pool)}
    single = tmp_path / "single.pt"
    run_training_stage(
        "warmup",
        inputs={**inputs, "output_path": single},
        settings={**settings, "per_device_batch_size": 4, "effective_batch_size": 4},
        checkpoint_dir=tmp_path / "ckpt_single",
        num_processes=1,
    )
    ddp = tmp_path / "ddp.pt"
    run_training_stage(
        "warmup",
        inputs={**inputs, "output_path": ddp},
        settings={**settings, "per_device_batch_size": 2, "effective_batch_size": 4},
        checkpoint_dir=tmp_path / "ckpt_ddp",
        num_processes=2,
    )
    one, two = torch.load(single, weights_only=False), torch.load(ddp, weights_only=False)
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    assert two["optimizer_steps"] == one["optimizer_steps"] == 6
    assert two["tokens_seen"] == one["tokens_seen"]
    for name, tensor in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], tensor, rtol=0, atol=2e-5)
    moved = max(
        (one["weights"][n] - _initial(tiny_converted_dir, n)).abs().max() for n in one["weights"]
    )
    assert moved > 1e-3  # the comparison is between trained weights, not two untouched copies
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def _initial(model_dir: Path, name: str) -> torch.Tensor:
    from selectmoe import SelectMoeForCausalLM

    return dict(SelectMoeForCausalLM.from_pretrained(model_dir).named_parameters())[name].detach()


def test_failed_launch_is_one_clear_error(tmp_path: Path, tiny_pool: dict[str, Path]) -> None:
    from selectmoe.errors import SelectMoeError

    with pytest.raises(SelectMoeError, match=r"warmup under accelerate launch \(2 processes\)"):
        run_training_stage(
            "warmup",
            inputs={
                "model_dir": tmp_path / "missing_model",
                "pool_files": _pool(tiny_pool),
                "output_path": tmp_path / "w.pt",
            },
            settings={"device": "cpu"},
            checkpoint_dir=tmp_path / "ckpt",
            num_processes=2,
        )
    assert not (tmp_path / "w.pt").exists()
