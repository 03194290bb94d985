"""Training-pool files (LESS / Tulu format): reading and validating them.

A pool file holds one JSON object per line::

    {"dataset": "dolly", "id": "dolly_8",
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

The chat template is the same in warmup, scoring and finetuning (SPEC §4), LESS's::

    <|system|>\\n{content}\\n   <|user|>\\n{content}\\n   <|assistant|>\\n{content}{eos}\\n

with each content stripped and the whole text stripped at its end. Encoding tokenizes the
rendered text once, as a whole string, and takes the labels from the tokens' character offsets.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectmoe.errors import DataError

__all__ = [
    "CHAT_TAGS",
    "MAX_LINE_BYTES",
    "ROLES",
    "Example",
    "discover_pool_files",
    "iter_jsonl_objects",
    "iter_jsonl_records",
    "load_jsonl_examples",
    "load_pool",
    "parse_record",
    "read_selected_keys",
    "subset_examples",
    "validate_data_files",
]

logger = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("system", "user", "assistant")
CHAT_TAGS: dict[str, str] = {role: f"<|{role}|>" for role in ROLES}
MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest line accepted in a pool or selection JSONL file: 16 MiB (without its line break).

A longer line is an error naming the file and the line, read no further than the limit: one
corrupt or concatenated line must not take gigabytes of memory. Real instruction examples are
kilobytes (LESS's longest is under 1 MB), and training truncates to ``max_sequence_length``
tokens anyway.
"""


@dataclass(frozen=True)
class Example:
    """One conversation of the pool, with where it came from (for error messages)."""

    dataset: str
    id: str
    messages: tuple[dict[str, str], ...]
    source: str = ""
    line: int = 0

    def to_record(self) -> dict[str, Any]:
        """The LESS-format JSON object of this example."""
        return {
            "dataset": self.dataset,
            "id": self.id,
            "messages": [dict(m) for m in self.messages],
        }


def _fail(path: str, line: int, problem: str, fix: str) -> DataError:
    where = f"{path}:{line}" if line else path
    return DataError(f"{where}: {problem}; {fix}")


def parse_record(record: Any, path: str, line: int, default_dataset: str | None) -> Example:
    """Check one decoded JSON line against the LESS format and turn it into an Example."""
    if not isinstance(record, dict):
        raise _fail(
            path,
            line,
            f"expected a JSON object, got {type(record).__name__}",
            "write one object per line",
        )
    messages = record.get("messages")
    if messages is None:
        raise _fail(
            path,
            line,
            "missing field 'messages'",
            "add a non-empty list of {role, content} messages",
        )
    if not isinstance(messages, list) or not messages:
        raise _fail(
            path,
            line,
            "field 'messages' is empty or not a list",
            "give at least one {role, content} message",
        )
    parsed: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _fail(
                path,
                line,
                f"{where} is not an object",
                'write messages as {"role": ..., "content": ...}',
            )
        role = message.get("role")
        if role not in ROLES:
            raise _fail(
                path,
                line,
                f"{where}.role is {role!r}, not one of {', '.join(ROLES)}",
                "use a valid role",
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise _fail(
                path,
                line,
                f"{where}.content is {type(content).__name__}, not a string",
                "make content a string",
            )
        parsed.append({"role": role, "content": content})
    dataset = record.get("dataset", default_dataset)
    if not isinstance(dataset, str) or not dataset:
        raise _fail(path, line, "missing or empty field 'dataset'", "add the dataset name")
    example_id = record.get("id")
    if isinstance(example_id, int) and not isinstance(example_id, bool):
        example_id = str(example_id)
    if not isinstance(example_id, str) or not example_id:
        raise _fail(
            path, line, "missing or empty field 'id'", "give every example a unique string id"
        )
    return Example(dataset=dataset, id=example_id, messages=tuple(parsed), source=path, line=line)


def _physical_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of each line (split like ``bytes.splitlines``), read lazily.

    Raises :class:`DataError` on a line longer than :data:`MAX_LINE_BYTES`, before reading it all.
    """
    line_number = 0
    with open(path, "rb") as handle:
        # at most the limit, "\r" and "\n": anything longer is over the limit
        while chunk := handle.readline(MAX_LINE_BYTES + 2):
            content = chunk.removesuffix(b"\n").removesuffix(b"\r")
            if len(content) > MAX_LINE_BYTES:
                raise _fail(
                    path,
                    line_number + 1,
                    f"line longer than the limit of {MAX_LINE_BYTES // (1024 * 1024)} MiB "
                    f"(selectmoe.data.pool.MAX_LINE_BYTES = {MAX_LINE_BYTES} bytes)",
                    "shorten or drop this example (training truncates to max_sequence_length "
                    "tokens anyway)",
                )
            # a lone "\r" also ends a line, as in bytes.splitlines
            for piece in chunk.splitlines():
                line_number += 1
                yield line_number, piece


def iter_jsonl_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded JSON value)`` of every non-blank line of a JSONL file.

    Lines are numbered from 1, blank lines included.

    Raises
    ------
    DataError
        On non-UTF-8 bytes, invalid JSON or a line longer than :data:`MAX_LINE_BYTES`, naming
        the file and the line.
    """
    path_str = os.fspath(path)
    for line_number, raw_line in _physical_lines(path_str):
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _fail(
                path_str,
                line_number,
                f"not valid UTF-8 (byte {error.start})",
                "re-encode the file as UTF-8",
            ) from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise _fail(
                path_str,
                line_number,
                f"invalid JSON ({error.msg} at column {error.colno})",
                "fix the line",
            ) from None
        except RecursionError:
            raise _fail(
                path_str, line_number, "invalid JSON (nested too deeply)", "fix the line"
            ) from None
        yield line_number, record


def iter_jsonl_objects(path: str | os.PathLike[str], what: str) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSONL file of ``what`` (e.g. "noise
    labels"): :func:`iter_jsonl_records` that also requires the file and a JSON object per line.

    Raises
    ------
    DataError
        On a missing file, or a line that :func:`iter_jsonl_records` refuses or that is not an
        object, naming the file and the line.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise DataError(f"{what} not found: {path_str}")
    for line_number, record in iter_jsonl_records(path_str):
        if not isinstance(record, dict):
            raise _fail(path_str, line_number, f"expected a JSON object in {what}", "fix the line")
        yield line_number, record


def read_selected_keys(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The ``(dataset, id)`` of every line of a ``selected_data.jsonl``, in file order.

    Raises
    ------
    DataError
        On a missing file, invalid JSON or a line without ``dataset``/``id``.
    """
    keys = []
    for number, record in iter_jsonl_objects(path, "selected data"):
        if "dataset" not in record or "id" not in record:
            raise _fail(
                os.fspath(path), number, "a selected example needs 'dataset' and 'id'", "fix it"
            )
        keys.append((str(record["dataset"]), str(record["id"])))
    return keys


def load_jsonl_examples(
    path: str | os.PathLike[str], *, default_dataset: str | None = None
) -> list[Example]:
    """Read and validate one pool file.

    Parameters
    ----------
    path : path-like
        A UTF-8 JSONL file in the LESS format.
    default_dataset : str, optional
        Dataset name for lines that have no ``dataset`` field.

    Returns
    -------
    list of Example
        In file order.

    Raises
    ------
    DataError
        On a missing or empty file, non-UTF-8 bytes, invalid JSON, a line longer than
        :data:`MAX_LINE_BYTES`, a missing or empty ``messages`` list, an unknown role, non-string
        content, a missing id, or an id repeated within the file. The message names the file and
        the line.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise DataError(f"{path_str}: file not found; check the pool path in the config")
    examples: list[Example] = []
    seen: dict[tuple[str, str], int] = {}
    for line_number, record in iter_jsonl_records(path_str):
        example = parse_record(record, path_str, line_number, default_dataset)
        key = (example.dataset, example.id)
        if key in seen:
            raise _fail(
                path_str,
                line_number,
                f"duplicate id {example.id!r} in dataset {example.dataset!r} "
                f"(first on line {seen[key]})",
                "make (dataset, id) unique",
            )
        seen[key] = line_number
        examples.append(example)
    if not examples:
        raise DataError(f"{path_str}: file is empty (no examples); remove it or fill it")
    return examples


def load_pool(paths: Iterable[str | os.PathLike[str]]) -> list[Example]:
    """Read and validate several pool files; ``(dataset, id)`` must be unique across all of them.

    Returns the examples in the order of ``paths``, each file in file order.
    """
    examples: list[Example] = []
    seen: dict[tuple[str, str], Example] = {}
    for path in paths:
        for example in load_jsonl_examples(path):
            key = (example.dataset, example.id)
            if key in seen:
                first = seen[key]
                raise _fail(
                    example.source,
                    example.line,
                    f"duplicate id {example.id!r} in dataset {example.dataset!r} "
                    f"(also {first.source}:{first.line})",
                    "make (dataset, id) unique across the pool",
                )
            seen[key] = example
            examples.append(example)
    if not examples:
        raise DataError("no pool files given; set data.pool_dir and data.datasets in the config")
    return examples


def discover_pool_files(
    pool_dir: str | os.PathLike[str], datasets: Sequence[str]
) -> dict[str, list[Path]]:
    """The JSONL files of each dataset: ``{pool_dir}/{dataset}/*.jsonl``, sorted by name.

    Raises
    ------
    DataError
        When a dataset directory is missing or holds no ``.jsonl`` file.
    """
    files: dict[str, list[Path]] = {}
    for dataset in datasets:
        directory = Path(pool_dir) / dataset
        found = sorted(directory.glob("*.jsonl"))
        if not found:
            raise DataError(
                f"{directory}: no .jsonl files for dataset {dataset!r}; put its files there "
                "or fix data.pool_dir / data.datasets in the config"
            )
        files[dataset] = found
    return files


def subset_examples(examples: Sequence[Example], *, ratio: float, seed: int) -> list[Example]:
    """A seeded sample of ``ratio`` of each dataset, kept in pool order.

    Each dataset gives ``max(1, round(ratio * n_dataset))`` examples; ``ratio == 1`` keeps all.
    """
    if not 0.0 < ratio <= 1.0:
        raise DataError(f"subset_ratio is {ratio}; it must be in (0, 1]")
    if ratio == 1.0:
        return list(examples)
    by_dataset: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_dataset.setdefault(example.dataset, []).append(index)
    keep: set[int] = set()
    for dataset in sorted(by_dataset):
        indices = by_dataset[dataset]
        count = max(1, round(ratio * len(indices)))
        # one generator per dataset so that adding a dataset does not change another's sample
        rng = random.Random(f"{seed}:{dataset}")
        keep.update(rng.sample(indices, count))
    return [example for index, example in enumerate(examples) if index in keep]


def validate_data_files(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Validate pool files together and report counts per dataset, turns and roles.

    Raises :class:`DataError` on the first problem (see :func:`load_jsonl_examples`).
    """
    examples = load_pool(paths)
    per_dataset = Counter(example.dataset for example in examples)
    multi_turn = sum(1 for e in examples if sum(m["role"] == "assistant" for m in e.messages) > 1)
    with_system = sum(1 for e in examples if any(m["role"] == "system" for m in e.messages))
    return {
        "files": [os.fspath(p) for p in paths],
        "n_examples": len(examples),
        "per_dataset": dict(sorted(per_dataset.items())),
        "multi_turn": multi_turn,
        "with_system": with_system,
    }
