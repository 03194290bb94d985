"""Faults of the machine, not the data: a full or read-only filesystem while writing an output.

The disk-full tests write onto a real small filesystem (a tmpfs mounted by the test) where the
machine allows mounting; the message test injects the errno and runs everywhere."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from selectmoe.errors import IntegrityError
from selectmoe.io import atomic_output_dir, atomic_torch_save, atomic_write_text


def _mount_tmpfs(directory: Path, size: str, *, remount: bool = False) -> bool:
    options = f"remount,size={size}" if remount else f"size={size}"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", os.fspath(directory)],
        capture_output=True,
    )
    return result.returncode == 0


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted afterwards (skipped where the machine allows no mount)."""
    directory = tmp_path / "small"
    directory.mkdir()
    if not _mount_tmpfs(directory, "64k"):
        pytest.skip("mounting a tmpfs is not permitted here (the injected-errno test runs)")
    try:
        yield directory
    finally:
        # lazily: a failed torch.save may still hold a descriptor of its removed file there
        subprocess.run(["umount", "-l", os.fspath(directory)], capture_output=True)


def test_a_full_filesystem_is_named_with_the_file_and_its_free_space(
    small_filesystem: Path,
) -> None:
    """torch's writer says only "unexpected pos"; the error names the file, the full filesystem
    and what to do, and nothing partial is left."""
    target = small_filesystem / "out" / "weights.pt"
    with pytest.raises(IntegrityError) as raised:
        atomic_torch_save({"w": torch.zeros(100_000)}, target)
    message = str(raised.value)
    assert message.startswith(f"cannot write {target}: the filesystem is full (")
    assert "free of 64.0 KiB on the filesystem of" in message and "--rerun-incomplete" in message
    assert "\n" not in message
    assert [p for p in small_filesystem.rglob("*") if p.is_file()] == []


def test_a_finetune_onto_a_full_filesystem_fails_cleanly_and_reruns_to_the_reference(
    small_filesystem: Path, tmp_path: Path, tiny_llama_dir: Path, tiny_pool: dict[str, Path]
) -> None:
    """The adapter does not fit: one line naming the file and the filesystem, no adapter
    directory left; after space is freed, the rerun's adapter equals an undisturbed run's."""
    import json

    from selectmoe.stages.finetune import FinetuneSettings, run_finetune

    records = [json.loads(line) for line in tiny_pool["alpha"].read_text().splitlines()[:4]]
    selection = tmp_path / "selected_data.jsonl"
    selection.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = FinetuneSettings(
        lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, epochs=1,
        effective_batch_size=2, per_device_batch_size=2, bf16=False, device="cpu",
    )  # fmt: skip

    def finetune(output: Path) -> None:
        run_finetune(
            base_model=str(tiny_llama_dir),
            selected_data=selection,
            output_dir=output,
            settings=settings,
        )

    reference = tmp_path / "reference"
    finetune(reference)
    adapter_bytes = sum(p.stat().st_size for p in reference.iterdir())
    assert adapter_bytes > 4096
    assert _mount_tmpfs(small_filesystem, "4k", remount=True)  # one page: the adapter cannot fit
    output = small_filesystem / "adapter"
    with pytest.raises(IntegrityError, match=r"^cannot write .*: the filesystem is full \("):
        finetune(output)
    assert list(small_filesystem.iterdir()) == []  # no adapter, no temporary directory
    assert _mount_tmpfs(small_filesystem, "4m", remount=True)  # space freed
    finetune(output)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (output / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "the filesystem is full"),
        (errno.EDQUOT, "the disk quota is exceeded"),
        (errno.EROFS, "the filesystem is read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_each_environment_errno_becomes_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    def failing_replace(source: str, destination: str) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", failing_replace)
    target = tmp_path / "file.txt"
    with pytest.raises(IntegrityError) as raised:
        atomic_write_text(target, "text")
    assert re.match(
        rf"cannot write {re.escape(str(target))}: {reason} \(\S+ \S+ free of \S+ \S+ on the "
        rf"filesystem of {re.escape(str(tmp_path))}\); ",
        str(raised.value),
    )
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_an_error_of_the_job_itself_is_not_taken_for_the_machine(tmp_path: Path) -> None:
    with pytest.raises(KeyError), atomic_output_dir(tmp_path / "out"):
        raise KeyError("a bug, not a disk")
    assert list(tmp_path.iterdir()) == []


def _scored_results(workdir: Path) -> Path:
    """A results directory with one scoring job's router data and its provenance."""
    from selectmoe.workflow.provenance import write_provenance

    router_data = Path("results/router_data/sigmoid/r1/dolly/router_data.pt")
    (workdir / router_data).parent.mkdir(parents=True)
    torch.save({"quality_score": torch.rand(50, 4)}, workdir / router_data)
    cwd = os.getcwd()
    os.chdir(workdir)  # provenance records paths relative to the workflow's directory
    try:
        write_provenance(
            f"{router_data}.provenance.json", stage="score", inputs={}, outputs=[router_data]
        )
    finally:
        os.chdir(cwd)
    return workdir / router_data


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_finds_a_flipped_byte_in_router_data_and_names_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from selectmoe.cli import main

    router_data = _scored_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["verify", "results"]) == 0
    assert "[verify] 1 outputs under results match their provenance" in capsys.readouterr().out
    _flip_one_byte(router_data)
    assert main(["verify", "results"]) == 2
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line.startswith("results/router_data/sigmoid/r1/dolly/router_data.pt: content sha256 ")
    assert line.endswith("rerun rule score (snakemake --forcerun score ... , or delete the file "
                         "and rerun)")  # fmt: skip
    assert "1 of 1 outputs under results differ from their provenance" in captured.err
    router_data.unlink()
    assert main(["verify", "results"]) == 2
    assert ": missing; rerun rule score" in capsys.readouterr().out
    assert main(["verify", "no_such_results"]) == 2
    assert "no_such_results: not a directory" in capsys.readouterr().err


def test_a_job_refuses_a_damaged_input_before_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selectmoe.workflow.verify import check_inputs

    router_data = _scored_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    relative = router_data.relative_to(tmp_path)
    check_inputs([relative])  # intact: nothing to say
    _flip_one_byte(router_data)
    with pytest.raises(IntegrityError, match=rf"^{re.escape(str(relative))}: content sha256 .*"
                       r"rerun rule score"):  # fmt: skip
        check_inputs([relative])


def test_warmup_weights_with_nan_are_refused_with_the_file_and_tensor(
    tmp_path: Path, tiny_converted_dir: Path
) -> None:
    from selectmoe.errors import ModelError
    from selectmoe.model.warmed import load_warmed_model

    weights = {"model.layers.0.mlp.gate.weight": torch.zeros(8, 32)}
    weights["model.layers.0.mlp.gate.weight"][3, 5] = float("nan")
    path = tmp_path / "full_rank_weights.pt"
    torch.save({"weights": weights, "peft_mode": "full_rank"}, path)
    expected = (
        f"{path}: tensor model.layers.0.mlp.gate.weight has 1 NaN or infinite values of 256; "
        "the weights are unusable: rerun rule warmup"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(expected)}$"):
        load_warmed_model(tiny_converted_dir, path)


def test_an_adapter_with_nan_weights_is_refused_before_evaluation(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from selectmoe.errors import EvaluationError
    from selectmoe.stages.evaluation import evaluate_adapters

    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("inf"))
    save_file(tensors, adapter / "adapter_model.safetensors")
    expected = (
        rf"adapter_model.safetensors: tensor {re.escape(name)} has \d+ NaN or infinite values "
        r"of \d+; .* rerun rule finetune$"
    )
    with pytest.raises(EvaluationError, match=expected):
        evaluate_adapters(
            pretrained=str(tiny_llama_dir),
            adapters=[adapter],
            tasks=["arc_easy"],
            output_jsons=[tmp_path / "results.json"],
        )
    assert not (tmp_path / "results.json").exists()


def test_a_file_that_vanishes_while_a_job_runs_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selectmoe.workflow.runtime import run_job

    model = tmp_path / "model" / "model.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"weights")

    def job() -> None:
        model.unlink()  # removed (or unmounted) under the running job
        model.read_bytes()

    with pytest.raises(SystemExit) as raised:
        run_job(None, 1, job)
    assert raised.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"selectmoe: error: {model}: no such file or directory (it vanished while the job ran, "
        "or the path is wrong); put it back (or fix the config) and rerun with --rerun-incomplete"
    )
