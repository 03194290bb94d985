"""Planted noise: wrong answers, shuffled words, truncated replies, junk and near duplicates."""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selectmoe.demo.conversations import (
    _GENERATORS,
    _Conversation,
)
from selectmoe.demo.world import (
    NOISE_KINDS,
    Message,
    _stream,
    _World,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# planted noise


def _shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(set(words)) < 2:
        return text
    shuffled = list(words)
    while shuffled == words:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def _junk_text(world: _World, rng: random.Random) -> str:
    if rng.random() < 0.5:  # random characters
        alphabet = string.ascii_letters + string.digits + string.punctuation + "     "
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(20, 80))).strip()
    else:  # random tokens
        text = " ".join(rng.choice(world.junk_words) for _ in range(rng.randint(5, 20)))
    return text or "x"


def _near_duplicate(messages: list[Message], rng: random.Random) -> list[Message]:
    """A copy with one small edit of the first user message; the answers stay identical."""
    copy = [dict(m) for m in messages]
    user = next(m for m in copy if m["role"] == "user")
    original = user["content"]
    edits: list[Callable[[str], str]] = [
        lambda s: s + rng.choice((" Thanks!", " Thank you.", " Please help.")),
        lambda s: rng.choice(("Quick question: ", "Hi! ", "Hello, ")) + s,
        lambda s: s[:-1] + "??" if s.endswith("?") else s + "?",
        lambda s: s[0].lower() + s[1:] if s[0].isupper() else s[0].upper() + s[1:],
    ]
    user["content"] = rng.choice(edits)(original)
    if user["content"] == original:  # e.g. a first character that has no case
        user["content"] = original + " Thanks!"
    return copy


def _plant(
    kind: str,
    conversation: _Conversation,
    *,
    source: _Conversation,
    world: _World,
    rng: random.Random,
) -> list[Message]:
    """The low-quality version of ``conversation`` (``source`` is used for near duplicates)."""
    if kind == "wrong_answer":
        return conversation.messages(wrong=True)
    if kind == "near_duplicate":
        return _near_duplicate(source.messages(), rng)
    messages = conversation.messages()
    if kind == "shuffled":
        shuffled = [
            m if m["role"] == "system" else {**m, "content": _shuffle_words(m["content"], rng)}
            for m in messages
        ]
        if shuffled == messages:  # only one-word turns: garble the characters instead
            last = shuffled[-1]
            shuffled[-1] = {**last, "content": last["content"][::-1] + last["content"]}
        return shuffled
    if kind == "truncated":
        # the reply stops in the middle (and later turns are lost), as in a cut-off scrape
        last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        content = messages[last_assistant]["content"]
        cut = max(1, int(len(content) * rng.uniform(0.25, 0.6)))
        messages[last_assistant] = {"role": "assistant", "content": content[:cut].rstrip() or "…"}
        return messages[: last_assistant + 1]
    if kind == "junk":
        junk_user = rng.random() < 0.3
        return [
            {**m, "content": _junk_text(world, rng)}
            if m["role"] == "assistant" or (junk_user and m["role"] == "user")
            else m
            for m in messages
        ]
    raise ValueError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(NOISE_KINDS)}")


@dataclass(frozen=True)
class _PoolExample:
    dataset: str
    id: str
    messages: list[Message]
    kind: str  # "clean" or one of NOISE_KINDS

    def record(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "id": self.id, "messages": self.messages}


def _build_pool_dataset(
    dataset: str, world: _World, *, seed: int, n_examples: int, noise_fraction: float
) -> list[_PoolExample]:
    """``n_examples`` examples of one dataset, ``round(noise_fraction * n)`` of them planted."""
    rng = _stream(seed, f"pool/{dataset}")
    generate = _GENERATORS[dataset]
    conversations = [generate(world, rng) for _ in range(n_examples)]
    n_planted = round(noise_fraction * n_examples)
    planted_positions = rng.sample(range(n_examples), n_planted)
    # cycle through the kinds so that each one is (nearly) equally common, then mix them
    kinds = [NOISE_KINDS[i % len(NOISE_KINDS)] for i in range(n_planted)]
    rng.shuffle(kinds)
    kind_at = dict(zip(planted_positions, kinds, strict=True))
    clean_positions = [i for i in range(n_examples) if i not in kind_at]
    examples = []
    for position, conversation in enumerate(conversations):
        kind = kind_at.get(position, "clean")
        if kind == "clean":
            messages = conversation.messages()
        else:
            source = conversations[rng.choice(clean_positions)]
            messages = _plant(kind, conversation, source=source, world=world, rng=rng)
        examples.append(_PoolExample(dataset, f"{dataset}_{position}", messages, kind))
    return examples
