"""Run a stage in this process or in several under ``accelerate launch``: DDP training,
data-parallel lm-eval.

A stage is described by a *job description*, a JSON-ready mapping ``{"stage", "inputs",
"settings", "checkpoint_dir"}``, and :func:`run_job` runs one in the calling process. A workflow
job that holds one device calls it directly; one that holds N devices writes the description to
a file, picks a free rendezvous port (so that concurrent jobs on one machine never collide) and
starts ``accelerate launch --multi_gpu --num_processes N -m selectmoe.workflow.launch JOB.json``:
every
process reads the same description and calls the same :func:`run_job`. For warmup and finetune
each process is one DDP rank (see :mod:`selectmoe.training.loop`); for evaluate, lm-eval splits the
requests over the GPUs and the first process writes the results. On a machine without CUDA the
processes run on the CPU with the gloo backend, which is how the tests exercise the launch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selectmoe.errors import SelectMoeError, exit_status

__all__ = [
    "DISTRIBUTED_STAGES",
    "free_port",
    "launch_command",
    "run_distributed",
    "run_evaluation_stage",
    "run_job",
    "run_training_stage",
]

logger = logging.getLogger(__name__)

DISTRIBUTED_STAGES: tuple[str, ...] = ("warmup", "finetune", "evaluate")
#: The keys of the config's ``evaluation`` section that the evaluate stage takes (the others
#: keep :func:`selectmoe.stages.evaluation.evaluate_adapters`'s defaults, the schema's).
EVALUATION_KEYS: tuple[str, ...] = (
    "tasks",
    "include_path",
    "num_fewshot",
    "batch_size",
    "limit",
    "device",
    "dtype",
    "seed",
)
#: The path arguments of each stage's function (the job description's ``inputs``).
_STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "warmup": ("model_dir", "pool_files", "output_path"),
    "finetune": ("base_model", "selected_data", "output_dir"),
    "evaluate": ("pretrained", "adapters", "output_jsons", "samples_jsonls"),
}


def free_port() -> int:
    """A TCP port on localhost that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(
    stage_args: Sequence[str],
    *,
    num_processes: int,
    port: int | None = None,
    module: str = "selectmoe",
) -> list[str]:
    """The ``accelerate launch`` command line that runs ``python -m MODULE STAGE_ARGS`` in N
    processes (``selectmoe``: the command line; ``selectmoe.workflow.launch``: a job description
    file).

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
        module,
        *stage_args,
    ]


def _jsonable(value: Any) -> Any:
    """Paths as strings, sequences as lists (the job description is JSON)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _stage_function(stage: str) -> tuple[type, Any]:
    """The settings dataclass and the function of a training stage."""
    if stage == "warmup":
        from selectmoe.stages.warmup import WarmupSettings, run_warmup

        return WarmupSettings, run_warmup
    from selectmoe.stages.finetune import FinetuneSettings, run_finetune

    return FinetuneSettings, run_finetune


def run_job(job: Mapping[str, Any], *, settings: Any = None) -> Any:
    """Run the stage a job description names, in this process (one rank of a launch, or alone).

    Parameters
    ----------
    job : mapping
        ``stage`` (``warmup``, ``finetune`` or ``evaluate``); ``inputs``, the stage function's
        path arguments (warmup: ``model_dir``, ``pool_files``, ``output_path``; finetune:
        ``base_model``, ``selected_data``, ``output_dir``; evaluate: ``pretrained``,
        ``adapters``, ``output_jsons``, ``samples_jsonls``); ``settings``, the stage's settings
        (warmup / finetune: the keys of its settings dataclass; evaluate: ``tasks``,
        ``include_path``, ``num_fewshot``, ``batch_size``, ``limit``, ``device``, ``dtype``,
        ``seed``); ``checkpoint_dir`` for the training stages.

    Returns
    -------
    The stage function's result.
    """
    from selectmoe.workflow.config import build_settings

    stage = job["stage"]
    if stage not in DISTRIBUTED_STAGES:
        raise SelectMoeError(f"unknown stage {stage!r}; valid: {', '.join(DISTRIBUTED_STAGES)}")
    inputs = dict(job["inputs"])
    missing = sorted(set(_STAGE_INPUTS[stage]) - set(inputs))
    if missing:
        raise SelectMoeError(f"the {stage} job description lacks input(s) {', '.join(missing)}")
    if stage == "evaluate":
        from selectmoe.stages.evaluation import evaluate_adapters

        return evaluate_adapters(**inputs, **job["settings"])
    settings_class, function = _stage_function(stage)
    if settings is None:  # a launched process: its job description is the boundary
        settings = build_settings(settings_class, dict(job["settings"]), section=stage)
    return function(**inputs, settings=settings, checkpoint_dir=job["checkpoint_dir"])


def run_distributed(
    job: Mapping[str, Any], *, job_path: str | os.PathLike[str], num_processes: int
) -> None:
    """Run ``job`` (see :func:`run_job`) in ``num_processes`` processes under ``accelerate
    launch``; the description is written to ``job_path`` for the processes to read.

    Raises
    ------
    SelectMoeError
        When the launched job fails; the processes' output is in the job's log (stderr).
    """
    path = Path(job_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(dict(job)), indent=2, default=_jsonable), "utf-8")
    command = launch_command(
        [os.fspath(path)], num_processes=num_processes, module="selectmoe.workflow.launch"
    )
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
            f"{job['stage']} under accelerate launch ({num_processes} processes) failed with "
            f"exit status {completed.returncode}; see the messages above in this log"
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
        ``warmup`` (:func:`selectmoe.stages.warmup.run_warmup`) or ``finetune``
        (:func:`selectmoe.stages.finetune.run_finetune`).
    inputs : dict
        The stage function's path arguments (warmup: ``model_dir``, ``pool_files``,
        ``output_path``; finetune: ``base_model``, ``selected_data``, ``output_dir``).
    settings : dict
        Settings of the stage's dataclass; validated here before anything is launched.
    checkpoint_dir : path-like
        Training checkpoints, outside the job's declared outputs.
    num_processes : int
        Devices of the job; more than one starts ``accelerate launch``.

    Returns
    -------
    The stage function's result in this process; None when launched.
    """
    from selectmoe.workflow.config import build_settings

    if stage not in ("warmup", "finetune"):
        raise SelectMoeError(f"unknown training stage {stage!r}; valid: warmup, finetune")
    settings_class, _ = _stage_function(stage)
    # built once, here: a bad value fails before anything is launched
    built = build_settings(settings_class, dict(settings), section=stage)
    job = {
        "stage": stage,
        "inputs": dict(inputs),
        "settings": dict(settings),
        "checkpoint_dir": os.fspath(checkpoint_dir),
    }
    if num_processes <= 1:
        return run_job(job, settings=built)
    job_path = Path(f"{os.fspath(checkpoint_dir).rstrip('/')}.job.json")
    try:
        run_distributed(job, job_path=job_path, num_processes=num_processes)
    finally:
        job_path.unlink(missing_ok=True)
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
        (:func:`selectmoe.stages.evaluation.evaluate_adapters`).
    evaluation : dict
        The config's ``evaluation`` section: ``tasks``, ``include_path``, ``num_fewshot``,
        ``batch_size``, ``limit``, ``device``, ``dtype``, ``seed``.
    num_processes : int
        Devices of the job; more than one runs the same evaluation under ``accelerate
        launch``, where lm-eval gives each process its share of the requests.

    Returns
    -------
    list of dict
        The written results (empty when they were written by launched processes; read the files).
    """
    job = {
        "stage": "evaluate",
        "inputs": {
            "pretrained": pretrained,
            "adapters": list(adapters),
            "output_jsons": list(output_jsons),
            "samples_jsonls": None if samples_jsonls is None else list(samples_jsonls),
        },
        "settings": {key: evaluation[key] for key in EVALUATION_KEYS if key in evaluation},
    }
    if num_processes <= 1:
        return run_job(job)
    job_path = Path(f"{os.fspath(output_jsons[0])}.job.json")
    try:
        run_distributed(job, job_path=job_path, num_processes=num_processes)
    finally:
        job_path.unlink(missing_ok=True)
    return [{} for _ in output_jsons]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m selectmoe.workflow.launch JOB.json``: one process of a launched job."""
    from selectmoe.workflow.plugins import load_plugins_from_environment

    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        print("usage: python -m selectmoe.workflow.launch JOB.json", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def run() -> None:
        load_plugins_from_environment()  # every process of a launch registers the plugins
        path = Path(arguments[0])
        if not path.is_file():
            raise SelectMoeError(f"{path}: no such job description (written by run_distributed)")
        run_job(json.loads(path.read_text(encoding="utf-8")))

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
