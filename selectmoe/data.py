"""Training-pool files (LESS / Tulu format) and the chat-template encoding.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectmoe.errors import DataError

__all__ = [
    "CHAT_TAGS",
    "IGNORE_INDEX",
    "MAX_LINE_BYTES",
    "ROLES",
    "EncodedExample",
    "Example",
    "collate_encoded",
    "discover_pool_files",
    "encode_examples",
    "iter_jsonl_objects",
    "iter_jsonl_records",
    "length_sorted_batches",
    "load_jsonl_examples",
    "load_pool",
    "pad_token_id_of",
    "parse_record",
    "read_selected_keys",
    "render_chat",
    "subset_examples",
    "validate_data_files",
]

logger = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("system", "user", "assistant")
CHAT_TAGS: dict[str, str] = {role: f"<|{role}|>" for role in ROLES}
IGNORE_INDEX = -100
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
                    f"(selectmoe.data.MAX_LINE_BYTES = {MAX_LINE_BYTES} bytes)",
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


# ----------------------------------------------------------------------------------------------
# chat template and encoding


@dataclass(frozen=True)
class _Span:
    """Characters ``[start, end)`` of a rendered conversation: a role's tag (with its newline)
    or its content (an assistant's with the eos token, each with the newline that ends it)."""

    start: int
    end: int
    role: str
    kind: str  # "tag" or "content"


def _render(messages: Sequence[dict[str, str]], eos_token: str) -> tuple[str, list[_Span]]:
    """The conversation as LESS / open-instruct render it, and where each part sits.

    ``<|role|>\n`` + content stripped (+ eos for the assistant) + ``\n`` per message; the
    whole text stripped at its end (so it ends with the last content, without a newline).
    """
    parts: list[str] = []
    spans: list[_Span] = []
    position = 0
    for message in messages:
        role = message["role"]
        body = message["content"].strip() + (eos_token if role == "assistant" else "") + "\n"
        for kind, text in (("tag", f"{CHAT_TAGS[role]}\n"), ("content", body)):
            spans.append(_Span(position, position + len(text), role, kind))
            parts.append(text)
            position += len(text)
    text = "".join(parts).rstrip()
    return text, [
        _Span(span.start, min(span.end, len(text)), span.role, span.kind)
        for span in spans
        if span.start < len(text)
    ]


def render_chat(messages: Sequence[dict[str, str]], eos_token: str) -> str:
    """The chat template as one string, exactly as it is tokenized (SPEC §4).

    Examples
    --------
    >>> render_chat([{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}],
    ...             "</s>")
    '<|user|>\\nhi\\n<|assistant|>\\nyo</s>'
    """
    return _render(messages, eos_token)[0]


@dataclass
class EncodedExample:
    """Token ids and labels of one example; ``labels`` is ``IGNORE_INDEX`` where no loss applies."""

    input_ids: list[int]
    labels: list[int]
    index: int = 0
    n_label_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_label_tokens = sum(label != IGNORE_INDEX for label in self.labels)


def encode_examples(
    examples: Sequence[Example] | Sequence[Sequence[dict[str, str]]],
    tokenizer: Any,
    *,
    full_sequence_prediction: bool,
    mask_special_tokens: bool = True,
    max_sequence_length: int | None = None,
    add_special_tokens: bool = True,
) -> list[EncodedExample]:
    """Tokenize conversations with the chat template and build their labels.

    Each conversation is rendered once (:func:`render_chat`) and tokenized once, as a whole
    string, as LESS / open-instruct and lm-eval tokenize it; every label comes from the tokens'
    character offsets. Piece-by-piece tokenization would differ for SentencePiece tokenizers
    (Llama-2 adds a dummy-prefix ``▁`` to every call) and for byte-level BPE whose pre-tokenizer
    merges ``|>\n`` (Qwen2). The chat tags are plain text; they need not be special tokens.

    Labels
    ------
    A token is labelled when all its characters lie in one labelled part of the text (a token
    that straddles a part's border, such as ``?\n<|`` in a SentencePiece vocabulary trained on
    multi-line text, gets none: no label ever teaches prompt or tag text):

    - ``full_sequence_prediction=True``: the content of user and assistant messages (system:
      never); ``False``: only the assistant's (SFT). An assistant's content includes its eos
      token and the newline after it; ``<|assistant|>\n`` is prompt.
    - The chat tags (with their newline) are labelled only when ``mask_special_tokens`` is false
      and their role is.
    - Special tokens the tokenizer adds (``<s>``) are never labelled.

    Parameters
    ----------
    examples : sequence of Example or of message lists
    tokenizer : transformers tokenizer
        A fast tokenizer (``return_offsets_mapping``) with an eos token.
    max_sequence_length : int, optional
        Keep the first ``max_sequence_length`` tokens.
    add_special_tokens : bool, default True
        Let the tokenizer add its special tokens (Llama: ``<s>``; Qwen2: none), as lm-eval does.

    Returns
    -------
    list of EncodedExample
        One per example, ``len(input_ids) == len(labels) <= max_sequence_length``.

    Raises
    ------
    DataError
        When the tokenizer has no eos token or gives no character offsets.
    """
    import numpy as np

    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no eos token; set one (tokenizer.eos_token) before encoding"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: labels come from character "
            "offsets, which only fast (tokenizers-backed) tokenizers give; load it with "
            "AutoTokenizer (use_fast=True)"
        )
    labelled_roles = {"user", "assistant"} if full_sequence_prediction else {"assistant"}
    conversations = [e.messages if isinstance(e, Example) else e for e in examples]
    rendered = [_render(messages, tokenizer.eos_token) for messages in conversations]
    if not rendered:
        return []
    batch = tokenizer(
        [text for text, _ in rendered],
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    special_ids = set(tokenizer.all_special_ids)
    encoded: list[EncodedExample] = []
    for index, ((text, spans), ids, offsets, special) in enumerate(
        zip(
            rendered,
            batch["input_ids"],
            batch["offset_mapping"],
            batch["special_tokens_mask"],
            strict=True,
        )
    ):
        # per character: the labelled part it belongs to (0: none); one past the end: none
        part = np.zeros(len(text) + 1, dtype=np.int64)
        for number, span in enumerate(spans, 1):
            if span.role in labelled_roles and (span.kind == "content" or not mask_special_tokens):
                part[span.start : span.end] = number
        labels = []
        for token, (start, end), added in zip(ids, offsets, special, strict=True):
            # a special token the tokenizer added (not written in the text) has no characters
            added_special = bool(added) and start == end and token in special_ids
            inside = part[start] > 0 and (end <= start or (part[start:end] == part[start]).all())
            labels.append(token if inside and not added_special else IGNORE_INDEX)
        input_ids = list(ids)
        if max_sequence_length is not None:
            input_ids = input_ids[:max_sequence_length]
            labels = labels[:max_sequence_length]
        encoded.append(EncodedExample(input_ids=input_ids, labels=labels, index=index))
    return encoded


def pad_token_id_of(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its eos token.

    Padded positions are masked out of attention and loss, so padding with eos needs no new
    embedding and leaves the model's weights as they are.
    """
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def length_sorted_batches(
    encoded: Sequence[EncodedExample], *, batch_size: int
) -> list[list[EncodedExample]]:
    """Batches of examples of similar length (longest first) to waste little on padding.

    The sort is stable, so the batching is deterministic; callers restore file order through
    ``EncodedExample.index``.
    """
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    return [
        [encoded[i] for i in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]


def collate_encoded(batch: Sequence[EncodedExample], *, pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch into tensors.

    Returns
    -------
    dict
        ``input_ids`` and ``labels`` int64 ``[B, T]``, ``attention_mask`` int64 ``[B, T]``
        (1 on real tokens), ``index`` int64 ``[B]`` (position of each example in its input list).
    """
    import torch

    longest = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids, dtype=torch.long)
        labels[row, :length] = torch.tensor(item.labels, dtype=torch.long)
        attention_mask[row, :length] = 1
    index = torch.tensor([item.index for item in batch], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "index": index,
    }
