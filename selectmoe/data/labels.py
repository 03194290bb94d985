"""Quality labels of a pool: which examples are known to be bad (planted noise), and of what kind.

A labels file is JSONL, one line per pool example::

    {"dataset": "dolly", "id": "dolly_8", "planted": true, "kind": "wrong_answer"}

``planted`` (bool) is required; ``kind`` is optional (default ``"planted"`` or ``"clean"``). The
embedded demo writes such a file (``noise_labels.jsonl``); a user with a labelled pool gives one
by config (``data.labels``). No selection method reads it: only the reference selections
``oracle`` / ``anti_oracle`` (marked as using labels a real pool lacks) and the diagnostics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from selectmoe.data.pool import iter_jsonl_records
from selectmoe.errors import DataError

__all__ = ["CLEAN", "PoolLabels", "align_labels", "load_labels"]

CLEAN = "clean"
"""The ``kind`` of an example that is not planted."""


@dataclass(frozen=True)
class PoolLabels:
    """Labels in the order of the examples they were aligned to.

    Attributes
    ----------
    planted : numpy.ndarray of shape (N,), bool
    kinds : list of str, length N
        ``"clean"`` for examples that are not planted.
    source : str
        The labels file.
    """

    planted: np.ndarray
    kinds: list[str]
    source: str

    @property
    def planted_share(self) -> float:
        return float(self.planted.mean()) if self.planted.size else 0.0


def _fail(path: str, line: int, problem: str, fix: str) -> DataError:
    return DataError(f"{path}:{line}: {problem}; {fix}")


def load_labels(path: str | os.PathLike[str]) -> dict[tuple[str, str], tuple[bool, str]]:
    """Read a labels file: ``{(dataset, id): (planted, kind)}``.

    Raises
    ------
    DataError
        Naming the file and line: missing file, invalid JSON, a line that is not an object,
        a missing or non-string ``dataset`` / ``id``, ``planted`` not a boolean, a ``kind`` that
        is not a string or says ``clean`` for a planted example, a repeated ``(dataset, id)``,
        an empty file.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise DataError(
            f"{path_str}: labels file not found; set data.labels to a JSONL file of "
            '{"dataset", "id", "planted"} lines, or null'
        )
    labels: dict[tuple[str, str], tuple[bool, str]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for line, record in iter_jsonl_records(path_str):
        if not isinstance(record, dict):
            raise _fail(path_str, line, "expected a JSON object", "write one object per line")
        key = []
        for field in ("dataset", "id"):
            value = record.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and field == "id":
                value = str(value)
            if not isinstance(value, str) or not value:
                raise _fail(
                    path_str, line, f"missing or empty field {field!r}", "name the pool example"
                )
            key.append(value)
        planted = record.get("planted")
        if not isinstance(planted, bool):
            raise _fail(
                path_str,
                line,
                f"field 'planted' is {planted!r}, not true or false",
                "mark every example planted (true) or clean (false)",
            )
        kind = record.get("kind", "planted" if planted else CLEAN)
        if not isinstance(kind, str) or not kind:
            raise _fail(path_str, line, f"field 'kind' is {kind!r}", "give a non-empty string")
        if planted == (kind == CLEAN):
            raise _fail(
                path_str,
                line,
                f"planted is {str(planted).lower()} but kind is {kind!r}",
                f"kind {CLEAN!r} is for clean examples only",
            )
        pair = (key[0], key[1])
        if pair in labels:
            raise _fail(
                path_str,
                line,
                f"example {pair[1]!r} of dataset {pair[0]!r} is labelled twice (first on line "
                f"{first_line[pair]})",
                "keep one label per example",
            )
        labels[pair] = (planted, kind)
        first_line[pair] = line
    if not labels:
        raise DataError(f"{path_str}: labels file is empty; label the pool or set data.labels null")
    return labels


def align_labels(path: str | os.PathLike[str], keys: Sequence[tuple[str, str]]) -> PoolLabels:
    """The labels of the examples ``keys`` (``(dataset, id)`` pairs), in their order.

    The file must label exactly the pool: every key, and nothing else.

    Raises
    ------
    DataError
        When the file is bad (see :func:`load_labels`), leaves pool examples unlabelled, or
        labels examples that are not in the pool (the message counts them and names a few).
    """
    labels = load_labels(path)
    path_str = os.fspath(path)
    missing = [key for key in keys if key not in labels]
    if missing:
        names = ", ".join(f"{d}/{i}" for d, i in missing[:3])
        raise DataError(
            f"{path_str}: {len(missing)} of {len(keys)} pool examples have no label (e.g. "
            f"{names}); label every example of the pool (is it the labels file of this pool?)"
        )
    extra = sorted(set(labels) - set(keys))
    if extra:
        names = ", ".join(f"{d}/{i}" for d, i in extra[:3])
        raise DataError(
            f"{path_str}: {len(extra)} labelled examples are not in the pool (e.g. {names}); "
            "the labels must describe exactly the pool that is selected from"
        )
    planted = np.fromiter((labels[key][0] for key in keys), dtype=bool, count=len(keys))
    return PoolLabels(planted=planted, kinds=[labels[key][1] for key in keys], source=path_str)


def describe(labels: PoolLabels) -> dict[str, Any]:
    """Counts per kind and the planted share (for selection.json and reports)."""
    kinds, counts = np.unique(np.asarray(labels.kinds), return_counts=True)
    return {
        "labels_file": labels.source,
        "planted_share": labels.planted_share,
        "kinds": {str(kind): int(count) for kind, count in zip(kinds, counts, strict=True)},
    }
