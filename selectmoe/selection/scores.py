"""Per-example scores over router data: what a selection method ranks by (higher is better).

A score is a function ``(router, *, params, seed) -> numpy.ndarray [N]`` registered by name:

- ``gate``: the Select-MoE quality gate. ``params``: ``layers`` (``"all"`` or layer indices),
  ``layer_weights`` (one weight per chosen layer, default equal), ``tokens`` (``all`` or
  ``answer``), ``aggregation`` (``sigmoid_of_mean``: sigmoid of the token-mean raw score, the
  seed's; ``mean_of_sigmoid``: token mean of the per-token ``sigmoid``, all tokens only). The
  seed's score is the default: ``mean_l sigmoid(mean_t quality_score)`` over all layers and
  tokens;
- ``lm_loss``: minus the LM's mean loss on the answer tokens (low loss first: "perplexity");
- ``eos_loss``: minus the LM's loss on the answers' end-of-sequence tokens;
- ``ifd``: Instruction-Following Difficulty, ``PPL(A | Q) / PPL(A)`` (Cherry-LLM, Superfiltering)
  from the answer loss with and without the question;
- ``loss_quantile``: minus a quantile of the answer-token losses (``params["q"]``, one of the
  levels the scoring pass records; 1.0 is the largest token loss);
- ``worst_turn_loss``: minus the largest mean loss of one answer turn (a multi-turn example is
  as good as its worst answer);
- ``excess_loss``: RHO-1's excess loss, ``loss_warm - loss_reference`` on the answer tokens,
  higher first as RHO-1 selects: the reference is the converted model (pretrained, before the
  warmup on the pool; ``score_untrained`` runs it anyway), the current model the warmed one.
  An example whose loss the warmup on the pool lowered the most ranks last;
- ``length_residual``: another score (``params["score"]``, ``params["params"]``) with what the
  answer's length explains removed: the residual of a least-squares fit of the score on
  ``log(answer tokens)`` over the pool (a length-robust variant; no extra pass);
- ``random``: a seeded uniform score (for allocations that need one, e.g. ``diversity``);
- ``rank_blend``: a weighted mean of other scores' percentile ranks (``params["scores"]``: a
  list of ``{score, params, weight}``); an example a score cannot rank counts as its lowest.
  ``params["within"]``: ``pool`` ranks over the whole pool; ``dataset`` ranks each example
  among its own dataset's, so that a dataset whose format is harder to predict (a higher loss
  for every example) is not ranked below the others as a whole.

The LM scores need the statistics that scoring records with ``lm_statistics`` (and ``ifd``); a
router-data file without them gives a clear error. Cost: every score but ``ifd`` (a second pass
over the answers alone) and ``excess_loss`` (the converted model's pass, which the workflow runs
anyway for the untrained-gate control) reads the one scoring pass. Plugins register more with
:func:`register_score`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from selectmoe.catalogue import register_name
from selectmoe.errors import SelectionError
from selectmoe.selection.allocation import percentile_ranks
from selectmoe.selection.methods import LM_SCORES

__all__ = [
    "LM_SCORES",
    "REFERENCE_ANSWER_LOSS",
    "SCORE_PARAMS",
    "attach_reference_loss",
    "available_scores",
    "compute_score",
    "register_score",
]


ScoreFn = Callable[..., np.ndarray]
_REGISTRY: dict[str, ScoreFn] = {}
#: The parameters each built-in score takes, with their defaults (the seed's for ``gate``).
SCORE_PARAMS: dict[str, dict[str, Any]] = {
    "gate": {
        "layers": "all",
        "layer_weights": None,
        "tokens": "all",
        "aggregation": "sigmoid_of_mean",
    },
    "lm_loss": {},
    "eos_loss": {},
    "ifd": {},
    "loss_quantile": {"q": 0.9},
    "worst_turn_loss": {},
    "excess_loss": {},
    "length_residual": {"score": "lm_loss", "params": {}},
    "random": {},
    "rank_blend": {"scores": [], "within": "pool"},
}
#: The statistic ``excess_loss`` reads: the converted model's ``answer_loss`` on the same
#: examples, attached to the router data by the loader (:func:`attach_reference_loss`).
REFERENCE_ANSWER_LOSS = "reference_answer_loss"


def register_score(name: str, fn: ScoreFn, *, overwrite: bool = False) -> None:
    """Register ``fn(router, *, params, seed) -> [N]`` (higher is better) under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise SelectionError(f"score {name!r} is already registered")
    _REGISTRY[name] = fn
    register_name("score", name)


def available_scores() -> list[str]:
    """The registered score names, sorted."""
    return sorted(_REGISTRY)


def _statistic(router: Any, key: str, score: str) -> torch.Tensor:
    value = router.statistics.get(key)
    if value is None:
        hint = (
            "a method that ranks by ifd in selection.methods (the score stage then runs the "
            "answers alone too)"
            if key == "answer_loss_alone"
            else "scoring.lm_statistics: true"
        )
        raise SelectionError(
            f"score {score!r} needs {key!r} in the router data, which these files lack; re-run the "
            f"score stage with {hint}"
        )
    return value.to(torch.float64)


def _check_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    allowed = SCORE_PARAMS.get(name)
    if allowed is None:
        return dict(params)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise SelectionError(
            f"unknown parameter(s) {', '.join(unknown)} of score {name!r}; valid: "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )
    return {**allowed, **params}


def compute_score(
    router: Any, name: str, *, params: Mapping[str, Any] | None = None, seed: int = 0
) -> np.ndarray:
    """The score ``name`` of every example of ``router`` (float64 ``[N]``, higher is better).

    Raises
    ------
    SelectionError
        For an unknown score or parameter, statistics the router data lacks, or a score that
        is not finite where it should be.
    """
    if name not in _REGISTRY:
        raise SelectionError(f"unknown score {name!r}; valid: {', '.join(available_scores())}")
    values = np.asarray(
        _REGISTRY[name](router, params=_check_params(name, params or {}), seed=seed),
        dtype=np.float64,
    )
    if values.shape != (router.n_samples,):
        raise SelectionError(
            f"score {name!r} returned shape {values.shape}; expected ({router.n_samples},)"
        )
    return values


def _layers(params: Mapping[str, Any], n_layers: int) -> tuple[list[int], np.ndarray]:
    chosen = params["layers"]
    layers = list(range(n_layers)) if chosen == "all" else [int(i) for i in chosen]
    if not layers or any(not -n_layers <= i < n_layers for i in layers):
        raise SelectionError(f"gate layers {chosen!r}: choose among 0..{n_layers - 1} (or 'all')")
    weights = params["layer_weights"]
    if weights is None:
        weights = [1.0] * len(layers)
    if len(weights) != len(layers):
        raise SelectionError(f"layer_weights {weights!r} must give one weight per chosen layer")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0 or (weights < 0).any():
        raise SelectionError(f"layer_weights {weights.tolist()} must be >= 0 and not all 0")
    return layers, weights / weights.sum()


def _gate(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    del seed
    tokens, aggregation = params["tokens"], params["aggregation"]
    if tokens not in ("all", "answer"):
        raise SelectionError(f"gate tokens {tokens!r}: use 'all' or 'answer'")
    if aggregation not in ("sigmoid_of_mean", "mean_of_sigmoid"):
        raise SelectionError(
            f"gate aggregation {aggregation!r}: use 'sigmoid_of_mean' or 'mean_of_sigmoid'"
        )
    if aggregation == "mean_of_sigmoid":
        if tokens != "all":
            raise SelectionError("gate aggregation 'mean_of_sigmoid' is recorded for all tokens")
        per_layer = _statistic(router, "quality_good", "gate").numpy()
    else:
        raw = (
            router.quality_score.to(torch.float64)
            if tokens == "all"
            else _statistic(router, "quality_score_answer", "gate")
        )
        per_layer = torch.sigmoid(raw).numpy()
    layers, weights = _layers(params, per_layer.shape[1])
    return per_layer[:, layers] @ weights


def _lm_loss(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    loss = _statistic(router, "answer_loss", "lm_loss").numpy()
    return np.where(np.isfinite(loss), -loss, -np.inf)  # no answer token: last


def _eos_loss(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    loss = _statistic(router, "eos_loss", "eos_loss").numpy()
    return np.where(np.isfinite(loss), -loss, -np.inf)  # answer cut before its eos: last


def _ifd(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    conditional = _statistic(router, "answer_loss", "ifd").numpy()
    alone = _statistic(router, "answer_loss_alone", "ifd").numpy()
    # PPL(A|Q) / PPL(A) = exp(loss(A|Q) - loss(A)); NaN where either is undefined
    return np.exp(conditional - alone)


def _loss_quantile(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    from selectmoe.data.router_data import ANSWER_LOSS_QUANTILES

    q = float(params["q"])
    if q not in ANSWER_LOSS_QUANTILES:
        raise SelectionError(
            f"loss_quantile q={q}: the scoring pass records the levels "
            f"{', '.join(map(str, ANSWER_LOSS_QUANTILES))}; choose one of them"
        )
    quantiles = _statistic(router, "answer_loss_quantiles", "loss_quantile").numpy()
    loss = quantiles[:, ANSWER_LOSS_QUANTILES.index(q)]
    return np.where(np.isfinite(loss), -loss, -np.inf)


def _worst_turn_loss(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    loss = _statistic(router, "answer_loss_worst_turn", "worst_turn_loss").numpy()
    return np.where(np.isfinite(loss), -loss, -np.inf)


def _excess_loss(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    if REFERENCE_ANSWER_LOSS not in router.statistics:
        raise SelectionError(
            "score 'excess_loss' needs the converted model's answer loss on the same examples "
            "(the untrained router data with LM statistics); the workflow passes it to methods "
            "that rank by excess_loss; stand-alone, give --reference-router-data"
        )
    warm = _statistic(router, "answer_loss", "excess_loss").numpy()
    reference = router.statistics[REFERENCE_ANSWER_LOSS].to(torch.float64).numpy()
    excess = warm - reference  # RHO-1: high excess loss first
    return np.where(np.isfinite(excess), excess, -np.inf)


def attach_reference_loss(router: Any, reference: Any) -> None:
    """Give ``router`` the converted model's answer loss (``reference``: router data of the same
    examples with LM statistics) under :data:`REFERENCE_ANSWER_LOSS`, aligned by (dataset, id).

    Raises
    ------
    SelectionError
        When ``reference`` lacks the LM statistics or an example of ``router``.
    """
    loss = _statistic(reference, "answer_loss", "excess_loss")
    position = {
        key: row
        for row, key in enumerate(zip(reference.datasets, reference.sample_ids, strict=True))
    }
    missing = [
        key for key in zip(router.datasets, router.sample_ids, strict=True) if key not in position
    ]
    if missing:
        raise SelectionError(
            f"the reference router data lacks {len(missing)} example(s) of the router data, e.g. "
            f"{missing[0][0]}/{missing[0][1]}; score both from the same pool files"
        )
    rows = [position[key] for key in zip(router.datasets, router.sample_ids, strict=True)]
    router.statistics[REFERENCE_ANSWER_LOSS] = loss[torch.tensor(rows, dtype=torch.long)].float()


def _length_residual(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    inner = str(params["score"])
    if inner in ("length_residual", "rank_blend"):
        raise SelectionError(f"length_residual of {inner!r}: give a plain score")
    values = compute_score(router, inner, params=params.get("params"), seed=seed)
    length = np.log(np.maximum(_statistic(router, "n_answer_tokens", inner).numpy(), 1.0))
    finite = np.isfinite(values)
    if finite.sum() < 3 or np.ptp(length[finite]) == 0:
        return values  # nothing to fit: the score as it is
    slope, intercept = np.polyfit(length[finite], values[finite], 1)
    return np.where(finite, values - (slope * length + intercept), -np.inf)


def _random(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(router.n_samples)


def _rank_blend(router: Any, *, params: Mapping[str, Any], seed: int) -> np.ndarray:
    parts = params["scores"]
    if not parts or not all(isinstance(p, Mapping) and "score" in p for p in parts):
        raise SelectionError(
            "rank_blend needs params.scores: a list of {score, params, weight} (at least one)"
        )
    within = params["within"]
    if within not in ("pool", "dataset"):
        raise SelectionError(f"rank_blend within {within!r}: use 'pool' or 'dataset'")
    groups = (
        [np.arange(router.n_samples)]
        if within == "pool"
        else [
            np.flatnonzero(np.asarray(router.datasets) == d) for d in dict.fromkeys(router.datasets)
        ]
    )
    total = np.zeros(router.n_samples)
    weights = 0.0
    for part in parts:
        if part["score"] == "rank_blend":
            raise SelectionError("rank_blend cannot blend itself")
        weight = float(part.get("weight", 1.0))
        if weight < 0:
            raise SelectionError(f"rank_blend weight {weight} of {part['score']!r} must be >= 0")
        values = compute_score(router, part["score"], params=part.get("params"), seed=seed)
        for rows in groups:
            total[rows] += weight * percentile_ranks(values[rows])
        weights += weight
    if weights <= 0:
        raise SelectionError("rank_blend weights must not all be 0")
    return total / weights


for _name, _fn in (
    ("rank_blend", _rank_blend),
    ("gate", _gate),
    ("lm_loss", _lm_loss),
    ("eos_loss", _eos_loss),
    ("ifd", _ifd),
    ("loss_quantile", _loss_quantile),
    ("worst_turn_loss", _worst_turn_loss),
    ("excess_loss", _excess_loss),
    ("length_residual", _length_residual),
    ("random", _random),
):
    register_score(_name, _fn)


def describe(name: str, params: Mapping[str, Any] | None = None) -> str:
    """A one-line description of a score and its parameters (for selection.json)."""
    merged = _check_params(name, params or {}) if name in _REGISTRY else dict(params or {})
    shown: Sequence[str] = [f"{k}={v}" for k, v in sorted(merged.items())]
    return f"{name}({', '.join(shown)})"
