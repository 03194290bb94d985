"""Provenance of a workflow job: what produced an output, written beside it as JSON.

Every stage's job writes ``<output>.provenance.json`` (a declared output of its rule) after its
real outputs are complete. It records

- ``stage`` (the rule), ``wildcards`` and ``params``: the slice of the config the job used;
- ``inputs``: for every input file its size and SHA-256; for a directory (a model, an adapter)
  one SHA-256 over its files' relative paths and digests, with the file count and total size;
  anything else (a Hub model id) as given;
- ``outputs``: the job's other outputs, with the same digests;
- ``software``: the versions of Python, selectmoe and the libraries that compute results, the git
  commit of the workflow (and whether the checkout had uncommitted changes), the host and the
  GPUs the job saw (``CUDA_VISIBLE_DEVICES``);
- ``finished``: the UTC time the job finished and its wall time.

Timestamps, host and wall time differ between two runs of the same config; everything else is a
function of the inputs and the config, so two provenance files can be compared without them
(:func:`comparable`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from selectmoe.hashing import file_sha256
from selectmoe.io import atomic_write_json

__all__ = [
    "PROVENANCE_SUFFIX",
    "comparable",
    "digest",
    "job_provenance",
    "load_provenance",
    "software_versions",
    "write_provenance",
]

PROVENANCE_SUFFIX = ".provenance.json"
# packages whose version can change a number the workflow reports
_PACKAGES = (
    "selectmoe",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "lm_eval",
    "tokenizers",
    "datasets",
    "numpy",
    "scikit-learn",
    "kneed",
    "snakemake",
)
# keys that differ between two runs of the same job
_VOLATILE = ("finished", "wall_time_s", "host")


def digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and SHA-256 of a file, or of a directory's files; the value itself otherwise.

    A directory's digest is the SHA-256 of the lines ``<relative path> <file sha256>`` of its
    files in sorted order, so it changes when any file, name or the set of files changes.
    """
    location = Path(path)
    if location.is_file():
        return {
            "path": os.fspath(path),
            "bytes": location.stat().st_size,
            "sha256": file_sha256(location),
        }
    if location.is_dir():
        files = sorted(p for p in location.rglob("*") if p.is_file())
        listing = hashlib.sha256()
        total = 0
        for file in files:
            listing.update(
                f"{file.relative_to(location).as_posix()} {file_sha256(file)}\n".encode()
            )
            total += file.stat().st_size
        return {
            "path": os.fspath(path),
            "files": len(files),
            "bytes": total,
            "sha256": listing.hexdigest(),
        }
    return {"path": os.fspath(path), "exists": False}


def _git_commit(directory: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", os.fspath(directory), *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def software_versions(workflow_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Python, package versions and the git commit of ``workflow_dir`` (default: this package's)."""
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    directory = Path(workflow_dir) if workflow_dir else Path(__file__).resolve().parents[1]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git": _git_commit(directory),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        return f"<function {getattr(value, '__qualname__', type(value).__name__)}>"
    return str(value)


def _paths(values: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for value in values:
        if isinstance(value, list | tuple):
            out.extend(_paths(value))
        else:
            out.append(os.fspath(value))
    return out


def write_provenance(
    path: str | os.PathLike[str],
    *,
    stage: str,
    inputs: Mapping[str, Any],
    outputs: Iterable[str | os.PathLike[str]],
    params: Mapping[str, Any] | None = None,
    wildcards: Mapping[str, Any] | None = None,
    wall_time_s: float | None = None,
    workflow_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the provenance JSON of one job to ``path`` (atomically) and return it.

    Parameters
    ----------
    path : path-like
        Where to write, by convention ``<main output>.provenance.json``.
    stage : str
        The rule or stage name.
    inputs : mapping
        Input name -> path or list of paths (Hub ids and other non-paths are kept as given).
    outputs : iterable of path-like
        The job's outputs, digested after they are complete.
    params : mapping, optional
        The configuration the job used (the rule's ``params``).
    wildcards : mapping, optional
        The job's wildcards.
    """
    record = {
        "stage": stage,
        "wildcards": _jsonable(dict(wildcards or {})),
        "params": _jsonable(dict(params or {})),
        "inputs": {
            name: [digest(p) for p in _paths(v if isinstance(v, list | tuple) else [v])]
            for name, v in inputs.items()
        },
        "outputs": [digest(p) for p in _paths(outputs)],
        "software": software_versions(workflow_dir),
        "host": socket.gethostname(),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 3),
    }
    atomic_write_json(path, record)
    return record


def job_provenance(smk: Any) -> dict[str, Any] | None:
    """Provenance arguments from a Snakemake job object (``snakemake`` in a rule's script).

    None when the rule declares no ``provenance`` output. Read duck-typed, so this module does not
    import Snakemake.
    """
    output_names = dict(smk.output.items())
    target = output_names.pop("provenance", None)
    if target is None:
        return None
    inputs: dict[str, Any] = dict(smk.input.items())
    named = {os.fspath(p) for v in inputs.values() for p in _paths([v])}
    unnamed = [p for p in _paths(list(smk.input)) if p not in named]
    if unnamed:
        inputs["other"] = unnamed
    params = {name: value for name, value in smk.params.items() if not callable(value)}
    return {
        "path": target,
        "stage": smk.rule,
        "inputs": inputs,
        "outputs": list(output_names.values()),
        "params": params,
        "wildcards": dict(smk.wildcards.items()),
        "workflow_dir": getattr(smk, "scriptdir", None) and Path(smk.scriptdir).parent,
    }


def comparable(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record without what differs between two runs of the same job (times, host)."""
    return {k: v for k, v in record.items() if k not in _VOLATILE}


def load_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a provenance JSON."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
