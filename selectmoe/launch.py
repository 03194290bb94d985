"""Run a stage in several processes under ``accelerate launch``: DDP training, parallel lm-eval.

A workflow job that holds more than one device calls :func:`run_distributed`; it writes the
settings (training stages) to a file beside the checkpoints, picks a free rendezvous port (so
that concurrent jobs on one machine never collide) and starts ``accelerate launch --multi_gpu
--num_processes N -m selectmoe STAGE ...``. For warmup and finetune each process is one DDP rank
(see :mod:`selectmoe.training`); for evaluate, lm-eval splits the requests over the GPUs and the
first process writes the results. On a machine without CUDA the processes run on the CPU with the
gloo backend, which is how the tests exercise the launch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selectmoe.errors import SelectMoeError

__all__ = [
    "free_port",
    "launch_command",
    "run_distributed",
    "run_evaluation_stage",
    "run_training_stage",
]

logger = logging.getLogger(__name__)

DISTRIBUTED_STAGES: tuple[str, ...] = ("warmup", "finetune", "evaluate")
# keyword argument of the stage function -> its command-line option
_STAGE_OPTIONS: dict[str, dict[str, str]] = {
    "warmup": {"model_dir": "--model", "pool_files": "--pool", "output_path": "--output"},
    "finetune": {"base_model": "--base-model", "selected_data": "--data", "output_dir": "--output"},
}


def free_port() -> int:
    """A TCP port on localhost that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(
    stage_args: Sequence[str], *, num_processes: int, port: int | None = None
) -> list[str]:
    """The ``accelerate launch`` command line that runs ``selectmoe STAGE_ARGS`` in N processes.

    Every launcher option is given explicitly, so no ``accelerate config`` file is needed.
    """
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port if port is not None else free_port()),
        "-m",
        "selectmoe",
        *stage_args,
    ]


def run_distributed(
    stage: str,
    *,
    arguments: Sequence[str],
    num_processes: int,
    settings: dict[str, Any] | None = None,
    settings_path: str | os.PathLike[str] | None = None,
) -> None:
    """Run ``selectmoe STAGE ARGUMENTS [--settings SETTINGS_PATH]`` under ``accelerate launch``.

    Parameters
    ----------
    stage : str
        ``warmup``, ``finetune`` or ``evaluate``.
    arguments : sequence of str
        The stage's command-line arguments (inputs, output, checkpoint directory, options).
    num_processes : int
        One process per device.
    settings : dict, optional
        The stage's settings, written as JSON to ``settings_path`` for the processes to read
        (training stages; evaluate takes everything as arguments).

    Raises
    ------
    SelectMoeError
        When the launched job fails; the processes' output is in the job's log (stderr).
    """
    if stage not in DISTRIBUTED_STAGES:
        raise SelectMoeError(
            f"stage {stage!r} cannot run distributed; valid: {', '.join(DISTRIBUTED_STAGES)}"
        )
    stage_args = [stage, *arguments]
    if settings is not None:
        if settings_path is None:
            raise SelectMoeError("run_distributed: settings given without a settings_path")
        path = Path(settings_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        stage_args += ["--settings", os.fspath(path)]
    command = launch_command(stage_args, num_processes=num_processes)
    logger.info("launching %d processes: %s", num_processes, " ".join(command))
    sys.stderr.flush()
    try:  # the job's log when run by the workflow; inherit the terminal otherwise
        sys.stderr.fileno()
        stream = sys.stderr
    except (AttributeError, OSError, ValueError):
        stream = None
    completed = subprocess.run(command, stdout=stream, stderr=stream, check=False)
    if completed.returncode != 0:
        raise SelectMoeError(
            f"{stage} under accelerate launch ({num_processes} processes) failed with exit "
            f"status {completed.returncode}; see the messages above in this log"
        )


def run_training_stage(
    stage: str,
    *,
    inputs: dict[str, Any],
    settings: dict[str, Any],
    checkpoint_dir: str | os.PathLike[str],
    num_processes: int = 1,
) -> Any:
    """Run the warmup or finetune stage in this process, or in ``num_processes`` DDP processes.

    Parameters
    ----------
    stage : str
        ``warmup`` (:func:`selectmoe.warmup.run_warmup`) or ``finetune``
        (:func:`selectmoe.finetune.run_finetune`).
    inputs : dict
        The stage function's path arguments (warmup: ``model_dir``, ``pool_files``,
        ``output_path``; finetune: ``base_model``, ``selected_data``, ``output_dir``).
    settings : dict
        Settings of the stage's dataclass; validated here before anything is launched.
    checkpoint_dir : path-like
        Training checkpoints, outside the job's declared outputs.
    num_processes : int
        Devices of the job; more than one starts ``accelerate launch``.
    """
    from selectmoe.cli import build_settings
    from selectmoe.finetune import FinetuneSettings, run_finetune
    from selectmoe.warmup import WarmupSettings, run_warmup

    if stage not in _STAGE_OPTIONS:
        raise SelectMoeError(
            f"unknown training stage {stage!r}; valid: {', '.join(DISTRIBUTED_STAGES)}"
        )
    settings_class, function = {
        "warmup": (WarmupSettings, run_warmup),
        "finetune": (FinetuneSettings, run_finetune),
    }[stage]
    parsed = build_settings(settings_class, dict(settings), section=stage)
    if num_processes <= 1:
        return function(**inputs, settings=parsed, checkpoint_dir=checkpoint_dir)
    arguments: list[str] = []
    for key, option in _STAGE_OPTIONS[stage].items():
        value = inputs[key]
        values = value if isinstance(value, list | tuple) else [value]
        arguments += [option, *(os.fspath(v) for v in values)]
    arguments += ["--checkpoint-dir", os.fspath(checkpoint_dir)]
    run_distributed(
        stage,
        arguments=arguments,
        settings=dict(settings),
        settings_path=Path(f"{os.fspath(checkpoint_dir).rstrip('/')}.settings.json"),
        num_processes=num_processes,
    )
    return None


def run_evaluation_stage(
    *,
    pretrained: str,
    adapters: Sequence[str | os.PathLike[str] | None],
    output_jsons: Sequence[str | os.PathLike[str]],
    samples_jsonls: Sequence[str | os.PathLike[str]] | None = None,
    evaluation: dict[str, Any],
    num_processes: int = 1,
) -> list[dict[str, Any]]:
    """lm-eval on ``pretrained`` with each adapter, in this process or data-parallel over N GPUs.

    Parameters
    ----------
    pretrained : str
        The target model.
    adapters : sequence of str or None
        LoRA adapter directories, evaluated one after the other on the base model loaded once;
        ``[None]`` evaluates the base model alone.
    output_jsons, samples_jsonls : sequence of path-like
        Per adapter, the results file and the per-document samples file
        (:func:`selectmoe.evaluation.evaluate_adapters`).
    evaluation : dict
        The config's ``evaluation`` section: ``tasks``, ``include_path``, ``num_fewshot``,
        ``batch_size``, ``limit``, ``device``, ``dtype``, ``seed``.
    num_processes : int
        Devices of the job; more than one runs ``selectmoe evaluate`` under ``accelerate
        launch``, where lm-eval gives each process its share of the requests.

    Returns
    -------
    list of dict
        The written results (empty when they were written by launched processes; read the files).
    """
    from selectmoe.evaluation import evaluate_adapters

    options = {
        "tasks": list(evaluation["tasks"]),
        "include_path": evaluation.get("include_path"),
        "num_fewshot": evaluation.get("num_fewshot"),
        "batch_size": evaluation.get("batch_size", 16),
        "limit": evaluation.get("limit"),
        "device": evaluation.get("device", "cpu"),
        "dtype": evaluation.get("dtype", "float32"),
        "seed": evaluation.get("seed", 42),
    }
    if num_processes <= 1:
        return evaluate_adapters(
            pretrained=pretrained,
            adapters=list(adapters),
            output_jsons=list(output_jsons),
            samples_jsonls=None if samples_jsonls is None else list(samples_jsonls),
            **options,
        )
    arguments = ["--base-model", os.fspath(pretrained)]
    arguments += ["--output", *(os.fspath(path) for path in output_jsons)]
    if any(adapter is not None for adapter in adapters):
        if any(adapter is None for adapter in adapters):
            raise SelectMoeError("a launched evaluation takes adapters for every run or for none")
        arguments += ["--adapter", *(os.fspath(a) for a in adapters if a is not None)]
    if samples_jsonls is not None:
        arguments += ["--samples", *(os.fspath(path) for path in samples_jsonls)]
    arguments += ["--tasks", *options["tasks"]]
    arguments += ["--batch-size", str(options["batch_size"]), "--seed", str(options["seed"])]
    arguments += ["--device", str(options["device"]), "--dtype", str(options["dtype"])]
    for key, option in (
        ("include_path", "--include-path"),
        ("num_fewshot", "--num-fewshot"),
        ("limit", "--limit"),
    ):
        if options[key] is not None:
            value = options[key]
            if isinstance(value, dict):  # per-task few-shot counts
                text = ",".join(f"{t}={n}" for t, n in value.items() if n is not None)
            else:
                text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
            arguments += [option, text]
    run_distributed("evaluate", arguments=arguments, num_processes=num_processes)
    return [{} for _ in output_jsons]
