"""A Hugging Face dataset as the pool: exported to the per-dataset JSONL files the workflow reads.

The mixtures researchers now select from (Tulu-2's and Tulu-3's SFT mixtures, millions of
examples) are Hugging Face datasets with a ``messages`` column and a column naming each row's
source. With ``data.source: hf`` rule ``fetch_pool`` reads such a dataset row by row, never
holding it as Python objects (a directory saved with ``save_to_disk`` or parquet files are
memory-mapped Arrow; a Hub id is streamed), validates every row as a pool file's line is validated
(the same messages, naming the row), and writes each row to the pool file of its dataset
(``{pool_dir}/{file_pattern}``): the later rules read those files as they read LESS's.

Which dataset a row belongs to: the value of ``dataset_column`` (e.g. Tulu-3's ``source``),
renamed by ``dataset_map`` or else made a name (every character but letters, digits, ``-`` and
``_`` replaced by ``_``: ``ai2-adapt-dev/oasst1_converted`` becomes
``ai2-adapt-dev_oasst1_converted``); rows of a dataset that ``data.datasets`` does not list are
skipped and counted. Without ``dataset_column`` every row belongs to the one dataset listed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from selectmoe.data.pool import parse_record
from selectmoe.errors import DataError
from selectmoe.io import atomic_path, dumps_json_line

__all__ = ["dataset_name", "export_hf_pool"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_BATCH_ROWS = 1024


def dataset_name(value: Any, dataset_map: Mapping[str, str]) -> str:
    """The pool dataset of a row whose dataset column holds ``value``."""
    text = str(value)
    return dataset_map.get(text, _UNSAFE.sub("_", text))


def _open_rows(
    dataset_id: str, *, split: str, revision: str | None
) -> tuple[Iterator[dict[str, Any]], dict[str, Any]]:
    """Rows of the dataset, one dict at a time, and what identifies the dataset read.

    A directory saved with ``save_to_disk`` is memory-mapped; parquet files (a file, a directory
    of them or a glob) are read as an Arrow dataset; anything else is a Hub id, streamed.
    """
    import datasets

    identity: dict[str, Any] = {"dataset_id": dataset_id, "split": split, "revision": revision}
    local = Path(dataset_id)
    saved = ("state.json", "dataset_dict.json")  # what save_to_disk writes
    if local.is_dir() and any((local / name).exists() for name in saved):
        loaded = datasets.load_from_disk(dataset_id)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(
                    f"{dataset_id}: no split {split!r} (it has {', '.join(loaded)}); set "
                    "data.hf.split"
                )
            loaded = loaded[split]
        identity["fingerprint"] = loaded._fingerprint
        identity["rows"] = loaded.num_rows
        return _batched(loaded), identity
    parquet = sorted(
        glob.glob(os.path.join(dataset_id, "*.parquet"))
        if local.is_dir()
        else glob.glob(dataset_id)
    )
    if parquet and all(p.endswith(".parquet") for p in parquet):
        loaded = datasets.load_dataset("parquet", data_files=parquet, split="train")
        identity["fingerprint"] = loaded._fingerprint
        identity["rows"] = loaded.num_rows
        identity["files"] = parquet
        return _batched(loaded), identity
    if local.exists():
        raise DataError(
            f"{dataset_id}: neither a dataset saved with save_to_disk nor parquet files; give one "
            "of those or a Hugging Face dataset id in data.hf.dataset_id"
        )
    try:
        streamed = datasets.load_dataset(dataset_id, split=split, revision=revision, streaming=True)
    except Exception as error:  # offline, unknown id, gated: one line with what to do
        raise DataError(
            f"{dataset_id}: cannot open the Hugging Face dataset (split {split!r}, revision "
            f"{revision!r}): {type(error).__name__}: {str(error).splitlines()[0][:200]}; check "
            "the id, or save the dataset locally (save_to_disk) and give its directory"
        ) from None
    return iter(streamed), identity


def _batched(dataset: Any) -> Iterator[dict[str, Any]]:
    """Rows of a memory-mapped dataset, read ``_BATCH_ROWS`` at a time."""
    for batch in dataset.iter(batch_size=_BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            yield dict(zip(columns, values, strict=True))


def export_hf_pool(
    pool_dir: str | os.PathLike[str],
    datasets: Sequence[str],
    file_pattern: str,
    *,
    dataset_id: str,
    split: str = "train",
    revision: str | None = None,
    messages_column: str = "messages",
    id_column: str | None = "id",
    dataset_column: str | None = "source",
    dataset_map: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the pool files of ``datasets`` from a Hugging Face dataset.

    Parameters
    ----------
    pool_dir, datasets, file_pattern
        As for the LESS pool (config ``data``): the files written are
        ``{pool_dir}/{file_pattern}`` with ``{dataset}`` replaced.
    dataset_id
        A directory saved with ``save_to_disk``, parquet files (a file, a directory or a glob),
        or a Hub dataset id (streamed; ``split`` and ``revision`` apply).
    messages_column
        The column of ``[{role, content}, ...]`` conversations.
    id_column
        The column of example ids; None or a missing value numbers the rows
        (``{dataset}_{row}``).
    dataset_column, dataset_map
        The column naming each row's dataset, and renamings of its values (module docstring);
        None puts every row in the only dataset of ``datasets``.

    Returns
    -------
    dict
        ``source`` (dataset id, split, revision, fingerprint where known), ``rows`` read,
        ``written`` per dataset, ``skipped`` rows per dataset name not in ``datasets``, and the
        ``files`` written.

    Raises
    ------
    DataError
        On a row that is not a valid conversation (naming the dataset, split and row, 1-based,
        as a pool file's error names its line), a repeated id within a dataset, a dataset of
        ``datasets`` that no row belongs to, or a dataset that cannot be opened. No pool file
        is written then.
    """
    dataset_map = dict(dataset_map or {})
    if dataset_column is None and len(datasets) != 1:
        raise DataError(
            f"data.hf.dataset_column is null but data.datasets lists {len(datasets)} datasets; "
            "name the column that tells them apart, or list one dataset"
        )
    rows, identity = _open_rows(dataset_id, split=split, revision=revision)
    where = f"{dataset_id}[{split}] row"
    targets = {name: Path(pool_dir) / file_pattern.format(dataset=name) for name in datasets}
    written: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    seen: dict[tuple[str, str], int] = {}
    with contextlib.ExitStack() as stack:
        handles = {
            name: stack.enter_context(
                stack.enter_context(atomic_path(path)).open("w", encoding="utf-8")
            )
            for name, path in targets.items()
        }
        count = 0
        for count, row in enumerate(rows, start=1):
            name = datasets[0] if dataset_column is None else None
            if name is None:
                if dataset_column not in row:
                    raise DataError(
                        f"{where}:{count}: no column {dataset_column!r} (columns: "
                        f"{', '.join(row)}); set data.hf.dataset_column"
                    )
                name = dataset_name(row[dataset_column], dataset_map)
            if name not in handles:
                skipped[name] += 1
                continue
            example_id = row.get(id_column) if id_column else None
            record = {
                "dataset": name,
                "id": example_id if example_id not in (None, "") else f"{name}_{count}",
                "messages": row.get(messages_column),
            }
            example = parse_record(record, where, count, None)
            key = (example.dataset, example.id)
            if key in seen:
                raise DataError(
                    f"{where}:{count}: duplicate id {example.id!r} in dataset {name!r} (first in "
                    f"row {seen[key]}); make the ids unique or set data.hf.id_column: null"
                )
            seen[key] = count
            handles[name].write(
                dumps_json_line(
                    {"dataset": name, "id": example.id, "messages": list(example.messages)}
                )
                + "\n"
            )
            written[name] += 1
        empty = [name for name in datasets if not written[name]]
        if empty:
            raise DataError(
                f"{dataset_id}[{split}]: no row of {', '.join(empty)} among {count} rows (the "
                f"datasets found: {', '.join(sorted(skipped)) or 'none'}); fix data.datasets or "
                "data.hf.dataset_map"
            )
    return {
        "source": identity,
        "rows": count,
        "written": dict(written),
        "skipped": dict(sorted(skipped.items())),
        "files": {name: os.fspath(path) for name, path in targets.items()},
    }
