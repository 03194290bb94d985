"""Query sets: a few held-out examples of every evaluation task, which the targeted methods
(``rds``, ``less``) select for. Never the test questions.

A query file is JSONL in the pool's format with two more fields::

    {"dataset": task, "id": ..., "task": "mmlu", "subtask": "anatomy",
     "messages": [{"role": "user", ...}, {"role": "assistant", ...}]}

``subtask`` defaults to ``task``. The demo writes its own (:func:`selectmoe.demo.tasks.
query_examples`: its task generators, disjoint from the test questions and the pool); for a real
pool they are LESS's dev / few-shot sets (:mod:`selectmoe.data.less_queries`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from selectmoe.data.pool import Example, iter_jsonl_records, parse_record
from selectmoe.errors import DataError

__all__ = ["QUERY_TEMPLATE", "QuerySet", "load_queries"]

#: How a query example is rendered, whatever ``data.template``: as LESS's validation sets
#: (``get_validation_dataset.py``: prompt + completion, no newline after it), so the text ends at
#: the answer's eos (the ``open_instruct`` ending).
QUERY_TEMPLATE = "open_instruct"


@dataclass(frozen=True)
class QuerySet:
    """The query examples with their task and subtask (all lists of length Q)."""

    examples: list[Example]
    tasks: list[str]
    subtasks: list[str]


def load_queries(path: str | os.PathLike[str]) -> QuerySet:
    """Read and check a query file.

    Raises
    ------
    DataError
        A missing or empty file, a bad line (as for the pool), a missing or non-string
        ``task`` / ``subtask``, or a repeated id; the message names the file and the line.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise DataError(
            f"{path_str}: query file not found; the demo builds it, a real pool takes LESS's "
            "(targeted.queries) or your own (targeted.queries.file)"
        )
    examples: list[Example] = []
    tasks: list[str] = []
    subtasks: list[str] = []
    seen: dict[str, int] = {}
    for line_number, record in iter_jsonl_records(path_str):
        example = parse_record(record, path_str, line_number, None)
        task = record.get("task")
        subtask = record.get("subtask", task)
        for field, value in (("task", task), ("subtask", subtask)):
            if not isinstance(value, str) or not value:
                raise DataError(
                    f"{path_str}:{line_number}: field {field!r} is {value!r}; give every "
                    "query example the name of its evaluation task"
                )
        if example.id in seen:
            raise DataError(
                f"{path_str}:{line_number}: duplicate id {example.id!r} (first on line "
                f"{seen[example.id]}); make the ids unique"
            )
        seen[example.id] = line_number
        examples.append(example)
        tasks.append(task)
        subtasks.append(subtask)
    if not examples:
        raise DataError(f"{path_str}: no query examples")
    return QuerySet(examples=examples, tasks=tasks, subtasks=subtasks)
