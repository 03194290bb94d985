"""A second labelled pool for measuring selection methods: the demo's world, other noise kinds.

The demo plants wrong answers, shuffled words, truncated answers, junk and near duplicates. A
method tuned until it finds *those* may have learned the demo, not quality; so every change to a
default is measured here too, on fresh conversations of the same world (the demo's tokenizer and
base model know its words) with noise of other kinds:

- ``off_topic``: the last answer is a fluent answer to another conversation's question;
- ``repetition``: the last answer is its first words repeated, as a looping generator writes;
- ``echo``: the last answer repeats the question;
- ``swapped_roles``: the user and assistant turns trade their texts;
- ``refusal``: the last answer declines to answer, in boilerplate.

It lives with the tests' data, not in the demo, so that the demo's noise stays what it is.

Usage: ``python -m tests.second_pool results/demo results/second_pool`` writes
``pool/{dataset}/{dataset}_data.jsonl`` and ``noise_labels.jsonl`` (:mod:`selectmoe.data.labels`).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from selectmoe.demo.conversations import _GENERATORS, _Conversation
from selectmoe.demo.world import DATASETS, _build_world, _stream

NOISE_KINDS: tuple[str, ...] = ("off_topic", "repetition", "echo", "swapped_roles", "refusal")
_REFUSALS = (
    "I am sorry, but I cannot help with that request.",
    "As an assistant I am not able to answer this.",
    "That is not something I can talk about.",
    "Please ask someone else; I will not answer.",
)


def _replace_last_answer(messages: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [*messages[:last], {"role": "assistant", "content": answer}]


def _plant(
    kind: str, conversation: _Conversation, *, other: _Conversation, rng: random.Random
) -> list[dict[str, str]]:
    messages = conversation.messages()
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    if kind == "off_topic":
        return _replace_last_answer(messages, other.messages()[-1]["content"])
    if kind == "repetition":
        words = messages[-1]["content"].split()
        loop = " ".join(words[: max(2, min(5, len(words) // 2))])
        return _replace_last_answer(messages, " ".join([loop] * rng.randint(4, 8)))
    if kind == "echo":
        return _replace_last_answer(messages, messages[last_user]["content"])
    if kind == "swapped_roles":
        # every exchange keeps its place; the answer's text asks and the question's answers
        swapped = [dict(m) for m in messages]
        for index, message in enumerate(messages):
            if message["role"] == "user" and index + 1 < len(messages):
                swapped[index]["content"] = messages[index + 1]["content"]
                swapped[index + 1]["content"] = message["content"]
        return swapped
    if kind == "refusal":
        return _replace_last_answer(messages, rng.choice(_REFUSALS))
    raise ValueError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(NOISE_KINDS)}")


def build_second_pool(
    out_dir: str | Path,
    *,
    world_seed: int = 0,
    seed: int = 1,
    examples_per_dataset: int = 500,
    noise_fraction: float = 0.3,
) -> dict[str, Any]:
    """Write the second pool and its labels; return ``{"counts", "planted"}``.

    ``world_seed`` must be the demo's seed (its world); ``seed`` draws the conversations and the
    noise, on generators of their own (``second_pool/...``), so none repeats a demo example by
    construction of the stream (the same question can still occur by chance).
    """
    out = Path(out_dir)
    world = _build_world(world_seed)
    labels: list[dict[str, Any]] = []
    planted: dict[str, dict[str, int]] = {}
    for dataset in DATASETS:
        rng = _stream(seed, f"second_pool/{dataset}")
        conversations = [_GENERATORS[dataset](world, rng) for _ in range(examples_per_dataset)]
        n_planted = round(noise_fraction * examples_per_dataset)
        positions = rng.sample(range(examples_per_dataset), n_planted)
        kinds = [NOISE_KINDS[i % len(NOISE_KINDS)] for i in range(n_planted)]
        rng.shuffle(kinds)
        kind_at = dict(zip(positions, kinds, strict=True))
        records = []
        for position, conversation in enumerate(conversations):
            kind = kind_at.get(position, "clean")
            if kind == "clean":
                messages = conversation.messages()
            else:
                other = conversations[
                    (position + rng.randint(1, examples_per_dataset - 1)) % len(conversations)
                ]
                messages = _plant(kind, conversation, other=other, rng=rng)
            sample_id = f"{dataset}_{position}"
            records.append({"dataset": dataset, "id": sample_id, "messages": messages})
            labels.append(
                {"dataset": dataset, "id": sample_id, "planted": kind != "clean", "kind": kind}
            )
        path = out / "pool" / dataset / f"{dataset}_data.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        planted[dataset] = dict(sorted(Counter(kind_at.values()).items()))
    (out / "noise_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return {"counts": {d: examples_per_dataset for d in DATASETS}, "planted": planted}


if __name__ == "__main__":
    demo_dir, target = sys.argv[1], sys.argv[2]
    manifest = json.loads((Path(demo_dir) / "demo_manifest.json").read_text())
    print(json.dumps(build_second_pool(target, world_seed=manifest["seed"]), indent=1))
