"""Workflow configuration: validation against ``config/schema.yaml`` with one-line messages.

Snakemake's own ``validate`` reports the first JSON-schema failure with a long dump; this module
names the key (``selection.percentages[1]``), the bad value and what is allowed, which is what a
researcher needs to fix a config at a glance.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from selectmoe.errors import ConfigError
from selectmoe.schema import SCHEMA_PATH, load_schema

__all__ = [
    "SCHEMA_PATH",
    "build_settings",
    "check_config",
    "coerce_command_line_strings",
    "format_schema_error",
    "load_schema",
    "load_workflow_config",
    "merge_configs",
    "validate_config",
    "with_defaults",
]


def _defaulting_validator() -> type:
    """A JSON-schema validator that fills in every ``default`` of a ``properties`` keyword it
    passes, as Snakemake's ``validate(..., set_default=True)`` does."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator: Any, given: Any, instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, subschema in given.items():
                if isinstance(subschema, Mapping) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, given, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties})


def with_defaults(
    config: Mapping[str, Any], schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A validated copy of ``config`` with the schema's defaults filled in.

    Raises
    ------
    ConfigError
        One line per problem (see :func:`validate_config`).
    """
    schema = schema if schema is not None else load_schema()
    validate_config(config, schema)
    filled = copy.deepcopy(dict(config))
    for _ in _defaulting_validator()(schema).iter_errors(filled):
        pass  # validated above; the pass fills the defaults
    return filled


def merge_configs(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place, as Snakemake merges several ``--configfile``:
    mappings recursively, everything else (lists included) replaced by a copy; returns ``base``.
    """
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_configs(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_workflow_config(
    path: str | os.PathLike[str], *, schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Read a workflow config file, validate it and fill in the schema's defaults, as the
    Snakefile does (plugins are not imported: their names must be registered by the caller).

    Raises
    ------
    ConfigError
        When the file is missing, not YAML, not a mapping, or not valid.
    """
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: config file not found; pass e.g. config/paper.yaml")
    try:
        loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(f"{config_path}: not valid YAML ({first})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config_path}: a config must be a mapping of sections")
    return with_defaults(loaded, schema)


def _key_path(path: Any) -> str:
    parts = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def format_schema_error(error: jsonschema.ValidationError) -> str:
    """One line: the key, the bad value, and the allowed values or range."""
    key = _key_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    validator = error.validator
    if validator == "enum":
        allowed = ", ".join(str(v) for v in schema["enum"])
        return f"config key {key}: {value!r} is not allowed; allowed values: {allowed}"
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        low = (
            f"> {schema['exclusiveMinimum']}"
            if "exclusiveMinimum" in schema
            else f">= {schema['minimum']}"
            if "minimum" in schema
            else ""
        )
        high = (
            f"< {schema['exclusiveMaximum']}"
            if "exclusiveMaximum" in schema
            else f"<= {schema['maximum']}"
            if "maximum" in schema
            else ""
        )
        allowed = " and ".join(part for part in (low, high) if part)
        return f"config key {key}: {value!r} is out of range; allowed: values {allowed}"
    if validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        extra = sorted(set(value) - set(schema.get("properties", {})))
        return f"config key {key}: unknown key(s) {', '.join(extra)}; allowed keys: {allowed}"
    if validator == "required":
        # jsonschema reports each missing key separately; name them all (duplicates are dropped)
        missing = [name for name in error.validator_value if name not in value]
        prefix = "" if key == "(top level)" else f"{key}."
        names = ", ".join(f"{prefix}{name}" for name in missing)
        if len(missing) == 1:
            return f"config key {names}: missing (required); add it (see config/config.yaml)"
        return f"config keys {names}: missing (required); add them (see config/config.yaml)"
    if validator == "type":
        expected = schema.get("type")
        if isinstance(expected, list):
            expected = " or ".join(str(name) for name in expected)
        return f"config key {key}: {value!r} has the wrong type; expected {expected}"
    return f"config key {key}: {error.message}"


_SCALAR_TYPES = {"integer", "number", "boolean", "null"}


def _schema_types(schema: Mapping[str, Any]) -> set[str]:
    kinds = schema.get("type", [])
    return {kinds} if isinstance(kinds, str) else set(kinds)


def _scalar(text: str, types: set[str]) -> Any:
    """``text`` as the first of the schema's scalar types it reads as, else unchanged."""
    stripped = text.strip()
    if "integer" in types or "number" in types:
        try:
            return int(stripped)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(stripped)
        except ValueError:
            pass
    if "boolean" in types and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if "null" in types and stripped.lower() in ("null", "none", "~"):
        return None
    return text


def _coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        types = _schema_types(schema)
        if types & _SCALAR_TYPES and "string" not in types:
            return _scalar(value, types)
        return value
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            key: _coerce(
                item,
                properties.get(key, extra if isinstance(extra, Mapping) else {}),
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        items = schema.get("items", {})
        return [_coerce(item, items if isinstance(items, Mapping) else {}) for item in value]
    return value


def coerce_command_line_strings(
    config: Mapping[str, Any], schema: Mapping[str, Any]
) -> dict[str, Any]:
    """Turn the strings that Snakemake's ``--config`` leaves in nested values into the numbers and
    booleans the schema asks for.

    ``--config 'warmup={epochs: 4}'`` arrives as ``{"warmup": {"epochs": "4"}}``: Snakemake parses
    a nested value with YAML's base loader, which keeps every scalar a string. A string is
    converted only where the schema expects an integer, number, boolean or null and not a
    string, and only when it reads as one (``"4"`` -> 4; ``"four"`` stays and fails validation
    with its key named).

    Examples
    --------
    >>> schema = {"properties": {"warmup": {"properties": {"epochs": {"type": "integer"}}}}}
    >>> coerce_command_line_strings({"warmup": {"epochs": "4"}}, schema)
    {'warmup': {'epochs': 4}}
    """
    return _coerce(dict(config), schema)


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Validate ``config`` against ``schema``.

    Raises
    ------
    ConfigError
        With one line per problem (the first few), each naming the key and what is allowed.
    """
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(dict(config)), key=lambda e: list(map(str, e.absolute_path))
    )
    if errors:
        # dict.fromkeys: several errors can give the same line (one per missing required key)
        lines = list(dict.fromkeys(format_schema_error(error) for error in errors))[:5]
        raise ConfigError("invalid configuration: " + " | ".join(lines))


def check_config(config: Mapping[str, Any]) -> None:
    """Check what the schema cannot: the names the config gives to registries (after the
    plugins were imported) and the combinations of settings that cannot run.

    Quality-loss types, selection methods, scores and allocations of method definitions, the
    clustering method and the trash-expert mode must be built in or registered by a plugin; the
    names are read from the torch-free :mod:`selectmoe.catalogue` and the method kinds
    (:mod:`selectmoe.selection.kinds`), so that the check loads no model code.

    Raises
    ------
    ConfigError
        Naming the key, the bad value and the valid ones.
    """
    from selectmoe.catalogue import names
    from selectmoe.selection.kinds import available_methods, kind_of
    from selectmoe.selection.methods import LM_SCORES, method_definitions, uses_score

    selection = config.get("selection", {})
    defined = selection.get("method_definitions", {}) or {}
    if "untrained" in selection.get("loss_types", []):
        raise ConfigError(
            "config key selection.loss_types: 'untrained' names the control of the diagnostics; "
            "register the loss under another name"
        )
    checks = [
        ("selection.loss_types", selection.get("loss_types", []), names("quality_loss")),
        ("selection.methods", selection.get("methods", []), available_methods(defined)),
        (
            "selection.method_definitions (score)",
            [d.get("score") for d in defined.values()],
            names("score"),
        ),
        (
            "selection.method_definitions (allocation)",
            [d.get("allocation") for d in defined.values()],
            names("allocation"),
        ),
        (
            "selection.clustering_method",
            [selection.get("clustering_method", "kmeans")],
            names("clustering_method"),
        ),
    ]
    for key, given, valid in checks:
        for name in given:
            if name not in valid:
                raise ConfigError(
                    f"config key {key}: {name!r} is not registered; valid: {', '.join(valid)} "
                    "(a plugin module listed in plugins can register more)"
                )
    try:
        method_definitions(defined)
    except ValueError as error:
        raise ConfigError(f"config key selection.method_definitions: {error}") from None
    methods = list(selection.get("methods", []))
    if not config.get("scoring", {}).get("lm_statistics", True):
        needing = [m for m in methods if any(uses_score(s, [m], defined) for s in LM_SCORES)]
        if needing:
            raise ConfigError(
                f"config key scoring.lm_statistics is false, but method(s) {', '.join(needing)} "
                "rank by the LM's losses; set it to true or drop those methods"
            )
    mode = config.get("warmup", {}).get("trash_expert_mode", "zero")
    modes = names("trash_expert")
    if mode not in modes:
        if mode == "custom":
            raise ConfigError(
                "config key warmup.trash_expert_mode: trash_expert_mode is 'custom' but no trash "
                "expert is registered; register one with selectmoe.model.modeling_select_moe."
                "register_trash_expert in a plugin module (config key plugins)"
            )
        raise ConfigError(
            f"config key warmup.trash_expert_mode: unknown trash_expert_mode {mode!r}; valid "
            f"modes: {', '.join(sorted({*modes, 'custom'}))}"
        )
    demo = bool((config.get("demo") or {}).get("activate", False))
    data = config.get("data", {})
    if data.get("source") == "hf" and not (data.get("hf") or {}).get("dataset_id"):
        raise ConfigError(
            "config key data.hf.dataset_id: data.source is hf but no dataset is given; set it to "
            "a Hub dataset id, a save_to_disk directory or parquet files"
        )
    labelled = [m for m in methods if kind_of(m, defined).uses_labels]
    if labelled and not demo and not config.get("data", {}).get("labels"):
        raise ConfigError(
            f"selection.methods lists {', '.join(labelled)}, which read the pool's quality "
            "labels, but data.labels is null; set it to a labels file of the pool or drop those "
            "methods"
        )


def build_settings(cls: type, values: Mapping[str, Any], *, section: str) -> Any:
    """Instantiate a settings dataclass, rejecting unknown keys with the list of valid ones.

    Raises
    ------
    ConfigError
        For a key the dataclass does not have (``section`` names the config section).
    """
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"unknown {section} setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    return cls(**values)
