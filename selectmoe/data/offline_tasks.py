"""Offline stand-ins for the datasets of the paper's lm-eval tasks, for rehearsing the paper path.

The paper evaluates lm-eval's own ``mmlu``, ``bbh_cot_fewshot``, ``tydiqa_goldp``,
``hellaswag``, ``arc_easy`` and ``arc_challenge``: groups, tags, filters, few-shot and metrics
as lm-eval defines them. Their datasets live on the Hugging Face Hub, which a rehearsal (and CI)
cannot reach. :func:`serve_offline` answers ``datasets.load_dataset`` for those dataset ids with
small generated datasets of the real features and splits, so that lm-eval's task definitions run
unchanged; every other id goes to the real ``load_dataset``.

=============================== ================= ===========================================
dataset id (lm-eval's)          configs            features, splits
=============================== ================= ===========================================
``cais/mmlu``                   any subject        question, subject, choices[4], answer;
                                                   test, validation, dev
``SaylorTwift/bbh``             any subtask        input, target; test
``google-research-datasets/     secondary_task     id (``{language}-...``), title, context,
tydiqa``                                           question, answers{text, answer_start};
                                                   train, validation
``Rowan/hellaswag``             (none)             ind, activity_label, ctx_a, ctx_b, ctx,
                                                   endings[4], source_id, split, split_type,
                                                   label (str); train, validation, test
``allenai/ai2_arc``             ARC-Easy,          id, question, choices{text, label},
                                ARC-Challenge      answerKey; train, validation, test
=============================== ================= ===========================================

The documents are invented (arithmetic and colour questions with one right answer); what is
real is their shape, which lm-eval's prompts, filters and metrics read.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["OFFLINE_DATASETS", "fixture_dataset", "serve_offline"]

#: Documents per split (``dev`` / ``train`` hold at least 5 for 5-shot prompts).
N_DOCS = 6
_LANGUAGES = (
    "arabic",
    "bengali",
    "english",
    "finnish",
    "indonesian",
    "korean",
    "russian",
    "swahili",
    "telugu",
)
_COLOURS = ("red", "green", "blue", "yellow")


def _rng(*parts: object) -> random.Random:
    return random.Random("selectmoe-offline-tasks/" + "/".join(map(str, parts)))


def _sum_question(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 40), rng.randint(1, 40)
    return f"What is {a} plus {b}?", a + b


def _multiple_choice(rng: random.Random) -> tuple[str, list[str], int]:
    """A sum question, four options and the index of the right one."""
    question, answer = _sum_question(rng)
    options = sorted({answer, answer + 1, answer + 2, answer + 5})
    rng.shuffle(options)
    return question, [str(o) for o in options], options.index(answer)


def _mmlu(name: str | None, split: str) -> list[dict[str, Any]]:
    rng = _rng("mmlu", name, split)
    rows = []
    for _ in range(N_DOCS):
        question, choices, index = _multiple_choice(rng)
        rows.append(
            {"question": question, "subject": name or "", "choices": choices, "answer": index}
        )
    return rows


def _bbh(name: str | None, split: str) -> list[dict[str, Any]]:
    rng = _rng("bbh", name, split)
    rows = []
    for _ in range(N_DOCS):
        question, answer = _sum_question(rng)
        rows.append({"input": question, "target": str(answer)})
    return rows


def _tydiqa(name: str | None, split: str) -> list[dict[str, Any]]:
    rows = []
    for language in _LANGUAGES:
        rng = _rng("tydiqa", language, split)
        for index in range(N_DOCS):
            colour = rng.choice(_COLOURS)
            context = f"The house on the hill is painted {colour}. It has two doors."
            rows.append(
                {
                    "id": f"{language}-{split}-{index}",
                    "title": "The house",
                    "context": context,
                    "question": "What colour is the house on the hill?",
                    "answers": {"text": [colour], "answer_start": [context.index(colour)]},
                }
            )
    return rows


def _hellaswag(name: str | None, split: str) -> list[dict[str, Any]]:
    rng = _rng("hellaswag", split)
    rows = []
    for index in range(N_DOCS):
        colour = rng.choice(_COLOURS)
        endings = [f"paints the fence {c}." for c in _COLOURS]
        rows.append(
            {
                "ind": index,
                "activity_label": "Painting fence",
                "ctx_a": f"A man opens a can of {colour} paint.",
                "ctx_b": "he",
                "ctx": f"A man opens a can of {colour} paint. he",
                "endings": endings,
                "source_id": f"offline~{index}",
                "split": split,
                "split_type": "indomain",
                "label": str(_COLOURS.index(colour)),
            }
        )
    return rows


def _arc(name: str | None, split: str) -> list[dict[str, Any]]:
    rng = _rng("arc", name, split)
    rows = []
    for index in range(N_DOCS):
        question, choices, position = _multiple_choice(rng)
        labels = ["A", "B", "C", "D"]
        rows.append(
            {
                "id": f"{name}-{split}-{index}",
                "question": question,
                "choices": {"text": choices, "label": labels},
                "answerKey": labels[position],
            }
        )
    return rows


#: dataset id -> (rows of one split, the splits).
OFFLINE_DATASETS: dict[str, tuple[Callable[[str | None, str], list[dict]], tuple[str, ...]]] = {
    "cais/mmlu": (_mmlu, ("test", "validation", "dev")),
    "SaylorTwift/bbh": (_bbh, ("test",)),
    "google-research-datasets/tydiqa": (_tydiqa, ("train", "validation")),
    "Rowan/hellaswag": (_hellaswag, ("train", "validation", "test")),
    "allenai/ai2_arc": (_arc, ("train", "validation", "test")),
}


def fixture_dataset(path: str, name: str | None = None) -> Any:
    """The offline ``datasets.DatasetDict`` for lm-eval's dataset ``path`` (config ``name``).

    Raises
    ------
    KeyError
        For a dataset id without an offline stand-in.
    """
    from datasets import Dataset, DatasetDict

    rows_of, splits = OFFLINE_DATASETS[path]
    return DatasetDict({split: Dataset.from_list(rows_of(name, split)) for split in splits})


@contextlib.contextmanager
def serve_offline() -> Iterator[None]:
    """While active, ``datasets.load_dataset`` answers the paper tasks' dataset ids offline."""
    import datasets

    original = datasets.load_dataset

    def load_dataset(path: str, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        if path in OFFLINE_DATASETS:
            split = kwargs.get("split")
            dataset = fixture_dataset(path, name)
            return dataset[split] if split else dataset
        return original(path, name, *args, **kwargs)

    datasets.load_dataset = load_dataset
    try:
        yield
    finally:
        datasets.load_dataset = original
