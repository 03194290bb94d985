"""The workflow config's JSON schema (``config/schema.yaml``): the one home of every default.

The settings dataclasses of the stages take their defaults from here
(:func:`section_defaults`), the plan and the command line fill a config with them
(:func:`selectmoe.workflow.config.with_defaults`), and the Snakefile validates against the same
file; no default is written twice.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SCHEMA_PATH", "default_seed", "load_schema", "section_defaults"]

#: The workflow's JSON schema, in the checkout this package belongs to.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


def load_schema(path: str | os.PathLike[str] = SCHEMA_PATH) -> dict[str, Any]:
    """Read a YAML JSON-schema file (default: the workflow's, ``config/schema.yaml``)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@functools.cache
def _schema() -> dict[str, Any]:
    if not SCHEMA_PATH.is_file():
        raise FileNotFoundError(
            f"{SCHEMA_PATH}: the workflow's schema is missing; selectmoe runs from its checkout "
            "(scripts/install.sh installs it editable)"
        )
    return load_schema(SCHEMA_PATH)


def section_defaults(section: str) -> Mapping[str, Any]:
    """The defaults of a config section (``"warmup"``, ``"targeted.less"``), by key.

    Raises
    ------
    KeyError
        For a section the schema does not have.
    """
    node: Mapping[str, Any] = _schema()
    for part in section.split("."):
        node = node["properties"][part]
    return {
        key: value["default"]
        for key, value in node.get("properties", {}).items()
        if isinstance(value, Mapping) and "default" in value
    }


def default_seed() -> int:
    """The seed of a stage run outside the workflow: the first default selection replicate.

    In the workflow every random choice of the selection pipeline takes its replicate's seed
    (``selection.replicates``); a stage called alone (the CLI, a test) takes this one.
    """
    return int(section_defaults("selection")["replicates"][0])
