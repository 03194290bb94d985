import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from selectmoe.errors import ConfigError
from selectmoe.workflow.config import (
    check_config,
    coerce_command_line_strings,
    load_schema,
    validate_config,
)
from selectmoe.selection.methods import uses_clusters
from selectmoe.workflow.layout import Layout
from selectmoe.workflow.settings import RuleSettings
from selectmoe.workflow.plugins import PLUGINS_VARIABLE, load_plugins

# Validate first, with one-line messages that name the key and the allowed values, then let
# Snakemake's validate fill in the schema defaults.
SCHEMA = load_schema(workflow.source_path("../config/schema.yaml"))
# nested --config values arrive as strings (Snakemake reads them with YAML's base loader)
config.update(coerce_command_line_strings(config, SCHEMA))
try:
    validate_config(config, SCHEMA)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
validate(config, schema="../config/schema.yaml")

# The plugins register their names before the names of the config are checked (against the
# torch-free catalogue); jobs (and their launched processes) import them again from
# SELECTMOE_PLUGINS.
try:
    load_plugins(config.get("plugins", []))
    check_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
os.environ[PLUGINS_VARIABLE] = ",".join(config.get("plugins", []))

# Every path, input and job of the workflow (selectmoe/workflow/layout.py).
LAYOUT = Layout(config)
SETTINGS = RuleSettings(LAYOUT)


wildcard_constraints:
    **LAYOUT.wildcard_constraints(),


def get_inputs(rule_name):
    """The named inputs of a rule's job, from the layout (for ``unpack``)."""
    return lambda wildcards: LAYOUT.inputs(rule_name, wildcards)


def get_log(rule_name):
    return LAYOUT.log(rule_name)


def get_benchmark(rule_name):
    return LAYOUT.benchmark(rule_name)


def get_gpus(rule_name):
    return LAYOUT.gpus(rule_name)


def get_threads(rule_name):
    return LAYOUT.threads(rule_name)


def get_mem_mb(rule_name):
    return LAYOUT.mem_mb(rule_name)


def provenance(path):
    """The provenance record beside a job's first output."""
    return LAYOUT.provenance(path)


def is_demo():
    return LAYOUT.is_demo()


def get_final_output():
    return LAYOUT.final_outputs()
