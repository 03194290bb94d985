"""Re-check a results directory against the digests its provenance recorded.

Every job's provenance (:mod:`selectmoe.workflow.provenance`) records the SHA-256 of each output
when the job finished. :func:`verify_results` digests every recorded output again and reports
those whose bytes changed since (bit rot, a half-synced copy, an edit by hand) or that are gone,
with the rule to rerun; ``selectmoe verify RESULTS_DIR`` prints the report and exits non-zero
when anything is damaged. A job's input is checked the same way before the job uses it
(:func:`check_inputs`), so a damaged router-data file stops the selection that would read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectmoe.errors import IntegrityError
from selectmoe.workflow.provenance import PROVENANCE_SUFFIX, digest, load_provenance

__all__ = ["Damage", "check_inputs", "format_damage", "verify_results"]


@dataclass(frozen=True)
class Damage:
    """One output whose bytes differ from its provenance (or that is gone)."""

    path: str
    rule: str
    provenance: str
    recorded: str
    #: the digest now, or None when the output is missing
    actual: str | None


def _recorded_outputs(provenance_path: Path) -> tuple[str, list[Mapping[str, Any]]]:
    record = load_provenance(provenance_path)
    outputs = [o for o in record.get("outputs", []) if isinstance(o, dict) and "sha256" in o]
    return str(record.get("stage", "?")), outputs


def _check(entry: Mapping[str, Any], base: Path) -> str | bool | None:
    """The output's digest now when it differs from ``entry``, None when it is missing, True
    when it is intact."""
    path = Path(entry["path"])
    location = path if path.is_absolute() else base / path
    if not location.exists():
        return None
    now = digest(location)
    return True if now.get("sha256") == entry["sha256"] else now.get("sha256")


def verify_results(
    results_dir: str | os.PathLike[str], *, workdir: str | os.PathLike[str] | None = None
) -> tuple[int, list[Damage]]:
    """Digest every output recorded by the provenance files under ``results_dir``.

    Parameters
    ----------
    results_dir
        The workflow's ``results_dir``.
    workdir
        The directory the workflow ran in (recorded paths are relative to it); default: the
        current directory.

    Returns
    -------
    (checked, damaged)
        The number of outputs checked and the damaged or missing ones, in path order.
    """
    base = Path(workdir) if workdir is not None else Path.cwd()
    if not Path(results_dir).is_dir():
        raise IntegrityError(
            f"{os.fspath(results_dir)}: not a directory; give the workflow's results_dir (run from "
            "the workflow's directory or pass --workdir)"
        )
    checked, damaged = 0, []
    for provenance_path in sorted(Path(results_dir).rglob(f"*{PROVENANCE_SUFFIX}")):
        rule, outputs = _recorded_outputs(provenance_path)
        for entry in outputs:
            checked += 1
            state = _check(entry, base)
            if state is not True:
                damaged.append(
                    Damage(entry["path"], rule, os.fspath(provenance_path), entry["sha256"], state)
                )
    return checked, sorted(damaged, key=lambda d: d.path)


def format_damage(damage: Damage) -> str:
    """One line: the file, what is wrong, the rule to rerun."""
    what = (
        "missing"
        if damage.actual is None
        else f"content sha256 {damage.actual[:16]}..., recorded {damage.recorded[:16]}..."
    )
    return (
        f"{damage.path}: {what}; rerun rule {damage.rule} "
        f"(snakemake --forcerun {damage.rule} ... , or delete the file and rerun)"
    )


def check_inputs(inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Verify each input *file* against the provenance of the job that wrote it, before use.

    The producing job's provenance is ``<input>.provenance.json`` or another provenance file in
    the input's directory that lists it. Inputs no provenance records (the user's pool, models)
    and directories (digesting a model directory per job would cost more than it saves) are
    not checked.

    Raises
    ------
    IntegrityError
        Naming the file, both digests and the rule to rerun.
    """
    by_directory: dict[Path, list[Path]] = {}
    for value in inputs:
        path = Path(value)
        if path.is_file() and not path.name.endswith(PROVENANCE_SUFFIX):
            by_directory.setdefault(path.parent, []).append(path)
    for directory, paths in by_directory.items():
        recorded: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for provenance_path in sorted(directory.glob(f"*{PROVENANCE_SUFFIX}")):
            try:
                rule, outputs = _recorded_outputs(provenance_path)
            except (OSError, ValueError):
                continue
            for entry in outputs:
                recorded[os.path.realpath(entry["path"])] = (rule, entry)
        for path in paths:
            found = recorded.get(os.path.realpath(path))
            if found is None:
                continue
            rule, entry = found
            state = _check(entry, Path.cwd())
            if state is not True:
                raise IntegrityError(
                    format_damage(Damage(os.fspath(path), rule, "", entry["sha256"], state))
                )
