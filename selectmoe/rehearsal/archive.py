"""A small ``less-data.zip`` with the real archive's layout, for rehearsing the paper's data path.

The paper's pool and LESS's query sets come from one archive (:mod:`selectmoe.data.fetch`,
:mod:`selectmoe.data.less_queries`). The rehearsal writes an archive of the same layout, which the
workflow's ``fetch_pool`` and ``fetch_queries`` rules unpack as they unpack the real one::

    data/train/processed/{cot,dolly,flan_v2,oasst1}/{dataset}_data.jsonl   the pool (LESS format)
    data/eval/mmlu/test/{subject}_test.csv      names the subjects
    data/eval/mmlu/dev/{subject}_dev.csv        headerless: question, A, B, C, D, answer letter
    data/eval/bbh/bbh-three-shot.json           {task: description + three "Q: ...\\nA: ..."}
    data/eval/tydiqa/tydiqa-one-shot.json       {language: [{context, question, answers}]}

The pool is the demo's invented world (:func:`selectmoe.demo.pool_records`, with its planted
noise); the query sets are short invented questions of each task's real form.
"""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

from selectmoe.demo import DATASETS, pool_records

__all__ = ["BBH_TASKS", "MMLU_SUBJECTS", "TYDIQA_LANGUAGES", "write_less_archive"]

MMLU_SUBJECTS = ("abstract_algebra", "anatomy", "high_school_biology")
BBH_TASKS = ("boolean_expressions", "multistep_arithmetic_two", "word_sorting")
TYDIQA_LANGUAGES = ("english", "finnish", "swahili")
_WORDS = ("apple", "river", "stone", "cloud", "lantern", "meadow", "violin", "harbor")


def _mmlu_dev(subject: str, rng: random.Random) -> str:
    rows = []
    for _ in range(5):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        options = [a + b, a + b + 1, a * b, abs(a - b)]
        letter = "ABCD"[rng.randrange(4)]
        options[0], options["ABCD".index(letter)] = options["ABCD".index(letter)], options[0]
        rows.append(
            f'"In {subject.replace("_", " ")}, what is {a} plus {b}?",'
            + ",".join(map(str, options))
            + f",{letter}"
        )
    return "\n".join(rows) + "\n"


def _bbh_prompt(task: str, rng: random.Random) -> str:
    examples = []
    for _ in range(3):
        if task == "boolean_expressions":
            left, right = rng.choice((True, False)), rng.choice((True, False))
            examples.append(f"Q: not ( {left} ) and {right} is\nA: {(not left) and right}")
        elif task == "multistep_arithmetic_two":
            a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
            examples.append(f"Q: (({a} + {b}) * {c}) =\nA: {(a + b) * c}")
        else:
            words = rng.sample(_WORDS, 3)
            examples.append(
                f"Q: Sort the following words alphabetically: List: {' '.join(words)}"
                f"\nA: {' '.join(sorted(words))}"
            )
    description = f"A rehearsal stand-in for the {task.replace('_', ' ')} task."
    return "\n\n".join([description, *examples])


def _tydiqa_shot(language: str, rng: random.Random) -> dict:
    word = rng.choice(_WORDS)
    context = f"The {word} stands beside the old mill in the valley."
    return {
        "id": f"{language}-rehearsal-0",
        "context": context,
        "question": f"What stands beside the old mill? ({language})",
        "answers": [{"text": f"The {word}", "answer_start": 0}],
    }


def write_less_archive(path: Path, *, seed: int, examples_per_dataset: int) -> dict[str, int]:
    """Write the archive to ``path``; returns the examples per pool dataset."""
    rng = random.Random(f"selectmoe-rehearsal-archive/{seed}")
    pool = pool_records(seed=seed, examples_per_dataset=examples_per_dataset, noise_fraction=0.3)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for dataset in DATASETS:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool[dataset])
            archive.writestr(f"data/train/processed/{dataset}/{dataset}_data.jsonl", lines)
        for subject in MMLU_SUBJECTS:
            archive.writestr(f"data/eval/mmlu/test/{subject}_test.csv", _mmlu_dev(subject, rng))
            archive.writestr(f"data/eval/mmlu/dev/{subject}_dev.csv", _mmlu_dev(subject, rng))
        bbh = {task: _bbh_prompt(task, rng) for task in BBH_TASKS}
        archive.writestr("data/eval/bbh/bbh-three-shot.json", json.dumps(bbh, indent=1))
        tydiqa = {language: [_tydiqa_shot(language, rng)] for language in TYDIQA_LANGUAGES}
        archive.writestr("data/eval/tydiqa/tydiqa-one-shot.json", json.dumps(tydiqa, indent=1))
    return {dataset: len(records) for dataset, records in pool.items()}
