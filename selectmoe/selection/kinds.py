"""Kinds of selection method: what each reads, where its selections live, how it selects.

A *method* is a name in the config (``selection.methods``); its *kind* says everything the
workflow needs to run it, in one registry entry (:class:`MethodKind`):

``inputs(layout, selection)``
    The files its select job reads, by name (the rule's named inputs): router data and clusters,
    features, the pool, quality labels, or an artefact a plugin makes. The workflow's one select
    rule, its cost ledger and its plan follow these inputs to the jobs that make them.
``uses_loss`` / ``uses_percentage``
    Its path shape (:mod:`selectmoe.workflow.layout` spells it): a loss type in the path when
    it reads one loss type's router data, a percentage unless it selects the whole pool.
``load(inputs)`` and ``choose(loaded, request)``
    The select job: read the inputs (:class:`Loaded`), then choose ``n`` rows (:class:`Chosen`).
    Heavy modules are imported inside them, so that this registry imports neither torch nor the
    models: the config check reads it.

Built-in kinds: ``routed`` (a *score* and an *allocation* over one loss type's router data:
``selectmoe``, ``selectmoe_seed``, the references ranked by the gate or the LM's losses, and
methods of ``register_selection_method``), ``pool`` (``random``), ``reference`` (``oracle``,
``anti_oracle``: they read the pool's quality labels), ``targeted`` (``rds``, ``less``: they
read features of the pool and of the query set) and ``full``. A plugin adds a kind with
:func:`register_method_kind`, with artefacts of its own (:mod:`selectmoe.workflow.artefacts`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selectmoe.errors import SelectionError
from selectmoe.selection.methods import (
    BUILTIN_DEFINITIONS,
    SEED_METHOD,
    method_definitions,
    uses_clusters,
    uses_score,
)

__all__ = [
    "Chosen",
    "Loaded",
    "MethodKind",
    "SelectionRequest",
    "available_methods",
    "is_targeted",
    "kind_of",
    "method_kinds",
    "register_method_kind",
    "register_selection_method",
]


@dataclass
class Loaded:
    """What a select job read: the candidates and, per kind, what else it needs.

    Attributes
    ----------
    candidates : RouterData, PoolExamples, TargetedFeatures or a plugin's object
        The examples to choose from; it has ``n_samples``, ``sample_ids``, ``datasets``,
        ``files`` and ``file_of(row)``.
    queries : TargetedFeatures, optional
        The query set's features (targeted kinds).
    quality_labels : PoolLabels, optional
        Aligned to the candidates' rows (reference kind).
    clustering : ClusteringResult, optional
        The clusters of these rows, computed once per loss type (routed kind).
    extra : dict
        Anything else a plugin's loader returns.
    """

    candidates: Any
    queries: Any = None
    quality_labels: Any = None
    clustering: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SelectionRequest:
    """The settings of one selection: method, budget, seed and the selection section's keys."""

    method: str
    n: int
    seed: int
    definitions: Mapping[str, Mapping[str, Any]]
    clustering_method: str = "kmeans"
    clustering_params: Mapping[str, Any] = field(default_factory=dict)
    debug_print: bool = False


@dataclass
class Chosen:
    """A kind's choice.

    Attributes
    ----------
    indices : numpy.ndarray of shape (n,), int64
        Chosen rows, in selection order.
    scores : numpy.ndarray of shape (N,), float64
        The score of every row (NaN where the kind reads none).
    score_definition : str
        What the score is, for ``selection.json``.
    clustering : ClusteringResult, optional
        The clusters the allocation spent the budget over.
    info : dict
        What ``selection.json`` records beside the common keys.
    timings : dict
        Seconds of the kind's phases (``clustering``, ``selection``).
    """

    indices: np.ndarray
    scores: np.ndarray
    score_definition: str
    clustering: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


#: ``(layout, selection) -> {input name: [paths]}``
InputsFn = Callable[[Any, Any], dict[str, list[str]]]


@dataclass(frozen=True)
class MethodKind:
    """A kind of selection method (module docstring).

    Attributes
    ----------
    name : str
    methods : tuple of str
        Its built-in method names (the routed kind also owns every method definition).
    inputs : callable
        ``(layout, selection) -> {name: [paths]}``, the select job's inputs.
    load : callable
        ``(inputs: {name: [paths]}, request: SelectionRequest) -> Loaded``.
    choose : callable
        ``(loaded: Loaded, request: SelectionRequest) -> Chosen``.
    uses_loss, uses_percentage : bool
        The selection's path shape (module docstring).
    uses_labels : bool
        Reads the pool's quality labels, which a real pool lacks (marked ``‡``).
    targeted : bool
        Selects for the evaluation tasks' query sets (marked ``†``).
    deterministic : tuple of str
        Its methods whose selection involves no chance: they select once, not once per
        selection replicate (their replicates differ only in the finetune seed).
    description : str
        One line for the documentation and ``selection.json``.
    """

    name: str
    methods: tuple[str, ...]
    inputs: InputsFn
    load: Callable[..., Loaded]
    choose: Callable[[Loaded, SelectionRequest], Chosen]
    uses_loss: bool = False
    uses_percentage: bool = True
    uses_labels: bool = False
    targeted: bool = False
    deterministic: tuple[str, ...] = ()
    description: str = ""

    @property
    def marker(self) -> str:
        """``‡`` for a reference that reads labels, ``†`` for a targeted kind, else empty."""
        return "‡" if self.uses_labels else "†" if self.targeted else ""


_KINDS: dict[str, MethodKind] = {}
#: Plugged-in routed methods: ``fn(router, *, n, scores, seed) -> indices``.
_CUSTOM_METHODS: dict[str, Callable[..., np.ndarray]] = {}


def register_method_kind(kind: MethodKind, *, overwrite: bool = False) -> MethodKind:
    """Add a kind of selection method (from a plugin, :mod:`selectmoe.workflow.plugins`).

    Raises
    ------
    SelectionError
        For a kind or method name that exists already (unless ``overwrite``).
    """
    if kind.name in _KINDS and not overwrite:
        raise SelectionError(f"method kind {kind.name!r} is already registered")
    taken = {m for other in _KINDS.values() if other.name != kind.name for m in other.methods}
    clash = sorted(taken & set(kind.methods))
    if clash:
        raise SelectionError(f"method(s) {', '.join(clash)} belong to another kind already")
    _KINDS[kind.name] = kind
    return kind


def method_kinds() -> dict[str, MethodKind]:
    """Every registered kind, by name (built-in ones first)."""
    return dict(_KINDS)


def kind_of(method: str, definitions: Mapping[str, Mapping[str, Any]] | None = None) -> MethodKind:
    """The kind of ``method``; a config's ``method_definitions`` and plugged-in methods are
    routed.

    Raises
    ------
    SelectionError
        For an unknown method, listing the valid names.
    """
    if method in (definitions or {}) or method in _CUSTOM_METHODS:
        return _KINDS["routed"]
    for kind in _KINDS.values():
        if method in kind.methods:
            return kind
    raise SelectionError(
        f"unknown selection method {method!r}; valid: {', '.join(available_methods(definitions))}"
    )


def is_targeted(method: str) -> bool:
    """Whether ``method`` is of a targeted kind (a name no kind knows is not)."""
    return any(method in kind.methods and kind.targeted for kind in _KINDS.values())


def available_methods(definitions: Mapping[str, Any] | None = None) -> list[str]:
    """Built-in methods (in kind order), then plugged-in ones, then the config's definitions."""
    names = [m for kind in _KINDS.values() for m in kind.methods]
    names += sorted(_CUSTOM_METHODS)
    return list(dict.fromkeys([*names, *(definitions or {})]))


def register_selection_method(
    name: str, fn: Callable[..., np.ndarray], *, overwrite: bool = False
) -> None:
    """Register a routed selection method under ``name`` (from a plugin module).

    ``fn(router, *, n, scores, seed)`` gets the pooled router data, the budget ``n``, the seed's
    score of every sample (``[N]``) and the selection seed, and returns ``n`` distinct row
    indices in selection order. In the workflow it reads one loss type's router data.

    Raises
    ------
    SelectionError
        For a built-in name, or a name registered before (unless ``overwrite``).
    """
    if any(name in kind.methods for kind in _KINDS.values()):
        raise SelectionError(f"{name!r} is a built-in selection method; choose another name")
    if name in _CUSTOM_METHODS and not overwrite:
        raise SelectionError(f"selection method {name!r} is already registered")
    _CUSTOM_METHODS[name] = fn


# --------------------------------------------------------------------------------------------
# inputs: what each kind's select job reads
# --------------------------------------------------------------------------------------------


def _routed_inputs(layout: Any, selection: Any) -> dict[str, list[str]]:
    inputs = {
        "router_data": [
            layout.router_data(selection.loss, d, selection.replicate) for d in layout.datasets
        ],
        "pool": layout.pool_files(),
    }
    if uses_clusters(selection.method, layout.definitions):
        inputs["clusters"] = [layout.clusters(selection.loss, selection.replicate)]
    if uses_score("excess_loss", [selection.method], layout.definitions):
        inputs["reference_router_data"] = [
            layout.router_data(layout.UNTRAINED, d) for d in layout.datasets
        ]
    return inputs


def _pool_inputs(layout: Any, selection: Any) -> dict[str, list[str]]:
    return {"pool": layout.pool_files()}


def _reference_inputs(layout: Any, selection: Any) -> dict[str, list[str]]:
    return {"pool": layout.pool_files(), "labels": [layout.labels_file()]}


def _targeted_inputs(layout: Any, selection: Any) -> dict[str, list[str]]:
    return {
        "features": [
            layout.features(selection.method, d, selection.replicate) for d in layout.datasets
        ],
        "queries": [layout.features(selection.method, layout.QUERIES, selection.replicate)],
        "pool": layout.pool_files(),
    }


# --------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------


def _one(inputs: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = list(inputs.get(name) or [])
    return str(values[0]) if values else None


def _load_routed(inputs: Mapping[str, Sequence[str]], request: SelectionRequest) -> Loaded:
    from selectmoe.data.router_data import load_router_data
    from selectmoe.errors import RouterDataError
    from selectmoe.selection.clusters import read_clusters

    paths = list(inputs.get("router_data") or [])
    if not paths:
        raise RouterDataError(
            f"method {request.method!r} needs router data; pass the *_router_data.pt files "
            "(only random, full, oracle and anti_oracle select from the pool alone)"
        )
    router = load_router_data(paths)
    reference = list(inputs.get("reference_router_data") or [])
    if reference:
        from selectmoe.selection.scores import attach_reference_loss

        attach_reference_loss(router, load_router_data(reference))
    clusters = _one(inputs, "clusters")
    clustering = None
    if clusters is not None and uses_clusters(request.method, request.definitions):
        clustering = read_clusters(clusters, router)
    return Loaded(candidates=router, clustering=clustering)


def _load_pool(inputs: Mapping[str, Sequence[str]], request: SelectionRequest) -> Loaded:
    from selectmoe.data.router_data import load_router_data
    from selectmoe.selection.select import PoolExamples

    paths = list(inputs.get("router_data") or [])
    if paths:  # the pool methods select from router data too, when given it
        return Loaded(candidates=load_router_data(paths))
    return Loaded(candidates=PoolExamples.of_pool(list(inputs["pool"])))


def _load_reference(inputs: Mapping[str, Sequence[str]], request: SelectionRequest) -> Loaded:
    from selectmoe.data.labels import align_labels

    loaded = _load_pool(inputs, request)
    labels = _one(inputs, "labels")
    if labels is None:
        raise SelectionError(
            f"method {request.method!r} needs the pool's quality labels; set data.labels (the "
            "demo provides its own)"
        )
    router = loaded.candidates
    keys = list(zip(router.datasets, router.sample_ids, strict=True))
    loaded.quality_labels = align_labels(labels, keys)
    return loaded


def _load_targeted(inputs: Mapping[str, Sequence[str]], request: SelectionRequest) -> Loaded:
    from selectmoe.errors import RouterDataError
    from selectmoe.selection.targeted import load_features

    paths = list(inputs.get("features") or inputs.get("router_data") or [])
    queries = _one(inputs, "queries")
    if not paths or queries is None:
        raise RouterDataError(
            f"method {request.method!r} needs the pool's features files and the queries' "
            "features file (rules represent / less_gradients)"
        )
    return Loaded(candidates=load_features(paths), queries=load_features([queries]))


# --------------------------------------------------------------------------------------------
# choosers
# --------------------------------------------------------------------------------------------


def _choose_routed(loaded: Loaded, request: SelectionRequest) -> Chosen:
    from selectmoe.data.router_data import RouterData
    from selectmoe.selection.allocation import CLUSTERED_ALLOCATIONS, allocate
    from selectmoe.selection.clusters import cluster_router
    from selectmoe.selection.scores import compute_score, describe

    router = loaded.candidates
    if not isinstance(router, RouterData):
        raise SelectionError(f"method {request.method!r} needs router data, not the pool alone")
    definition = method_definitions(request.definitions).get(request.method)
    n_samples = router.n_samples
    if definition is None:  # a plugged-in method ranks by the seed's gate score
        scores = compute_score(router, "gate", params={}, seed=request.seed)
        start = time.perf_counter()
        indices = np.asarray(
            _CUSTOM_METHODS[request.method](router, n=request.n, scores=scores, seed=request.seed),
            dtype=np.int64,
        )
        if indices.shape != (request.n,) or len(np.unique(indices)) != request.n:
            raise SelectionError(
                f"selection method {request.method!r} returned {indices.shape} indices; "
                f"expected {request.n} distinct rows"
            )
        if request.n and (indices.min() < 0 or indices.max() >= n_samples):
            raise SelectionError(
                f"selection method {request.method!r} returned rows outside the data"
            )
        return Chosen(
            indices=indices,
            scores=scores,
            score_definition=describe("gate", {}),
            timings={"clustering": 0.0, "selection": time.perf_counter() - start},
        )
    score_params = dict(definition.get("score_params") or {})
    scores = compute_score(router, definition["score"], params=score_params, seed=request.seed)
    start = time.perf_counter()
    clustering = None
    if definition["allocation"] in CLUSTERED_ALLOCATIONS:
        clustering = loaded.clustering
        if clustering is None:
            clustering = cluster_router(
                router,
                clustering_method=request.clustering_method,
                clustering_params=request.clustering_params,
                seed=request.seed,
                debug_print=request.debug_print,
            )
        elif clustering.labels.shape != (n_samples,):
            raise SelectionError(
                f"the given clustering labels {clustering.labels.shape[0]} rows; the router "
                f"data has {n_samples}"
            )
    timings = {"clustering": time.perf_counter() - start}
    start = time.perf_counter()
    indices = allocate(
        definition["allocation"],
        scores,
        clustering.labels if clustering is not None else None,
        request.n,
        params=definition.get("allocation_params") or {},
        seed=request.seed,
    )
    timings["selection"] = time.perf_counter() - start
    return Chosen(
        indices=indices,
        scores=scores,
        score_definition=describe(definition["score"], score_params),
        clustering=clustering,
        info={
            "allocation": {
                "name": definition["allocation"],
                "params": dict(definition.get("allocation_params") or {}),
            }
        },
        timings=timings,
    )


def _unscored(candidates: Any) -> np.ndarray:
    """The gate scores of router data (shown beside a pool method's choice), else NaN."""
    scores = getattr(candidates, "scores", None)
    return scores if scores is not None else np.full(candidates.n_samples, np.nan)


_UNSCORED = "none (selects without a score)"


def _choose_random(loaded: Loaded, request: SelectionRequest) -> Chosen:
    start = time.perf_counter()
    n_samples = loaded.candidates.n_samples
    rng = np.random.default_rng(request.seed)
    indices = rng.permutation(n_samples)[: request.n].astype(np.int64)
    return Chosen(
        indices=indices,
        scores=_unscored(loaded.candidates),
        score_definition=_UNSCORED,
        timings={"clustering": 0.0, "selection": time.perf_counter() - start},
    )


def _choose_reference(loaded: Loaded, request: SelectionRequest) -> Chosen:
    from selectmoe.data.labels import describe

    labels = loaded.quality_labels
    if labels is None:
        raise SelectionError(
            f"method {request.method!r} needs the pool's quality labels; set data.labels (the "
            "demo provides its own)"
        )
    start = time.perf_counter()
    n_samples = loaded.candidates.n_samples
    rng = np.random.default_rng(request.seed)
    first = ~labels.planted if request.method == "oracle" else labels.planted
    # the preferred group first, a seeded random order within each group
    indices = np.lexsort((rng.random(n_samples), ~first))[: request.n].astype(np.int64)
    return Chosen(
        indices=indices,
        scores=_unscored(loaded.candidates),
        score_definition=_UNSCORED,
        info={
            "uses_labels": True,
            "labels": describe(labels),
            "n_planted_selected": int(labels.planted[indices].sum()),
        },
        timings={"clustering": 0.0, "selection": time.perf_counter() - start},
    )


def _choose_full(loaded: Loaded, request: SelectionRequest) -> Chosen:
    return Chosen(
        indices=np.arange(loaded.candidates.n_samples, dtype=np.int64),
        scores=_unscored(loaded.candidates),
        score_definition=_UNSCORED,
        timings={"clustering": 0.0, "selection": 0.0},
    )


_TARGETED_SCORES = {
    "rds": "RDS+: per task, the max over its query examples of the cosine of the target's "
    "position-weighted mean-pooled final hidden states; tasks take turns (round robin)",
    "less": "LESS: max over query subtasks of the mean checkpoint-weighted cosine of projected "
    "LoRA gradients (Adam-normalised for the pool); top n",
}


def _choose_targeted(loaded: Loaded, request: SelectionRequest) -> Chosen:
    from selectmoe.selection.targeted import TargetedFeatures, select_targeted

    if not isinstance(loaded.candidates, TargetedFeatures) or loaded.queries is None:
        raise SelectionError(
            f"method {request.method!r} needs the pool's and the queries' features (rules "
            "represent / less_gradients), not router data"
        )
    start = time.perf_counter()
    indices, scores, info = select_targeted(
        request.method, loaded.candidates, loaded.queries, request.n
    )
    return Chosen(
        indices=indices,
        scores=scores,
        score_definition=_TARGETED_SCORES[request.method],
        info=info,
        timings={"clustering": 0.0, "selection": time.perf_counter() - start},
    )


register_method_kind(
    MethodKind(
        name="routed",
        methods=tuple(BUILTIN_DEFINITIONS),
        inputs=_routed_inputs,
        load=_load_routed,
        choose=_choose_routed,
        uses_loss=True,
        description="a score and an allocation over one loss type's router data",
    )
)
register_method_kind(
    MethodKind(
        name="pool",
        methods=("random",),
        inputs=_pool_inputs,
        load=_load_pool,
        choose=_choose_random,
        description="a seeded uniform sample of the pool",
    )
)
register_method_kind(
    MethodKind(
        name="full",
        methods=("full",),
        inputs=_pool_inputs,
        load=_load_pool,
        choose=_choose_full,
        uses_percentage=False,
        deterministic=("full",),
        description="the whole pool",
    )
)
register_method_kind(
    MethodKind(
        name="reference",
        methods=("oracle", "anti_oracle"),
        inputs=_reference_inputs,
        load=_load_reference,
        choose=_choose_reference,
        uses_labels=True,
        description="clean (oracle) or planted (anti_oracle) examples first, from the labels",
    )
)
register_method_kind(
    MethodKind(
        name="targeted",
        methods=("rds", "less"),
        inputs=_targeted_inputs,
        load=_load_targeted,
        choose=_choose_targeted,
        targeted=True,
        deterministic=("rds",),
        description="the pool examples most similar to the evaluation tasks' query sets",
    )
)

assert SEED_METHOD in _KINDS["routed"].methods
