"""User-facing error types.

Every error the package raises on bad input is a :class:`SelectMoeError` whose message is one line
saying what is wrong, where (file, line, field) and how to fix it. The command line prints that line
and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "ConfigError",
    "DataError",
    "EvaluationError",
    "IntegrityError",
    "ModelError",
    "RouterDataError",
    "SelectMoeError",
    "SelectionError",
    "TrainingError",
    "check_int",
    "exit_status",
]


class SelectMoeError(ValueError):
    """Bad input or a failed precondition, explained in one line."""


class DataError(SelectMoeError):
    """A training-pool file is malformed (names the file, the line and the problem)."""


class ConfigError(SelectMoeError):
    """A configuration value is missing or out of range (names the key and the allowed values)."""


class ModelError(SelectMoeError):
    """A model directory or checkpoint is missing or does not have the expected architecture."""


class RouterDataError(SelectMoeError):
    """A router-data file is missing keys, has the wrong shapes or holds NaN/Inf values."""


class SelectionError(SelectMoeError):
    """Selection cannot proceed with the given settings and data."""


class EvaluationError(SelectMoeError):
    """An evaluation task or model cannot be found or run."""


class TrainingError(SelectMoeError):
    """Training cannot go on: a non-finite loss or gradient norm (names the step and value)."""


class IntegrityError(SelectMoeError):
    """A file differs from the digest recorded when it was written, or cannot be written (names
    the file and what to do)."""


def exit_status(run: Callable[[], Any]) -> int:
    """Call ``run``: 0 when it returns, 2 after printing ``selectmoe: error: ...`` (one line, to
    stderr) when it raises a :class:`SelectMoeError`. Entry points return this as their status."""
    try:
        run()
    except SelectMoeError as error:
        print(f"selectmoe: error: {error}", file=sys.stderr)
        return 2
    return 0


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int,
    maximum: int | None = None,
    error: type[Exception] = ValueError,
    wording: str = "is",
) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[minimum, maximum]``.

    Raises ``error`` otherwise, in one of the two wordings the package uses: ``"is"`` (settings:
    "n is 0; it must be >= 1") or ``"got"`` (function arguments: "n must be >= 1, got 0").
    """
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise error(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        if wording == "got":
            bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise error(f"{name} must be {bound}, got {value}")
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{name} is {value}; it must be {allowed}")
    return value
