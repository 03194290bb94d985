"""LESS's query sets: the evaluation tasks' dev / few-shot examples, as chat records.

The targeted selection methods (LESS, RDS+) select the pool examples most similar to a few held-out
examples of each evaluation task. For the paper's pool these are LESS's own validation examples
(Xia et al., 2024, ``less/data_selection/get_validation_dataset.py``), which sit in the same
archive as the pool (``less-data.zip`` of the Hub dataset ``princeton-nlp/less_data``), below a
top-level ``data/`` folder:

``eval/mmlu/dev/{subject}_dev.csv``
    Headerless CSV, one row per question: question, A, B, C, D, answer letter. The first 5 rows
    of each subject are queries; the subjects are those of ``eval/mmlu/test/{subject}_test.csv``.
``eval/bbh/bbh-three-shot.json``
    ``{task: prompt}``; a prompt is a task description and then three examples, separated by
    blank lines (``"\\n\\n"``), each ``"Q: ...\\nA: ..."``. Every example is a query, shown after
    the description and the other two examples.
``eval/tydiqa/tydiqa-one-shot.json``
    ``{language: [{"context", "question", "answers": [{"text"}, ...], ...}, ...]}``; the first
    example of each language is a query, with that language's templates.

Each query is a record of the pool's JSONL format plus its task::

    {"dataset": "mmlu", "id": "mmlu/anatomy/0", "task": "mmlu", "subtask": "anatomy",
     "messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "The answer is: B"}]}

The texts are LESS's (its tulu chat format, split at ``<|assistant|>``): the chat template of
:func:`selectmoe.data.encoding.render_chat` strips each content, so a trailing newline of a user
turn is
immaterial. One difference: LESS labels only the answer after the assistant's prefix ("The answer
is:", "A:", "Answer:"), while here the whole assistant turn, prefix included, is labelled, as for
every pool example.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from selectmoe.data.fetch import (
    LESS_ARCHIVE,
    LESS_REPO_ID,
    _ends_with,
    _is_junk,
    _member_name,
    _one_line,
    download_less_archive,
    hub_dataset_url,
)
from selectmoe.errors import DataError
from selectmoe.hashing import file_sha256
from selectmoe.io import atomic_write_jsonl

__all__ = [
    "MMLU_DEV_SHOTS",
    "QUERY_TASKS",
    "TYDIQA_TEMPLATES",
    "fetch_less_queries",
    "less_query_records",
]

logger = logging.getLogger(__name__)

#: The evaluation tasks with a LESS query set.
QUERY_TASKS: tuple[str, ...] = ("mmlu", "bbh", "tydiqa")
#: Dev questions per MMLU subject that are queries (LESS's ``k = 5``).
MMLU_DEV_SHOTS = 5
_MMLU_DEV = "eval/mmlu/dev"
_MMLU_TEST = "eval/mmlu/test"
_BBH_FILE = "eval/bbh/bbh-three-shot.json"
_TYDIQA_FILE = "eval/tydiqa/tydiqa-one-shot.json"
_BBH_SHOTS = 3
_CHOICES = ("A", "B", "C", "D")

#: TyDi QA's per-language (instruction, passage, question, answer) templates, as LESS has them
#: (from open-instruct's TyDi QA evaluation).
TYDIQA_TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "english": (
        "Answer the following question based on the information in the given passage.",
        "Passage:",
        "Question:",
        "Answer:",
    ),
    "arabic": (
        "أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.",
        "المقطع:",
        "السؤال:",
        "الإجابة:",
    ),
    "bengali": (
        "প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।",
        "অধ্যায়:",
        "প্রশ্ন:",
        "উত্তর:",
    ),
    "finnish": (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.",
        "Kappale:",
        "Kysymys:",
        "Vastaus:",
    ),
    "indonesian": (
        "Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.",
        "Bagian:",
        "Pertanyaan:",
        "Jawaban:",
    ),
    "korean": (
        "주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.",
        "문단:",
        "질문:",
        "답변:",
    ),
    "russian": (
        "Ответьте на следующий вопрос на основе информации в данном отрывке.",
        "Отрывок:",
        "Вопрос:",
        "Ответ:",
    ),
    "swahili": (
        "Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.",
        "Kifungu:",
        "Swali:",
        "Jibu:",
    ),
    "telugu": (
        "ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.",
        "పేరా:",
        "ప్రశ్న:",
        "సమాధానం:",
    ),
}


def _record(task: str, subtask: str, k: int, user: str, assistant: str) -> dict[str, Any]:
    return {
        "dataset": task,
        "id": f"{task}/{subtask}/{k}",
        "task": task,
        "subtask": subtask,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ],
    }


class _Archive:
    """The files of an open zip, found by their path's ending (wherever the ``data/`` folder is)."""

    def __init__(self, zf: zipfile.ZipFile, path: Path) -> None:
        self.zf = zf
        self.path = path
        self.members = {
            _member_name(info): info
            for info in zf.infolist()
            if not info.is_dir() and not _is_junk(_member_name(info))
        }

    def find(self, suffix: str) -> str:
        """The one member whose path ends with ``suffix`` (a whole path component)."""
        candidates = sorted(name for name in self.members if _ends_with(name, suffix))
        if not candidates:
            raise DataError(
                f"{self.path}: no member */{suffix} in the archive; use LESS's archive "
                f"({LESS_ARCHIVE}), which holds it below data/"
            )
        if len(candidates) > 1:
            raise DataError(
                f"{self.path}: several members for */{suffix} ({', '.join(candidates)}); "
                "keep one of them in the archive"
            )
        return candidates[0]

    def in_folder(self, folder: str, ending: str) -> list[str]:
        """Names of the members directly in a folder ending with ``folder`` and ending with
        ``ending``, sorted."""
        return sorted(
            name
            for name in self.members
            if _ends_with(str(PurePosixPath(name).parent), folder) and name.endswith(ending)
        )

    def text(self, member: str) -> str:
        data = self.zf.read(self.members[member])
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{self.path}: member {member} is not valid UTF-8 (byte {error.start}); "
                "download the archive again"
            ) from None

    def json(self, member: str) -> Any:
        try:
            return json.loads(self.text(member))
        except json.JSONDecodeError as error:
            raise DataError(
                f"{self.path}: member {member} is not valid JSON ({error.msg} at line "
                f"{error.lineno}); download the archive again"
            ) from None

    def fail(self, member: str, problem: str) -> DataError:
        return DataError(f"{self.path}: member {member}: {problem}; download the archive again")


def _mmlu_subject(subject: str) -> str:
    """LESS's ``format_subject``: every word preceded by a space (``" college biology"``)."""
    return "".join(" " + word for word in subject.split("_"))


def _mmlu(archive: _Archive) -> list[dict[str, Any]]:
    tests = archive.in_folder(_MMLU_TEST, "_test.csv")
    if not tests:
        raise DataError(
            f"{archive.path}: no member */{_MMLU_TEST}/<subject>_test.csv in the archive (they "
            f"list the MMLU subjects); use LESS's archive ({LESS_ARCHIVE})"
        )
    subjects = sorted({PurePosixPath(name).name[: -len("_test.csv")] for name in tests})
    records = []
    for subject in subjects:
        member = archive.find(f"{_MMLU_DEV}/{subject}_dev.csv")
        rows = [row for row in csv.reader(io.StringIO(archive.text(member))) if row]
        if len(rows) < MMLU_DEV_SHOTS:
            raise archive.fail(member, f"{len(rows)} questions, expected at least {MMLU_DEV_SHOTS}")
        header = (
            f"The following are multiple choice questions (with answers) about "
            f"{_mmlu_subject(subject)}.\n\n"
        )
        for k, row in enumerate(rows[:MMLU_DEV_SHOTS]):
            if len(row) != 2 + len(_CHOICES):
                raise archive.fail(
                    member,
                    f"row {k + 1} has {len(row)} fields, expected {2 + len(_CHOICES)} "
                    "(question, A, B, C, D, answer)",
                )
            question, *options, answer = row
            user = header + question
            for letter, option in zip(_CHOICES, options, strict=True):
                user += f"\n{letter}. {option}"
            user += "\nAnswer:"
            records.append(_record("mmlu", subject, k, user, f"The answer is: {answer}"))
    return records


def _split_shot(archive: _Archive, member: str, task: str, shot: str) -> tuple[str, str]:
    question, separator, answer = shot.partition("\nA:")
    if not separator or "\nA:" in answer:
        raise archive.fail(
            member, f"task {task!r}: an example does not hold exactly one '\\nA:' ({shot[:60]!r})"
        )
    return question, answer


def _bbh(archive: _Archive) -> list[dict[str, Any]]:
    member = archive.find(_BBH_FILE)
    prompts = archive.json(member)
    if not isinstance(prompts, dict) or not prompts:
        raise archive.fail(member, "expected a non-empty JSON object {task: prompt}")
    records = []
    for task in sorted(prompts):
        prompt = prompts[task]
        if not isinstance(prompt, str):
            raise archive.fail(member, f"task {task!r}: the prompt is not a string")
        parts = prompt.split("\n\n")
        if len(parts) < _BBH_SHOTS:
            raise archive.fail(
                member,
                f"task {task!r}: {len(parts)} blank-line separated parts, expected a "
                f"description and {_BBH_SHOTS} examples",
            )
        shots = parts[-_BBH_SHOTS:]
        description = "\n\n".join(parts[:-_BBH_SHOTS]).strip()
        split = [_split_shot(archive, member, task, shot) for shot in shots]
        for i, (question, answer) in enumerate(split):
            others = "".join(f"{q}\nA:{a}\n\n" for j, (q, a) in enumerate(split) if j != i)
            user = description + "\n\n" + others + question
            records.append(_record("bbh", task, i, user, "A:" + answer))
    return records


def _tydiqa(archive: _Archive) -> list[dict[str, Any]]:
    member = archive.find(_TYDIQA_FILE)
    examples = archive.json(member)
    if not isinstance(examples, dict) or not examples:
        raise archive.fail(member, "expected a non-empty JSON object {language: [example, ...]}")
    records = []
    for language in sorted(examples):
        if language not in TYDIQA_TEMPLATES:
            raise archive.fail(
                member,
                f"language {language!r} has no templates (known: {', '.join(TYDIQA_TEMPLATES)})",
            )
        shots = examples[language]
        try:
            example = shots[0]
            context, question = example["context"], example["question"]
            answer = example["answers"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise archive.fail(
                member,
                f"language {language!r}: expected a list whose first example has 'context', "
                "'question' and 'answers': [{'text': ...}]",
            ) from None
        instruction, passage, question_tag, answer_tag = TYDIQA_TEMPLATES[language]
        # as LESS: no separator between the instruction and the passage template
        user = f"{instruction}{passage} {context}\n{question_tag} {question}\n"
        records.append(_record("tydiqa", language, 0, user, f"{answer_tag} {answer}"))
    return records


_BUILDERS = {"mmlu": _mmlu, "bbh": _bbh, "tydiqa": _tydiqa}


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    if isinstance(tasks, str):
        tasks = [tasks]
    unknown = [task for task in tasks if task not in _BUILDERS]
    if unknown:
        raise ValueError(
            f"unknown query task(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(QUERY_TASKS)}"
        )
    if not tasks:
        raise ValueError(f"no query tasks given; choose from {', '.join(QUERY_TASKS)}")
    return list(dict.fromkeys(tasks))


def less_query_records(
    archive: str | os.PathLike[str], tasks: Sequence[str]
) -> list[dict[str, Any]]:
    """The query records of ``tasks`` from LESS's archive, built as LESS builds them.

    Parameters
    ----------
    archive
        ``less-data.zip`` (or a zip with the same layout; the members are found by the ending of
        their path, e.g. ``*/eval/bbh/bbh-three-shot.json``).
    tasks
        Some of :data:`QUERY_TASKS`, in the order their records come (a repeat is ignored).

    Returns
    -------
    list of dict
        ``{"dataset": task, "id": f"{task}/{subtask}/{k}", "task": task, "subtask": subtask,
        "messages": [user turn, assistant turn]}``, task by task; within a task by subtask
        (sorted MMLU subject, BBH task or TyDi QA language), then ``k``: the MMLU dev row
        (0..4), the BBH example (0..2), or 0 (TyDi QA). 285 (mmlu: 57 subjects x 5),
        81 (bbh: 27 tasks x 3) and 9 (tydiqa) for LESS's archive.

        - mmlu: user ``"The following are multiple choice questions (with answers) about
          {subject}.\\n\\n{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"`` (``{subject}``
          LESS's way: ``" college biology"``); assistant ``"The answer is: {letter}"``.
        - bbh: user = description, ``"\\n\\n"``, the other two examples each followed by
          ``"\\n\\n"``, then this example's ``"Q: ..."``; assistant ``"A:{answer}"``.
        - tydiqa: user ``"{instruction}{Passage:} {context}\\n{Question:} {question}\\n"``;
          assistant ``"{Answer:} {answer}"``, in the language's templates
          (:data:`TYDIQA_TEMPLATES`).

        LESS labels only the answer after the assistant prefix; the whole assistant turn is the
        completion here.

    Raises
    ------
    ValueError
        A task that is not one of :data:`QUERY_TASKS` (the message lists the valid ones).
    DataError
        The archive is missing or not a readable zip, or a member is missing (naming the archive
        and the member) or malformed.
    """
    wanted = _check_tasks(tasks)
    path = Path(archive)
    if not path.is_file():
        raise DataError(
            f"archive {path} does not exist; download {LESS_ARCHIVE} from "
            f"{hub_dataset_url(LESS_REPO_ID)} there"
        )
    # NotImplementedError: a compression method zipfile cannot read (e.g. deflate64)
    corrupt = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)
    try:
        with zipfile.ZipFile(path) as zf:
            opened = _Archive(zf, path)
            records: list[dict[str, Any]] = []
            for task in wanted:
                built = _BUILDERS[task](opened)
                logger.info("%s: %d %s queries", path, len(built), task)
                records.extend(built)
            return records
    except corrupt as error:
        raise DataError(
            f"{path}: not a readable zip archive ({_one_line(error, 160)}); download it again"
        ) from None


def fetch_less_queries(
    output: str | os.PathLike[str],
    tasks: Sequence[str],
    *,
    repo_id: str = LESS_REPO_ID,
    filename: str = LESS_ARCHIVE,
    archive: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    archive_setting: str = "data.fetch.archive",
) -> dict[str, Any]:
    """Write the query records of ``tasks`` (:func:`less_query_records`) to ``output`` as JSONL.

    Parameters
    ----------
    output
        The JSONL file, written atomically (nothing is written when anything fails).
    tasks
        Some of :data:`QUERY_TASKS`.
    repo_id, filename
        Hub dataset repository and archive to download when ``archive`` is not given (the
        pool's archive: a copy already in the Hub cache is used).
    archive
        A local copy of the archive; when given, nothing is downloaded.
    cache_dir
        Hugging Face cache directory for the download (default: the usual Hub cache).
    archive_setting
        How the user passes a local archive (named in the error when the download fails).

    Returns
    -------
    dict
        ``{"output": path, "tasks": {task: number of records}, "archive": archive path used,
        "sha256": of the written file}`` (plain JSON).

    Raises
    ------
    ValueError
        An unknown task.
    DataError
        One line: offline (``HF_HUB_OFFLINE``, or the Hub cannot be reached) with no cached or
        local archive (naming the file to download and where to point ``archive``), a failed
        download, or what :func:`less_query_records` raises.
    """
    wanted = _check_tasks(tasks)
    if archive is not None:
        archive_path = Path(archive)
        if not archive_path.is_file():
            raise DataError(
                f"archive {archive_path} does not exist; download {filename} from "
                f"{hub_dataset_url(repo_id)} there, or set {archive_setting} to null to "
                "download it"
            )
    else:
        hint = (
            f"download {filename} from {hub_dataset_url(repo_id)} by hand and set "
            f"{archive_setting} to its path"
        )
        archive_path = download_less_archive(
            hint, repo_id=repo_id, filename=filename, cache_dir=cache_dir
        )
    records = less_query_records(archive_path, wanted)
    counts = dict.fromkeys(wanted, 0)
    for record in records:
        counts[record["task"]] += 1
    atomic_write_jsonl(output, records)
    return {
        "output": os.fspath(output),
        "tasks": counts,
        "archive": os.fspath(archive_path),
        "sha256": file_sha256(output),
    }
