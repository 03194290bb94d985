"""The plan of a whole config: every stage and model, as rows and as a markdown table."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from selectmoe.errors import ConfigError, ModelError
from selectmoe.plan.memory import Assumptions
from selectmoe.plan.shapes import ModelShape, shape_for_model
from selectmoe.plan.stages import (
    _targeted_source,
    artefact_plans,
    complete_config,
    evaluate_plan,
    finetune_plan,
    less_gradients_plan,
    less_warmup_plan,
    represent_plan,
    score_plan,
    select_plan,
    warmup_plan,
)
from selectmoe.workflow.config import load_workflow_config
from selectmoe.workflow.layout import Layout

__all__ = ["format_plan_markdown", "load_config", "plan_table"]


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a workflow config file, validated, with the schema's defaults filled in.

    Raises
    ------
    ConfigError
        When the file is missing, not YAML, not a mapping or not valid.
    """
    return load_workflow_config(path)


def plan_table(
    config: Mapping[str, Any],
    *,
    gpu_memory_gib: float = 80.0,
    mfu: float = 0.4,
    assumptions: Assumptions | None = None,
    shapes: Mapping[str, ModelShape] | None = None,
) -> list[dict[str, Any]]:
    """The plan of every stage and model of ``config``, one dict per row.

    Parameters
    ----------
    config : mapping
        A workflow config (``config/paper.yaml`` parsed); overrides in it change the plan.
    gpu_memory_gib, mfu : float
        Override the same fields of ``assumptions``.
    assumptions : Assumptions, optional
        Everything else assumed (defaults: one H100 SXM 80 GB, LESS pool, see the class).
    shapes : mapping, optional
        Model shapes by source (hub id or directory), consulted before the built-in ones.

    Returns
    -------
    list of dict
        Rows in stage order (warmup, score; represent with the method ``rds``, less_warmup and
        less_gradients with ``less``; select, then finetune and evaluate per target), as
        :meth:`StagePlan.to_row` makes them.

    Raises
    ------
    SelectMoeError
        For a config the plan cannot read (missing section, unknown model or dataset).
    """
    base = assumptions or Assumptions()
    assumptions = replace(base, gpu_memory_gib=gpu_memory_gib, mfu=mfu)
    for section in ("base_model", "selection", "targets"):
        if not isinstance(config.get(section), Mapping):
            raise ConfigError(f"config key {section} is missing; see config/paper.yaml")

    def lookup(source: str) -> ModelShape:
        if shapes and source in shapes:
            return shapes[source]
        return shape_for_model(source)

    try:
        selector = lookup(str(config["base_model"]["source"]))
        if not selector.is_moe:
            raise ModelError(f"{selector.name}: the selector must be an OLMoE (MoE) model")
        plans = [
            warmup_plan(config, selector, assumptions),
            score_plan(config, selector, assumptions),
            select_plan(config, selector, assumptions),
        ]
        counts = Layout(complete_config(config)).job_counts()
        if counts["represent"] or counts["less_warmup"]:
            source = _targeted_source(config)
            targeted = lookup(source)
            if targeted.is_moe:
                raise ModelError(f"targeted.model {source}: the plan models dense targets only")
            if counts["represent"]:
                plans.append(represent_plan(config, targeted, assumptions))
            if counts["less_warmup"]:
                plans.append(less_warmup_plan(config, targeted, assumptions))
                plans.append(less_gradients_plan(config, targeted, assumptions))
        plans += artefact_plans(config)
        for target, entry in config["targets"].items():
            shape = lookup(str(entry["model"]))
            if shape.is_moe:
                raise ModelError(f"targets.{target}: the plan models dense targets only")
            plans.append(finetune_plan(config, target, shape, assumptions))
            plans.append(evaluate_plan(config, target, shape, assumptions))
    except KeyError as error:
        raise ConfigError(
            f"config key {error.args[0]!r} is missing; see config/paper.yaml"
        ) from None
    order = {
        "warmup": 0,
        "score": 1,
        "represent": 2,
        "less_warmup": 3,
        "less_gradients": 4,
        "artefact": 5,
        "select": 6,
        "finetune": 7,
        "evaluate": 8,
    }
    plans.sort(key=lambda p: order[p.stage])  # stable: targets keep their config order
    rows = [plan.to_row(assumptions.gpu_memory_gib) for plan in plans]
    settings = {k: v for k, v in asdict(assumptions).items() if k != "pool_sizes"}
    for row in rows:
        row["assumptions"] = settings
    return rows


def _hours(hours: float) -> str:
    if hours < 0.1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h" if hours < 100 else f"{hours:,.0f} h"


def format_plan_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`plan_table`'s rows (one line per row)."""
    limit = rows[0]["gpu_memory_limit_gib"] if rows else 80.0
    header = (
        "| stage | model | jobs | precision | GPU memory / job | of which | "
        f"fits {limit:g} GiB | time / job | GPU-hours, all jobs |"
    )
    lines = [header, "| --- | --- | ---: | --- | ---: | --- | --- | --- | ---: |"]
    for row in rows:
        if row["device"] == "cpu":
            memory = f"CPU job ({row['host_memory_gib']:.1f} GiB host)"
            parts = "—"
            fits = "—"
        else:
            memory = f"{row['gpu_memory_gib']:.1f} GiB"
            parts = ", ".join(
                f"{name.replace('_', ' ')} {gib:.1f}"
                for name, gib in row["memory_gib"].items()
                if gib >= 0.05
            )
            fits = "yes" if row["fits"] else "**no**"
        times = row["time_per_job_h"]
        if list(times) == [""]:
            per_job = _hours(times[""])
        elif row["stage"] in ("score", "represent", "less_gradients"):
            per_job = f"{_hours(min(times.values()))} – {_hours(max(times.values()))}"
        else:
            per_job = ", ".join(f"{label}: {_hours(h)}" for label, h in times.items())
        total = f"{row['total_gpu_hours']:.1f}" if row["device"] == "gpu" else "— (CPU)"
        lines.append(
            f"| {row['stage']} | {row['model']} | {row['jobs']} | {row['precision']} | "
            f"{memory} | {parts} | {fits} | {per_job} | {total} |"
        )
    return "\n".join(lines)
