"""LESS's query sets: records from a small archive with the real layout, errors, offline, output."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from selectmoe.data.fetch import fetch_less_pool
from selectmoe.data.less_queries import QUERY_TASKS, fetch_less_queries, less_query_records
from selectmoe.data.pool import load_jsonl_examples
from selectmoe.errors import DataError

URL = "https://huggingface.co/datasets/princeton-nlp/less_data"


def _mmlu_rows(subject: str) -> str:
    rows = []
    for i in range(6):  # one more than LESS takes
        rows.append(
            f'"{subject} q{i}, with a comma",opt a{i},opt b{i},opt c{i},opt d{i},{"ABCD"[i % 4]}'
        )
    return "\n".join(rows) + "\n"


BBH = {
    # the description itself has a blank line: it is everything before the last three examples
    "word_sorting": "Sort words.\n\nAlphabetically.\n\n"
    "Q: Sort: b a\nA: a b\n\nQ: Sort: d c\nA: c d\n\nQ: Sort: f e\nA: e f",
    "boolean_expressions": "Evaluate the result of a random Boolean expression.\n\n"
    "Q: not ( True ) and ( True ) is\nA: False\n\n"
    "Q: True and not not ( not False ) is\nA: True\n\n"
    "Q: not True or ( False and True ) is\nA: False",
}

TYDIQA = {
    "finnish": [
        {
            "context": "Helsinki on Suomen pääkaupunki.",
            "question": "Mikä on pääkaupunki?",
            "answers": [{"text": "Helsinki", "answer_start": 0}],
            "id": "fi-1",
        },
        {"context": "toinen", "question": "toinen?", "answers": [{"text": "x"}]},
    ],
    "english": [
        {
            "context": "Paris is the capital of France.",
            "question": "What is the capital?",
            "answers": [{"text": "Paris"}, {"text": "Paris, France"}],
            "id": "en-1",
        },
    ],
}


def _make_archive(path: Path, *, skip: str | None = None) -> Path:
    """A small less-data.zip with the real layout (and the pool, and macOS junk, beside it)."""
    members: dict[str, str | bytes] = {
        "data/train/processed/dolly/dolly_data.jsonl": '{"id": "d0", "messages": []}\n',
        "data/eval/mmlu/test/high_school_biology_test.csv": "q,a,b,c,d,A\n",
        "data/eval/mmlu/test/anatomy_test.csv": "q,a,b,c,d,B\n",
        "data/eval/mmlu/dev/high_school_biology_dev.csv": _mmlu_rows("bio"),
        "data/eval/mmlu/dev/anatomy_dev.csv": _mmlu_rows("anat"),
        "data/eval/bbh/bbh-three-shot.json": json.dumps(BBH),
        "data/eval/tydiqa/tydiqa-one-shot.json": json.dumps(TYDIQA, ensure_ascii=False),
        "__MACOSX/data/eval/bbh/._bbh-three-shot.json": b"\x00junk",
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if name != skip:
                zf.writestr(name, data)
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _make_archive(tmp_path / "less-data.zip")


def _turns(record: dict) -> tuple[str, str]:
    messages = record["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    return messages[0]["content"], messages[1]["content"]


def test_records_text_ids_and_order(archive: Path) -> None:
    records = less_query_records(archive, QUERY_TASKS)
    assert [r["id"] for r in records] == [
        *(f"mmlu/anatomy/{k}" for k in range(5)),
        *(f"mmlu/high_school_biology/{k}" for k in range(5)),
        *(f"bbh/boolean_expressions/{k}" for k in range(3)),
        *(f"bbh/word_sorting/{k}" for k in range(3)),
        "tydiqa/english/0",
        "tydiqa/finnish/0",
    ]
    for record in records:
        assert set(record) == {"dataset", "id", "task", "subtask", "messages"}
        task, subtask, _ = record["id"].split("/")
        assert record["dataset"] == record["task"] == task
        assert record["subtask"] == subtask

    by_id = {r["id"]: r for r in records}
    assert _turns(by_id["mmlu/high_school_biology/1"]) == (
        "The following are multiple choice questions (with answers) about  high school biology."
        "\n\nbio q1, with a comma\nA. opt a1\nB. opt b1\nC. opt c1\nD. opt d1\nAnswer:",
        "The answer is: B",
    )
    assert _turns(by_id["bbh/boolean_expressions/1"]) == (
        "Evaluate the result of a random Boolean expression.\n\n"
        "Q: not ( True ) and ( True ) is\nA: False\n\n"
        "Q: not True or ( False and True ) is\nA: False\n\n"
        "Q: True and not not ( not False ) is",
        "A: True",
    )
    assert _turns(by_id["bbh/word_sorting/0"]) == (
        "Sort words.\n\nAlphabetically.\n\nQ: Sort: d c\nA: c d\n\nQ: Sort: f e\nA: e f\n\n"
        "Q: Sort: b a",
        "A: a b",
    )
    assert _turns(by_id["tydiqa/finnish/0"]) == (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.Kappale: "
        "Helsinki on Suomen pääkaupunki.\nKysymys: Mikä on pääkaupunki?\n",
        "Vastaus: Helsinki",
    )
    assert _turns(by_id["tydiqa/english/0"]) == (
        "Answer the following question based on the information in the given passage.Passage: "
        "Paris is the capital of France.\nQuestion: What is the capital?\n",
        "Answer: Paris",
    )


def test_tasks_selection_and_determinism(archive: Path) -> None:
    only = less_query_records(archive, ["tydiqa", "bbh"])
    assert [r["task"] for r in only] == ["tydiqa"] * 2 + ["bbh"] * 6  # in the order asked
    assert less_query_records(archive, QUERY_TASKS) == less_query_records(archive, QUERY_TASKS)
    assert less_query_records(archive, ["mmlu", "mmlu"]) == less_query_records(archive, ["mmlu"])


def test_unknown_task(archive: Path) -> None:
    with pytest.raises(ValueError, match=r"'gsm8k'.*valid: mmlu, bbh, tydiqa"):
        less_query_records(archive, ["mmlu", "gsm8k"])


@pytest.mark.parametrize(
    ("task", "member"),
    [
        ("mmlu", "data/eval/mmlu/dev/anatomy_dev.csv"),
        ("bbh", "data/eval/bbh/bbh-three-shot.json"),
        ("tydiqa", "data/eval/tydiqa/tydiqa-one-shot.json"),
    ],
)
def test_missing_member(tmp_path: Path, task: str, member: str) -> None:
    path = _make_archive(tmp_path / "less-data.zip", skip=member)
    with pytest.raises(DataError) as info:
        less_query_records(path, [task])
    message = str(info.value)
    assert "\n" not in message
    assert os.fspath(path) in message
    assert member.removeprefix("data/") in message
    # the other tasks are still readable
    others = [t for t in QUERY_TASKS if t != task]
    assert {r["task"] for r in less_query_records(path, others)} == set(others)


def test_malformed_members(tmp_path: Path) -> None:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/eval/mmlu/test/anatomy_test.csv", "q,a,b,c,d,A\n")
        zf.writestr("data/eval/mmlu/dev/anatomy_dev.csv", "q,a,b,c,d,A\n" * 2)
        zf.writestr("data/eval/bbh/bbh-three-shot.json", '{"t": "d\\n\\nQ: x\\n\\nQ: y\\n\\nQ: z"}')
        zf.writestr("data/eval/tydiqa/tydiqa-one-shot.json", '{"klingon": []}')
    for task, text in [
        ("mmlu", "2 questions, expected at least 5"),
        ("bbh", "exactly one '\\\\nA:'"),
        ("tydiqa", "'klingon' has no templates"),
    ]:
        with pytest.raises(DataError, match=text):
            less_query_records(path, [task])
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        less_query_records(tmp_path / "junk.zip", ["bbh"])


def test_fetch_writes_atomically(tmp_path: Path, archive: Path) -> None:
    output = tmp_path / "queries" / "less.jsonl"
    report = fetch_less_queries(output, QUERY_TASKS, archive=archive)
    assert report == {
        "output": os.fspath(output),
        "tasks": {"mmlu": 10, "bbh": 6, "tydiqa": 2},
        "archive": os.fspath(archive),
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
    }
    assert os.listdir(output.parent) == ["less.jsonl"]  # no temporary file left
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == less_query_records(archive, QUERY_TASKS)
    assert "pääkaupunki" in output.read_text(encoding="utf-8")  # UTF-8, not escaped
    # the pool reader accepts the file
    assert len(load_jsonl_examples(output)) == 18

    # a failure writes nothing and leaves the previous file as it was
    before = output.read_bytes()
    broken = _make_archive(tmp_path / "broken.zip", skip="data/eval/bbh/bbh-three-shot.json")
    with pytest.raises(DataError):
        fetch_less_queries(output, ["mmlu", "bbh"], archive=broken)
    assert output.read_bytes() == before
    assert os.listdir(output.parent) == ["less.jsonl"]
    fresh = tmp_path / "fresh" / "q.jsonl"
    with pytest.raises(DataError, match="does not exist"):
        fetch_less_queries(fresh, ["mmlu"], archive=tmp_path / "absent.zip")
    with pytest.raises(ValueError, match="valid"):
        fetch_less_queries(fresh, ["nope"], archive=archive)
    assert not fresh.parent.exists()


def test_offline_without_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf_cache"  # empty: a copy in the user's Hub cache must not be found
    with pytest.raises(DataError) as pool_error:
        fetch_less_pool(tmp_path / "pool", ["dolly"], "{dataset}.jsonl", cache_dir=cache)
    output = tmp_path / "out" / "queries.jsonl"
    with pytest.raises(type(pool_error.value)) as info:
        fetch_less_queries(output, ["bbh"], cache_dir=cache, archive_setting="queries.archive")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot reach the Hugging Face Hub to download less-data.zip")
    assert "HF_HUB_OFFLINE is set" in message
    assert message.endswith(
        f"download less-data.zip from {URL} by hand and set queries.archive to its path"
    )
    assert "pool" not in message
    assert not output.parent.exists()


def test_download_goes_through_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: Path
) -> None:
    import huggingface_hub

    calls = []

    def download(**kwargs: object) -> str:
        calls.append(kwargs)
        return os.fspath(archive)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    report = fetch_less_queries(tmp_path / "q.jsonl", ["tydiqa"], cache_dir=tmp_path / "c")
    assert calls[0]["repo_id"] == "princeton-nlp/less_data"
    assert calls[0]["filename"] == "less-data.zip"
    assert calls[0]["repo_type"] == "dataset"
    assert report["archive"] == os.fspath(archive)
    assert report["tasks"] == {"tydiqa": 2}


def test_rendered_like_less_tulu_prompts(archive: Path) -> None:
    """The chat template renders each query as LESS's tulu text (prompt + completion, no
    newline after it: ``QUERY_TEMPLATE``)."""
    from selectmoe.data.encoding import render_chat
    from selectmoe.data.queries import QUERY_TEMPLATE

    by_id = {r["id"]: r for r in less_query_records(archive, QUERY_TASKS)}
    less = {
        "mmlu/anatomy/4": "<|user|>\nThe following are multiple choice questions (with answers) "
        "about  anatomy.\n\nanat q4, with a comma\nA. opt a4\nB. opt b4\nC. opt c4\nD. opt d4"
        "\nAnswer:\n<|assistant|>\nThe answer is: A",
        "bbh/word_sorting/2": "<|user|>\nSort words.\n\nAlphabetically.\n\nQ: Sort: b a\nA: a b"
        "\n\nQ: Sort: d c\nA: c d\n\nQ: Sort: f e\n<|assistant|>\nA: e f",
        "tydiqa/english/0": "<|user|>\nAnswer the following question based on the information "
        "in the given passage.Passage: Paris is the capital of France.\nQuestion: What is the "
        "capital?\n<|assistant|>\nAnswer: Paris",
    }
    for key, text in less.items():
        assert render_chat(by_id[key]["messages"], "", QUERY_TEMPLATE) == text
