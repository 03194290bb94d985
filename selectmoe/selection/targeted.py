"""Targeted selection: the pool examples most similar to the query examples of the evaluation
tasks, by the target model's pooled hidden states (``rds``, RDS+) or its projected LoRA
gradients (``less``, LESS).

Both stages write one *features file* per pool dataset and one for the query set, read back
here::

    {"format": "selectmoe.targeted_features", "version": 1,
     "kind": "representations" | "gradients",
     "sample_ids": [N], "datasets": [N],
     "features": float32 [C, N, d],        # C checkpoints (1 for representations)
     "checkpoint_weights": [C],            # LESS: each checkpoint's mean learning rate
     "tasks": [N] | None, "subtasks": [N] | None,   # query files only
     "model": str, "signature": str, "settings": {...}}

``signature`` names what makes two files comparable (the model, and for gradients the warmup and
the projection); the pool's and the queries' must be equal.

The scores follow the authors' definitions:

* **RDS+** (Ivison et al., 2025, ``minimal_multitask/get_top_aggregated_influences.py`` with
  max aggregation): the cosine similarity of every pool example to every query example; per task
  the maximum over its query examples; then the tasks take turns, each taking its most similar
  example not taken yet (round robin), until the budget is spent.
* **LESS** (Xia et al., 2024, ``less/data_selection/matching.py``): per checkpoint the cosine of
  the pool example's Adam-normalised gradient and each query example's gradient, summed over
  checkpoints with the checkpoints' mean learning rates (normalised to sum 1); per subtask the
  mean over its query examples, then the maximum over subtasks (LESS scores each target task
  this way and selects per task; with several tasks in one selection the maximum runs over all
  of their subtasks); the top ``n`` by that score.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from selectmoe.errors import RouterDataError
from selectmoe.io import atomic_torch_save

__all__ = [
    "FEATURES_FORMAT",
    "TargetedFeatures",
    "less_scores",
    "load_features",
    "rds_round_robin",
    "save_features",
    "select_targeted",
]

FEATURES_FORMAT = "selectmoe.targeted_features"
#: Pool rows scored at a time (a chunk of 8,192-dimensional float64 features is 0.5 GiB).
SCORE_CHUNK_ROWS = 8192
_VERSION = 1
_KINDS = ("representations", "gradients")


@dataclass(frozen=True)
class TargetedFeatures:
    """Features of pool or query examples (see the module docstring for the file).

    The files are read memory-mapped and never concatenated: the scores run over
    :data:`SCORE_CHUNK_ROWS` rows at a time, so a pool's gradient features (270,679 examples x 4
    checkpoints x 8,192 dimensions are 35 GB in float32) need not fit in memory.

    Attributes
    ----------
    parts : list of torch.Tensor of shape (C, N_i, d), float32
        One per file, in order (N = sum N_i).
    checkpoint_weights : torch.Tensor of shape (C,), float64
    sample_ids, datasets : list of str, length N
    tasks, subtasks : list of str (length N) or None
        The task and subtask of each query example; None for pool examples.
    files : list of str
    kind : {"representations", "gradients"}
    signature : str
    """

    parts: list[torch.Tensor]
    checkpoint_weights: torch.Tensor
    sample_ids: list[str]
    datasets: list[str]
    tasks: list[str] | None
    subtasks: list[str] | None
    files: list[str]
    kind: str
    signature: str = ""

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, N, d)``."""
        c, _, d = self.parts[0].shape
        return c, self.n_samples, d

    @property
    def features(self) -> torch.Tensor:
        """All features ``[C, N, d]`` in memory (for small data and tests)."""
        return torch.cat(self.parts, dim=1)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, features [C, m, d])`` of at most :data:`SCORE_CHUNK_ROWS` rows."""
        offset = 0
        for part in self.parts:
            for start in range(0, part.shape[1], SCORE_CHUNK_ROWS):
                chunk = part[:, start : start + SCORE_CHUNK_ROWS]
                yield offset + start, chunk
            offset += part.shape[1]

    def file_of(self, row: int) -> str:
        """The file a row came from (files are concatenated in order)."""
        return ", ".join(self.files)


def save_features(
    path: str | os.PathLike[str],
    *,
    kind: str,
    features: torch.Tensor,
    sample_ids: Sequence[str],
    datasets: Sequence[str],
    checkpoint_weights: Sequence[float] = (1.0,),
    tasks: Sequence[str] | None = None,
    subtasks: Sequence[str] | None = None,
    model: str = "",
    signature: str = "",
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Write a features file atomically (``features``: ``[C, N, d]``)."""
    if kind not in _KINDS:
        raise ValueError(f"kind is {kind!r}; valid: {', '.join(_KINDS)}")
    if features.ndim != 3 or features.shape[1] != len(sample_ids):
        raise ValueError(
            f"features has shape {tuple(features.shape)}; expected [C, {len(sample_ids)}, d]"
        )
    if features.shape[0] != len(checkpoint_weights):
        raise ValueError(
            f"{features.shape[0]} checkpoints of features but {len(checkpoint_weights)} weights"
        )
    atomic_torch_save(
        {
            "format": FEATURES_FORMAT,
            "version": _VERSION,
            "kind": kind,
            "sample_ids": list(sample_ids),
            "datasets": list(datasets),
            "features": features.detach().to("cpu", torch.float32).contiguous(),
            "checkpoint_weights": [float(w) for w in checkpoint_weights],
            "tasks": list(tasks) if tasks is not None else None,
            "subtasks": list(subtasks) if subtasks is not None else None,
            "model": model,
            "signature": signature,
            "settings": dict(settings or {}),
        },
        path,
    )


def _load_one(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise RouterDataError(f"{path}: features file not found; run its stage first")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise RouterDataError(f"{path}: not a readable features file ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FEATURES_FORMAT:
        raise RouterDataError(
            f"{path}: not a {FEATURES_FORMAT} file; it is written by the represent and "
            "less_gradients stages"
        )
    features = data["features"]
    n = len(data["sample_ids"])
    if features.ndim != 3 or features.shape[1] != n or len(data["datasets"]) != n:
        raise RouterDataError(
            f"{path}: features of shape {tuple(features.shape)} do not match {n} sample ids"
        )
    for start in range(0, n, SCORE_CHUNK_ROWS):
        chunk = features[:, start : start + SCORE_CHUNK_ROWS]
        if not torch.isfinite(chunk).all():
            row = start + int((~torch.isfinite(chunk)).any(dim=2).any(dim=0).nonzero()[0, 0])
            raise RouterDataError(
                f"{path}: non-finite features for sample {data['sample_ids'][row]!r}; recompute "
                "them (a float16 overflow? use float32)"
            )
    return data


def load_features(paths: Sequence[str | os.PathLike[str]]) -> TargetedFeatures:
    """Read and concatenate features files (pool datasets in order, or one query file).

    Raises
    ------
    RouterDataError
        A missing or malformed file, or files of different kinds, checkpoints or dimensions.
    """
    if not paths:
        raise RouterDataError("no features files given")
    loaded = [(os.fspath(p), _load_one(os.fspath(p))) for p in paths]
    first_path, first = loaded[0]
    for path, data in loaded[1:]:
        same = (
            data["kind"] == first["kind"]
            and data["features"].shape[0] == first["features"].shape[0]
            and data["features"].shape[2] == first["features"].shape[2]
            and data["checkpoint_weights"] == first["checkpoint_weights"]
            and data.get("signature") == first.get("signature")
        )
        if not same:
            raise RouterDataError(
                f"{path}: {data['kind']} of shape {tuple(data['features'].shape)} "
                f"({data.get('signature')}) do not match {first_path} ({first['kind']}, "
                f"{tuple(first['features'].shape)}, {first.get('signature')}); compute every "
                "file with the same model and settings"
            )

    def joined(key: str) -> list[str] | None:
        if any(data.get(key) is None for _, data in loaded):
            return None
        return [value for _, data in loaded for value in data[key]]

    return TargetedFeatures(
        parts=[data["features"] for _, data in loaded],
        checkpoint_weights=torch.tensor(first["checkpoint_weights"], dtype=torch.float64),
        sample_ids=[s for _, data in loaded for s in data["sample_ids"]],
        datasets=[s for _, data in loaded for s in data["datasets"]],
        tasks=joined("tasks"),
        subtasks=joined("subtasks"),
        files=[path for path, _ in loaded],
        kind=first["kind"],
        signature=str(first.get("signature", "")),
    )


def _unit(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, in float64 (``[..., d]``)."""
    return torch.nn.functional.normalize(features.to(torch.float64), dim=-1)


def _groups(names: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct names in first-appearance order and each row's group index ``[Q]``."""
    order = list(dict.fromkeys(names))
    position = {name: i for i, name in enumerate(order)}
    return order, torch.tensor([position[name] for name in names], dtype=torch.long)


def rds_round_robin(
    pool: torch.Tensor, queries: torch.Tensor, tasks: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """RDS+ selection of ``n`` pool rows.

    Parameters
    ----------
    pool : torch.Tensor of shape (N, d)
    queries : torch.Tensor of shape (Q, d)
    tasks : sequence of str, length Q
        The task of every query example; the tasks take turns in first-appearance order.
    n : int

    Returns
    -------
    indices : numpy.ndarray of shape (n,), int64, in selection order
    scores : numpy.ndarray of shape (N,), float64
        Per example the maximum over tasks of its task score (the most similar query example).
    info : dict
        Per task the examples it took.
    """
    names, group = _groups(tasks)
    per_task = _rds_task_scores(pool, _unit(queries), group, len(names))
    return _round_robin(per_task, names, n)


def _rds_task_scores(
    pool: torch.Tensor, unit_queries: torch.Tensor, group: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Per pool row and task the highest cosine to the task's queries: ``[m, T]`` float64."""
    similarity = _unit(pool) @ unit_queries.T  # [m, Q]
    return torch.stack(
        [similarity[:, group == g].max(dim=1).values for g in range(n_groups)], dim=1
    )


def _round_robin(
    per_task: torch.Tensor, names: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The tasks take turns, each taking its most similar example (see :func:`rds_round_robin`)."""
    # each task's ranking: most similar first, ties by pool order (a stable sort)
    rankings = [torch.sort(-per_task[:, t], stable=True).indices.numpy() for t in range(len(names))]
    position = [0] * len(names)
    order: list[int] = []
    took = dict.fromkeys(names, 0)
    taken = np.zeros(per_task.shape[0], dtype=bool)
    # As the authors' round robin: a task whose next example was already taken by another task
    # spends its turn on it (nothing new is added); the loop ends when n distinct are taken.
    while len(order) < n:
        for t, name in enumerate(names):
            if len(order) >= n:
                break
            row = int(rankings[t][position[t]])
            position[t] += 1
            if not taken[row]:
                taken[row] = True
                order.append(row)
                took[name] += 1
    scores = per_task.max(dim=1).values.numpy()
    return np.asarray(order, dtype=np.int64), scores, {"examples_per_task": took}


def less_scores(
    pool: torch.Tensor,
    queries: torch.Tensor,
    checkpoint_weights: torch.Tensor,
    subtasks: Sequence[str],
) -> np.ndarray:
    """LESS's score of every pool example.

    Parameters
    ----------
    pool : torch.Tensor of shape (C, N, d)
        Adam-normalised projected gradients per checkpoint.
    queries : torch.Tensor of shape (C, Q, d)
        Projected gradients of the query examples per checkpoint.
    checkpoint_weights : torch.Tensor of shape (C,)
        Normalised here to sum 1.
    subtasks : sequence of str, length Q

    Returns
    -------
    numpy.ndarray of shape (N,), float64
        ``max_s mean_{q in s} sum_c w_c cos(pool[c, i], queries[c, q])``.
    """
    weights = checkpoint_weights.to(torch.float64)
    weights = weights / weights.sum()
    names, group = _groups(subtasks)
    # one [N, Q] block per checkpoint, summed: the [C, N, d] features never in float64 at once
    influence = sum(
        weights[c] * (_unit(pool[c]) @ _unit(queries[c]).T) for c in range(pool.shape[0])
    )
    per_subtask = torch.stack(
        [influence[:, group == g].mean(dim=1) for g in range(len(names))], dim=1
    )
    return per_subtask.max(dim=1).values.numpy()


def select_targeted(
    method: str, pool: TargetedFeatures, queries: TargetedFeatures, n: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Select ``n`` pool rows by ``method`` (``rds`` or ``less``).

    Returns
    -------
    indices : numpy.ndarray of shape (n,), int64, in selection order
    scores : numpy.ndarray of shape (N,), float64
    info : dict
        What ``selection.json`` records about the targeted selection.
    """
    if queries.tasks is None or queries.subtasks is None:
        raise RouterDataError(
            f"{queries.file_of(0)}: these features are not of query examples (no tasks)"
        )
    same = (
        pool.kind == queries.kind
        and pool.shape[::2] == queries.shape[::2]
        and pool.signature == queries.signature
    )
    if not same:
        raise RouterDataError(
            f"the pool's {pool.kind} {pool.shape} ({pool.signature}) and the "
            f"queries' {queries.kind} {queries.shape} ({queries.signature}) "
            "do not match; compute both with the same model and settings"
        )
    query_features = queries.features
    info: dict[str, Any] = {
        "targeted": True,
        "query_tasks": {task: queries.tasks.count(task) for task in dict.fromkeys(queries.tasks)},
        "query_files": list(queries.files),
    }
    if method == "rds":
        names, group = _groups(queries.tasks)
        unit_queries = _unit(query_features[0])
        per_task = torch.cat(
            [
                _rds_task_scores(chunk[0], unit_queries, group, len(names))
                for _, chunk in pool.chunks()
            ]
        )
        indices, scores, extra = _round_robin(per_task, names, n)
        info.update(extra)
    elif method == "less":
        scores = np.concatenate(
            [
                less_scores(chunk, query_features, pool.checkpoint_weights, queries.subtasks)
                for _, chunk in pool.chunks()
            ]
        )
        indices = np.argsort(-scores, kind="stable")[:n].astype(np.int64)
        info["checkpoint_weights"] = pool.checkpoint_weights.tolist()
        info["n_subtasks"] = len(set(queries.subtasks))
    else:
        raise ValueError(f"{method!r} is not a targeted method (rds, less)")
    return indices, scores, info
