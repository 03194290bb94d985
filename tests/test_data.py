"""Pool loading and validation, the chat-template encoding and its label masks, subsets."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from selectmoe.data.encoding import IGNORE_INDEX, collate_encoded, encode_examples, render_chat
from selectmoe.data.pool import (
    Example,
    discover_pool_files,
    load_jsonl_examples,
    load_pool,
    subset_examples,
    validate_data_files,
)
from selectmoe.errors import DataError

I = IGNORE_INDEX  # noqa: E741


def _record(i: int, dataset: str = "d") -> dict:
    return {
        "dataset": dataset,
        "id": f"{dataset}_{i}",
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ],
    }


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# loader errors: file, line and problem


def _bad(**changes) -> str:
    record = _record(99)
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


_DROP = object()

BAD_LINES = [
    pytest.param('{"dataset": "d", "id": "d_9", "messages": [', r"invalid JSON", id="invalid-json"),
    pytest.param('["not", "an", "object"]', r"expected a JSON object, got list", id="not-object"),
    pytest.param(_bad(messages=_DROP), r"missing field 'messages'", id="missing-messages"),
    pytest.param(_bad(messages=[]), r"field 'messages' is empty or not a list", id="empty-msgs"),
    pytest.param(
        _bad(messages=[{"role": "bot", "content": "x"}]),
        r"messages\[0\]\.role is 'bot', not one of system, user, assistant",
        id="unknown-role",
    ),
    pytest.param(
        _bad(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]),
        r"messages\[1\]\.content is int, not a string",
        id="non-string-content",
    ),
    pytest.param(
        _bad(messages=[{"role": "user"}]),
        r"messages\[0\]\.content is NoneType, not a string",
        id="missing-content",
    ),
    pytest.param(_bad(id=_DROP), r"missing or empty field 'id'", id="missing-id"),
    pytest.param(_bad(id=""), r"missing or empty field 'id'", id="empty-id"),
    pytest.param(
        json.dumps(_record(0)),
        r"duplicate id 'd_0' in dataset 'd' \(first on line 1\)",
        id="duplicate-id",
    ),
]


@pytest.mark.parametrize(("bad_line", "problem"), BAD_LINES)
def test_loader_error_names_file_line_and_problem(
    tmp_path: Path, bad_line: str, problem: str
) -> None:
    # line 2 is blank: blank lines are skipped but still counted, so the bad line is line 3
    path = _write_lines(tmp_path / "pool.jsonl", [json.dumps(_record(0)), "", bad_line])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: ") + problem):
        load_jsonl_examples(path)


def test_non_utf8_bytes_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    good = json.dumps(_record(0)).encode()
    bad = json.dumps(_record(1)).encode().replace(b"question", b"qu\xffstion")
    path.write_bytes(good + b"\n" + bad + b"\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: ") + r"not valid UTF-8 \(byte \d+\)"):
        load_jsonl_examples(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: ") + "file is empty"):
        load_jsonl_examples(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{path}: ") + "file not found"):
        load_jsonl_examples(path)


def test_duplicate_across_files_names_both_places(tmp_path: Path) -> None:
    first = _write_lines(tmp_path / "a.jsonl", [json.dumps(_record(0)), json.dumps(_record(1))])
    second = _write_lines(tmp_path / "b.jsonl", [json.dumps(_record(2)), json.dumps(_record(1))])
    pattern = re.escape(f"{second}:2: duplicate id 'd_1' in dataset 'd' (also {first}:2)")
    with pytest.raises(DataError, match=pattern):
        load_pool([first, second])
    # the same id in another dataset is not a duplicate
    other = _write_lines(tmp_path / "c.jsonl", [json.dumps(_record(1, dataset="e"))])
    assert [(e.dataset, e.id) for e in load_pool([first, other])] == [
        ("d", "d_0"),
        ("d", "d_1"),
        ("e", "e_1"),
    ]


def test_load_pool_keeps_file_order_and_sources(tmp_path: Path, tiny_write_pool) -> None:
    files = tiny_write_pool(tmp_path, 4)
    examples = load_pool([files["beta"], files["alpha"]])
    assert [e.id for e in examples] == [f"beta_{i}" for i in range(4)] + [
        f"alpha_{i}" for i in range(4)
    ]
    assert examples[0].source == str(files["beta"]) and examples[0].line == 1
    assert examples[5].source == str(files["alpha"]) and examples[5].line == 2
    assert examples[0].to_record() == json.loads(files["beta"].read_text().splitlines()[0])


def test_integer_id_and_default_dataset(tmp_path: Path) -> None:
    record = {"id": 7, "messages": [{"role": "user", "content": "x"}]}
    path = _write_lines(tmp_path / "p.jsonl", [json.dumps(record)])
    (example,) = load_jsonl_examples(path, default_dataset="dolly")
    assert (example.dataset, example.id) == ("dolly", "7")
    with pytest.raises(
        DataError, match=re.escape(f"{path}:1: ") + "missing or empty field 'dataset'"
    ):
        load_jsonl_examples(path)


def test_validate_data_files_counts(tmp_path: Path, tiny_write_pool) -> None:
    files = tiny_write_pool(tmp_path, 6)
    report = validate_data_files([files["alpha"], files["beta"]])
    # per dataset: i % 3 == 0 single-turn, 1 multi-turn, 2 with a system turn
    assert report["n_examples"] == 12
    assert report["per_dataset"] == {"alpha": 6, "beta": 6}
    assert report["multi_turn"] == 4
    assert report["with_system"] == 4


def test_discover_pool_files(tmp_path: Path, tiny_write_pool) -> None:
    files = tiny_write_pool(tmp_path, 2)
    assert discover_pool_files(tmp_path, ["alpha", "beta"]) == {
        "alpha": [files["alpha"]],
        "beta": [files["beta"]],
    }
    with pytest.raises(DataError, match=r"no \.jsonl files for dataset 'gamma'"):
        discover_pool_files(tmp_path, ["alpha", "gamma"])


# ----------------------------------------------------------------------------------------------
# chat template: exact label masks


SINGLE_TURN = [
    {"role": "user", "content": "what is two plus three?"},
    {"role": "assistant", "content": "five"},
]
MULTI_TURN = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello there"},
    {"role": "user", "content": "and the sea?"},
    {"role": "assistant", "content": "blue"},
]


def _expected(
    tokenizer,
    messages,
    *,
    full_sequence_prediction: bool,
    mask_special_tokens: bool,
    template: str = "less",
):
    """Token ids and labels of SPEC §4, for a byte-level tokenizer whose chat tags and eos are
    special tokens (so that newlines and tags split the text into independent pieces)."""

    def text(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    def tag(role: str) -> int:
        return tokenizer.convert_tokens_to_ids(f"<|{role}|>")

    ids: list[int] = []
    labels: list[int] = []
    labelled = {"user": full_sequence_prediction, "assistant": True, "system": False}

    def add(piece: list[int], on: bool) -> None:
        ids.extend(piece)
        labels.extend(piece if on else [I] * len(piece))

    for position, message in enumerate(messages):
        role = message["role"]
        last = position == len(messages) - 1
        add([tag(role), *text("\n")], labelled[role] and not mask_special_tokens)
        add(text(message["content"].strip()), labelled[role])
        if role == "assistant":
            add([tokenizer.eos_token_id], True)
        if not last or template == "less":  # open_instruct strips the final newline
            add(text("\n"), labelled[role])
    return ids, labels


@pytest.mark.parametrize("template", ["less", "open_instruct"])
@pytest.mark.parametrize("messages", [SINGLE_TURN, MULTI_TURN], ids=["single", "multi"])
@pytest.mark.parametrize("full_sequence_prediction", [True, False])
@pytest.mark.parametrize("mask_special_tokens", [True, False])
def test_label_mask_is_exact(
    tiny_tokenizer, messages, full_sequence_prediction: bool, mask_special_tokens: bool, template
) -> None:
    (encoded,) = encode_examples(
        [messages],
        tiny_tokenizer,
        full_sequence_prediction=full_sequence_prediction,
        mask_special_tokens=mask_special_tokens,
        template=template,
    )
    ids, labels = _expected(
        tiny_tokenizer,
        messages,
        full_sequence_prediction=full_sequence_prediction,
        mask_special_tokens=mask_special_tokens,
        template=template,
    )
    assert encoded.input_ids == ids
    assert encoded.labels == labels
    assert encoded.n_label_tokens == sum(label != I for label in labels)
    # the ids spell the chat template exactly (this tokenizer adds no <s>)
    assert tiny_tokenizer.decode(encoded.input_ids) == render_chat(messages, "</s>", template)


def test_label_mask_single_turn_written_out(tiny_tokenizer) -> None:
    """The assistant-only mask of a single turn, spelled out token class by token class."""
    tok = tiny_tokenizer
    user = tok("what is two plus three?", add_special_tokens=False)["input_ids"]
    answer = tok("five", add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    u, a = tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    eos = tok.eos_token_id
    (sft,) = encode_examples([SINGLE_TURN], tok, full_sequence_prediction=False)
    # LESS's template: the answer, its eos and the newline after it, all labelled
    assert sft.input_ids == [u, *newline, *user, *newline, a, *newline, *answer, eos, *newline]
    assert sft.labels == [I] * (len(user) + 3 * len(newline) + 2) + [*answer, eos, *newline]
    (full,) = encode_examples([SINGLE_TURN], tok, full_sequence_prediction=True)
    prompt = [I, *([I] * len(newline))]  # a tag and its newline
    assert full.labels == [*prompt, *user, *newline, *prompt, *answer, eos, *newline]
    (unmasked,) = encode_examples(
        [SINGLE_TURN], tok, full_sequence_prediction=True, mask_special_tokens=False
    )
    assert unmasked.labels == [u, *newline, *user, *newline, a, *newline, *answer, eos, *newline]
    (stripped,) = encode_examples(
        [SINGLE_TURN], tok, full_sequence_prediction=False, template="open_instruct"
    )
    assert stripped.input_ids == sft.input_ids[: -len(newline)]
    assert stripped.labels == sft.labels[: -len(newline)]


def test_render_chat_is_less_template() -> None:
    """Contents stripped, eos and a newline after each answer, the final one too (as LESS's
    ``concat_messages``); open-instruct's strips the text's end."""
    messages = [
        {"role": "system", "content": " be brief \n"},
        {"role": "user", "content": "\nhi  "},
        {"role": "assistant", "content": "  hello\n"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao "},
    ]
    less = (
        "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nhello</s>\n"
        "<|user|>\nbye\n<|assistant|>\nciao</s>\n"
    )
    assert render_chat(messages, "</s>") == less == render_chat(messages, "</s>", "less")
    assert render_chat(messages, "</s>", "open_instruct") == less[:-1]
    with pytest.raises(DataError, match="chat template 'alpaca': use one of less, open_instruct"):
        render_chat(messages, "</s>", "alpaca")


def test_encode_accepts_examples_and_keeps_order(tiny_tokenizer, tiny_build_tokenizer) -> None:
    examples = [
        Example(dataset="d", id=str(i), messages=tuple(m))
        for i, m in enumerate([MULTI_TURN, SINGLE_TURN])
    ]
    from_examples = encode_examples(examples, tiny_tokenizer, full_sequence_prediction=True)
    from_messages = encode_examples(
        [MULTI_TURN, SINGLE_TURN], tiny_tokenizer, full_sequence_prediction=True
    )
    assert [e.input_ids for e in from_examples] == [e.input_ids for e in from_messages]
    assert [e.index for e in from_examples] == [0, 1]


@pytest.mark.parametrize("max_length", [1, 4, 9, 10_000])
def test_truncation_keeps_the_first_tokens(tiny_tokenizer, max_length: int) -> None:
    (full,) = encode_examples([MULTI_TURN], tiny_tokenizer, full_sequence_prediction=True)
    (cut,) = encode_examples(
        [MULTI_TURN], tiny_tokenizer, full_sequence_prediction=True, max_sequence_length=max_length
    )
    assert len(full.input_ids) > 9
    assert cut.input_ids == full.input_ids[:max_length]
    assert cut.labels == full.labels[:max_length]
    assert len(cut.input_ids) == min(max_length, len(full.input_ids))
    assert cut.n_label_tokens == sum(label != I for label in full.labels[:max_length])


def test_tokenizer_without_eos_is_an_error(tiny_build_tokenizer) -> None:
    tokenizer = tiny_build_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(DataError, match="the tokenizer has no eos token"):
        encode_examples([SINGLE_TURN], tokenizer, full_sequence_prediction=True)


def test_collate_right_pads(tiny_tokenizer) -> None:
    encoded = encode_examples(
        [SINGLE_TURN, MULTI_TURN], tiny_tokenizer, full_sequence_prediction=True
    )
    batch = collate_encoded(encoded, pad_token_id=tiny_tokenizer.pad_token_id)
    n0, n1 = len(encoded[0].input_ids), len(encoded[1].input_ids)
    assert batch["input_ids"].shape == (2, max(n0, n1))
    assert batch["attention_mask"].sum(dim=1).tolist() == [n0, n1]
    assert batch["input_ids"][0, :n0].tolist() == encoded[0].input_ids
    assert batch["input_ids"][0, n0:].tolist() == [tiny_tokenizer.pad_token_id] * (n1 - n0)
    assert batch["labels"][0, n0:].tolist() == [I] * (n1 - n0)
    assert batch["index"].tolist() == [0, 1]


# ----------------------------------------------------------------------------------------------
# subsets


def _pool(n_alpha: int, n_beta: int) -> list[Example]:
    message = ({"role": "user", "content": "x"},)
    examples = [Example("alpha", f"a{i}", message) for i in range(n_alpha)]
    examples += [Example("beta", f"b{i}", message) for i in range(n_beta)]
    # interleave the datasets so that "pool order" is not "dataset order"
    return sorted(examples, key=lambda e: (int(e.id[1:]), e.dataset))


def test_subset_is_seeded_per_dataset_and_ordered() -> None:
    pool = _pool(20, 10)
    subset = subset_examples(pool, ratio=0.3, seed=1)
    assert Counter(e.dataset for e in subset) == {"alpha": 6, "beta": 3}
    positions = [pool.index(e) for e in subset]
    assert positions == sorted(positions)  # pool order kept
    assert subset_examples(pool, ratio=0.3, seed=1) == subset  # seeded
    assert subset_examples(pool, ratio=0.3, seed=2) != subset
    # one generator per dataset: alpha's sample does not depend on beta being there
    alpha_only = [e for e in pool if e.dataset == "alpha"]
    assert subset_examples(alpha_only, ratio=0.3, seed=1) == [
        e for e in subset if e.dataset == "alpha"
    ]


def test_subset_sizes() -> None:
    pool = _pool(20, 10)
    assert subset_examples(pool, ratio=1.0, seed=0) == pool
    tiny = subset_examples(pool, ratio=0.01, seed=0)  # at least one per dataset
    assert Counter(e.dataset for e in tiny) == {"alpha": 1, "beta": 1}
    for ratio in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match=rf"subset_ratio is {ratio}; it must be in \(0, 1\]"):
            subset_examples(pool, ratio=ratio, seed=0)


# ----------------------------------------------------------------------------------------------
# warmup, scoring and finetuning all feed the model encode_examples' output


def _rows(batches: list[dict]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    rows = []
    for batch in batches:
        for ids, labels, mask in zip(
            batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
        ):
            keep = mask.bool()
            rows.append((tuple(ids[keep].tolist()), tuple(labels[keep].tolist())))
    return sorted(rows)


def _encoded_rows(encoded) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return sorted((tuple(e.input_ids), tuple(e.labels)) for e in encoded)


def test_stages_use_the_same_encoding(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_tokenizer,
    tiny_converted_dir: Path,
    tiny_llama_dir: Path,
    tiny_write_pool,
) -> None:
    import selectmoe.stages.scoring as scoring
    import selectmoe.training.loop as training
    from selectmoe.stages.finetune import FinetuneSettings, run_finetune
    from selectmoe.stages.scoring import score_dataset
    from selectmoe.stages.warmup import WarmupSettings, run_warmup

    files = tiny_write_pool(tmp_path / "pool", 5)
    seen: list[dict] = []

    def spy(batch, *, pad_token_id):
        collated = collate_encoded(batch, pad_token_id=pad_token_id)
        seen.append(collated)
        return collated

    monkeypatch.setattr(training, "collate_encoded", spy)
    monkeypatch.setattr(scoring, "collate_encoded", spy)
    pool = load_pool([files["alpha"], files["beta"]])

    def expected(examples, full_sequence_prediction):
        return encode_examples(
            examples,
            tiny_tokenizer,
            full_sequence_prediction=full_sequence_prediction,
            mask_special_tokens=True,
            max_sequence_length=2048,
        )

    weights = tmp_path / "full_rank_weights.pt"
    run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=[files["alpha"], files["beta"]],
        output_path=weights,
        settings=WarmupSettings(
            subset_ratio=1.0,
            per_device_batch_size=4,
            effective_batch_size=4,
            device="cpu",
            log_every=100,
        ),
    )
    assert _rows(seen) == _encoded_rows(expected(pool, True))

    seen.clear()
    score_dataset(
        model_dir=tiny_converted_dir,
        weights_path=weights,
        pool_files=[files["alpha"]],
        dataset="alpha",
        output_path=tmp_path / "alpha_router_data.pt",
        batch_size=2,
        device="cpu",
        progress=False,
    )
    alpha = [e for e in pool if e.dataset == "alpha"]
    assert [ids for ids, _ in _rows(seen)] == [
        ids for ids, _ in _encoded_rows(expected(alpha, True))
    ]

    seen.clear()
    selected = tmp_path / "selected_data.jsonl"
    selected.write_text(
        "".join(json.dumps({**e.to_record(), "score": 0.5, "cluster": 0}) + "\n" for e in alpha),
        encoding="utf-8",
    )
    run_finetune(
        base_model=str(tiny_llama_dir),
        selected_data=selected,
        output_dir=tmp_path / "adapter",
        settings=FinetuneSettings(
            lora_r=2,
            lora_alpha=4,
            epochs=1,
            effective_batch_size=2,
            per_device_batch_size=2,
            bf16=False,
            device="cpu",
        ),
    )
    sft = expected(alpha, False)
    assert _rows(seen) == _encoded_rows(sft)
    # assistant-only labels: no user text is labelled in finetuning
    first_answer = sft[0].input_ids.index(tiny_tokenizer.convert_tokens_to_ids("<|assistant|>"))
    assert all(label == I for label in sft[0].labels[:first_answer])


def test_selected_keys_are_read_in_order_with_clear_errors(tmp_path: Path) -> None:
    from selectmoe.data.pool import read_selected_keys

    path = tmp_path / "selected_data.jsonl"
    path.write_text('{"dataset": "a", "id": "2"}\n\n{"dataset": "b", "id": 1}\n')
    assert read_selected_keys(path) == [("a", "2"), ("b", "1")]
    with pytest.raises(DataError, match="selected data not found: "):
        read_selected_keys(tmp_path / "missing.jsonl")
    path.write_text('{"dataset": "a"}\n')
    with pytest.raises(DataError, match=r"selected_data.jsonl:1: a selected example needs"):
        read_selected_keys(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r":1: expected a JSON object in selected data"):
        read_selected_keys(path)
