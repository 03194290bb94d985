"""Select-MoE: choose instruction-tuning data with a quality-gated Mixture-of-Experts model.

The model classes are imported lazily so that ``import selectmoe`` (and the command line's
``--help``) stays fast and does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "SelectMoeConfig",
    "SelectMoeForCausalLM",
    "__version__",
    "register_select_moe",
    "register_trash_expert",
]

if TYPE_CHECKING:
    from selectmoe.model.configuration_select_moe import SelectMoeConfig
    from selectmoe.model.modeling_select_moe import (
        SelectMoeForCausalLM,
        register_select_moe,
        register_trash_expert,
    )

_LAZY = {
    "SelectMoeConfig": "selectmoe.model.configuration_select_moe",
    "SelectMoeForCausalLM": "selectmoe.model.modeling_select_moe",
    "register_select_moe": "selectmoe.model.modeling_select_moe",
    "register_trash_expert": "selectmoe.model.modeling_select_moe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selectmoe' has no attribute {name!r}")
