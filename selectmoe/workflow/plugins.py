"""Plugins: Python modules imported at the start of every job, so that a user can register a
trash expert, a quality loss, a clustering method or a selection method without editing the
package (SPEC §10).

The workflow's config lists them (``plugins: [my_losses]``); the Snakefile imports them when it
reads the config (so that the names they register are valid config values) and exports the list
as ``SELECTMOE_PLUGINS``, which every job (:func:`selectmoe.workflow.runtime.run_job`) and every
process of
a multi-GPU launch (``python -m selectmoe``) imports again before it does anything. A plugin
module registers what it brings when it is imported::

    # my_losses.py, next to the Snakefile
    import torch
    from selectmoe.model.losses import register_quality_loss
    from selectmoe.model.modeling_select_moe import register_trash_expert

    @register_quality_loss("mean_abs")
    def mean_abs(good, mask, config):
        return ((good - 0.5).abs() * mask).sum() / mask.sum()

    register_trash_expert(lambda hidden, config: -hidden)  # trash_expert_mode: custom
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence
from types import ModuleType

from selectmoe.errors import ConfigError

__all__ = ["PLUGINS_VARIABLE", "load_plugins", "load_plugins_from_environment"]

PLUGINS_VARIABLE = "SELECTMOE_PLUGINS"
"""Environment variable with the plugin modules, comma-separated (set by the Snakefile)."""

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def load_plugins(modules: Sequence[str]) -> list[ModuleType]:
    """Import each plugin module (once; Python caches imports), in order.

    Raises
    ------
    ConfigError
        For a name that is not a module name, or a module that cannot be imported (the message
        gives the import error and where to put the module).
    """
    if isinstance(modules, str):
        raise ConfigError(f"plugins must be a list of module names, got the string {modules!r}")
    loaded = []
    for name in modules:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise ConfigError(
                f"plugin {name!r} is not a Python module name (like my_plugin or pkg.module)"
            )
        try:
            loaded.append(importlib.import_module(name))
        except Exception as error:  # any failure of the user's module is one clear line
            raise ConfigError(
                f"plugin module {name!r} cannot be imported ({type(error).__name__}: {error}); "
                "put it next to the Snakefile or on PYTHONPATH, and check that it imports alone"
            ) from error
    return loaded


def load_plugins_from_environment() -> list[ModuleType]:
    """Import the modules named in ``SELECTMOE_PLUGINS`` (none when it is unset or empty)."""
    value = os.environ.get(PLUGINS_VARIABLE, "")
    return load_plugins([name.strip() for name in value.split(",") if name.strip()])
