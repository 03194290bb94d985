"""The cost ledger: what every sweep point needed, in seconds, memory and bytes, beside its score.

A point (target, method, loss type, percentage, as in :mod:`selectmoe.evidence.summary`) needed a
chain
of jobs: to *select* (convert, warm up, score every dataset, select; a pool-only method only
selects), to *train* (one finetune per seed) and to *evaluate*. Snakemake's benchmark file of each
job (``results/benchmarks/...tsv``: wall seconds ``s``, ``cpu_time``, ``max_rss`` in MB) gives
its cost; a job's GPU seconds are its wall seconds times the GPUs it held. Jobs shared by several
points (the conversion, a loss type's warmup and scoring) are counted in full for each of them:
a row is what it costs to reproduce that point alone. Bytes stored are the sizes of the files the
selection and the training wrote (router data, warmup weights, the selection, the adapters).

Timings differ from run to run, so the ledger is written beside the summary (which stays
byte-identical for the same config), not into it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selectmoe.errors import SelectMoeError
from selectmoe.evidence.figures import new_figure, save_figure
from selectmoe.io import atomic_write_text
from selectmoe.selection.methods import marked

__all__ = ["STAGE_KINDS", "cost_ledger", "read_benchmark", "write_cost_ledger"]

#: The parts of a point's cost, in the order of the ledger's columns.
STAGE_KINDS: tuple[str, ...] = ("selection", "training", "evaluation")
_KEYS = ("target", "method", "loss", "percentage")


def read_benchmark(path: str | os.PathLike[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak resident memory (MB) of one Snakemake benchmark file.

    A job benchmarked several times (``repeat``) has one line per run: the mean is returned.

    Raises
    ------
    SelectMoeError
        When the file is missing or lacks the columns ``s``, ``cpu_time``, ``max_rss``.
    """
    path = Path(path)
    if not path.is_file():
        raise SelectMoeError(
            f"{path}: benchmark file not found; it is written when its job finishes (run the "
            "workflow to completion, or drop the point)"
        )
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in ("s", "cpu_time", "max_rss") if c not in table]
    if missing or table.empty:
        raise SelectMoeError(
            f"{path}: not a Snakemake benchmark file (missing {', '.join(missing) or 'rows'})"
        )
    numeric = table[["s", "cpu_time", "max_rss"]].apply(pd.to_numeric, errors="coerce")
    return {
        "wall_s": float(numeric["s"].mean()),
        "cpu_s": float(numeric["cpu_time"].mean()),
        "max_rss_mb": float(numeric["max_rss"].mean()),
    }


def _stored_bytes(paths: Sequence[str | os.PathLike[str]]) -> int:
    total = 0
    for path in map(Path, paths):
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total


def cost_ledger(points: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per point: the cost of each part, peak memory and bytes stored.

    Parameters
    ----------
    points : sequence of mapping
        ``{"target", "method", "loss", "percentage", "jobs": [{"kind": "selection" |
        "training" | "evaluation", "benchmark": path, "gpus": int, "outputs": [paths]}]}``.
        A job listed by several points is counted for each.

    Returns
    -------
    pandas.DataFrame
        ``target``, ``method``, ``loss``, ``percentage``; per kind ``{kind}_wall_s``,
        ``{kind}_cpu_s``, ``{kind}_gpu_s``; ``total_cpu_s``, ``total_gpu_s``, ``peak_rss_mb``
        (the largest of its jobs), ``stored_mb`` (selection and training outputs), ``n_jobs``.
    """
    rows = []
    for position, point in enumerate(points):
        jobs = point.get("jobs")
        if not isinstance(jobs, Sequence) or not jobs:
            raise SelectMoeError(f"cost point #{position} ({point.get('method')}) has no jobs")
        row: dict[str, Any] = {key: point.get(key) for key in _KEYS}
        totals = {kind: {"wall_s": 0.0, "cpu_s": 0.0, "gpu_s": 0.0} for kind in STAGE_KINDS}
        peak, stored = 0.0, []
        for job in jobs:
            kind = job.get("kind")
            if kind not in totals:
                raise SelectMoeError(
                    f"cost point #{position}: job kind {kind!r}; valid: {', '.join(STAGE_KINDS)}"
                )
            measured = read_benchmark(job["benchmark"])
            totals[kind]["wall_s"] += measured["wall_s"]
            totals[kind]["cpu_s"] += measured["cpu_s"]
            totals[kind]["gpu_s"] += measured["wall_s"] * int(job.get("gpus", 0))
            peak = max(peak, measured["max_rss_mb"])
            if kind != "evaluation":
                stored += list(job.get("outputs", []))
        for kind, values in totals.items():
            for name, value in values.items():
                row[f"{kind}_{name}"] = value
        row["total_cpu_s"] = sum(v["cpu_s"] for v in totals.values())
        row["total_gpu_s"] = sum(v["gpu_s"] for v in totals.values())
        row["peak_rss_mb"] = peak
        row["stored_mb"] = _stored_bytes(sorted(set(map(os.fspath, stored)))) / 1e6
        row["n_jobs"] = len(jobs)
        rows.append(row)
    return pd.DataFrame(rows)


def _key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    loss = record.get("loss")
    percentage = record.get("percentage")
    return (
        record["target"],
        record["method"],
        loss if isinstance(loss, str) else None,
        None if percentage is None or pd.isna(percentage) else round(float(percentage), 10),
    )


def write_cost_ledger(
    points: Sequence[Mapping[str, Any]],
    *,
    summary_csv: str | os.PathLike[str],
    output_csv: str | os.PathLike[str],
    output_md: str | os.PathLike[str],
    plot_path: str | os.PathLike[str],
) -> pd.DataFrame:
    """The ledger joined to the summary's scores and intervals; CSV, Markdown and a plot of the
    mean score (with its interval) against the total cost of each point.

    Raises
    ------
    SelectMoeError
        When a point of the ledger is not in the summary (or a benchmark file is missing).
    """
    ledger = cost_ledger(points)
    summary = pd.read_csv(summary_csv)
    scores = {_key(r): r for r in summary.to_dict("records")}
    columns = ["mean", "mean_low", "mean_high", "vs_random", "vs_random_low", "vs_random_high"]
    for column in columns:
        ledger[column] = math.nan
    for index, record in enumerate(ledger.to_dict("records")):
        found = scores.get(_key(record))
        if found is None:
            raise SelectMoeError(
                f"{os.fspath(summary_csv)}: no row for {_key(record)}; re-run the summary"
            )
        for column in columns:
            ledger.loc[index, column] = found.get(column, math.nan)
    atomic_write_text(output_csv, ledger.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(output_md, _to_markdown(ledger))
    _plot(ledger, plot_path)
    return ledger


def _to_markdown(ledger: pd.DataFrame) -> str:
    gpu = bool((ledger["total_gpu_s"] > 0).any())
    header = ["target", "method", "loss", "%", "mean [95%]", "select CPU s", "train CPU s"]
    header += ["eval CPU s", "total CPU s"] + (["total GPU s"] if gpu else [])
    header += ["peak RSS MB", "stored MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in ledger.to_dict("records"):
        cells = [
            str(r["target"]),
            marked(str(r["method"])),
            r["loss"] if isinstance(r["loss"], str) else "",
            "" if pd.isna(r["percentage"]) else f"{100 * r['percentage']:g}",
            f"{r['mean']:.3f} [{r['mean_low']:.3f}, {r['mean_high']:.3f}]",
            f"{r['selection_cpu_s']:.1f}",
            f"{r['training_cpu_s']:.1f}",
            f"{r['evaluation_cpu_s']:.1f}",
            f"{r['total_cpu_s']:.1f}",
            *([f"{r['total_gpu_s']:.1f}"] if gpu else []),
            f"{r['peak_rss_mb']:.0f}",
            f"{r['stored_mb']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Costs from the jobs' Snakemake benchmark files; jobs shared by several rows (the "
        "conversion, a loss type's warmup and scoring) are counted in full in each: a row is "
        "what its point costs alone. Timings vary between runs; the scores are the summary's.",
    ]
    return "\n".join(lines + notes) + "\n"


def _plot(ledger: pd.DataFrame, plot_path: str | os.PathLike[str]) -> None:
    gpu = bool((ledger["total_gpu_s"] > 0).any())
    cost = "total_gpu_s" if gpu else "total_cpu_s"
    targets = list(dict.fromkeys(ledger["target"]))
    figure = new_figure(7.5, 4.8 * len(targets))
    axes = figure.subplots(len(targets), 1, squeeze=False)[:, 0]
    for axis, target in zip(axes, targets, strict=True):
        rows = ledger[ledger["target"] == target]
        for index, (method, group) in enumerate(rows.groupby("method", sort=True)):
            axis.errorbar(
                group[cost],
                group["mean"],
                yerr=[group["mean"] - group["mean_low"], group["mean_high"] - group["mean"]],
                fmt="o",
                capsize=3,
                color=f"C{index % 10}",
                label=marked(str(method)),
            )
        axis.set_xscale("log" if np.nanmin(rows[cost]) > 0 else "linear")
        axis.set_xlabel(f"{'GPU' if gpu else 'CPU'} seconds to reproduce the point alone")
        axis.set_ylabel("mean score (95% interval)")
        axis.set_title(f"target: {target}: score against cost")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    save_figure(figure, plot_path, dpi=110)
