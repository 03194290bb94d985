"""Router data (SPEC §5): what the score stage writes per dataset and every later stage reads.

A ``{dataset}_router_data.pt`` file is a ``torch.save``d dict:

- ``quality_score`` ``[N, L]`` float32: mean raw quality-gate score per MoE layer;
- ``moe_probs`` ``[N, L, E]`` float32: mean routing distribution per layer;
- ``sample_ids`` (N str), ``dataset`` (str), ``n_tokens`` ``[N]`` int64, ``metadata`` (dict);
- optionally the per-example statistics of :data:`OPTIONAL_STATISTICS` (the gate over answer
  tokens, the LM's answer and end-of-sequence losses, the quantiles of the answer-token losses
  and the worst answer turn's mean loss, the answer-alone loss for IFD).

:func:`save_router_data` writes one (atomically); :func:`load_router_data` reads and checks
several and concatenates them into a :class:`RouterData`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selectmoe.errors import RouterDataError
from selectmoe.io import atomic_torch_save

__all__ = [
    "ANSWER_LOSS_QUANTILES",
    "OPTIONAL_STATISTICS",
    "REQUIRED_KEYS",
    "ROUTER_DATA_KEYS",
    "RouterData",
    "find_router_data",
    "load_router_data",
    "save_router_data",
]

ROUTER_DATA_KEYS: tuple[str, ...] = (
    "quality_score",
    "moe_probs",
    "sample_ids",
    "dataset",
    "n_tokens",
    "metadata",
)
"""Keys every router-data file written by :func:`save_router_data` has."""
#: The keys a reader needs (files of older versions lack ``n_tokens``).
REQUIRED_KEYS: tuple[str, ...] = ROUTER_DATA_KEYS[:4]
#: Per-example statistics a router-data file may add (``[N, L]`` or ``[N]``): the gate over
#: other tokens, and the LM's losses from the same pass (``scoring.compute_example_statistics``).
OPTIONAL_STATISTICS: tuple[str, ...] = (
    "quality_good",
    "quality_score_answer",
    "n_answer_tokens",
    "n_tokens",
    "answer_loss",
    "eos_loss",
    "answer_loss_alone",
    "answer_loss_quantiles",
    "answer_loss_worst_turn",
)
#: The quantile levels of ``answer_loss_quantiles`` ``[N, Q]``: each example's answer-token losses
#: at these levels (1.0 is the largest token loss).
ANSWER_LOSS_QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclasses.dataclass
class RouterData:
    """The router data of several files, concatenated in the given order.

    Attributes
    ----------
    quality_score : torch.Tensor of shape (N, L), float32
        Mean raw quality-gate score per layer.
    moe_probs : torch.Tensor of shape (N, L, E), float32
        Mean routing distribution per layer.
    sample_ids : list of str, length N
        Sample ids, file order within each file.
    datasets : list of str, length N
        Dataset of each sample.
    files : list of str
        The files, in order.
    file_offsets : list of int
        Start row of each file (length ``len(files) + 1``; the last is N).
    metadata : list of dict
        Each file's ``metadata``.
    statistics : dict of str to torch.Tensor
        The :data:`OPTIONAL_STATISTICS` that every file holds, concatenated (``[N, ...]``).
    """

    quality_score: torch.Tensor
    moe_probs: torch.Tensor
    sample_ids: list[str]
    datasets: list[str]
    files: list[str]
    file_offsets: list[int]
    metadata: list[dict[str, Any]]
    statistics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.quality_score.shape[0])

    @property
    def scores(self) -> np.ndarray:
        """``mean_l sigmoid(quality_score[:, l])`` in float64: shape (N,)."""
        return torch.sigmoid(self.quality_score.to(torch.float64)).mean(dim=1).numpy()

    @property
    def features(self) -> torch.Tensor:
        """``moe_probs.reshape(N, L * E)`` (a view, no copy): shape (N, L*E)."""
        n, layers, experts = self.moe_probs.shape
        return self.moe_probs.reshape(n, layers * experts)

    def file_of(self, row: int) -> str:
        """The file that row ``row`` came from (for error messages)."""
        index = int(np.searchsorted(self.file_offsets, row, side="right")) - 1
        return self.files[min(max(index, 0), len(self.files) - 1)]


def _load_one(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise RouterDataError(f"{path}: router-data file not found; run the score stage first")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive (or, in the legacy format, a pickle): anything else gets a
    # plain message rather than torch's unpickling advice
    if not magic.startswith((b"PK\x03\x04", b"\x80")):
        raise RouterDataError(
            f"{path}: cannot be read as a router-data file (not written by torch.save: it "
            f"starts with {magic!r}); re-run the score stage for this dataset"
        )
    try:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # Files written without the zip format cannot be memory-mapped; read them whole.
            if "mmap" not in str(exc):
                raise
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same one-line error
        # The first line is the useful part (torch's weights_only errors run to a page).
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RouterDataError(
            f"{path}: cannot be read as a router-data file ({type(exc).__name__}: {reason}); "
            "re-run the score stage for this dataset"
        ) from exc
    if not isinstance(payload, dict):
        raise RouterDataError(
            f"{path}: expected a dict with keys {list(REQUIRED_KEYS)}, got {type(payload).__name__}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise RouterDataError(
            f"{path}: missing key(s) {missing}; a router-data file holds "
            f"{[*REQUIRED_KEYS, 'metadata']}"
        )
    return payload


def _check_tensor(path: str, name: str, value: Any, ndim: int, shape_doc: str) -> torch.Tensor:
    fix = "re-run the score stage for this dataset"
    if not isinstance(value, torch.Tensor):
        raise RouterDataError(
            f"{path}: {name} must be a tensor {shape_doc}, got {type(value).__name__}; {fix}"
        )
    if value.ndim != ndim:
        raise RouterDataError(
            f"{path}: {name} must have shape {shape_doc}, got {tuple(value.shape)}; {fix}"
        )
    if not value.is_floating_point():
        raise RouterDataError(f"{path}: {name} must be float32, got dtype {value.dtype}; {fix}")
    return value


def _check_finite(path: str, name: str, value: torch.Tensor, ids: Sequence[str]) -> None:
    finite = torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        first = int(bad[0])
        raise RouterDataError(
            f"{path}: {name} has NaN or infinite values in {bad.numel()} sample(s) (first: row "
            f"{first}, id {ids[first]!r}); re-run the score stage (check the model and its "
            "weights for overflow)"
        )


def find_router_data(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``*_router_data.pt`` files of a directory, sorted by name (for ``selectmoe select``).

    Raises
    ------
    RouterDataError
        When the directory does not exist or holds no router-data file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RouterDataError(f"{root}: router-data directory not found")
    found = sorted(root.glob("*_router_data.pt"))
    if not found:
        raise RouterDataError(
            f"{root}: no *_router_data.pt files; run the score stage or point to its output"
        )
    return found


def load_router_data(paths: Sequence[str | os.PathLike[str]]) -> RouterData:
    """Read, validate and concatenate router-data files (one per dataset, SPEC §5).

    Each file is a ``torch.load``-able dict: ``quality_score`` float32 ``[N, L]``, ``moe_probs``
    float32 ``[N, L, E]``, ``sample_ids`` (N strings, file order), ``dataset`` (str), ``metadata``
    (dict, optional). Other floating dtypes are converted to float32.

    Parameters
    ----------
    paths : sequence of path
        The files, concatenated in this order.

    Returns
    -------
    RouterData

    Raises
    ------
    RouterDataError
        Naming the file and the problem: unreadable, missing keys, wrong types or shapes, layers or
        experts that differ between files, no samples, NaN/Inf values, duplicate ids.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise RouterDataError("no router-data files given; pass at least one *_router_data.pt")
    scores: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    sample_ids: list[str] = []
    datasets: list[str] = []
    metadata: list[dict[str, Any]] = []
    extras: list[dict[str, torch.Tensor]] = []
    offsets = [0]
    seen: dict[tuple[str, str], str] = {}
    layout: tuple[int, int, str] | None = None
    for path in paths:
        payload = _load_one(path)
        quality = _check_tensor(path, "quality_score", payload["quality_score"], 2, "[N, L]")
        moe = _check_tensor(path, "moe_probs", payload["moe_probs"], 3, "[N, L, E]")
        ids = payload["sample_ids"]
        dataset = payload["dataset"]
        if not isinstance(dataset, str) or not dataset:
            raise RouterDataError(f"{path}: dataset must be a non-empty string, got {dataset!r}")
        if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
            raise RouterDataError(f"{path}: sample_ids must be a list of strings")
        n = quality.shape[0]
        if n == 0:
            raise RouterDataError(f"{path}: holds no samples; score a non-empty dataset")
        if moe.shape[0] != n or moe.shape[1] != quality.shape[1] or len(ids) != n:
            raise RouterDataError(
                f"{path}: shapes disagree: quality_score {tuple(quality.shape)}, moe_probs "
                f"{tuple(moe.shape)}, {len(ids)} sample_ids; expected [N, L], [N, L, E] and N ids"
            )
        if layout is None:
            layout = (moe.shape[1], moe.shape[2], path)
        elif (moe.shape[1], moe.shape[2]) != layout[:2]:
            raise RouterDataError(
                f"{path}: {moe.shape[1]} layers x {moe.shape[2]} experts, but {layout[2]} has "
                f"{layout[0]} x {layout[1]}; all files must come from the same model"
            )
        _check_finite(path, "quality_score", quality, ids)
        _check_finite(path, "moe_probs", moe, ids)
        for sample_id in ids:
            key = (dataset, sample_id)
            if key in seen:
                where = "this file" if seen[key] == path else seen[key]
                raise RouterDataError(
                    f"{path}: duplicate sample id {sample_id!r} of dataset {dataset!r} (also in "
                    f"{where}); each (dataset, id) must appear once"
                )
            seen[key] = path
        meta = payload.get("metadata", {})
        extra = {}
        for key in OPTIONAL_STATISTICS:
            value = payload.get(key)
            if isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
                extra[key] = value
            elif value is not None:
                raise RouterDataError(
                    f"{path}: {key} must be a tensor with one row per sample ({n}); re-run the "
                    "score stage for this dataset"
                )
        extras.append(extra)
        scores.append(quality.to(torch.float32))
        probs.append(moe.to(torch.float32))
        sample_ids.extend(ids)
        datasets.extend([dataset] * n)
        metadata.append(dict(meta) if isinstance(meta, Mapping) else {"value": meta})
        offsets.append(offsets[-1] + n)
    # One file: keep its (memory-mapped) tensors; several: one contiguous copy.
    quality_all = scores[0] if len(scores) == 1 else torch.cat(scores)
    probs_all = probs[0] if len(probs) == 1 else torch.cat(probs)
    del scores, probs
    shared = set.intersection(*(set(extra) for extra in extras)) if extras else set()
    statistics = {key: torch.cat([extra[key] for extra in extras]) for key in sorted(shared)}
    return RouterData(
        quality_score=quality_all,
        moe_probs=probs_all,
        sample_ids=sample_ids,
        datasets=datasets,
        files=paths,
        file_offsets=offsets,
        metadata=metadata,
        statistics=statistics,
    )


def save_router_data(
    path: str | os.PathLike[str],
    *,
    statistics: Mapping[str, torch.Tensor],
    sample_ids: Sequence[str],
    dataset: str,
    n_tokens: torch.Tensor,
    metadata: Mapping[str, Any],
) -> None:
    """Write one dataset's router data atomically.

    ``statistics`` holds ``quality_score`` ``[N, L]``, ``moe_probs`` ``[N, L, E]`` and any of
    :data:`OPTIONAL_STATISTICS`; ``n_tokens`` ``[N]`` the tokens of each example.
    """
    unknown = sorted(set(statistics) - {"quality_score", "moe_probs", *OPTIONAL_STATISTICS})
    if unknown:
        raise RouterDataError(f"{path}: unknown router-data statistic(s) {', '.join(unknown)}")
    atomic_torch_save(
        {
            **statistics,
            "sample_ids": list(sample_ids),
            "dataset": dataset,
            "n_tokens": n_tokens,
            "metadata": dict(metadata),
        },
        path,
    )
