"""The names of the selection methods: stated once, importable without torch (the command line's
choices, the selection code and the reports read them from here)."""

from __future__ import annotations

__all__ = ["LABEL_METHODS", "POOL_ONLY_METHODS", "ROUTER_METHODS", "SELECTION_METHODS"]

#: Methods whose selection reads the router data (and so depends on the quality-loss type).
ROUTER_METHODS: tuple[str, ...] = ("selectmoe", "quality_topk", "diversity")

#: Reference methods that read the pool's quality labels (no real method may).
LABEL_METHODS: tuple[str, ...] = ("oracle", "anti_oracle")
#: Every selection method, in the order of the docs.
SELECTION_METHODS: tuple[str, ...] = (*ROUTER_METHODS, "random", "full", *LABEL_METHODS)
#: Methods that select from the pool alone (no router data needed).
POOL_ONLY_METHODS: tuple[str, ...] = ("random", "full", *LABEL_METHODS)
