"""Quality diagnostics: does the gate's score mean anything, and what did each selection keep?

For every quality-loss type of the sweep, :func:`quality_table` describes the Select-MoE score
(``mean_l sigmoid(quality_score[:, l])``, and each layer's ``sigmoid(quality_score[:, l])``) of
the warmed gate and, as a control, of the *untrained* gate (the converted model before warmup):

- spread (mean, standard deviation, 5th / 50th / 95th percentiles);
- Spearman correlation with the example's length in tokens (a score that only measures length
  is no quality score);
- per dataset and per layer, the same;
- how far warmup moved the score: Spearman between warmed and untrained scores, and the mean
  absolute change;
- where the pool has quality labels (:mod:`selectmoe.data.labels`): the AUROC of the score for
  "clean ranks above planted", overall and per planted kind (clean against that kind). 0.5 is
  chance; below 0.5 the score prefers the planted examples.

:func:`planted_shares` gives each selection's share of planted examples beside what a random
selection of the same size keeps: the pool's share and the 95% range of a random draw
(hypergeometric), so that "kept less noise than random" is a statement with its uncertainty.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from selectmoe.data.labels import CLEAN, PoolLabels, align_labels
from selectmoe.data.pool import read_selected_keys
from selectmoe.data.router_data import load_router_data
from selectmoe.evidence.figures import new_figure, save_figure
from selectmoe.evidence.overlap import SelectionRun, selection_overlap
from selectmoe.io import atomic_write_text

__all__ = [
    "LENGTH_BLIND",
    "auroc",
    "auroc_intervals",
    "method_score_table",
    "planted_shares",
    "quality_table",
    "spearman",
    "write_diagnostics",
]

_PERCENTILES = (5, 50, 95)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    # start of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive scores above a negative.

    Ties count one half (the Mann-Whitney U statistic over ``n_pos * n_neg``).

    Parameters
    ----------
    scores : numpy.ndarray of shape (N,)
    positive : numpy.ndarray of shape (N,), bool

    Returns
    -------
    float
        In [0, 1]; NaN when either class is empty.

    Examples
    --------
    >>> auroc(np.array([0.9, 0.8, 0.1, 0.8]), np.array([True, True, False, False]))
    0.875
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of the average ranks); NaN when either
    input is constant.

    Examples
    --------
    >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]))
    -1.0
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else math.nan


def auroc_intervals(
    scores: Mapping[str, np.ndarray],
    positive: np.ndarray,
    *,
    reference: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each score's AUROC with a bootstrap interval, and its paired difference to ``reference``.

    Examples are resampled with replacement; every score sees the same resamples, so the
    difference's interval is paired (it is narrower than the two intervals suggest when the
    scores agree on most examples).

    Parameters
    ----------
    scores : mapping of str to numpy.ndarray of shape (N,)
        Higher ranks an example as better (NaN is not allowed: rank undefined values lowest).
    positive : numpy.ndarray of shape (N,), bool
        The examples that should rank high (clean).
    reference : str
        The key of ``scores`` the differences are taken against.

    Returns
    -------
    dict of str to dict
        ``auroc``, ``low``, ``high``, ``diff`` (to the reference), ``diff_low``, ``diff_high``.
    """
    if reference not in scores:
        raise ValueError(f"reference {reference!r} is not one of the scores")
    positive = np.asarray(positive, dtype=bool)
    draws = np.random.default_rng(seed).integers(
        0, positive.size, size=(n_resamples, positive.size)
    )
    replicates = {
        name: np.array([auroc(values[d], positive[d]) for d in draws])
        for name, values in scores.items()
    }
    tail = 100 * (1 - confidence) / 2
    point = {name: auroc(values, positive) for name, values in scores.items()}
    out = {}
    for name in scores:
        difference = replicates[name] - replicates[reference]
        out[name] = {
            "auroc": point[name],
            "low": float(np.nanpercentile(replicates[name], tail)),
            "high": float(np.nanpercentile(replicates[name], 100 - tail)),
            "diff": point[name] - point[reference],
            "diff_low": float(np.nanpercentile(difference, tail)),
            "diff_high": float(np.nanpercentile(difference, 100 - tail)),
        }
    return out


#: |Spearman| with length above which the diagnostics say a score mostly measures length.
LENGTH_BLIND = 0.5


def method_score_table(
    paths: Sequence[str | os.PathLike[str]],
    *,
    scores: Mapping[str, str | os.PathLike[str]],
    definitions: Mapping[str, Mapping[str, Any]],
    labels_path: str | os.PathLike[str] | None = None,
    untrained: Sequence[str | os.PathLike[str]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """What the score of each method measures, and with labels how well it ranks clean examples
    above planted ones.

    One row per method that scores (routed or targeted), from the scores its selection wrote
    (:func:`selectmoe.selection.select.load_selection_scores`), plus the seed's gate score
    (``selectmoe_seed``'s, computed from ``paths`` when no selection of the sweep wrote it):

    - always: Spearman with the example's length in tokens and with its answer's length, and
      with the same score computed on the untrained (converted) model's router data where that
      data has what the score reads (a score that is the untrained model's has learnt nothing
      from warmup); ``length_blind`` when ``|spearman_length|`` or
      ``|spearman_answer_length|`` exceeds :data:`LENGTH_BLIND`;
    - with labels: AUROC with a 95% bootstrap interval, the paired difference to the seed's gate
      score with its interval, AUROC per planted kind, and ``inverted``: the kinds whose AUROC
      is below 0.5 (the score ranks them *above* clean examples).

    Examples a score cannot rank (no answer tokens, say) rank lowest; IFD ranks low first (what
    the IFD filter keeps). A targeted method ranks by its similarity to the query set
    (:mod:`selectmoe.selection.targeted`), a score that is not about quality at all.

    Parameters
    ----------
    paths : sequence of path
        The router data of one loss type.
    scores : mapping of str to path
        Method -> the scores file of one of its selections under this loss type.
    definitions : mapping
        The method definitions (:func:`selectmoe.selection.methods.method_definitions`).
    labels_path : path, optional
        The pool's quality labels.
    untrained : sequence of path, optional
        The untrained-gate router data (the converted model's).
    """
    from selectmoe.errors import SelectionError
    from selectmoe.selection.methods import SEED_METHOD
    from selectmoe.selection.scores import compute_score, describe
    from selectmoe.selection.select import load_selection_scores

    router = load_router_data(paths)
    keys = list(zip(router.datasets, router.sample_ids, strict=True))
    values, described = {}, {}
    gate_definition = {"score": "gate", "score_params": {}}
    if SEED_METHOD not in scores:
        gate = compute_score(router, "gate", params={}, seed=seed)
        values[SEED_METHOD] = np.where(np.isfinite(gate), gate, -np.inf)
        described[SEED_METHOD] = describe("gate", {})
    for method, path in scores.items():
        saved = load_selection_scores(path)
        row_of = {key: i for i, key in enumerate(zip(saved["dataset"], saved["id"], strict=True))}
        missing = [key for key in keys if key not in row_of]
        if missing:
            raise ValueError(
                f"{path}: the scores of {method} lack {len(missing)} example(s) of the router "
                f"data (e.g. {missing[0]}); rerun its select job"
            )
        score = saved["score"][[row_of[key] for key in keys]].astype(np.float64)
        definition = definitions.get(method)
        if definition is not None:
            if definition["score"] == "ifd":  # low IFD first is what the IFD filter keeps
                score = -score
            score = np.where(np.isfinite(score), score, -np.inf)
        values[method] = score
        described[method] = str(saved["score_definition"])
    chosen = [SEED_METHOD, *(m for m in values if m != SEED_METHOD)]
    reference = load_router_data(untrained) if untrained else None
    lengths = router.statistics.get("n_tokens")
    answer_lengths = router.statistics.get("n_answer_tokens")
    rows = []
    for method in chosen:
        row: dict[str, Any] = {"method": method, "score": described[method]}
        row["spearman_length"] = (
            spearman(values[method], lengths.numpy()) if lengths is not None else math.nan
        )
        row["spearman_answer_length"] = (
            spearman(values[method], answer_lengths.numpy())
            if answer_lengths is not None
            else math.nan
        )
        row["length_blind"] = bool(
            max(abs(row["spearman_length"]), abs(row["spearman_answer_length"])) > LENGTH_BLIND
        )
        row["spearman_untrained"] = math.nan
        definition = gate_definition if method == SEED_METHOD else definitions.get(method)
        if reference is not None and definition is not None:
            try:
                same = compute_score(
                    reference, definition["score"], params=definition.get("score_params")
                )
            except SelectionError:  # the untrained data lacks what this score reads
                same = None
            if same is not None and reference.n_samples == len(keys):
                row["spearman_untrained"] = spearman(
                    np.where(np.isfinite(values[method]), values[method], -1e300),
                    np.where(np.isfinite(same), same, -1e300),
                )
        rows.append(row)
    table = pd.DataFrame(rows)
    if labels_path is None:
        return table
    labels = align_labels(labels_path, keys)
    clean = ~labels.planted
    kinds = sorted(set(labels.kinds) - {CLEAN})
    intervals = auroc_intervals(
        values, clean, reference=SEED_METHOD, n_resamples=n_resamples, seed=seed
    )
    kind_array = np.asarray(labels.kinds)
    labelled = []
    for method in chosen:
        row = dict(intervals[method])
        for kind in kinds:
            pair = (kind_array == kind) | clean
            row[f"auroc_{kind}"] = auroc(values[method][pair], clean[pair])
        row["inverted"] = ", ".join(k for k in kinds if row[f"auroc_{k}"] < 0.5)
        labelled.append(row)
    return pd.concat([table, pd.DataFrame(labelled)], axis=1)


@dataclass
class _Scores:
    """Per-example scores of one gate, in the router data's row order."""

    overall: np.ndarray  # (N,)
    per_layer: np.ndarray  # (N, L)
    n_tokens: np.ndarray | None  # (N,)
    datasets: np.ndarray  # (N,) str
    keys: list[tuple[str, str]]


def _load_scores(paths: Sequence[str | os.PathLike[str]]) -> _Scores:
    router = load_router_data(paths)
    per_layer = torch.sigmoid(router.quality_score.to(torch.float64)).numpy()
    n_tokens = []
    for path in router.files:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        value = payload.get("n_tokens")
        n_tokens.append(None if value is None else np.asarray(value, dtype=np.float64))
    lengths = None if any(v is None for v in n_tokens) else np.concatenate(n_tokens)
    return _Scores(
        overall=per_layer.mean(axis=1),
        per_layer=per_layer,
        n_tokens=lengths,
        datasets=np.asarray(router.datasets),
        keys=list(zip(router.datasets, router.sample_ids, strict=True)),
    )


def _describe(
    values: np.ndarray,
    *,
    lengths: np.ndarray | None,
    labels: PoolLabels | None,
    kinds: Sequence[str],
    mask: np.ndarray,
) -> dict[str, Any]:
    chosen = values[mask]
    row: dict[str, Any] = {"n": int(mask.sum())}
    row["mean"] = float(chosen.mean())
    row["std"] = float(chosen.std())
    for q, value in zip(_PERCENTILES, np.percentile(chosen, _PERCENTILES), strict=True):
        row[f"p{q:02d}"] = float(value)
    row["spearman_length"] = spearman(chosen, lengths[mask]) if lengths is not None else math.nan
    if labels is not None:
        clean = ~labels.planted[mask]
        row["auroc"] = auroc(chosen, clean)
        subset_kinds = np.asarray(labels.kinds)[mask]
        for kind in kinds:
            pair = (subset_kinds == kind) | clean
            row[f"auroc_{kind}"] = auroc(chosen[pair], clean[pair])
    return row


def quality_table(
    warmed_paths: Sequence[str | os.PathLike[str]],
    untrained_paths: Sequence[str | os.PathLike[str]] | None = None,
    *,
    labels_path: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Diagnostics of one loss type's scores, with the untrained gate as a control.

    Parameters
    ----------
    warmed_paths : sequence of path
        ``{dataset}_router_data.pt`` of the warmed gate.
    untrained_paths : sequence of path, optional
        The same datasets scored with the untrained gate (same examples, same order).
    labels_path : path, optional
        The pool's quality labels; adds ``auroc`` and ``auroc_{kind}`` columns.

    Returns
    -------
    pandas.DataFrame
        One row per (gate, scope): gate ``warmed`` / ``untrained``; scope ``all``,
        ``dataset:{name}`` or ``layer:{l}``. Columns ``n``, ``mean``, ``std``, ``p05``, ``p50``,
        ``p95``, ``spearman_length``, with labels ``auroc`` and ``auroc_{kind}``, and on the
        warmed rows with a control ``spearman_untrained`` and ``mean_abs_change``.
    """
    gates = {"warmed": _load_scores(warmed_paths)}
    if untrained_paths:
        control = _load_scores(untrained_paths)
        if control.keys != gates["warmed"].keys:
            raise ValueError(
                "the untrained-gate router data holds other examples (or another order) than "
                "the warmed one; score the same pool files"
            )
        gates["untrained"] = control
    keys = gates["warmed"].keys
    labels = align_labels(labels_path, keys) if labels_path is not None else None
    kinds = sorted(set(labels.kinds) - {CLEAN}) if labels is not None else []
    rows = []
    everything = np.ones(len(keys), dtype=bool)
    for gate, scores in gates.items():
        scopes: list[tuple[str, np.ndarray, np.ndarray]] = [("all", scores.overall, everything)]
        for dataset in dict.fromkeys(scores.datasets.tolist()):
            scopes.append((f"dataset:{dataset}", scores.overall, scores.datasets == dataset))
        for layer in range(scores.per_layer.shape[1]):
            scopes.append((f"layer:{layer}", scores.per_layer[:, layer], everything))
        for scope, values, mask in scopes:
            row = {"gate": gate, "scope": scope}
            row.update(
                _describe(values, lengths=scores.n_tokens, labels=labels, kinds=kinds, mask=mask)
            )
            if gate == "warmed" and "untrained" in gates:
                control = gates["untrained"]
                reference = (
                    control.per_layer[:, int(scope.split(":")[1])]
                    if scope.startswith("layer:")
                    else control.overall
                )
                row["spearman_untrained"] = spearman(values[mask], reference[mask])
                row["mean_abs_change"] = float(np.abs(values[mask] - reference[mask]).mean())
            rows.append(row)
    return pd.DataFrame(rows)


def planted_shares(
    selections: Mapping[str, str | os.PathLike[str]],
    *,
    labels_path: str | os.PathLike[str],
    pool_keys: Sequence[tuple[str, str]],
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Each selection's share of planted examples against a random selection of its size.

    Parameters
    ----------
    selections : mapping of str to path
        Name (e.g. ``selectmoe/sigmoid/p0.1``) -> its ``selected_data.jsonl``.
    labels_path : path
        The pool's quality labels.
    pool_keys : sequence of (dataset, id)
        The pool the selections were made from (the labels must cover exactly it).
    confidence : float
        Coverage of the random-selection range.

    Returns
    -------
    pandas.DataFrame
        Columns ``selection``, ``n_selected``, ``n_planted``, ``planted_share``,
        ``pool_share`` (a random selection's expected share), ``random_low`` / ``random_high``
        (the central ``confidence`` range of a random selection's share, hypergeometric),
        ``verdict`` (``less than random`` / ``more than random`` outside that range, else
        ``as random``), and ``planted_{kind}`` counts.
    """
    from scipy.stats import hypergeom

    labels = align_labels(labels_path, pool_keys)
    planted = dict(zip(pool_keys, labels.planted.tolist(), strict=True))
    kind_of = dict(zip(pool_keys, labels.kinds, strict=True))
    kinds = sorted(set(labels.kinds) - {CLEAN})
    n_pool, n_planted_pool = len(pool_keys), int(labels.planted.sum())
    alpha = 1.0 - confidence
    rows = []
    for name, path in selections.items():
        keys = read_selected_keys(path)
        missing = [key for key in keys if key not in planted]
        if missing:
            raise ValueError(f"{path}: {len(missing)} selected examples are not in the pool")
        n = len(keys)
        n_planted = sum(planted[key] for key in keys)
        distribution = hypergeom(n_pool, n_planted_pool, n)
        low, high = distribution.ppf(alpha / 2) / n, distribution.ppf(1 - alpha / 2) / n
        share = n_planted / n if n else math.nan
        row = {
            "selection": name,
            "n_selected": n,
            "n_planted": n_planted,
            "planted_share": share,
            "pool_share": n_planted_pool / n_pool,
            "random_low": float(low),
            "random_high": float(high),
            "verdict": (
                "less than random"
                if share < low
                else "more than random"
                if share > high
                else "as random"
            ),
        }
        for kind in kinds:
            row[f"planted_{kind}"] = sum(kind_of[key] == kind for key in keys)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- files


def _plot_quality(table: pd.DataFrame, loss: str, path: Path) -> None:
    """AUROC per layer and per kind (warmed against untrained), and Spearman with length."""
    figure = new_figure(13.0, 4.2)
    axes = figure.subplots(1, 3)
    gates = list(dict.fromkeys(table["gate"]))
    width = 0.8 / len(gates)
    panels = [
        ("AUROC per layer (clean above planted)", lambda t: t[t["scope"].str.startswith("layer:")]),
        ("AUROC per planted kind (all layers)", None),
        ("Spearman with length (tokens)", lambda t: t[~t["scope"].str.startswith("layer:")]),
    ]
    for axis, (title, select) in zip(axes, panels, strict=True):
        axis.set_title(title, fontsize="medium")
        if title.startswith("AUROC") and "auroc" not in table:
            axis.text(0.5, 0.5, "no labels: no AUROC", ha="center", transform=axis.transAxes)
            continue
        for index, gate in enumerate(gates):
            rows = table[table["gate"] == gate]
            if select is None:
                overall = rows[rows["scope"] == "all"].iloc[0]
                names = [
                    "all",
                    *(c.removeprefix("auroc_") for c in table if c.startswith("auroc_")),
                ]
                values = [overall["auroc"], *(overall[f"auroc_{n}"] for n in names[1:])]
            else:
                rows = select(rows)
                names = list(rows["scope"])
                values = list(rows["auroc" if title.startswith("AUROC") else "spearman_length"])
            positions = np.arange(len(names)) + index * width
            axis.bar(positions, values, width=width, label=f"{gate} gate")
            axis.set_xticks(np.arange(len(names)) + width * (len(gates) - 1) / 2, names)
            axis.tick_params(axis="x", labelrotation=30, labelsize="small")
        axis.axhline(0.5 if title.startswith("AUROC") else 0.0, color="black", linewidth=1)
        axis.legend(fontsize="small")
    figure.suptitle(f"quality score diagnostics, loss type {loss}")
    save_figure(figure, path, dpi=100)


def _write_csv(frame: pd.DataFrame, path: Path) -> str:
    """``frame`` as CSV at ``path`` (atomically); returns the path."""
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return str(path)


def _markdown_table(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in frame.to_dict("records"):
        cells = []
        for column in columns:
            value = record.get(column)
            if isinstance(value, float):
                cells.append("" if math.isnan(value) else f"{value:.3f}")
            else:
                cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_diagnostics(
    *,
    warmed: Mapping[str, Sequence[str | os.PathLike[str]]],
    untrained: Sequence[str | os.PathLike[str]] | None,
    output_dir: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    selections: Sequence[SelectionRun] | None = None,
    pool_files: Sequence[str | os.PathLike[str]] | None = None,
    method_scores: Mapping[str, Mapping[str, str | os.PathLike[str]]] | None = None,
    definitions: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``quality_{loss}.csv`` / ``.png`` per loss type, ``selection_overlap.csv``, with
    labels ``method_scores.csv`` and ``planted_share.csv``, and ``diagnostics.md`` (the
    overview) into ``output_dir``.

    Parameters
    ----------
    warmed : mapping of str to sequence of path
        Loss type -> its router-data files.
    untrained : sequence of path, optional
        The untrained-gate router data (the control).
    output_dir : path
    labels_path : path, optional
        The pool's quality labels.
    selections : sequence of SelectionRun, optional
        Every selection (replicates included): their overlap (:func:`selection_overlap`) and,
        with labels and pool_files, their planted shares.
    pool_files : sequence of path, optional
        The pool (for the planted shares).
    method_scores : mapping, optional
        Loss type -> {method: the scores file one of its selections wrote}: with labels, the
        AUROC of every scoring method per loss type (:func:`method_score_table`).
    definitions : mapping, optional
        The config's method definitions (:mod:`selectmoe.selection.methods`).

    Returns
    -------
    dict
        The files written.
    """
    from selectmoe.data.pool import load_pool

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {}
    md = ["# Quality diagnostics", ""]
    md += [
        "Score: the mean over layers of sigmoid(quality score), averaged over an example's "
        "tokens (the seed's definition). AUROC: probability that a clean example scores above a "
        "planted one (0.5 = chance, below 0.5 = inverted). The untrained gate is the converted "
        "model before warmup: a score no better than it has learnt nothing.",
        "",
    ]
    for loss, paths in warmed.items():
        table = quality_table(paths, untrained, labels_path=labels_path)
        csv_path = _write_csv(table, out / f"quality_{loss}.csv")
        png_path = out / f"quality_{loss}.png"
        _plot_quality(table, loss, png_path)
        written[loss] = {"csv": csv_path, "png": str(png_path)}
        columns = ["gate", "scope", "n", "mean", "std", "spearman_length"]
        columns += [c for c in table.columns if c.startswith("auroc")]
        columns += [c for c in ("spearman_untrained", "mean_abs_change") if c in table]
        md += [f"## Loss type `{loss}`", ""]
        md += _markdown_table(table[table["scope"] == "all"], columns)
        md += ["", "Per layer and dataset:", ""]
        md += _markdown_table(table[table["scope"] != "all"], columns)
        md.append("")
    if warmed:
        from selectmoe.selection.methods import method_definitions

        frames = []
        for loss, paths in warmed.items():
            table = method_score_table(
                paths,
                scores=(method_scores or {}).get(loss, {}),
                definitions=method_definitions(definitions),
                labels_path=labels_path,
                untrained=untrained,
            )
            frames.append(table.assign(loss=loss))
        scores = pd.concat(frames, ignore_index=True)
        written["method_scores"] = _write_csv(scores, out / "method_scores.csv")
        md += [
            "## The score each method ranks by",
            "",
            "What each method's score measures (for the targeted methods: their similarity to "
            "the query set): Spearman with the example's length and its answer's length "
            f"(`length_blind` beyond ±{LENGTH_BLIND}: a score that mostly measures length) and "
            "with the same score of the untrained model (near 1: warmup changed little)."
            + (
                " With the pool's labels: AUROC (clean above planted) with its 95% bootstrap "
                "interval over examples, the paired difference to the seed's gate score "
                "(`selectmoe_seed`) on the same resamples (an interval that excludes 0 is a "
                "difference these examples support), AUROC per planted kind, and `inverted`: "
                "the kinds the score ranks *above* clean examples (AUROC < 0.5)."
                if labels_path is not None
                else ""
            ),
            "",
        ]
        columns = ["loss", "method", "score"]
        if labels_path is not None:
            columns += ["auroc", "low", "high", "diff", "diff_low", "diff_high", "inverted"]
        columns += ["spearman_length", "spearman_answer_length", "length_blind"]
        columns += ["spearman_untrained"]
        columns += [c for c in scores if c.startswith("auroc_")]
        md += _markdown_table(scores, columns)
        flagged = [
            f"- `{row.method}` ({row.loss}): "
            + "; ".join(
                part
                for part in (
                    f"inverted on {row.inverted}" if getattr(row, "inverted", "") else "",
                    "mostly measures length" if row.length_blind else "",
                )
                if part
            )
            for row in scores.itertuples()
            if getattr(row, "inverted", "") or row.length_blind
        ]
        if flagged:
            md += ["", "Blind spots:", "", *flagged]
        md.append("")
    if selections:
        overlap = selection_overlap(selections)
        written["selection_overlap"] = _write_csv(overlap, out / "selection_overlap.csv")
        md += [
            "## Overlap of the selections",
            "",
            "Jaccard index of the selected examples for every pair of rows of the same size, "
            "replicate r paired with replicate r (a method that selects once with every "
            "replicate); a row with itself is its stability over replicates. Two random "
            "selections of a share p of the pool overlap about p / (2 - p).",
            "",
        ]
        md += _markdown_table(overlap, list(overlap.columns))
        md.append("")
    if labels_path is not None and selections and pool_files:
        pool = load_pool(pool_files)
        shares = planted_shares(
            {run.name: run.path for run in selections},
            labels_path=labels_path,
            pool_keys=[(e.dataset, e.id) for e in pool],
        )
        written["planted_share"] = _write_csv(shares, out / "planted_share.csv")
        md += [
            "## Planted examples kept by each selection",
            "",
            "`random_low`..`random_high`: the 95% range of the planted share of a random "
            "selection of the same size (hypergeometric); outside it, a selection kept "
            "more or less planted noise than chance would.",
            "",
        ]
        md += _markdown_table(
            shares,
            [
                "selection",
                "n_selected",
                "planted_share",
                "pool_share",
                "random_low",
                "random_high",
                "verdict",
                *(c for c in shares if c.startswith("planted_") and c != "planted_share"),
            ],
        )
        md.append("")
    md_path = out / "diagnostics.md"
    atomic_write_text(md_path, "\n".join(md))
    written["markdown"] = str(md_path)
    return written
