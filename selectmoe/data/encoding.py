"""The chat template and the encoding of conversations into tokens and labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selectmoe.data.pool import CHAT_TAGS, Example
from selectmoe.errors import DataError
from selectmoe.schema import section_defaults

__all__ = [
    "DEFAULT_TEMPLATE",
    "IGNORE_INDEX",
    "TEMPLATES",
    "EncodedExample",
    "collate_encoded",
    "encode_examples",
    "length_sorted_batches",
    "pad_token_id_of",
    "render_chat",
]

IGNORE_INDEX = -100
#: The chat templates (``data.template``): how the rendered text ends.
TEMPLATES: tuple[str, ...] = ("less", "open_instruct")
DEFAULT_TEMPLATE: str = section_defaults("data")["template"]


@dataclass(frozen=True)
class _Span:
    """Characters ``[start, end)`` of a rendered conversation: a role's tag (with its newline)
    or its content (an assistant's with the eos token, each with the newline that ends it)."""

    start: int
    end: int
    role: str
    kind: str  # "tag" or "content"


def _render(
    messages: Sequence[dict[str, str]], eos_token: str, template: str = DEFAULT_TEMPLATE
) -> tuple[str, list[_Span]]:
    """The conversation as LESS or open-instruct render it, and where each part sits.

    ``<|role|>\n`` + content stripped (+ eos for the assistant) + ``\n`` per message, as
    LESS's ``concat_messages``. ``template="less"`` keeps the text as it is (it ends in the last
    eos and a newline, and that newline belongs to the assistant's content); ``"open_instruct"``
    strips the whole text at its end (it ends in the last eos).
    """
    if template not in TEMPLATES:
        raise DataError(f"chat template {template!r}: use one of {', '.join(TEMPLATES)}")
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
    text = "".join(parts)
    if template == "open_instruct":
        text = text.rstrip()
    return text, [
        _Span(span.start, min(span.end, len(text)), span.role, span.kind)
        for span in spans
        if span.start < len(text)
    ]


def render_chat(
    messages: Sequence[dict[str, str]], eos_token: str, template: str = DEFAULT_TEMPLATE
) -> str:
    """The chat template as one string, exactly as it is tokenized (SPEC §4).

    Examples
    --------
    >>> chat = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]
    >>> render_chat(chat, "</s>", "less")
    '<|user|>\\nhi\\n<|assistant|>\\nyo</s>\\n'
    >>> render_chat(chat, "</s>", "open_instruct")
    '<|user|>\\nhi\\n<|assistant|>\\nyo</s>'
    """
    return _render(messages, eos_token, template)[0]


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
    template: str = DEFAULT_TEMPLATE,
) -> list[EncodedExample]:
    """Tokenize conversations with the chat template and build their labels.

    Each conversation is rendered once (:func:`render_chat`) and tokenized once, as a whole
    string, as LESS and lm-eval tokenize it; every label comes from the tokens'
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
    template : {"less", "open_instruct"}
        ``data.template`` (:func:`render_chat`): with ``less`` the newline after the last eos is
        labelled, as LESS labels it.

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
    rendered = [_render(messages, tokenizer.eos_token, template) for messages in conversations]
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
