"""Workflow configuration: validation against ``config/schema.yaml`` with one-line messages.

Snakemake's own ``validate`` reports the first JSON-schema failure with a long dump; this module
names the key (``selection.percentages[1]``), the bad value and what is allowed, which is what a
researcher needs to fix a config at a glance.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml

from selectmoe.errors import ConfigError

__all__ = [
    "build_settings",
    "check_registered_names",
    "coerce_command_line_strings",
    "format_schema_error",
    "load_schema",
    "validate_config",
]


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML JSON-schema file."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


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


def check_registered_names(config: Mapping[str, Any]) -> None:
    """Check the names the config gives to registries (after the plugins were imported).

    Quality-loss types, selection methods, the clustering method and the trash-expert mode must
    be built in or registered by a plugin.

    Raises
    ------
    ConfigError
        Naming the key, the unknown name and the valid ones.
    """
    from selectmoe.clustering import list_clustering_methods
    from selectmoe.model.losses import available_quality_losses
    from selectmoe.model.modeling_select_moe import check_trash_expert_mode
    from selectmoe.selection.allocation import available_allocations
    from selectmoe.selection.scores import available_scores
    from selectmoe.selection.select import available_selection_methods

    selection = config.get("selection", {})
    defined = selection.get("method_definitions", {}) or {}
    checks = [
        ("selection.loss_types", selection.get("loss_types", []), available_quality_losses()),
        (
            "selection.methods",
            selection.get("methods", []),
            list(dict.fromkeys([*available_selection_methods(), *defined])),
        ),
        (
            "selection.method_definitions (score)",
            [d.get("score") for d in defined.values()],
            available_scores(),
        ),
        (
            "selection.method_definitions (allocation)",
            [d.get("allocation") for d in defined.values()],
            available_allocations(),
        ),
        (
            "selection.clustering_method",
            [selection.get("clustering_method", "kmeans")],
            list_clustering_methods(),
        ),
    ]
    for key, names, valid in checks:
        for name in names:
            if name not in valid:
                raise ConfigError(
                    f"config key {key}: {name!r} is not registered; valid: {', '.join(valid)} "
                    "(a plugin module listed in plugins can register more)"
                )
    from selectmoe.selection.methods import method_definitions
    from selectmoe.selection.scores import LM_SCORES

    try:
        definitions = method_definitions(defined)
    except ValueError as error:
        raise ConfigError(f"config key selection.method_definitions: {error}") from None
    if not config.get("scoring", {}).get("lm_statistics", True):
        methods = selection.get("methods", [])
        needing = [m for m in methods if definitions.get(m, {}).get("score") in LM_SCORES]
        if needing:
            raise ConfigError(
                f"config key scoring.lm_statistics is false, but method(s) {', '.join(needing)} "
                "rank by the LM's losses; set it to true or drop those methods"
            )
    if "untrained" in selection.get("loss_types", []):
        raise ConfigError(
            "config key selection.loss_types: 'untrained' names the control of the diagnostics; "
            "register the loss under another name"
        )
    try:
        check_trash_expert_mode(config.get("warmup", {}).get("trash_expert_mode", "zero"))
    except ConfigError as error:
        raise ConfigError(f"config key warmup.trash_expert_mode: {error}") from None


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
