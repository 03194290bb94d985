"""Set-up shared by the workflow's job scripts: logging into the rule's log, threads, errors.

Kept free of Snakemake imports: the scripts pass in what they read from the ``snakemake`` object.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from selectmoe.errors import SelectMoeError
from selectmoe.workflow.devices import gpu_environment
from selectmoe.workflow.plugins import load_plugins_from_environment
from selectmoe.workflow.provenance import write_provenance

__all__ = ["named_files", "run_job", "run_rule"]


def run_job(
    log_path: str | os.PathLike[str] | None,
    threads: int,
    job: Callable[[], Any],
    *,
    gpus: int = 0,
    job_name: str = "",
    provenance: Mapping[str, Any] | None = None,
) -> Any:
    """Run ``job`` with stderr and logging sent to ``log_path`` and torch limited to ``threads``.

    The config's plugin modules (``SELECTMOE_PLUGINS``, :mod:`selectmoe.workflow.plugins`) are
    imported
    first. The job holds ``gpus`` devices of the machine for its whole run, with
    ``CUDA_VISIBLE_DEVICES`` set to exactly them (none for ``gpus=0``); see
    :mod:`selectmoe.workflow.devices`. A :class:`SelectMoeError`, or a file that vanished while
    the job ran, is written to the log (and to the real stderr) as one line and the process exits
    with status 2, so Snakemake marks the job failed
    and removes its outputs. After a successful job, ``provenance`` (the arguments of
    :func:`selectmoe.workflow.provenance.write_provenance`, with ``path``; see
    :func:`selectmoe.workflow.provenance.job_provenance`) is written beside the outputs.
    """
    real_stderr = sys.stderr
    if log_path:
        os.makedirs(os.path.dirname(os.fspath(log_path)) or ".", exist_ok=True)
        sys.stderr = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        started = time.perf_counter()
        load_plugins_from_environment()  # the config's plugins register before anything runs
        with gpu_environment(int(gpus), job_name=job_name or str(log_path or "")):
            result = job()
        if provenance is not None:
            arguments = dict(provenance)
            write_provenance(
                arguments.pop("path"), **arguments, wall_time_s=time.perf_counter() - started
            )
        return result
    except (SelectMoeError, FileNotFoundError) as error:
        message = f"selectmoe: error: {_one_line(error)}"
        print(message, file=sys.stderr)
        if sys.stderr is not real_stderr:
            print(message, file=real_stderr)
        sys.exit(2)


def _one_line(error: Exception) -> str:
    """The job's failure in one line; a file that vanished while the job ran (a model, a dataset,
    an input removed or unmounted under it) is named, with what to do."""
    if isinstance(error, FileNotFoundError) and error.filename:
        return (
            f"{error.filename}: no such file or directory (it vanished while the job ran, or the "
            "path is wrong); put it back (or fix the config) and rerun with --rerun-incomplete"
        )
    return str(error)


def run_rule(job: Any, work: Callable[[Any], Any]) -> Any:
    """Run ``work(job)`` for a workflow script, ``job`` being the ``snakemake`` object Snakemake
    gives it: with the rule's log and threads, the GPUs of its ``gpu`` resource and the
    provenance of its outputs (:func:`run_job`), after checking its input files against the
    digests their jobs recorded (:func:`selectmoe.workflow.verify.check_inputs`)."""
    from selectmoe.workflow.provenance import job_provenance
    from selectmoe.workflow.verify import check_inputs

    def checked_work() -> Any:
        check_inputs(list(job.input))  # a damaged input stops the job before it is read
        return work(job)

    return run_job(
        job.log[0] if job.log else None,
        job.threads,
        checked_work,
        gpus=int(job.resources.get("gpu", 0)),
        provenance=job_provenance(job),
    )


def named_files(files: Any) -> dict[str, list[str]]:
    """A job's named inputs (Snakemake's ``input``) as ``{name: [paths]}``: a name with one file
    is a string there, a list here."""
    return {
        name: [value] if isinstance(value, str) else [str(v) for v in value]
        for name, value in files.items()
    }
