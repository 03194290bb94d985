"""The sweep's selections as typed values: one path per selection, for the ``{selection}``
wildcard, the rules' file names and the summary alike.

A selection's path is ``{method}/{loss}/p{percentage}`` for a method that reads the router data
(it depends on the quality-loss type), ``{method}/p{percentage}`` for one that selects from the
pool alone (``random``, ``oracle``, ``anti_oracle``) or for the query sets (``rds``, ``less``),
and ``full`` for the whole pool.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selectmoe.selection.methods import LOSS_FREE_METHODS

__all__ = ["FULL", "Selection", "selection_pattern", "sweep_selections"]

FULL = "full"


@dataclass(frozen=True)
class Selection:
    """One selection of the sweep.

    Attributes
    ----------
    method : str
    loss : str or None
        The quality-loss type of the router data it reads; None for pool-only methods.
    percentage : float
        The selected share of the pool, in (0, 1]; 1.0 for ``full``.
    """

    method: str
    loss: str | None
    percentage: float

    @property
    def path(self) -> str:
        """``{method}/{loss}/p{pct}``, ``{method}/p{pct}`` or ``full``."""
        if self.method == FULL:
            return FULL
        share = f"p{self.percentage:g}"
        return f"{self.method}/{self.loss}/{share}" if self.loss else f"{self.method}/{share}"

    @classmethod
    def from_path(cls, path: str) -> Selection:
        """The selection of a path (the inverse of :attr:`path`)."""
        if path == FULL:
            return cls(FULL, None, 1.0)
        parts = path.split("/")
        if len(parts) not in (2, 3) or not parts[-1].startswith("p"):
            raise ValueError(f"{path!r} is not a selection path ({{method}}[/{{loss}}]/p{{pct}})")
        return cls(parts[0], parts[1] if len(parts) == 3 else None, float(parts[-1][1:]))


def _pool_methods() -> list[str]:
    return [m for m in LOSS_FREE_METHODS if m != FULL]


def sweep_selections(selection: Mapping[str, Any]) -> list[Selection]:
    """Every selection of the config's ``selection`` section, in sweep order: per method (in
    ``methods`` order) every loss type and percentage, then ``full`` when ``full_baseline``."""
    found = []
    for method in selection["methods"]:
        losses = [None] if method in _pool_methods() else list(selection["loss_types"])
        for loss in losses:
            found += [Selection(method, loss, float(p)) for p in selection["percentages"]]
    if selection.get("full_baseline", True):
        found.append(Selection(FULL, None, 1.0))
    return found


def selection_pattern(router_methods: Sequence[str], losses: Sequence[str]) -> str:
    """The regular expression of every selection path (the ``{selection}`` wildcard)."""
    methods = "|".join(map(re.escape, router_methods))
    pool = "|".join(map(re.escape, _pool_methods()))
    loss = "|".join(map(re.escape, losses))
    return f"({methods})/({loss})/p[0-9.]+|({pool})/p[0-9.]+|{FULL}"
