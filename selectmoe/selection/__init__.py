"""Selection: methods and their kinds, scores, allocations, clusters and targeted similarity.

The stable names of SPEC §8 are importable from here (``selectmoe.selection.round_robin``);
they load their modules on first use, so that importing the package (as the config check
does) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["budget", "round_robin", "run_selection", "select_indices"]

_LAZY = {
    "round_robin": "selectmoe.selection.allocation",
    "budget": "selectmoe.selection.select",
    "run_selection": "selectmoe.selection.select",
    "select_indices": "selectmoe.selection.select",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selectmoe.selection' has no attribute {name!r}")
