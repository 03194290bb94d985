"""Held-out lm-eval tasks over the demo world (questions never in the pool or the pretraining
corpus)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from selectmoe.demo.conversations import (
    _arithmetic_problem,
    _fact_sentence,
    _review,
    _sentiment_question,
    _wrong_number,
)
from selectmoe.demo.world import (
    _FACT_ATTRIBUTES,
    _FACT_EVAL_TEMPLATES,
    _LEXICON_ENGLISH,
    _SENTIMENT_LABELS,
    _TRANSLATE_BACK_EVAL_TEMPLATES,
    _TRANSLATE_EVAL_TEMPLATES,
    _TRANSLATION_SENTENCE,
    EVAL_DOC_TO_TEXT,
    EVAL_TASKS,
    _stream,
    _World,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# held-out evaluation tasks


def _eval_docs(
    task: str,
    world: _World,
    *,
    seed: int,
    n_docs: int,
    pool_questions: set[str],
    stream: str = "eval",
) -> list[dict[str, Any]]:
    """``n_docs`` multiple-choice docs ``{"id", "question", "choices" (4), "answer" (index)}``,
    none of whose questions is in ``pool_questions`` (the query sets pass the test questions
    too, and their own ``stream``)."""
    rng = _stream(seed, f"{stream}/{task}")
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    max_attempts = 200 * n_docs
    for _ in range(max_attempts):
        if len(docs) == n_docs:
            break
        if task == "demo_arithmetic":
            problem = _arithmetic_problem(rng, two_step=False)
            question = problem.question
            numbers = {problem.result}
            while len(numbers) < 4:
                numbers.add(_wrong_number(rng, problem.result))
            options = [problem.render(number) for number in sorted(numbers)]
            correct = problem.render(problem.result)
        elif task == "demo_facts":
            country = rng.choice(world.countries)
            attribute = rng.choice(_FACT_ATTRIBUTES)
            question = rng.choice(_FACT_EVAL_TEMPLATES[attribute]).format(country=country.name)
            value = getattr(country, attribute)
            distractors = rng.sample([v for v in world.values(attribute) if v != value], 3)
            options = [_fact_sentence(country, attribute, v) for v in [value, *distractors]]
            correct = options[0]
        elif task == "demo_translate":
            language = world.lexicon_language
            english = rng.choice(_LEXICON_ENGLISH)
            foreign = world.lexicon[english]
            if rng.random() < 0.5:  # English to the invented language: choose the word
                question = rng.choice(_TRANSLATE_EVAL_TEMPLATES).format(
                    language=language, english=english
                )
                words = [foreign, *rng.sample(sorted(set(world.lexicon.values()) - {foreign}), 3)]
                pairs = [(english, word) for word in words]
            else:  # back to English: choose the meaning
                question = rng.choice(_TRANSLATE_BACK_EVAL_TEMPLATES).format(
                    language=language, foreign=foreign
                )
                meanings = [english, *rng.sample(sorted(set(_LEXICON_ENGLISH) - {english}), 3)]
                pairs = [(meaning, foreign) for meaning in meanings]
            options = [
                _TRANSLATION_SENTENCE.format(language=language, english=e, foreign=f)
                for e, f in pairs
            ]
            correct = options[0]
        elif task == "demo_sentiment":
            review, label = _review(rng)
            question = _sentiment_question(review, rng)
            options = list(_SENTIMENT_LABELS)  # fixed order, as in classification benchmarks
            correct = label
        else:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(EVAL_TASKS)}")
        if question in pool_questions or question in seen:
            continue  # held out means never seen verbatim in the pool
        seen.add(question)
        if task != "demo_sentiment":
            rng.shuffle(options)
        docs.append(
            {
                "id": f"{task}_{len(docs)}",
                "question": question,
                "choices": options,
                "answer": options.index(correct),
            }
        )
    if len(docs) < n_docs:
        raise ValueError(
            f"eval_docs_per_task is {n_docs}, but only {len(docs)} distinct held-out "
            f"{task} questions could be generated; use a smaller eval_docs_per_task"
        )
    return docs


def query_examples(
    world: _World, *, seed: int, n_per_task: int, exclude: set[str]
) -> list[dict[str, Any]]:
    """The demo's query sets: per task of :data:`EVAL_TASKS`, ``n_per_task`` held-out questions
    with their correct answer, from the task's generator on a stream of their own, none of them a
    test question or in the pool (``exclude``).

    Returns
    -------
    list of dict
        Query records ``{"dataset", "id", "task", "subtask", "messages"}``
        (:mod:`selectmoe.data.queries`): the question as the user turn, the correct choice as the
        assistant's, as the evaluation prompts them.
    """
    records = []
    for task in EVAL_TASKS:
        docs = _eval_docs(
            task, world, seed=seed, n_docs=n_per_task, pool_questions=exclude, stream="query"
        )
        records += [
            {
                "dataset": task,
                "id": f"{task}/query{i}",
                "task": task,
                "subtask": task,
                "messages": [
                    {"role": "user", "content": doc["question"]},
                    {"role": "assistant", "content": doc["choices"][doc["answer"]]},
                ],
            }
            for i, doc in enumerate(docs)
        ]
    return records


def _task_yaml(task: str, data_file: Path) -> str:
    """lm-eval 0.4 task config. JSON-quoted strings are valid YAML and keep the newlines exact."""
    return "\n".join(
        [
            f"# Embedded demo task (selectmoe.demo): held-out {task.removeprefix('demo_')}",
            "# questions. The data path is absolute: lm-eval resolves it against the working",
            "# directory, not this file.",
            f"task: {task}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(data_file))}",
            "test_split: test",
            "output_type: multiple_choice",
            f"doc_to_text: {json.dumps(EVAL_DOC_TO_TEXT)}",
            "doc_to_choice: choices",
            "doc_to_target: answer",
            "# The prompt ends with the template's newline: the answer follows it directly.",
            'target_delimiter: ""',
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )
