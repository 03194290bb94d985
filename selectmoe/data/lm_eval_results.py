"""lm-eval's results files: reading the results JSON and each task's metrics (the evaluate stage
writes them, the summary reads them)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selectmoe.errors import EvaluationError

__all__ = ["config_digest", "evaluation_contracts", "load_results", "read_task_metrics"]


# Keys of an lm-eval per-task result entry that are not metrics (``sample_len`` is numeric).
_NON_METRIC_KEYS = frozenset({"alias", "name", "sample_len", "samples"})


def load_results(results_json: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an lm-eval results JSON and check that it has a non-empty ``results`` block.

    Parameters
    ----------
    results_json : path
        A file written by :func:`run_lm_eval` (or lm-eval's own ``results_*.json``).

    Returns
    -------
    dict
        The parsed JSON object.

    Raises
    ------
    EvaluationError
        If the file is missing, is not valid JSON, or has no per-task results.
    """
    path = Path(results_json)
    if not path.is_file():
        raise EvaluationError(f"results file not found: {path}; run the evaluate step first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvaluationError(
            f"invalid JSON in results file {path}: line {err.lineno}, column {err.colno}: "
            f"{err.msg}; delete it and re-run the evaluate step"
        ) from err
    except UnicodeDecodeError as err:
        raise EvaluationError(f"results file {path} is not UTF-8 text: {err}") from err
    _check_results_block(data, where=str(path))
    return data


def read_task_metrics(
    results_json: str | os.PathLike[str] | Mapping[str, Any],
) -> dict[str, dict[str, float]]:
    """Per-task metrics of an lm-eval results JSON, without stderr and without the ``,none`` suffix.

    lm-eval keys a metric as ``"<metric>,<filter>"`` (``"acc,none"``) and stores its standard
    error beside it (``"acc_stderr,none"``). The default filter ``none`` is stripped; other filter
    names are kept (``"exact_match,strict-match"``). Non-numeric values (lm-eval writes ``"N/A"``
    for a stderr it could not compute) are skipped.

    Parameters
    ----------
    results_json : path or mapping
        A results file, or the already-parsed object.

    Returns
    -------
    dict of str to dict of str to float
        ``{task: {metric: value}}``, tasks and metrics in file order; groups appear as tasks.

    Raises
    ------
    EvaluationError
        If the file cannot be read or holds no per-task results.

    Examples
    --------
    >>> read_task_metrics({"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5,
    ...                                             "acc_stderr,none": 0.05}}})
    {'arc_easy': {'acc': 0.5}}
    """
    if isinstance(results_json, Mapping):
        data: Mapping[str, Any] = results_json
        _check_results_block(data, where="results object")
    else:
        data = load_results(results_json)
    metrics: dict[str, dict[str, float]] = {}
    for task, entry in data["results"].items():
        task_metrics: dict[str, float] = {}
        for key, value in entry.items():
            name, _, filter_name = str(key).partition(",")
            if name in _NON_METRIC_KEYS or name.endswith("_stderr"):
                continue
            # bool is an int subclass but never a metric value here.
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            label = name if filter_name in ("", "none") else f"{name},{filter_name}"
            task_metrics[label] = float(value)
        metrics[str(task)] = task_metrics
    return metrics


def _check_results_block(data: Any, *, where: str) -> None:
    """Require ``{"results": {task: {...}, ...}}`` with at least one task."""
    if not isinstance(data, Mapping):
        raise EvaluationError(f"{where}: expected a JSON object, got {type(data).__name__}")
    results = data.get("results")
    if not isinstance(results, Mapping) or not results:
        raise EvaluationError(
            f"{where}: no per-task 'results' block; is this an lm-eval results file?"
        )
    for task, entry in results.items():
        if not isinstance(entry, Mapping):
            raise EvaluationError(f"{where}: results for task {task!r} are not an object")


def _canonical(value: Any, key: str = "") -> Any:
    """A task config with what does not decide a score made stable: a local data file's path
    becomes the sha256 of its content (where it exists), the config's own source path goes."""
    if isinstance(value, Mapping):
        return {
            str(k): _canonical(v, str(k)) for k, v in value.items() if str(k) != "config_source"
        }
    if isinstance(value, list | tuple):
        return [_canonical(v, key) for v in value]
    if isinstance(value, str) and key in ("data_files", "test", "train", "validation"):
        path = Path(value)
        if path.is_file():
            return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return value


def config_digest(config: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the sha256 of a resolved task config (prompt, few-shot count
    and seed, filters, metrics, dataset and its revision), keys sorted; local data files count
    by content, not path."""
    text = json.dumps(_canonical(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def evaluation_contracts(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per evaluated task of a results object, what decides its score besides the model: the
    lm-eval version, the task's version, its few-shot count and the digest of its resolved
    config (:func:`config_digest`). Recorded by the evaluate stage in ``selectmoe.contracts``;
    computed from ``configs`` for a file without it."""
    recorded = (data.get("selectmoe") or {}).get("contracts")
    if isinstance(recorded, Mapping) and recorded:
        return {str(task): dict(contract) for task, contract in recorded.items()}
    versions, shots = data.get("versions") or {}, data.get("n-shot") or {}
    return {
        str(task): {
            "lm_eval": data.get("lm_eval_version"),
            "task_version": versions.get(task),
            "n_shot": shots.get(task),
            "config": config_digest(config),
        }
        for task, config in (data.get("configs") or {}).items()
        if isinstance(config, Mapping)
    }
