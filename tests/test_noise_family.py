"""The family of planted noise (``tests/noise_family.py``): its kinds, what each does at each
severity, its two worlds, and the pools and labels it writes."""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from selectmoe.data.labels import load_labels
from tests import noise_family as nf

Message = dict[str, str]
N_CASES = 12  # conversations per world and dataset for the per-kind checks
N_OTHERS = 8  # candidates of other_question_answer
N_POOL = 40  # examples per dataset of the pools built here

EXPECTED_FAMILIES = {
    "content": ("wrong_fact", "wrong_arithmetic", "other_question_answer"),
    "form": (
        "truncated_word",
        "truncated_mid_word",
        "repetition_loop",
        "scrambled_order",
        "gibberish",
        "markup_debris",
        "duplicated_text",
    ),
    "dialogue": ("echo", "refusal", "swapped_roles", "language_switch", "off_topic"),
    "length": ("near_empty", "filler_padding"),
}
PAIRS = [(kind, severity) for kind in nf.KINDS for severity in nf.SEVERITIES]


@dataclass(frozen=True)
class Case:
    world: str
    dataset: str
    clean: list[Message]
    wrong: list[Message]
    others: list[list[Message]]
    words: tuple[str, ...]


@functools.cache
def cases() -> tuple[Case, ...]:
    """``N_CASES`` clean conversations of every world and dataset."""
    found = []
    for world in nf.WORLDS:
        for dataset in nf.DATASETS:
            generate, words = nf._generator(world, 0, dataset)
            rng = random.Random(f"test_noise_family/{world}/{dataset}")
            conversations = [generate(rng) for _ in range(N_CASES + N_OTHERS)]
            others = [c.messages() for c in conversations[N_CASES:]]
            found += [
                Case(world, dataset, c.messages(), c.messages(wrong=True), others, words)
                for c in conversations[:N_CASES]
            ]
    return tuple(found)


@functools.cache
def planted(kind: str, severity: str) -> tuple[tuple[Case, list[Message]], ...]:
    """Every case with ``kind`` planted at ``severity`` (the same cases for each pair)."""
    rng = random.Random(f"test_noise_family/{kind}/{severity}")
    return tuple(
        (
            case,
            nf.plant(
                kind,
                severity,
                case.clean,
                other_messages=case.others,
                wrong_messages=case.wrong,
                rng=rng,
                world_words=case.words,
            ),
        )
        for case in cases()
    )


def both(kind: str) -> list[tuple[Case, str, str]]:
    """``(case, mild answer, severe answer)`` for every case."""
    return [
        (case, mild[-1]["content"], severe[-1]["content"])
        for (case, mild), (_, severe) in zip(
            planted(kind, "mild"), planted(kind, "severe"), strict=True
        )
    ]


def answer_of(messages: list[Message]) -> str:
    return messages[-1]["content"]


def question_of(messages: list[Message]) -> str:
    return [m for m in messages if m["role"] == "user"][-1]["content"]


def word_set(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)}


def jaccard(a: str, b: str) -> float:
    x, y = word_set(a), word_set(b)
    return len(x & y) / max(1, len(x | y))


# ----------------------------------------------------------------------------------------------
# kinds


def test_kinds_families_severities_and_worlds() -> None:
    assert nf.FAMILIES == EXPECTED_FAMILIES
    assert list(nf.KINDS) == [kind for kinds in EXPECTED_FAMILIES.values() for kind in kinds]
    assert len(nf.KINDS) == 17
    assert all(nf.KINDS[kind] == family for family, ks in nf.FAMILIES.items() for kind in ks)
    assert nf.SEVERITIES == ("mild", "severe")
    assert nf.WORLDS == ("demo", "atlas")
    assert nf.DATASETS == ("cot", "dolly", "flan_v2", "oasst1")


def test_cases_cover_both_worlds_and_several_exchanges() -> None:
    assert {(case.world, case.dataset) for case in cases()} == {
        (world, dataset) for world in nf.WORLDS for dataset in nf.DATASETS
    }
    turns = Counter(sum(m["role"] == "user" for m in case.clean) for case in cases())
    assert turns[1] and sum(n for t, n in turns.items() if t > 1) >= 5


@pytest.mark.parametrize(("kind", "severity"), PAIRS)
def test_every_kind_changes_the_conversation_and_keeps_its_form(kind: str, severity: str) -> None:
    for case, noisy in planted(kind, severity):
        assert noisy != case.clean
        assert all(m["content"].strip() for m in noisy)
        assert [m["role"] for m in noisy] == [m["role"] for m in case.clean]
        assert noisy[-1]["role"] == "assistant"
        if kind != "swapped_roles":  # only the last answer is hit
            assert noisy[:-1] == case.clean[:-1]


@pytest.mark.parametrize("kind", ["truncated_word", "truncated_mid_word"])
def test_truncation_is_a_strict_prefix_cut_where_the_kind_says(kind: str) -> None:
    kept: dict[str, list[float]] = {"mild": [], "severe": []}
    for case, mild, severe in both(kind):
        clean = answer_of(case.clean)
        for severity, text in (("mild", mild), ("severe", severe)):
            assert clean.startswith(text) and 0 < len(text) < len(clean)
            kept[severity].append(len(text) / len(clean))
            if kind == "truncated_word" and re.search(r"\S\s", clean):
                assert clean[len(text)].isspace() and not text[-1].isspace()  # a word boundary
            else:  # inside a word (a one-word answer has no boundary)
                assert text[-1].isalnum() and clean[len(text)].isalnum()
    mean = {severity: sum(v) / len(v) for severity, v in kept.items()}
    assert mean["mild"] > 0.5 and mean["severe"] < 0.5 and mean["mild"] - mean["severe"] > 0.25


def loops(text: str) -> int:
    """How often the first n words (n up to 5) repeat back to back at the start, at most."""
    words, best = text.split(), 0
    for n in range(1, 6):
        head, count = words[:n], 0
        while len(head) == n and words[count * n : (count + 1) * n] == head:
            count += 1
        best = max(best, count)
    return best


def test_repetition_loop_severe_loops_more_than_mild() -> None:
    for case, mild, severe in both("repetition_loop"):
        clean = answer_of(case.clean)
        assert mild.endswith(clean.strip())  # a stutter: the answer goes on
        assert loops(mild) >= 2 and loops(severe) >= 6 and loops(severe) > loops(mild)
        assert len(set(severe.split())) <= 5  # nothing but the loop


def test_scrambled_order_keeps_the_words_in_another_order() -> None:
    for case, mild, severe in both("scrambled_order"):
        clean = answer_of(case.clean)
        for text in (mild, severe):
            if len(clean.split()) > 1:
                assert sorted(text.split()) == sorted(clean.split())
            else:  # one word: its letters
                assert sorted(text) == sorted(clean) and text != clean
        lines = [line for line in clean.split("\n") if line.strip()]
        if len(set(lines)) >= 2:  # mild moves whole lines
            assert sorted(mild.split("\n")) == sorted(lines)


def test_gibberish_replaces_a_share_of_the_words_or_all() -> None:
    for case, mild, severe in both("gibberish"):
        clean = answer_of(case.clean).split()
        for text in (mild, severe):
            assert len(text.split()) == len(clean)
        changed = sum(a != b for a, b in zip(mild.split(), clean, strict=True))
        if len(clean) > 1:
            assert changed == max(1, round(0.3 * len(clean)))
        else:  # one word: 30 % of its letters
            assert len(mild) == len(clean[0]) and mild != clean[0]
        assert all(a != b for a, b in zip(severe.split(), clean, strict=True))


def test_markup_debris_is_only_inserted_and_severe_has_more() -> None:
    pattern = re.compile("|".join(re.escape(d) for d in sorted(nf.MARKUP_DEBRIS, key=len)[::-1]))
    for case, mild, severe in both("markup_debris"):
        clean = answer_of(case.clean)
        n_words = len(clean.split())
        for text in (mild, severe):
            assert pattern.sub("", text) == clean.strip()  # the answer, with debris glued on
        assert 1 <= len(pattern.findall(mild)) <= 2
        assert len(pattern.findall(severe)) >= max(min(3, n_words + 1), n_words // 4)
    texts = "".join(severe for _, _, severe in both("markup_debris"))
    assert "\u00a0" in texts or "&nbsp;" in texts


def test_duplicated_text_repeats_a_sentence_or_the_whole_answer() -> None:
    for case, mild, severe in both("duplicated_text"):
        clean = answer_of(case.clean)
        segments, _ = nf._segments(clean)
        assert any(mild.count(s) > clean.count(s) for s in segments)
        assert len(clean) < len(mild) <= 2 * len(clean) + 1
        assert severe.count(clean.strip()) >= 3


def test_echo_repeats_the_question() -> None:
    for case, mild, severe in both("echo"):
        question = question_of(case.clean)
        assert severe == question
        assert question in mild and mild.startswith(nf.ECHO_PREFIXES)


def test_refusal_declines_or_hedges_half_an_answer() -> None:
    for case, mild, severe in both("refusal"):
        clean = answer_of(case.clean).split()
        assert severe in nf.REFUSALS
        hedge = next(h for h in nf.HEDGES if mild.startswith(h))
        rest = mild[len(hedge) :].split()
        assert rest == clean[: len(rest)] and len(rest) == (len(clean) + 1) // 2


def exchanges(messages: list[Message]) -> list[tuple[str, str]]:
    return [
        (messages[i]["content"], messages[i + 1]["content"])
        for i in range(len(messages) - 1)
        if messages[i]["role"] == "user" and messages[i + 1]["role"] == "assistant"
    ]


def test_swapped_roles_swaps_the_last_exchange_or_every_one() -> None:
    differ = 0
    for (case, mild), (_, severe) in zip(
        planted("swapped_roles", "mild"), planted("swapped_roles", "severe"), strict=True
    ):
        clean = exchanges(case.clean)
        assert exchanges(severe) == [(a, q) for q, a in clean]
        assert exchanges(mild) == [*clean[:-1], clean[-1][::-1]]
        differ += mild != severe
    assert differ >= 5  # the multi-turn chats


def test_language_switch_keeps_the_layout_and_shares_fewer_words() -> None:
    for case, mild, severe in both("language_switch"):
        clean = answer_of(case.clean)
        words = re.findall(r"[A-Za-z]+", clean)
        if not words:  # numbers only: those below 1000 written out, then translated
            assert not re.search(r"(?<!\d)\d{1,3}(?!\d)", severe) and re.search(r"[a-z]", severe)
            continue
        assert re.sub(r"[A-Za-z]+", "w", severe) == re.sub(r"[A-Za-z]+", "w", clean)
        assert re.sub(r"[A-Za-z]+", "w", mild) == re.sub(r"[A-Za-z]+", "w", clean)
        mild_words, severe_words = re.findall(r"[A-Za-z]+", mild), re.findall(r"[A-Za-z]+", severe)
        changed = sum(a != b for a, b in zip(mild_words, words, strict=True))
        assert changed == max(1, round(len(words) / 2))
        assert all(a != b for a, b in zip(severe_words, words, strict=True))
        assert jaccard(severe, clean) <= jaccard(mild, clean) < 1


def test_language_switch_is_one_fixed_word_map() -> None:
    assert nf._foreign_word("river") == nf._foreign_word("river") != "river"
    assert nf._foreign_word("River") == nf._foreign_word("river").capitalize()


def test_off_topic_is_chit_chat_that_does_not_answer() -> None:
    for case, mild, severe in both("off_topic"):
        clean = answer_of(case.clean)
        assert severe in nf.OFF_TOPIC
        # a keyword of the question that the answer lacks
        words = [*re.findall(r"[A-Za-z]+", question_of(case.clean)), "that"]
        keyword = next(w for w in words for t in nf.OFF_TOPIC_KEYWORD if mild == t.format(kw=w))
        assert keyword.lower() not in word_set(clean)
        if len(clean) >= 8:
            assert clean not in mild and clean not in severe


def test_near_empty_is_at_most_three_characters() -> None:
    for _, mild, severe in both("near_empty"):
        assert 0 < len(mild.replace(" ", "")) <= 3 and mild in nf.NEAR_EMPTY_MILD
        assert len(severe) == 1 and not severe.isalnum()


def test_filler_padding_keeps_the_answer_and_severe_pads_more() -> None:
    for case, mild, severe in both("filler_padding"):
        clean = answer_of(case.clean)
        assert clean in mild and clean in severe
        assert len(clean) < len(mild) < len(severe)
        assert sum(mild.count(f) for f in nf.FILLERS) == 1
        assert sum(severe.count(f) for f in nf.FILLERS) >= 4


def numbers(text: str) -> list[str]:
    return re.findall(r"\d+", text)


def test_wrong_arithmetic_changes_numbers_only() -> None:
    with_numbers = 0
    for case, mild, severe in both("wrong_arithmetic"):
        clean = answer_of(case.clean)
        if not numbers(clean):  # falls back to wrong_fact
            assert mild == answer_of(case.wrong)
            continue
        with_numbers += 1
        for text in (mild, severe):
            assert re.sub(r"\d+", "#", text) == re.sub(r"\d+", "#", clean)
            assert numbers(text)[-1] != numbers(clean)[-1]  # the final result is wrong
        changed = [
            sum(a != b for a, b in zip(numbers(t), numbers(clean), strict=True))
            for t in (mild, severe)
        ]
        assert changed[1] >= changed[0] >= 1
        if case.dataset == "cot":  # "... = R." then "The answer is R."
            assert numbers(mild)[-1] == numbers(mild)[-2]  # miscomputed, consistently
            assert numbers(severe)[-1] != numbers(severe)[-2]  # the answer contradicts it too
    assert with_numbers >= 30


def test_wrong_fact_is_the_wrong_variant_then_a_second_error() -> None:
    for case, mild, severe in both("wrong_fact"):
        clean, wrong = answer_of(case.clean), answer_of(case.wrong)
        assert mild == wrong != clean
        assert severe not in (clean, wrong)


def test_wrong_fact_derives_a_wrong_answer_without_a_variant() -> None:
    messages = [
        {"role": "user", "content": "How many?"},
        {"role": "assistant", "content": "It is 7."},
    ]
    noisy = nf.plant("wrong_fact", "mild", messages, rng=random.Random(0))
    assert noisy[-1]["content"] != "It is 7." and numbers(noisy[-1]["content"])


def test_other_question_answer_is_another_answer_of_the_dataset() -> None:
    for case, mild, severe in both("other_question_answer"):
        clean = answer_of(case.clean)
        answers = [answer_of(other) for other in case.others]
        assert mild in answers and severe in answers and clean not in (mild, severe)
        assert jaccard(mild, clean) >= jaccard(severe, clean)


def test_plant_rejects_unknown_kinds_and_severities() -> None:
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    with pytest.raises(ValueError, match="unknown noise kind"):
        nf.plant("shouting", "mild", messages, rng=random.Random(0))
    with pytest.raises(ValueError, match="unknown severity"):
        nf.plant("echo", "medium", messages, rng=random.Random(0))
    with pytest.raises(ValueError, match="end with an answer"):
        nf.plant("echo", "mild", messages[:1], rng=random.Random(0))


# ----------------------------------------------------------------------------------------------
# pools


def build(out: Path, **kwargs: Any) -> dict[str, Any]:
    return nf.build_noise_family(out, examples_per_dataset=N_POOL, **kwargs)


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict, Path]]:
    """Per world: the noisy pool, its summary, and the same pool without noise."""
    built = {}
    for world in nf.WORLDS:
        noisy = tmp_path_factory.mktemp(f"{world}_noisy")
        clean = tmp_path_factory.mktemp(f"{world}_clean")
        summary = build(noisy, world=world)
        build(clean, world=world, noise_fraction=0.0)
        built[world] = (noisy, summary, clean)
    return built


def read_pool(root: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for dataset in nf.DATASETS
        for line in (root / "pool" / dataset / f"{dataset}_data.jsonl").read_text().splitlines()
    ]


def read_labels(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "noise_labels.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("world", nf.WORLDS)
def test_pool_records_and_labels_match_one_to_one(pools: dict, world: str) -> None:
    root, summary, clean_root = pools[world]
    records, labels, clean = read_pool(root), read_labels(root), read_pool(clean_root)
    assert [(r["dataset"], r["id"]) for r in records] == [(x["dataset"], x["id"]) for x in labels]
    assert len({(x["dataset"], x["id"]) for x in labels}) == len(labels) == 4 * N_POOL
    for record, label, original in zip(records, labels, clean, strict=True):
        assert set(record) == {"dataset", "id", "messages"} and record["id"] == original["id"]
        assert set(label) == {"dataset", "id", "planted", "kind", "family", "severity"}
        messages = record["messages"]
        assert messages[-1]["role"] == "assistant"
        assert all(m["role"] in ("system", "user", "assistant") for m in messages)
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
        if label["planted"]:
            assert label["family"] == nf.KINDS[label["kind"]]
            assert label["severity"] in nf.SEVERITIES
            assert messages != original["messages"]
        else:
            assert (label["kind"], label["family"], label["severity"]) == ("clean",) * 2 + ("none",)
            assert messages == original["messages"]
    per_dataset = Counter(x["dataset"] for x in labels if x["planted"])
    assert per_dataset == {dataset: round(0.3 * N_POOL) for dataset in nf.DATASETS}
    assert summary["counts"] == {dataset: N_POOL for dataset in nf.DATASETS}
    for dataset in nf.DATASETS:
        kinds = Counter(x["kind"] for x in labels if x["planted"] and x["dataset"] == dataset)
        assert summary["planted"][dataset] == dict(kinds)
    # spread evenly: every (kind, severity) pair occurs, none more than once more than another
    pairs = Counter((x["kind"], x["severity"]) for x in labels if x["planted"])
    assert set(pairs) == set(PAIRS)
    assert max(pairs.values()) - min(pairs.values()) <= 1


@pytest.mark.parametrize("world", nf.WORLDS)
def test_build_is_byte_identical_for_a_seed_and_differs_for_another(
    pools: dict, world: str, tmp_path: Path
) -> None:
    root = pools[world][0]
    files = sorted(p.relative_to(root) for p in root.rglob("*.jsonl"))
    assert len(files) == 5
    build(tmp_path / "again", world=world)
    assert all((root / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    build(tmp_path / "other", world=world, seed=2)
    assert all((root / f).read_bytes() != (tmp_path / "other" / f).read_bytes() for f in files)
    build(tmp_path / "world", world=world, world_seed=5)
    assert (root / files[0]).read_bytes() != (tmp_path / "world" / files[0]).read_bytes()


def test_the_worlds_share_little_vocabulary(pools: dict) -> None:
    vocabulary = {
        world: set().union(*(word_set(answer_of(r["messages"])) for r in read_pool(clean)))
        for world, (_, _, clean) in pools.items()
    }
    demo, atlas = vocabulary["demo"], vocabulary["atlas"]
    assert len(atlas) > 150
    assert len(demo & atlas) / len(demo | atlas) < 0.3


def test_load_labels_reads_the_labels(pools: dict) -> None:
    root = pools["atlas"][0]
    labels = load_labels(root / "noise_labels.jsonl")
    assert len(labels) == 4 * N_POOL
    expected = {(x["dataset"], x["id"]): (x["planted"], x["kind"]) for x in read_labels(root)}
    assert labels == expected


def test_kinds_can_be_chosen(tmp_path: Path) -> None:
    summary = build(tmp_path, world="atlas", kinds=["echo", "near_empty"])
    kinds = {(x["kind"], x["severity"]) for x in read_labels(tmp_path) if x["planted"]}
    assert kinds == {(k, s) for k in ("echo", "near_empty") for s in nf.SEVERITIES}
    assert all(set(counts) == {"echo", "near_empty"} for counts in summary["planted"].values())


def test_bad_build_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown world"):
        build(tmp_path, world="mars")
    with pytest.raises(ValueError, match="kinds"):
        build(tmp_path, kinds=["shouting"])
    with pytest.raises(ValueError, match="at least 2"):
        nf.build_noise_family(tmp_path, examples_per_dataset=1)
    with pytest.raises(ValueError, match="noise_fraction"):
        build(tmp_path, noise_fraction=1.5)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nf.main(
        [
            str(tmp_path),
            "--world",
            "atlas",
            "--world-seed",
            "3",
            "--seed",
            "2",
            "--examples-per-dataset",
            "10",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"] == {dataset: 10 for dataset in nf.DATASETS}
    assert (tmp_path / "pool" / "oasst1" / "oasst1_data.jsonl").is_file()
    assert len(read_labels(tmp_path)) == 40
