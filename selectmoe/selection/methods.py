"""The definitions of the routed selection methods: a score and an allocation each, stated once
and importable without torch.

A method that reads the router data is a *score* (:mod:`selectmoe.selection.scores`) and an
*allocation* (:mod:`selectmoe.selection.allocation`) with their parameters; a config adds or
replaces definitions with ``selection.method_definitions`` (``{name: {score, score_params,
allocation, allocation_params}}``), so that a method is a name in the config, not code in the
rules. The other kinds of method (pool, reference, targeted, full, and a plugin's) are entries
of :mod:`selectmoe.selection.kinds`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BUILTIN_DEFINITIONS",
    "LM_SCORES",
    "SEED_METHOD",
    "marked",
    "method_definitions",
    "uses_clusters",
    "uses_score",
]

#: Scores that read the LM statistics of the scoring pass (``scoring.lm_statistics``).
LM_SCORES: tuple[str, ...] = (
    "lm_loss",
    "eos_loss",
    "ifd",
    "loss_quantile",
    "worst_turn_loss",
    "excess_loss",
)

#: The seed's exact Select-MoE: the gate's score as the seed defines it, round robin over the
#: clusters of the routing features. This name and its definition never change.
SEED_METHOD = "selectmoe_seed"

BUILTIN_DEFINITIONS: dict[str, dict[str, Any]] = {
    # Select-MoE chosen by its worst kind of noise (benchmarks/RESULTS.md, "Scores and
    # allocations"): over 17 planted kinds in four families and two worlds, the MoE's answer
    # loss and end-of-sequence loss from the scoring pass, ranked within each dataset and
    # blended, keep the least noise of the family it finds worst; the budget goes to the
    # routing clusters in proportion to their score mass, so a cluster of noise gets no turn.
    "selectmoe": {
        "score": "rank_blend",
        "score_params": {
            "scores": [{"score": "lm_loss"}, {"score": "eos_loss"}],
            "within": "dataset",
        },
        "allocation": "quality_quota",
    },
    SEED_METHOD: {"score": "gate", "allocation": "round_robin"},
    "quality_topk": {"score": "gate", "allocation": "topk"},
    "diversity": {"score": "random", "allocation": "round_robin"},
    "perplexity": {"score": "lm_loss", "allocation": "topk"},
    "ifd": {"score": "ifd", "allocation": "ifd_filter"},
}
"""Built-in methods that read the router data: ``{name: {score, allocation, ...params}}``."""


def marked(method: str) -> str:
    """The method's name as tables and legends show it: ``‡`` for a reference that reads the
    pool's labels, ``†`` for a targeted method (the kind's ``marker``); a config's own
    definition is shown as it is."""
    from selectmoe.selection.kinds import method_kinds

    for kind in method_kinds().values():
        if method in kind.methods and kind.marker:
            return f"{method} {kind.marker}"
    return method


_DEFINITION_KEYS = {"score", "score_params", "allocation", "allocation_params"}


def method_definitions(
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The built-in definitions updated by a config's ``selection.method_definitions``.

    Raises
    ------
    ValueError
        For a definition without ``score`` and ``allocation``, with unknown keys, or one that
        would redefine a pool-only method or the seed's method.
    """
    from selectmoe.selection.kinds import method_kinds

    fixed = {m for kind in method_kinds().values() if kind.name != "routed" for m in kind.methods}
    definitions = {name: dict(value) for name, value in BUILTIN_DEFINITIONS.items()}
    for name, definition in (extra or {}).items():
        if name in fixed or name == SEED_METHOD:
            raise ValueError(f"method {name!r} cannot be redefined; choose another name")
        unknown = sorted(set(definition) - _DEFINITION_KEYS)
        missing = sorted({"score", "allocation"} - set(definition))
        if unknown or missing:
            raise ValueError(
                f"method definition {name!r}: "
                + (f"unknown key(s) {', '.join(unknown)}" if unknown else "")
                + ("; " if unknown and missing else "")
                + (f"missing {', '.join(missing)}" if missing else "")
                + f"; a definition has {', '.join(sorted(_DEFINITION_KEYS))}"
            )
        definitions[name] = dict(definition)
    return definitions


def _score_names(score: str, params: Mapping[str, Any] | None) -> set[str]:
    """``score`` and, for a blend, every score it is made of (recursively)."""
    names = {score}
    if isinstance((params or {}).get("score"), str):  # a wrapper such as length_residual
        names |= _score_names(str(params["score"]), params.get("params"))
    for part in (params or {}).get("scores") or []:
        if isinstance(part, Mapping) and "score" in part:
            names |= _score_names(str(part["score"]), part.get("params"))
    return names


def uses_score(
    score: str,
    methods: list[str] | tuple[str, ...],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> bool:
    """Whether any of ``methods`` ranks by ``score``, alone or inside a ``rank_blend``.

    The score stage runs the answers alone a second time only when a method of the sweep uses
    ``ifd`` (``uses_score("ifd", ...)``).
    """
    definitions = method_definitions(extra)
    return any(
        score in _score_names(definitions[m]["score"], definitions[m].get("score_params"))
        for m in methods
        if m in definitions
    )


def uses_clusters(method: str, extra: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Whether ``method`` spends its budget over the clusters of the routing features (and so
    depends on the clustering settings)."""
    from selectmoe.selection.allocation import CLUSTERED_ALLOCATIONS  # registered ones included
    # registered allocations included

    definition = method_definitions(extra).get(method)
    return definition is not None and definition["allocation"] in CLUSTERED_ALLOCATIONS
