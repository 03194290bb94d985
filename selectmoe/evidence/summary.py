"""Every sweep point's evaluations in one table (CSV + Markdown) and a plot, with intervals.

A *point* is one (target, method, loss type, percentage): the target without adapter (method
``base``), the ``full`` pool, and each selection, evaluated once per selection replicate and
finetune seed. The table has one row per point:

- per task, the mean per-question score over replicates, seeds and questions (lm-eval's
  per-document metric, ``acc`` by default) with its interval over all three sources of chance
  (:mod:`selectmoe.evidence.stats`);
- every interval clipped to the range of the scores (0 and 1 for accuracy), which a mean of
  them cannot leave: with three replicates a t interval can reach past it;
- the replicates: how many, the mean of each, their spread, the overlap of their selections
  (``stability``, the mean Jaccard index over pairs of replicates) and the k each clustered;
- the unweighted mean over tasks, with its interval;
- for every point with a percentage, the paired comparison with the reference method
  (``random``) at the same target and percentage: the difference, its interval, the p-value and
  a verdict that says "better" or "worse" only when the interval excludes zero;
- ``uses_labels``: the reference selections (``oracle``, ``anti_oracle``) that read the pool's
  quality labels, which a real pool does not have.

Scores come from the per-document samples that the evaluation writes beside each results JSON;
for every task that is not a group, their mean must equal lm-eval's own number in the results
file (checked, so that the table can be traced back to lm-eval). A group (``mmlu``) pools the
questions of its subtasks (lm-eval's size-weighted group mean).

The CSV and Markdown are byte-identical for the same inputs: rows are sorted, columns
are in a fixed order, floats are written in Python's shortest round-trip form.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selectmoe.data.lm_eval_results import evaluation_contracts, load_results
from selectmoe.errors import SelectMoeError
from selectmoe.evidence.figures import new_figure, save_figure
from selectmoe.evidence.overlap import stability
from selectmoe.evidence.stats import (
    Interval,
    format_p_value,
    mean_intervals,
    paired_difference,
    replicate_means,
)
from selectmoe.io import atomic_write_text
from selectmoe.schema import section_defaults
from selectmoe.selection.kinds import is_targeted
from selectmoe.selection.methods import marked

__all__ = ["METHOD_ORDER", "SummarySettings", "summarize"]

#: Row order of the methods; any other method follows ``selectmoe`` alphabetically, and the label
#: references come last.
METHOD_ORDER: tuple[str, ...] = ("base", "full", "selectmoe")
_LAST_METHODS: tuple[str, ...] = ("oracle", "anti_oracle")
#: Methods drawn as horizontal reference lines in the plot (they have no percentage axis).
_REFERENCE_LINES = ("base", "full")
_KEY_COLUMNS = ("target", "method", "loss", "percentage")
_PLOT_FORMATS = frozenset({"png", "pdf", "svg"})
LABELS_NOTE = (
    "‡ reads the pool's quality labels, which a real pool does not have: a reference for what "
    "the best and worst selection of that size would give, not a method."
)
TARGETED_NOTE = (
    "† targeted: selects the pool examples most similar to a few held-out examples of the "
    "evaluation tasks (the query sets; never the test questions), which the untargeted methods "
    "do not see."
)


logger = logging.getLogger(__name__)

_SUMMARY_DEFAULTS = section_defaults("summary")


@dataclass(frozen=True)
class SummarySettings:
    """How the intervals and comparisons are computed (the config's ``summary`` section)."""

    #: A per-question metric of lm-eval's samples for every task, or ``{task: metric}``;
    #: ``"metric,filter"`` picks the records of one filter (``"exact_match,get-answer"``).
    metric: str | Mapping[str, str] = _SUMMARY_DEFAULTS["metric"]
    confidence_level: float = _SUMMARY_DEFAULTS["confidence_level"]
    reference_method: str = _SUMMARY_DEFAULTS["reference_method"]
    #: ``evaluation.expected_base``: ``{target: {task: {value, tolerance}}}``, the base model's
    #: expected score per task; outside it the summary warns (the drift sentinel).
    expected_base: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)

    def metric_for(self, task: str) -> tuple[str, str | None]:
        """The metric and filter asked for ``task`` (``acc`` when a mapping leaves it out)."""
        wanted = (
            self.metric.get(task, _SUMMARY_DEFAULTS["metric"])
            if isinstance(self.metric, Mapping)
            else self.metric
        )
        name, _, filter_name = wanted.partition(",")
        return name, filter_name or None

    def __post_init__(self) -> None:
        names = list(self.metric.values()) if isinstance(self.metric, Mapping) else [self.metric]
        if not names or not all(isinstance(n, str) and n for n in names):
            raise SelectMoeError(
                f"summary.metric must be a metric name or {{task: metric}}, got {self.metric!r}"
            )
        if not 0.0 < self.confidence_level < 1.0:
            raise SelectMoeError(
                f"summary.confidence_level is {self.confidence_level}; it must be in (0, 1)"
            )


@dataclass
class _Point:
    target: str
    method: str
    loss: str | None
    percentage: float | None
    replicates: list[Any]
    seeds: list[Any]
    results: list[Path]
    samples: list[Path]
    uses_labels: bool
    n_selected: int | None
    extra: dict[str, Any]
    selection_files: list[Path]
    selected_files: list[Path]
    # filled when loaded: per task, question keys and the [R, S, Q] score grid
    questions: dict[str, list[tuple[str, Any]]] | None = None
    grids: dict[str, np.ndarray] | None = None
    metric_of: dict[str, str] | None = None
    contracts: dict[str, str] | None = None  # per task: the evaluation contract (its digest)


def summarize(
    points: Sequence[Mapping[str, Any]],
    *,
    output_csv: str | os.PathLike[str],
    output_md: str | os.PathLike[str],
    plot_path: str | os.PathLike[str] | None = None,
    tasks: Sequence[str] | None = None,
    settings: SummarySettings | None = None,
) -> pd.DataFrame:
    """Tabulate every sweep point with intervals and paired comparisons; write CSV, MD and a plot.

    Columns, in order: ``target``, ``method``, ``loss``, ``percentage``, ``uses_labels``,
    ``n_selected``, ``n_replicates``, ``n_seeds`` (per replicate); per task (in ``tasks`` order,
    default sorted) ``{task}/{metric}`` with ``_low`` / ``_high``; ``mean`` (the unweighted mean
    over tasks) with ``mean_low`` / ``mean_high``; ``replicate_means`` (each replicate's mean,
    ``;``-separated), ``replicate_sd`` (their standard deviation), ``stability`` (the mean
    Jaccard index of the replicates' selections), ``k`` (each replicate's number of clusters,
    ``;``-separated, when it clustered); ``vs_{reference}`` (this point minus the reference
    method at the same target and percentage, paired on replicates, seeds and questions) with
    ``_low``, ``_high``, ``_p`` and ``_verdict`` (``better`` / ``worse`` when the interval
    excludes 0, else ``no difference shown``); any extra keys of the points, sorted by name;
    ``results`` (the first evaluation's results JSON).

    Parameters
    ----------
    points : sequence of mapping
        One per evaluated model: ``{"target": str, "method": str, "loss": str | None,
        "percentage": float | None, "results": [results.json per evaluation], "samples":
        [samples.jsonl per evaluation], "replicates": [replicate per evaluation] (optional: one
        replicate), "seeds": [seed per evaluation] (optional), "uses_labels": bool (optional),
        "n_selected" or "selection_json" (a path, or one per replicate; optional), "selected"
        (each replicate's selected_data.jsonl; optional), ...extra columns}``.
    output_csv, output_md : path
        The table as CSV (full precision) and as Markdown (3 decimals, intervals in brackets,
        with a note on how to read it).
    plot_path : path, optional
        Two panels per target: the mean score versus percentage per (method, loss) with interval
        bars (``base`` and ``full`` as lines with bands), and the paired difference to the
        reference method with its interval.
    tasks : sequence of str, optional
        Tasks to tabulate; default: every task the points were evaluated on.
    settings : SummarySettings, optional
        Metric, confidence level, reference method.

    Returns
    -------
    pandas.DataFrame
        The table as written to the CSV.

    Raises
    ------
    SelectMoeError
        On a malformed point, a missing or invalid results / samples / selection file (named),
        a task without the metric, samples that disagree with lm-eval's results, evaluations of
        one point on different questions, replicates with different numbers of seeds, or two
        points with the same key.
    """
    settings = settings or SummarySettings()
    if isinstance(points, Mapping) or not isinstance(points, Sequence) or not points:
        raise SelectMoeError("summarize needs a non-empty list of evaluation points")
    if plot_path is not None:
        plot_format = Path(plot_path).suffix.lstrip(".").lower()
        if plot_format not in _PLOT_FORMATS:
            raise SelectMoeError(
                f"plot path {os.fspath(plot_path)!r} must end in one of "
                f"{', '.join(sorted('.' + f for f in _PLOT_FORMATS))}"
            )
    normalized = [_normalize_point(point, position) for position, point in enumerate(points)]
    _check_unique(normalized)
    task_list = _load_points(normalized, tasks, settings)
    metric_names = {task: normalized[0].metric_of[task] for task in task_list}

    reference = settings.reference_method
    by_key = {(p.target, p.method, p.percentage): p for p in normalized}
    # a mean lies within the range of the scores it averages (0 and 1 for accuracy): an
    # interval is clipped to it
    bounds = (
        min(float(grid.min()) for p in normalized for grid in p.grids.values()),
        max(float(grid.max()) for p in normalized for grid in p.grids.values()),
    )
    rows = []
    for point in normalized:
        grids = [point.grids[task] for task in task_list]
        overall, per_task = mean_intervals(grids, confidence=settings.confidence_level)
        overall, per_task = _clip(overall, bounds), [_clip(i, bounds) for i in per_task]
        row: dict[str, Any] = {
            "target": point.target,
            "method": point.method,
            "loss": point.loss,
            "percentage": point.percentage,
            "uses_labels": point.uses_labels,
            "n_selected": point.n_selected,
            "n_replicates": grids[0].shape[0],
            "n_seeds": grids[0].shape[1],
        }
        for task, interval in zip(task_list, per_task, strict=True):
            name = f"{task}/{metric_names[task]}"
            row[name], row[f"{name}_low"], row[f"{name}_high"] = (
                interval.estimate,
                interval.low,
                interval.high,
            )
        row["mean"], row["mean_low"], row["mean_high"] = overall.estimate, overall.low, overall.high
        row.update(_replicate_columns(point, grids))
        other = by_key.get((point.target, reference, point.percentage))
        comparison = None
        if other is not None and other is not point and point.percentage is not None:
            comparison = _compare(point, other, task_list, settings)
        prefix = f"vs_{reference}"
        if comparison is None:
            row[prefix] = row[f"{prefix}_low"] = row[f"{prefix}_high"] = math.nan
            row[f"{prefix}_p"] = math.nan
            row[f"{prefix}_verdict"] = None
        else:
            row[prefix] = comparison.difference
            row[f"{prefix}_low"], row[f"{prefix}_high"] = comparison.low, comparison.high
            row[f"{prefix}_p"] = comparison.p_value
            row[f"{prefix}_verdict"] = _verdict(comparison.low, comparison.high)
        rows.append(row)

    frame = pd.DataFrame(rows)
    frame["percentage"] = frame["percentage"].astype("float64")
    frame["n_selected"] = pd.array(list(frame["n_selected"]), dtype="Int64")
    extra_names = sorted({name for point in normalized for name in point.extra})
    clashes = sorted(set(extra_names) & {*frame.columns, "results"})
    if clashes:
        raise SelectMoeError(
            f"extra point keys {clashes} clash with the summary's own columns; rename them"
        )
    for name in extra_names:
        frame[name] = [point.extra.get(name) for point in normalized]
    frame["results"] = [os.fspath(point.results[0]) for point in normalized]
    frame["stability"] = frame["stability"].astype("float64")
    order = sorted(range(len(normalized)), key=lambda i: _sort_key(normalized[i]))
    frame = frame.iloc[order].reset_index(drop=True)

    if plot_path is not None:
        _write_plot(frame, plot_path, reference=reference, settings=settings)
    contracts = {task: sorted({p.contracts[task] for p in normalized}) for task in task_list}
    warnings = _base_warnings(frame, task_list, metric_names, settings)
    for warning in warnings:
        logger.warning(warning.replace("**", ""))
    atomic_write_text(
        output_md,
        _to_markdown(
            frame,
            task_list,
            metric_names,
            reference,
            settings,
            contracts=contracts,
            warnings=warnings,
        ),
    )
    atomic_write_text(output_csv, frame.to_csv(index=False, lineterminator="\n"))
    return frame


# --------------------------------------------------------------------------- points


def _normalize_point(point: Any, position: int) -> _Point:
    """Check one point; fill ``loss`` / ``percentage`` and split off the extra columns."""
    where = f"evaluation point #{position}"
    if not isinstance(point, Mapping):
        raise SelectMoeError(f"{where}: expected a mapping, got {type(point).__name__}")
    for key in ("target", "method"):
        if not isinstance(point.get(key), str) or not point[key]:
            raise SelectMoeError(f"{where}: {key!r} must be a non-empty string (point: {point!r})")
    where = f"evaluation point #{position} ({point['target']}/{point['method']})"
    files = {}
    for key in ("results", "samples"):
        value = point.get(key)
        if isinstance(value, str | os.PathLike):
            value = [value]
        if not isinstance(value, Sequence) or not value:
            raise SelectMoeError(f"{where}: {key!r} must be a non-empty list of files")
        files[key] = [Path(v) for v in value]
    if len(files["results"]) != len(files["samples"]):
        raise SelectMoeError(
            f"{where}: {len(files['results'])} results files but {len(files['samples'])} samples "
            "files; give one of each per seed"
        )
    seeds = list(point.get("seeds") or [None] * len(files["results"]))
    if len(seeds) != len(files["results"]):
        raise SelectMoeError(f"{where}: {len(seeds)} seeds for {len(files['results'])} results")
    replicates = list(point.get("replicates") or [None] * len(files["results"]))
    if len(replicates) != len(files["results"]):
        raise SelectMoeError(
            f"{where}: {len(replicates)} replicates for {len(files['results'])} results"
        )
    selection_files = _paths(point.get("selection_json"))
    selected_files = _paths(point.get("selected"))

    loss = point.get("loss")
    if loss == "":
        loss = None
    if loss is not None and not isinstance(loss, str):
        raise SelectMoeError(f"{where}: 'loss' must be a string or None, got {loss!r}")
    percentage = point.get("percentage")
    if percentage is not None:
        try:
            # Snakemake wildcards arrive as strings ("5", "2.5").
            percentage = float(percentage)
        except (TypeError, ValueError):
            raise SelectMoeError(
                f"{where}: 'percentage' must be a number or None, got {percentage!r}"
            ) from None
        if not math.isfinite(percentage) or percentage < 0:
            raise SelectMoeError(f"{where}: 'percentage' must be >= 0, got {percentage!r}")

    own = {*_KEY_COLUMNS, "results", "samples", "seeds", "replicates", "uses_labels"}
    own |= {"n_selected", "selected"}
    extra = {}
    if selection_files:
        extra["selection_json"] = ";".join(dict.fromkeys(map(os.fspath, selection_files)))
    for name, value in point.items():
        if name in own or name == "selection_json":
            continue
        if not isinstance(name, str) or not name:
            raise SelectMoeError(f"{where}: column names must be non-empty strings, got {name!r}")
        extra[name] = _cell(value)
    return _Point(
        target=point["target"],
        method=point["method"],
        loss=loss,
        percentage=percentage,
        replicates=replicates,
        seeds=seeds,
        results=files["results"],
        samples=files["samples"],
        uses_labels=bool(point.get("uses_labels", False)),
        n_selected=_n_selected(point, selection_files, where),
        extra=extra,
        selection_files=selection_files,
        selected_files=selected_files,
    )


def _paths(value: Any) -> list[Path]:
    """A path, or a list of paths (one per replicate), as a list; empty for None."""
    if value in (None, ""):
        return []
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    return [Path(v) for v in value]


def _cell(value: Any) -> Any:
    """A CSV-friendly scalar: paths as strings, numbers and strings unchanged, others via str."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()  # numpy scalar
    return str(value)


def _check_unique(points: Sequence[_Point]) -> None:
    """Two points with the same key would make two indistinguishable rows."""
    seen: dict[tuple[Any, ...], Path] = {}
    for point in points:
        key = (point.target, point.method, point.loss, point.percentage)
        if key in seen:
            raise SelectMoeError(
                f"two evaluation points share target/method/loss/percentage {key}: "
                f"{seen[key]} and {point.results[0]}"
            )
        seen[key] = point.results[0]


def _sort_key(point: _Point) -> tuple[Any, ...]:
    """Target; method (fixed order, others alphabetically, label references last); loss (None
    first); percentage (None first)."""
    method = point.method
    if method in METHOD_ORDER:
        rank = (0, METHOD_ORDER.index(method))
    elif method in _LAST_METHODS:
        rank = (2, _LAST_METHODS.index(method))
    else:
        rank = (1, 0)
    return (
        point.target,
        rank,
        method,
        point.loss is not None,
        point.loss or "",
        point.percentage is not None,
        point.percentage if point.percentage is not None else 0.0,
    )


def _n_selected(
    point: Mapping[str, Any], selection_files: Sequence[Path], where: str
) -> int | None:
    """The point's ``n_selected``: given directly, read from its (first) ``selection_json``, or
    None."""
    value = point.get("n_selected")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SelectMoeError(f"{where}: 'n_selected' must be an integer >= 0, got {value!r}")
        return value
    if not selection_files:
        return None
    path = selection_files[0]
    data = _read_selection(path)
    value = data.get("n_selected")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SelectMoeError(
            f"selection file {path} has no non-negative integer 'n_selected' (got {value!r})"
        )
    return value


def _read_selection(path: Path) -> Mapping[str, Any]:
    """A ``selection.json``, checked to be a JSON object."""
    if not path.is_file():
        raise SelectMoeError(f"selection file not found: {path}; run the selection step first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SelectMoeError(f"invalid JSON in selection file {path}: {err}") from err
    if not isinstance(data, Mapping):
        raise SelectMoeError(f"selection file {path} is not a JSON object")
    return data


def _replicate_columns(point: _Point, grids: Sequence[np.ndarray]) -> dict[str, Any]:
    """Each replicate's mean, their spread, the selections' stability and each k."""
    means = replicate_means(grids)
    ks = [_read_selection(path).get("k") for path in point.selection_files]
    return {
        "replicate_means": ";".join(repr(float(mean)) for mean in means),
        "replicate_sd": float(np.std(means, ddof=1)) if len(means) > 1 else math.nan,
        "stability": stability(point.selected_files) if len(point.selected_files) > 1 else math.nan,
        "k": ";".join(str(k) for k in ks) if any(k is not None for k in ks) else None,
    }


# --------------------------------------------------------------------------- scores


def _leaf_tasks(task: str, group_subtasks: Mapping[str, Any]) -> list[str]:
    """The tasks whose documents make up ``task`` (itself, or a group's subtasks, recursively)."""
    members = [str(m) for m in group_subtasks.get(task) or () if str(m) != task]
    if not members:
        return [task]
    leaves: list[str] = []
    for member in members:
        leaves += _leaf_tasks(member, group_subtasks)
    return leaves


def _read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SelectMoeError(
            f"samples file not found: {path}; re-run the evaluate step (it writes the "
            "per-document samples the intervals are computed from)"
        )
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SelectMoeError(
                    f"{path}:{line_number}: invalid JSON ({err.msg}); re-run the evaluate step"
                ) from None
            if not isinstance(record, dict) or "task" not in record or "doc_id" not in record:
                raise SelectMoeError(
                    f"{path}:{line_number}: not a samples record (needs task, doc_id, metrics)"
                )
            if not isinstance(record.get("metrics", {}), dict):
                raise SelectMoeError(
                    f"{path}:{line_number}: 'metrics' is a {type(record['metrics']).__name__}, "
                    "not {name: value} (lm-eval's own samples files list the names and keep the "
                    "values beside them); the summary reads the evaluate stage's samples: re-run "
                    "the evaluate step"
                )
            records.append(record)
    return records


def _metric_value(record: Mapping[str, Any], metric: str) -> float | None:
    value = (record.get("metrics") or {}).get(metric)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _choose_metric(task: str, records: Sequence[Mapping[str, Any]], wanted: str) -> str:
    """``wanted`` when the task's samples have it, else their first metric (alphabetically)."""
    available = sorted({name for r in records for name in (r.get("metrics") or {})})
    if wanted in available:
        return wanted
    if not available:
        raise SelectMoeError(f"task {task!r}: its samples carry no metric")
    return available[0]


def _load_points(
    points: Sequence[_Point], tasks: Sequence[str] | None, settings: SummarySettings
) -> list[str]:
    """Read every point's samples into ``[replicates, seeds, questions]`` grids; return the task
    list."""
    chosen: dict[str, str] = {}
    task_list: list[str] | None = None
    for point in points:
        point.questions, point.grids, point.metric_of, point.contracts = {}, {}, {}, {}
        per_seed: list[dict[str, dict[tuple[str, Any], float]]] = []
        for results_path, samples_path in zip(point.results, point.samples, strict=True):
            results = load_results(results_path)
            requested = (results.get("selectmoe") or {}).get("tasks") or sorted(results["results"])
            names = list(dict.fromkeys(tasks)) if tasks is not None else sorted(map(str, requested))
            if task_list is None:
                task_list = names
            # a group's subtasks as lm-eval lists them; a tag's tasks as the evaluation recorded
            groups = {
                **((results.get("selectmoe") or {}).get("task_members") or {}),
                **(results.get("group_subtasks") or {}),
            }
            records = _read_samples(samples_path)
            by_task: dict[str, dict[tuple[str, Any], float]] = {}
            for task in task_list:
                leaves = set(_leaf_tasks(task, groups))
                metric, filter_name = settings.metric_for(task)
                task_records = [
                    r
                    for r in records
                    if r["task"] in leaves and filter_name in (None, r.get("filter"))
                ]
                if not task_records:
                    found = sorted({f"{r['task']} ({r.get('filter')})" for r in records})
                    raise SelectMoeError(
                        f"{samples_path}: no samples of task {task!r}"
                        + (f" with filter {filter_name!r}" if filter_name else "")
                        + f" (it has: {', '.join(found)}); re-run its evaluation or choose "
                        "summary.metric's filter"
                    )
                name = chosen.setdefault(task, _choose_metric(task, task_records, metric))
                values: dict[tuple[str, Any], float] = {}
                for record in task_records:
                    value = _metric_value(record, name)
                    if value is None:
                        raise SelectMoeError(
                            f"{samples_path}: document {record['doc_id']} of task "
                            f"{record['task']!r} has no numeric {name!r}"
                        )
                    key = (str(record["task"]), record["doc_id"])
                    if key in values:
                        filters = sorted({str(r.get("filter")) for r in task_records})
                        raise SelectMoeError(
                            f"{samples_path}: document {record['doc_id']} of task "
                            f"{record['task']!r} appears twice (filters: {', '.join(filters)}); "
                            f"name one in summary.metric, e.g. {{{task}: '{name},{filters[0]}'}}"
                        )
                    values[key] = value
                _check_against_results(
                    results, results_path, task, leaves, values, name, filter_name
                )
                by_task[task] = values
                contract = _task_contract(evaluation_contracts(results), leaves)
                known = point.contracts.setdefault(task, contract)
                if known != contract:
                    raise SelectMoeError(
                        f"{results_path}: task {task!r} was evaluated under contract {contract}, "
                        f"{point.results[0]} under {known}; evaluate every seed of a row with "
                        "the same lm-eval, task config and few-shot settings"
                    )
            per_seed.append(by_task)
        groups = _replicate_groups(point)
        for task in task_list or []:
            keys = sorted(per_seed[0][task], key=_question_order)
            for seed_index, by_task in enumerate(per_seed[1:], 1):
                if set(by_task[task]) != set(keys):
                    raise SelectMoeError(
                        f"{point.samples[seed_index]} and {point.samples[0]}: task {task!r} was "
                        "evaluated on different documents; evaluate every seed on the same ones"
                    )
            point.questions[task] = keys
            flat = np.array(
                [[by_task[task][key] for key in keys] for by_task in per_seed], dtype=np.float64
            )
            point.grids[task] = np.stack([flat[rows] for rows in groups])
            filter_name = settings.metric_for(task)[1]
            point.metric_of[task] = chosen[task] + (f",{filter_name}" if filter_name else "")
    assert task_list is not None
    return task_list


def _clip(interval: Interval, bounds: tuple[float, float]) -> Interval:
    """``interval`` within ``bounds`` (the range of the scores): with few replicates a t interval
    can reach past what a mean of those scores can be."""
    low, high = bounds
    return Interval(interval.estimate, max(interval.low, low), min(interval.high, high))


def _replicate_groups(point: _Point) -> list[list[int]]:
    """The evaluations of each replicate (in order of first appearance); every replicate must
    have as many (finetune seeds) as the others."""
    groups: dict[Any, list[int]] = {}
    for index, replicate in enumerate(point.replicates):
        groups.setdefault(replicate, []).append(index)
    sizes = {len(rows) for rows in groups.values()}
    if len(sizes) != 1:
        counts = ", ".join(f"{r}: {len(rows)}" for r, rows in groups.items())
        raise SelectMoeError(
            f"{point.target}/{point.method}: its replicates have different numbers of finetune "
            f"seeds ({counts}); evaluate every replicate with the same seeds"
        )
    return list(groups.values())


def _question_order(key: tuple[str, Any]) -> tuple[str, int, Any]:
    """Questions by task, then doc id (numbers in numeric order, anything else as text)."""
    task, doc_id = key
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        return (task, 0, doc_id)
    return (task, 1, str(doc_id))


def _check_against_results(
    results: Mapping[str, Any],
    results_path: Path,
    task: str,
    leaves: set[str],
    values: Mapping[tuple[str, Any], float],
    metric: str,
    filter_name: str | None = None,
) -> None:
    """The samples' mean must be lm-eval's own number for a plain task (not a group)."""
    if leaves != {task}:
        return
    entry = (results.get("results") or {}).get(task) or {}
    reported = entry.get(f"{metric},{filter_name or 'none'}", entry.get(metric))
    if not isinstance(reported, int | float) or isinstance(reported, bool):
        return
    mean = float(np.mean(list(values.values())))
    if abs(mean - float(reported)) > 1e-9:
        raise SelectMoeError(
            f"{results_path}: task {task!r} reports {metric} {reported}, but its samples average "
            f"{mean}; the samples file belongs to another run: re-run the evaluate step"
        )


def _task_contract(contracts: Mapping[str, Mapping[str, Any]], leaves: Sequence[str]) -> str:
    """One line for a (group) task's evaluation contract: lm-eval and task versions, few-shot
    count and config digest of each leaf, as one digest when there are several leaves."""
    parts = [contracts.get(leaf) for leaf in sorted(leaves)]
    if any(part is None for part in parts):
        return "unrecorded"
    if len(parts) == 1:
        part = parts[0]
        return (
            f"lm-eval {part['lm_eval']}, task v{part['task_version']}, "
            f"{part['n_shot']}-shot, config {part['config']}"
        )
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"lm-eval {parts[0]['lm_eval']}, {len(parts)} subtasks, configs {digest}"


def _base_warnings(
    frame: pd.DataFrame, task_list: Sequence[str], metric_names: Mapping[str, str], settings
) -> list[str]:
    """The drift sentinel: a base model's task score outside ``evaluation.expected_base``."""
    warnings = []
    for target, expected in settings.expected_base.items():
        rows = frame[(frame["target"] == target) & (frame["method"] == "base")]
        for task, bound in expected.items():
            if rows.empty or task not in task_list:
                continue
            value = float(rows.iloc[0][f"{task}/{metric_names[task]}"])
            low = float(bound["value"]) - float(bound["tolerance"])
            high = float(bound["value"]) + float(bound["tolerance"])
            if not low <= value <= high:
                warnings.append(
                    f"**Base-model check failed**: {target} scores {value:.3f} on {task}, "
                    f"outside the expected {float(bound['value']):.3f} ± "
                    f"{float(bound['tolerance']):.3f} (`evaluation.expected_base`): a wrong "
                    "prompt format, few-shot setting or model load shows here before any method "
                    "row can be trusted."
                )
    return warnings


def _compare(point: _Point, other: _Point, tasks: Sequence[str], settings: SummarySettings):
    shapes = [point.grids[tasks[0]].shape[:2], other.grids[tasks[0]].shape[:2]]
    if shapes[0] != shapes[1]:
        raise SelectMoeError(
            f"{point.method} and {other.method} at {point.target}/{point.percentage:g} have "
            f"{shapes[0]} and {shapes[1]} (replicates, seeds); a paired comparison needs the same"
        )
    for task in tasks:
        if point.contracts[task] != other.contracts[task]:
            raise SelectMoeError(
                f"task {task!r}: {point.results[0]} was evaluated under contract "
                f"{point.contracts[task]}, {other.results[0]} under {other.contracts[task]}; rows "
                "evaluated under different contracts are not compared: evaluate both with the same "
                "lm-eval, task config and few-shot settings"
            )
        if point.questions[task] != other.questions[task]:
            raise SelectMoeError(
                f"{point.samples[0]} and {other.samples[0]}: task {task!r} was evaluated on "
                "different documents; a paired comparison needs the same questions"
            )
    return paired_difference(
        [point.grids[task] for task in tasks],
        [other.grids[task] for task in tasks],
        confidence=settings.confidence_level,
    )


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no difference shown"


# --------------------------------------------------------------------------- output


def _method_label(method: str, uses_labels: bool) -> str:
    return f"{method} ‡" if uses_labels else marked(method)


def _interval_text(value: float, low: float, high: float, *, signed: bool = False) -> str:
    if not math.isfinite(value):
        return ""
    number = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{number} [{low:+.3f}, {high:+.3f}]" if signed else f"{number} [{low:.3f}, {high:.3f}]"


def _to_markdown(
    frame: pd.DataFrame,
    tasks: Sequence[str],
    metric_names: Mapping[str, str],
    reference: str,
    settings: SummarySettings,
    *,
    contracts: Mapping[str, Sequence[str]] | None = None,
    warnings: Sequence[str] = (),
) -> str:
    """A readable table: every score with its interval, the paired comparison and its verdict;
    the base-model warnings above it, the evaluation contract of every task below."""
    level = f"{settings.confidence_level:.0%}"
    header = ["target", "method", "loss", "%", "n", *(f"{t} ({metric_names[t]})" for t in tasks)]
    header += [f"mean [{level}]", "replicates", "overlap"]
    header += [f"vs {reference} [{level}]", "p", "verdict"]
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "| " + " | ".join(["---"] * 3 + ["---:"] * (len(header) - 4) + ["---"]) + " |",
    ]
    prefix = f"vs_{reference}"
    for row in frame.to_dict("records"):
        cells = [
            _escape(str(row["target"])),
            _escape(_method_label(str(row["method"]), bool(row["uses_labels"]))),
            _escape(row["loss"] if isinstance(row["loss"], str) else ""),
            "" if pd.isna(row["percentage"]) else f"{100 * row['percentage']:g}",
            "" if pd.isna(row["n_selected"]) else str(int(row["n_selected"])),
        ]
        for task in tasks:
            name = f"{task}/{metric_names[task]}"
            cells.append(_interval_text(row[name], row[f"{name}_low"], row[f"{name}_high"]))
        cells.append(_interval_text(row["mean"], row["mean_low"], row["mean_high"]))
        means = str(row["replicate_means"]).split(";")
        cells.append(" / ".join(f"{float(m):.3f}" for m in means) if len(means) > 1 else "")
        cells.append("" if pd.isna(row["stability"]) else f"{row['stability']:.2f}")
        cells.append(
            _interval_text(row[prefix], row[f"{prefix}_low"], row[f"{prefix}_high"], signed=True)
        )
        cells.append(format_p_value(row[f"{prefix}_p"]))
        verdict = row[f"{prefix}_verdict"]
        cells.append(verdict if isinstance(verdict, str) else "")
        lines.append("| " + " | ".join(cells) + " |")
    replicates = max(int(n) for n in frame["n_replicates"])
    seeds = max(int(n) for n in frame["n_seeds"])
    notes = [
        "",
        f"Scores are means over the evaluation questions, the selection replicates ({replicates} "
        f"per finetuned row, each selected with its own seed) and their finetune seeds ({seeds} "
        "per replicate); the base model is evaluated once. The "
        f"{level} intervals cover all three sources of chance (variance components: replicates "
        "with their seeds nested, and questions; t quantiles, docs/summary.md). `replicates` "
        "lists each replicate's mean; `overlap` is the mean Jaccard index of the replicates' "
        f"selections (1: the same examples every time). `vs {reference}` is the difference to "
        f"{reference} at the same target and percentage, replicate r paired with {reference}'s "
        "replicate r, seeds and questions paired too, with its interval and two-sided p-value. "
        "The verdict says better or worse only when the interval excludes zero; overlapping "
        "rows are not evidence of a difference. Several comparisons are made: expect about one "
        "in twenty to exclude zero by chance.",
    ]
    if frame["uses_labels"].any():
        notes += ["", LABELS_NOTE]
    if any(is_targeted(method) for method in frame["method"]):
        notes += ["", TARGETED_NOTE]
    if contracts:
        described = "; ".join(f"{task}: {' / '.join(values)}" for task, values in contracts.items())
        notes += [
            "",
            "Evaluation contract (what decides a score besides the model; rows evaluated under "
            f"different contracts are never compared): {described}.",
        ]
    head = [*warnings, ""] if warnings else []
    return "\n".join(head + lines + notes) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _write_plot(
    frame: pd.DataFrame,
    plot_path: str | os.PathLike[str],
    *,
    reference: str,
    settings: SummarySettings,
) -> None:
    """Per target: mean score with interval bars vs percentage, and the paired difference to the
    reference method with its interval (a zero line: bars crossing it show no difference)."""
    targets = list(dict.fromkeys(frame["target"]))
    figure = new_figure(12.0, 4.6 * len(targets))
    axes = figure.subplots(len(targets), 2, squeeze=False)
    level = f"{settings.confidence_level:.0%}"
    prefix = f"vs_{reference}"
    for (score_axis, diff_axis), target in zip(axes, targets, strict=True):
        rows = frame[frame["target"] == target]
        line_styles = {"base": ":", "full": "--"}
        for _, row in rows.iterrows():
            if row["method"] in _REFERENCE_LINES and math.isfinite(row["mean"]):
                color = "black" if row["method"] == "base" else "tab:gray"
                score_axis.axhline(
                    row["mean"],
                    linestyle=line_styles[row["method"]],
                    color=color,
                    label=f"{row['method']} ({level} band)",
                )
                score_axis.axhspan(row["mean_low"], row["mean_high"], color=color, alpha=0.12)
        curves = rows[~rows["method"].isin(_REFERENCE_LINES) & rows["percentage"].notna()]
        groups = list(curves.groupby([curves["method"], curves["loss"].fillna("")], sort=False))
        offsets = np.linspace(-0.6, 0.6, max(1, len(groups)))
        palette = [f"C{i}" for i in range(10)]
        for index, (offset, ((method, loss), group)) in enumerate(
            zip(offsets, groups, strict=True)
        ):
            group = group.sort_values("percentage")
            color = palette[index % len(palette)]  # the same color in both panels
            label = f"{method} ({loss})" if loss else str(method)
            uses_labels = bool(group["uses_labels"].iloc[0])
            style = {"linestyle": "--", "alpha": 0.7} if uses_labels else {}
            if uses_labels:
                label += " ‡ uses labels"
            elif is_targeted(method):
                label += " † targeted"
            x = 100 * group["percentage"] + offset  # small offsets keep the bars apart
            score_axis.errorbar(
                x,
                group["mean"],
                yerr=[group["mean"] - group["mean_low"], group["mean_high"] - group["mean"]],
                marker="o",
                capsize=3,
                label=label,
                color=color,
                **style,
            )
            if group[prefix].notna().any() and method != reference:
                diff_axis.errorbar(
                    x,
                    group[prefix],
                    yerr=[
                        group[prefix] - group[f"{prefix}_low"],
                        group[f"{prefix}_high"] - group[prefix],
                    ],
                    marker="o",
                    capsize=3,
                    label=label,
                    color=color,
                    **style,
                )
        score_axis.set_title(f"target: {target}: mean score with {level} intervals")
        score_axis.set_xlabel("selected data (%)")
        score_axis.set_ylabel("mean score over tasks")
        score_axis.grid(True, alpha=0.3)
        score_axis.legend(fontsize="small")
        diff_axis.axhline(0.0, color="black", linewidth=1)
        diff_axis.set_title(f"difference to {reference}, paired ({level} intervals)")
        diff_axis.set_xlabel("selected data (%)")
        diff_axis.set_ylabel(f"mean score minus {reference}'s")
        diff_axis.grid(True, alpha=0.3)
        if diff_axis.has_data():
            diff_axis.legend(fontsize="small")
        else:
            diff_axis.text(
                0.5,
                0.5,
                f"no {reference} point to compare with",
                ha="center",
                transform=diff_axis.transAxes,
            )
    save_figure(figure, plot_path, dpi=110)
