"""The embedded demo: a tiny, fully local world for running the workflow without GPU or network.

:func:`build_demo` writes, deterministically from one seed::

    out_dir/
      tokenizer/                     byte-level BPE tokenizer (transformers format)
      base_model/                    tiny OlmoeForCausalLM + tokenizer (float32 safetensors)
      target_model/                  tiny LlamaForCausalLM + tokenizer (float32 safetensors)
      pool/{dataset}/{dataset}_data.jsonl   LESS-format pool, dataset in cot, dolly, flan_v2, oasst1
      noise_labels.jsonl             which pool examples are planted noise, and of which kind
      tasks/{task}.yaml, {task}.jsonl      lm-eval multiple-choice tasks over held-out questions
      demo_manifest.json             parameters, counts, model summaries, file hashes

Everything comes from small generators over an invented world (countries with capitals,
currencies, languages and national animals; an invented lexicon; word problems; sentiment word
lists), so the data are *learnable*: the answers follow from the question and the world's facts,
and planted noise (wrong answers, shuffled, truncated, junk, near duplicates) teaches wrong
things. The models are tiny, so accuracies move by a few points, not tens. The noise labels are
only in the sidecar file: ids are ``{dataset}_{position}`` and planted examples sit at random
positions.

Held-out evaluation questions never occur verbatim as a user message of the pool or of the
pretraining corpus: arithmetic and sentiment questions come from their own random stream and
any collision with the pool is skipped; fact questions use phrasings that the pool never uses
(the facts themselves are in the pool, so that finetuning on clean data can help).

Both models are briefly pretrained (plain causal LM on packed documents, each starting with
``<s>``) on a clean corpus from the same generators but another random stream, rendered with the
chat template of SPEC §4, so the base model's routers and the target's heads mean something. The
target gets fewer steps so that finetuning has room to improve it.

The tokenizer is byte-level BPE (every string, "\n" and junk included, round-trips exactly) with
``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3 and the chat tags as single special tokens; like
Llama's, it puts ``<s>`` in front when ``add_special_tokens`` is true (so lm-eval's prompts start
with it, as the pretraining documents and ``selectmoe.data.encode_examples`` do).

Reproducibility: the pool, labels and task files are byte-identical for a given seed. The models
are reproducible on the same machine with the same number of torch threads (float reductions may
differ in the last bits across thread counts or CPUs).

Written for transformers 5.x (``OlmoeForCausalLM`` with fused experts) and lm-eval 0.4.x.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectmoe.data import CHAT_TAGS, render_chat
from selectmoe.hashing import file_sha256
from selectmoe.io import atomic_output_dir, dumps_json_line

__all__ = [
    "DATASETS",
    "EVAL_TASKS",
    "NOISE_KINDS",
    "SPECIAL_TOKENS",
    "build_demo",
    "build_demo_target",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("cot", "dolly", "flan_v2", "oasst1")
"""The four pool datasets, named like their LESS counterparts."""

NOISE_KINDS: tuple[str, ...] = (
    "wrong_answer",
    "shuffled",
    "truncated",
    "junk",
    "near_duplicate",
)
"""Kinds of planted low-quality examples (the sidecar's ``kind`` is one of these or ``clean``)."""

EVAL_TASKS: tuple[str, ...] = ("demo_facts", "demo_sentiment", "demo_translate")
"""Names of the local lm-eval tasks."""

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<s>", "</s>", "<pad>", "<unk>"
# Order fixes the ids: <unk>=0, <s>=1, </s>=2 as in Llama tokenizers, then <pad> and the chat tags.
SPECIAL_TOKENS: tuple[str, ...] = (
    UNK_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    CHAT_TAGS["system"],
    CHAT_TAGS["user"],
    CHAT_TAGS["assistant"],
)
"""Special tokens of the demo tokenizer, in id order (``<unk>`` is 0)."""

# Jinja version of SPEC §4's template, so that ``tokenizer.apply_chat_template`` agrees with
# ``selectmoe.data.render_chat``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] | trim }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n<|assistant|>\\n' }}{% endif %}"
)

# The evaluation prompt is the chat template up to the assistant's answer.
EVAL_DOC_TO_TEXT = CHAT_TAGS["user"] + "\n{{question}}\n" + CHAT_TAGS["assistant"] + "\n"

Message = dict[str, str]

# ----------------------------------------------------------------------------------------------
# fixed word lists (the invented names on top of them depend on the seed)

_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Mia", "she"), ("Tom", "he"), ("Ava", "she"), ("Leo", "he"), ("Nora", "she"),
    ("Sam", "he"), ("Ivy", "she"), ("Max", "he"), ("Lena", "she"), ("Omar", "he"),
    ("Zoe", "she"), ("Ben", "he"), ("Ruth", "she"), ("Ivan", "he"), ("Emma", "she"),
    ("Jack", "he"), ("Lucy", "she"), ("Noah", "he"), ("Sara", "she"), ("Paul", "he"),
)  # fmt: skip
_OBJECTS: tuple[str, ...] = (
    "apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells",
    "coins", "cards", "balloons", "candles", "buttons", "oranges", "feathers", "rocks",
)  # fmt: skip
_ANIMALS: tuple[str, ...] = (
    "otter", "heron", "lynx", "badger", "falcon", "beaver", "crane", "fox", "hare", "ibis",
    "jackal", "koala", "lemur", "marten", "newt", "owl", "panda", "quail", "raven", "stork",
)  # fmt: skip
_ANTONYMS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("early", "late"), ("open", "closed"), ("full", "empty"), ("strong", "weak"),
    ("young", "old"), ("high", "low"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"),
    ("loud", "quiet"), ("clean", "dirty"), ("thick", "thin"), ("near", "far"),
    ("cheap", "expensive"), ("heavy", "light"), ("long", "short"), ("wide", "narrow"),
    ("sharp", "dull"), ("brave", "afraid"),
)  # fmt: skip
_SORT_WORDS: tuple[str, ...] = (
    "apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "pear", "plum",
    "kiwi", "fig", "lime", "date", "olive", "onion", "carrot", "radish", "tomato", "bean",
)  # fmt: skip
_LEXICON_ENGLISH: tuple[str, ...] = (
    "water", "fire", "bread", "house", "tree", "river", "moon", "sun", "stone", "bird",
    "road", "friend", "night", "salt", "boat", "horse", "door", "snow", "book", "song",
)  # fmt: skip
_REVIEW_SUBJECTS: tuple[str, ...] = (
    "food", "staff", "room", "service", "music", "view", "price", "soup", "bed", "coffee",
)  # fmt: skip
_SENTIMENT_WORDS: dict[str, tuple[str, ...]] = {
    "positive": ("tasty", "friendly", "lovely", "excellent", "wonderful", "great", "charming"),
    "negative": ("awful", "rude", "dirty", "terrible", "bland", "noisy", "disappointing"),
    "neutral": ("ordinary", "average", "standard", "typical", "unremarkable"),
}
_SENTIMENT_LABELS: tuple[str, ...] = ("positive", "negative", "neutral", "mixed")
_TIPS: dict[str, str] = {
    "sleeping better": "Go to bed at the same time every night and keep the room dark.",
    "learning a language": "Practise a little every day and speak with native speakers.",
    "saving money": "Write down what you spend and set aside a fixed amount each month.",
    "staying focused": "Work in short blocks with a clear goal and take small breaks.",
    "cooking rice": "Rinse the rice, use two cups of water per cup and simmer with a lid.",
    "running longer": "Increase your distance slowly and rest one day after a long run.",
    "keeping plants alive": "Water them when the soil is dry and give them enough light.",
    "writing an essay": "Start with an outline, then write one clear idea per paragraph.",
}
_SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a friendly tutor who answers briefly.",
    "You are an expert on the geography of the Orrin continent.",
    "You are a patient assistant. Answer clearly and politely.",
)
_FACT_ATTRIBUTES: tuple[str, ...] = ("capital", "currency", "language", "animal")
# Pool phrasings of fact questions; the evaluation phrasings below never occur in the pool.
_FACT_NOUN = {
    "capital": "capital",
    "currency": "currency",
    "language": "official language",
    "animal": "national animal",
}
_FACT_POOL_TEMPLATES: tuple[str, ...] = (
    "What is the {noun} of {country}?",
    "Tell me the {noun} of {country}.",
    "What's the {noun} of {country}?",
    "Do you know the {noun} of {country}?",
)
_FACT_EVAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": (
        "Which city is the capital of {country}?",
        "In {country}, which city is the capital?",
        "Name the capital city of {country}.",
        "{country} has which city as its capital?",
    ),
    "currency": (
        "Which currency is used in {country}?",
        "In {country}, which currency is used?",
        "Name the currency used in {country}.",
        "{country} uses which currency?",
    ),
    "language": (
        "Which language is spoken in {country}?",
        "In {country}, which language is spoken?",
        "Name the language spoken in {country}.",
        "{country} speaks which language?",
    ),
    "animal": (
        "Which animal is the national animal of {country}?",
        "In {country}, which animal is the national animal?",
        "Name the national animal of {country}.",
        "{country} has which national animal?",
    ),
}
# Evaluation phrasings of translation questions (the pool asks "Translate the word ...", "What
# does the ... word ... mean", "How do you say ..."); the answer is the pool's chat sentence.
_TRANSLATE_EVAL_TEMPLATES: tuple[str, ...] = (
    'What is the {language} word for "{english}"?',
    'Which {language} word means "{english}"?',
    'Give the {language} translation of "{english}".',
    'Name the {language} word for "{english}".',
)
# ... and from the invented language back to English
_TRANSLATE_BACK_EVAL_TEMPLATES: tuple[str, ...] = (
    'Which English word is "{foreign}" in {language}?',
    'The {language} word "{foreign}" means which English word?',
    'Give the English meaning of the {language} word "{foreign}".',
)
_TRANSLATION_SENTENCE = 'In {language}, "{english}" is "{foreign}".'


# ----------------------------------------------------------------------------------------------
# the invented world


@dataclass(frozen=True)
class _Country:
    name: str
    capital: str
    cities: tuple[str, str]
    currency: str
    language: str
    animal: str


@dataclass(frozen=True)
class _World:
    """Everything the generators draw from; built once per seed."""

    countries: tuple[_Country, ...]
    continent: str
    lexicon_language: str
    lexicon: dict[str, str]  # English word -> word in ``lexicon_language``
    junk_words: tuple[str, ...]

    def values(self, attribute: str) -> list[str]:
        """Distinct values of one fact attribute over all countries, in a fixed order."""
        return sorted({getattr(country, attribute) for country in self.countries})


def _stream(seed: int, purpose: str) -> random.Random:
    """An independent generator per purpose, so that changing one part leaves the others as
    they were (str seeds are hashed with SHA-512, stable across runs and platforms)."""
    return random.Random(f"selectmoe-demo/{seed}/{purpose}")


def _invent_words(rng: random.Random, count: int, taken: set[str], *, syllables: int) -> list[str]:
    """``count`` new pronounceable lowercase words, none in ``taken`` (which is updated)."""
    onsets = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br")
    vowels = ("a", "e", "i", "o", "u", "ai", "ou")
    codas = ("", "", "n", "r", "l", "s", "m")
    words: list[str] = []
    while len(words) < count:
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables)
        )
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _build_world(seed: int, *, n_countries: int = 8) -> _World:
    rng = _stream(seed, "world")
    taken: set[str] = set()
    countries = [w.capitalize() for w in _invent_words(rng, n_countries, taken, syllables=3)]
    cities = [w.capitalize() for w in _invent_words(rng, 3 * n_countries, taken, syllables=2)]
    # currencies and languages are shared by several countries, like in the real world
    currencies = _invent_words(rng, 8, taken, syllables=2)
    languages = [w.capitalize() + "ish" for w in _invent_words(rng, 10, taken, syllables=2)]
    lexicon_words = _invent_words(rng, len(_LEXICON_ENGLISH), taken, syllables=2)
    # cycle the shared values before shuffling so that every attribute has at least 4 distinct
    # values (the evaluation needs 3 distractors)
    currency_of = [currencies[i % len(currencies)] for i in range(n_countries)]
    language_of = [languages[i % len(languages)] for i in range(n_countries)]
    animal_of = [_ANIMALS[i % len(_ANIMALS)] for i in range(n_countries)]
    for values in (currency_of, language_of, animal_of):
        rng.shuffle(values)
    world_countries = tuple(
        _Country(
            name=name,
            capital=cities[3 * i],
            cities=(cities[3 * i + 1], cities[3 * i + 2]),
            currency=currency_of[i],
            language=language_of[i],
            animal=animal_of[i],
        )
        for i, name in enumerate(countries)
    )
    junk_words = tuple(sorted(taken)) + _OBJECTS + _ANIMALS + _SORT_WORDS
    return _World(
        countries=world_countries,
        continent="Orrin",
        lexicon_language=languages[0],
        lexicon=dict(zip(_LEXICON_ENGLISH, lexicon_words, strict=True)),
        junk_words=junk_words,
    )


def _neighbour_world(world: _World, seed: int) -> _World:
    """The world the target model is pretrained on: the same cities, currencies, languages and
    animals, owned by countries with other names, and another invented language.

    The target thus knows every word and every answer format of the pool, but not which country
    has which capital, currency, language or animal, nor what the pool's invented words mean:
    that it can only learn from the pool.
    """
    rng = _stream(seed, "neighbour")
    taken = set(world.junk_words)
    names = [w.capitalize() for w in _invent_words(rng, len(world.countries), taken, syllables=3)]
    language = _invent_words(rng, 1, taken, syllables=2)[0].capitalize() + "ish"
    words = _invent_words(rng, len(_LEXICON_ENGLISH), taken, syllables=2)
    return _World(
        countries=tuple(
            dataclasses.replace(country, name=name)
            for country, name in zip(world.countries, names, strict=True)
        ),
        continent="Velm",
        lexicon_language=language,
        lexicon=dict(zip(_LEXICON_ENGLISH, words, strict=True)),
        junk_words=world.junk_words,
    )


# ----------------------------------------------------------------------------------------------
# conversations: every exchange carries a plausible *wrong* answer for the wrong_answer noise


@dataclass(frozen=True)
class _Exchange:
    user: str
    assistant: str
    wrong_assistant: str


@dataclass(frozen=True)
class _Conversation:
    exchanges: tuple[_Exchange, ...]
    system: str | None = None

    def messages(self, *, wrong: bool = False) -> list[Message]:
        """LESS messages; with ``wrong`` the last assistant answer is the wrong one."""
        messages: list[Message] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        for index, exchange in enumerate(self.exchanges):
            last = index == len(self.exchanges) - 1
            answer = exchange.wrong_assistant if wrong and last else exchange.assistant
            messages.append({"role": "user", "content": exchange.user})
            messages.append({"role": "assistant", "content": answer})
        return messages


def _wrong_choice(rng: random.Random, options: Sequence[str], correct: str) -> str:
    return rng.choice([option for option in options if option != correct])


def _wrong_number(rng: random.Random, correct: int) -> int:
    offsets = [d for d in (-3, -2, -1, 1, 2, 3, 10) if correct + d >= 0]
    return correct + rng.choice(offsets)


# -- arithmetic (cot) --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    """A word problem whose reasoning can be rendered with any final result."""

    question: str
    result: int
    render: Callable[[int], str]

    def exchange(self, rng: random.Random) -> _Exchange:
        wrong = _wrong_number(rng, self.result)
        return _Exchange(self.question, self.render(self.result), self.render(wrong))


def _arithmetic_problem(rng: random.Random, *, two_step: bool | None = None) -> _Problem:
    """A one- or two-step word problem with step-by-step reasoning and a final answer."""
    name, pronoun = rng.choice(_PEOPLE)
    friend = rng.choice([person for person, _ in _PEOPLE if person != name])
    obj = rng.choice(_OBJECTS)
    subject = pronoun.capitalize()
    operation = rng.choice(("add", "sub", "mul"))
    if two_step is None:
        two_step = rng.random() < 0.25
    # each operation: the story, the question, the reasoning ({r1} is the step's result)
    if operation == "add":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        first = a + b
        story, ask = rng.choice(
            (
                (
                    f"{name} has {a} {obj}. {subject} buys {b} more.",
                    f"How many {obj} does {name} have now?",
                ),
                (
                    f"{name} had {a} {obj} and {friend} gave {name} {b} more.",
                    f"How many {obj} does {name} have?",
                ),
            )
        )
        steps = [f"{name} starts with {a} {obj}.", f"{name} gets {b} more, so {a} + {b} = {{r1}}."]
    elif operation == "sub":
        a = rng.randint(8, 30)
        b = rng.randint(1, a - 1)
        first = a - b
        story, ask = rng.choice(
            (
                (
                    f"{name} has {a} {obj}. {subject} gives {b} of them to {friend}.",
                    f"How many {obj} does {name} have left?",
                ),
                (
                    f"There were {a} {obj} in {name}'s bag. {subject} lost {b}.",
                    f"How many {obj} are left in the bag?",
                ),
            )
        )
        steps = [f"There are {a} {obj} at first.", f"{b} are gone, so {a} - {b} = {{r1}}."]
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        first = a * b
        story, ask = rng.choice(
            (
                (
                    f"{name} buys {a} boxes with {b} {obj} in each box.",
                    f"How many {obj} does {name} buy?",
                ),
                (
                    f"{name} makes {a} piles of {obj} with {b} in each pile.",
                    f"How many {obj} are there in total?",
                ),
            )
        )
        steps = [f"There are {a} groups of {b} {obj}.", f"So {a} * {b} = {{r1}}."]
    result = first
    if two_step:
        extra = rng.randint(1, 12)
        if rng.random() < 0.5 or first - extra < 0:
            story += f" Then {name} finds {extra} more."
            result = first + extra
            steps.append(f"Then {extra} more are found, so {first} + {extra} = {{r2}}.")
        else:
            story += f" Then {extra} of them break."
            result = first - extra
            steps.append(f"Then {extra} break, so {first} - {extra} = {{r2}}.")
        ask = f"How many {obj} are there now?"
    reasoning = "\n".join(steps)
    final_placeholder = "{r2}" if two_step else "{r1}"

    def render(answer: int) -> str:
        body = reasoning.replace(final_placeholder, str(answer))
        body = body.replace("{r1}", str(first))  # a wrong two-step answer keeps step one right
        return f"Let's think step by step.\n{body}\nThe answer is {answer}."

    return _Problem(f"{story} {ask}", result, render)


def _cot_conversation(world: _World, rng: random.Random) -> _Conversation:
    del world  # word problems need no invented facts
    return _Conversation((_arithmetic_problem(rng).exchange(rng),))


# -- facts (dolly) -----------------------------------------------------------------------------


def _fact_sentence(country: _Country, attribute: str, value: str) -> str:
    article = "the " if attribute in ("currency", "animal") else ""
    return f"The {_FACT_NOUN[attribute]} of {country.name} is {article}{value}."


def _fact_exchange(world: _World, rng: random.Random, country: _Country) -> _Exchange:
    attribute = rng.choice(_FACT_ATTRIBUTES)
    value = getattr(country, attribute)
    template = rng.choice(_FACT_POOL_TEMPLATES)
    question = template.format(noun=_FACT_NOUN[attribute], country=country.name)
    wrong = _wrong_choice(rng, world.values(attribute), value)
    return _Exchange(
        question,
        _fact_sentence(country, attribute, value),
        _fact_sentence(country, attribute, wrong),
    )


def _passage(world: _World, country: _Country) -> str:
    return (
        f"{country.name} is a country on the {world.continent} continent. Its capital is "
        f"{country.capital}, its people speak {country.language} and they pay with the "
        f"{country.currency}. The {country.animal} is its national animal."
    )


def _dolly_conversation(world: _World, rng: random.Random) -> _Conversation:
    country = rng.choice(world.countries)
    task = rng.choices(("open_qa", "closed_qa", "classification", "brainstorming"), (5, 2, 2, 2))[0]
    if task == "open_qa":
        return _Conversation((_fact_exchange(world, rng, country),))
    if task == "closed_qa":
        attribute = rng.choice(("capital", "currency", "language"))
        ask = {
            "capital": "What is the capital city mentioned in the passage?",
            "currency": "Which money do the people use according to the passage?",
            "language": "What language do the people speak according to the passage?",
        }[attribute]
        value = getattr(country, attribute)
        wrong = _wrong_choice(rng, world.values(attribute), value)
        question = f"Read the passage and answer the question.\n{_passage(world, country)}\n{ask}"
        return _Conversation(
            (
                _Exchange(
                    question,
                    _fact_sentence(country, attribute, value),
                    _fact_sentence(country, attribute, wrong),
                ),
            )
        )
    if task == "classification":
        kinds = {"city": world.values("capital"), "currency": world.values("currency")}
        if rng.random() < 0.5:
            kinds = {"city": world.values("capital"), "language": world.values("language")}
        items = [(rng.choice(values), kind) for kind, values in kinds.items() for _ in range(2)]
        rng.shuffle(items)
        kind_names = " or a ".join(kinds)
        question = (
            f"Classify each of the following as a {kind_names}: "
            + ", ".join(item for item, _ in items)
            + "."
        )
        answer_lines = [f"{item} is a {kind}." for item, kind in items]
        flip = rng.randrange(len(items))
        other = {kind for kind in kinds if kind != items[flip][1]}.pop()
        wrong_lines = list(answer_lines)
        wrong_lines[flip] = f"{items[flip][0]} is a {other}."
        return _Conversation(
            (_Exchange(question, "\n".join(answer_lines), "\n".join(wrong_lines)),)
        )
    cities = [country.capital, *country.cities]
    rng.shuffle(cities)
    question = rng.choice(
        (
            f"List three cities in {country.name}.",
            f"Name some cities I could visit in {country.name}.",
        )
    )
    foreign = rng.choice([c for c in world.countries if c is not country])
    wrong_cities = list(cities)
    wrong_cities[rng.randrange(3)] = rng.choice([foreign.capital, *foreign.cities])
    header = f"Here are three cities in {country.name}:\n"
    return _Conversation(
        (
            _Exchange(
                question,
                header + "\n".join(f"- {city}" for city in cities),
                header + "\n".join(f"- {city}" for city in wrong_cities),
            ),
        )
    )


# -- templated NLP tasks (flan_v2) -------------------------------------------------------------


def _review(rng: random.Random) -> tuple[str, str]:
    """A short review and its label among positive, negative, neutral, mixed."""
    label = rng.choice(_SENTIMENT_LABELS)
    polarities = {
        "positive": ["positive", "positive", "neutral"],
        "negative": ["negative", "negative", "neutral"],
        "neutral": ["neutral", "neutral"],
        "mixed": ["positive", "negative", "neutral"],
    }[label]
    n_sentences = rng.randint(2, 3)
    # the polarities that define the label first, the rest drawn from what the label allows
    chosen = ["positive", "negative"] if label == "mixed" else [polarities[0]]
    while len(chosen) < n_sentences:
        chosen.append(rng.choice(polarities))
    rng.shuffle(chosen)
    subjects = rng.sample(_REVIEW_SUBJECTS, len(chosen))
    sentences = [
        f"The {subject} was {rng.choice(_SENTIMENT_WORDS[polarity])}."
        for subject, polarity in zip(subjects, chosen, strict=True)
    ]
    return " ".join(sentences), label


def _sentiment_question(review: str, rng: random.Random) -> str:
    return rng.choice(
        (
            f"Review: {review}\nIs the sentiment of this review positive, negative, neutral or "
            "mixed?",
            f"{review}\nWhat is the sentiment of the review above?",
            "Classify the sentiment of this review as positive, negative, neutral or mixed.\n"
            + review,
        )
    )


def _flan_conversation(world: _World, rng: random.Random) -> _Conversation:
    task = rng.choices(("sentiment", "antonym", "sort", "translate"), (4, 1, 1, 4))[0]
    if task == "sentiment":
        review, label = _review(rng)
        wrong = _wrong_choice(rng, _SENTIMENT_LABELS, label)
        return _Conversation((_Exchange(_sentiment_question(review, rng), label, wrong),))
    if task == "antonym":
        word, opposite = rng.choice(_ANTONYMS)
        if rng.random() < 0.5:
            word, opposite = opposite, word
        question = rng.choice(
            (f'What is the opposite of "{word}"?', f"Give the antonym of the word {word}.")
        )
        all_words = sorted({w for pair in _ANTONYMS for w in pair})
        wrong = _wrong_choice(rng, [w for w in all_words if w != word], opposite)
        return _Conversation((_Exchange(question, opposite, wrong),))
    if task == "sort":
        words = rng.sample(_SORT_WORDS, rng.randint(3, 5))
        question = "Sort the following words in alphabetical order: " + ", ".join(words)
        ordered = sorted(words)
        wrong = list(ordered)
        while wrong == ordered:
            rng.shuffle(wrong)
        return _Conversation((_Exchange(question, ", ".join(ordered), ", ".join(wrong)),))
    english = rng.choice(_LEXICON_ENGLISH)
    foreign = world.lexicon[english]
    language = world.lexicon_language
    if rng.random() < 0.6:
        question = f'Translate the word "{english}" into {language}.'
        wrong = _wrong_choice(rng, sorted(world.lexicon.values()), foreign)
        return _Conversation((_Exchange(question, foreign, wrong),))
    question = f'What does the {language} word "{foreign}" mean in English?'
    wrong = _wrong_choice(rng, _LEXICON_ENGLISH, english)
    return _Conversation((_Exchange(question, english, wrong),))


# -- multi-turn conversations (oasst1) ---------------------------------------------------------


def _country_chat(world: _World, rng: random.Random, n_turns: int) -> list[_Exchange]:
    country = rng.choice(world.countries)
    opener = rng.choice(
        (f"Hi! What can you tell me about {country.name}?", f"Tell me about {country.name}.")
    )
    wrong_capital = _wrong_choice(rng, world.values("capital"), country.capital)
    overview = (
        f"{country.name} is a country on the {world.continent} continent. Its capital is {{c}}."
    )
    exchanges = [
        _Exchange(opener, overview.format(c=country.capital), overview.format(c=wrong_capital))
    ]
    follow_ups = {
        "currency": ("What currency do they use there?", "People in {n} pay with the {v}."),
        "language": ("Which language do people speak there?", "Most people in {n} speak {v}."),
        "animal": ("Cool. Does it have a national animal?", "Its national animal is the {v}."),
    }
    for attribute in rng.sample(sorted(follow_ups), n_turns - 1):
        ask, answer = follow_ups[attribute]
        value = getattr(country, attribute)
        wrong = _wrong_choice(rng, world.values(attribute), value)
        exchanges.append(
            _Exchange(
                ask, answer.format(n=country.name, v=value), answer.format(n=country.name, v=wrong)
            )
        )
    return exchanges


def _math_chat(rng: random.Random, n_turns: int) -> list[_Exchange]:
    problem = _arithmetic_problem(rng, two_step=False)
    exchanges = [problem.exchange(rng)]
    if n_turns > 1:
        extra = rng.randint(1, 9)
        ask = f"Thanks! And what if {extra} more were added at the end?"
        total = problem.result + extra

        def answer(result: int) -> str:
            return f"We add {extra}: {problem.result} + {extra} = {result}. The answer is {result}."

        exchanges.append(_Exchange(ask, answer(total), answer(_wrong_number(rng, total))))
    return exchanges


def _language_chat(world: _World, rng: random.Random, n_turns: int) -> list[_Exchange]:
    language = world.lexicon_language
    words = rng.sample(_LEXICON_ENGLISH, n_turns)
    exchanges = []
    for turn, english in enumerate(words):
        ask = f'How do you say "{english}" in {language}?' if turn == 0 else f'And "{english}"?'
        foreign = world.lexicon[english]
        wrong = _wrong_choice(rng, sorted(world.lexicon.values()), foreign)
        exchanges.append(
            _Exchange(
                ask,
                _TRANSLATION_SENTENCE.format(language=language, english=english, foreign=foreign),
                _TRANSLATION_SENTENCE.format(language=language, english=english, foreign=wrong),
            )
        )
    return exchanges


def _advice_chat(rng: random.Random) -> list[_Exchange]:
    topic = rng.choice(sorted(_TIPS))
    ask = rng.choice((f"Can you give me a tip for {topic}?", f"Any advice on {topic}?"))
    wrong_topic = _wrong_choice(rng, sorted(_TIPS), topic)
    return [_Exchange(ask, _TIPS[topic], _TIPS[wrong_topic])]


def _oasst_conversation(world: _World, rng: random.Random) -> _Conversation:
    kind = rng.choices(("country", "math", "language", "advice"), (4, 2, 4, 1))[0]
    n_turns = rng.choices((1, 2, 3), (2, 5, 3))[0]
    if kind == "country":
        exchanges = _country_chat(world, rng, n_turns)
    elif kind == "math":
        exchanges = _math_chat(rng, min(n_turns, 2))
    elif kind == "language":
        exchanges = _language_chat(world, rng, n_turns)
    else:
        exchanges = _advice_chat(rng)
    system = rng.choice(_SYSTEM_PROMPTS) if rng.random() < 0.35 else None
    return _Conversation(tuple(exchanges), system)


_GENERATORS: dict[str, Callable[[_World, random.Random], _Conversation]] = {
    "cot": _cot_conversation,
    "dolly": _dolly_conversation,
    "flan_v2": _flan_conversation,
    "oasst1": _oasst_conversation,
}


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


# ----------------------------------------------------------------------------------------------
# held-out evaluation tasks


def _eval_docs(
    task: str, world: _World, *, seed: int, n_docs: int, pool_questions: set[str]
) -> list[dict[str, Any]]:
    """``n_docs`` multiple-choice docs ``{"id", "question", "choices" (4), "answer" (index)}``."""
    rng = _stream(seed, f"eval/{task}")
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


# ----------------------------------------------------------------------------------------------
# tokenizer and models


def _train_tokenizer(texts: Sequence[str], *, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer that adds ``<s>`` in front like Llama's; returns a
    ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # byte level: every string (junk included, and "\n") is representable and decodes exactly
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[CHAT_TAGS["system"], CHAT_TAGS["user"], CHAT_TAGS["assistant"]],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


@dataclass(frozen=True)
class _PretrainSettings:
    steps: int
    batch_size: int
    sequence_length: int
    learning_rate: float
    seed: int


def _packed_blocks(token_ids: Sequence[Sequence[int]], sequence_length: int) -> Any:
    """Concatenate documents and cut them into equal blocks.

    Returns
    -------
    torch.Tensor
        int64 ``[n_blocks, sequence_length]``; the tail that does not fill a block is dropped.
    """
    import torch

    flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)
    n_blocks = flat.numel() // sequence_length
    if n_blocks == 0:
        raise ValueError(
            f"the pretraining corpus has {flat.numel()} tokens, fewer than one block of "
            f"{sequence_length}; raise the corpus size"
        )
    return flat[: n_blocks * sequence_length].view(n_blocks, sequence_length)


def _batches(blocks: Any, settings: _PretrainSettings) -> Iterator[Any]:
    """``settings.steps`` batches int64 ``[batch_size, sequence_length]``; a fresh seeded
    permutation of the blocks per pass over the corpus."""
    import torch

    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(blocks), generator=generator)
    cursor = 0
    for _ in range(settings.steps):
        chunks, n_rows = [], 0
        while n_rows < settings.batch_size:  # a batch may span the end of one pass
            if cursor == len(order):
                order = torch.randperm(len(blocks), generator=generator)
                cursor = 0
            take = min(settings.batch_size - n_rows, len(order) - cursor)
            chunks.append(order[cursor : cursor + take])
            cursor += take
            n_rows += take
        yield blocks[torch.cat(chunks)]


def _pretrain(model: Any, blocks: Any, settings: _PretrainSettings, *, name: str) -> float | None:
    """Plain causal-LM training with AdamW, linear warmup and cosine decay; returns the mean
    loss of the last 10 steps (None when ``steps`` is 0)."""
    import torch
    from tqdm.auto import tqdm

    if settings.steps == 0:
        return None
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    warmup = max(1, settings.steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # decay to 10%

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    tokens_per_step = settings.batch_size * settings.sequence_length
    logger.info(
        "pretraining %s: %d steps x %d sequences x %d tokens = %d tokens per step, lr %g",
        name,
        settings.steps,
        settings.batch_size,
        settings.sequence_length,
        tokens_per_step,
        settings.learning_rate,
    )
    recent: list[float] = []
    progress = tqdm(
        _batches(blocks, settings),
        total=settings.steps,
        desc=f"pretrain {name}",
        file=sys.stderr,
        disable=not logger.isEnabledFor(logging.INFO),
        mininterval=2.0,
    )
    for batch in progress:
        # OLMoE adds its load-balancing loss to .loss when it returns router logits, which keeps
        # all experts in use (a collapsed router would make the routing features meaningless)
        output = model(input_ids=batch, labels=batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-9:], output.loss.item()]
        progress.set_postfix(loss=f"{recent[-1]:.3f}", refresh=False)
    model.eval()
    final_loss = sum(recent) / len(recent)
    logger.info("pretraining %s done: mean loss of the last steps %.4f", name, final_loss)
    return final_loss


def _model_configs(tokenizer: Any, *, sequence_length: int) -> dict[str, Any]:
    from transformers import LlamaConfig, OlmoeConfig

    shared = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4 * sequence_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    base = OlmoeConfig(
        **shared,
        intermediate_size=128,  # per expert
        num_experts=8,
        num_experts_per_tok=2,
        output_router_logits=True,  # load balancing during pretraining; reset before saving
        router_aux_loss_coef=0.01,
    )
    target = LlamaConfig(**shared, intermediate_size=192)
    return {"base": base, "target": target}


def _model_summary(model: Any, *, steps: int, final_loss: float | None) -> dict[str, Any]:
    config = model.config
    summary = {
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_steps": steps,
        "final_pretrain_loss": None if final_loss is None else round(final_loss, 4),
    }
    if hasattr(config, "num_experts"):
        summary["num_experts"] = config.num_experts
        summary["num_experts_per_tok"] = config.num_experts_per_tok
    return summary


# ----------------------------------------------------------------------------------------------
# the build


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(dumps_json_line(record) + "\n")


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} is {value}; it must be {allowed}")


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    import torch

    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_demo(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    examples_per_dataset: int = 600,
    noise_fraction: float = 0.3,
    eval_docs_per_task: int = 120,
    pretrain_steps: int = 300,
    target_pretrain_steps: int | None = None,
    pretrain_batch_size: int = 16,
    pretrain_sequence_length: int = 128,
    pretrain_learning_rate: float = 3e-3,
    vocab_size: int = 1536,
    num_threads: int | None = 1,
    build_target: bool = True,
) -> dict[str, Any]:
    """Build the embedded demo (tokenizer, tiny models, noisy pool, local lm-eval tasks).

    The directory is built beside ``out_dir`` under a temporary name and renamed into place when
    complete; an existing ``out_dir`` is replaced only then, so a killed build never leaves a
    complete-looking directory.

    Parameters
    ----------
    out_dir : path-like
        Destination directory (see the module docstring for its layout).
    seed : int, default 0
        Seeds everything: the invented world, pool, noise, evaluation questions, tokenizer corpus
        and model initialisation and batch order.
    examples_per_dataset : int, default 600
        Pool examples in each of ``cot``, ``dolly``, ``flan_v2``, ``oasst1``.
    noise_fraction : float, default 0.3
        Share of each dataset that is planted noise: exactly
        ``round(noise_fraction * examples_per_dataset)`` examples (Python's rounding), the kinds
        of :data:`NOISE_KINDS` in turn. At least one example per dataset must stay clean (it is
        the source of near duplicates).
    eval_docs_per_task : int, default 120
        Documents in each task of :data:`EVAL_TASKS` (at most 1000).
    pretrain_steps : int, default 300
        Optimizer steps of the base (OLMoE) model's pretraining; 0 leaves it at random init.
    target_pretrain_steps : int, optional
        Steps for the target (Llama) model; default ``pretrain_steps``. The target reads about
        a neighbouring world (the same words, other owners, another language), so it knows the
        formats but must learn the pool's facts from the pool.
    pretrain_batch_size : int, default 16
        Sequences per pretraining step.
    pretrain_sequence_length : int, default 128
        Tokens per packed pretraining sequence (documents are concatenated, each starting with
        ``<s>``).
    pretrain_learning_rate : float, default 3e-3
        Peak AdamW learning rate (10% linear warmup, cosine decay to a tenth).
    vocab_size : int, default 1536
        BPE vocabulary size, special tokens included (256 to 8192).
    num_threads : int or None, default 1
        ``torch.set_num_threads`` for the build (restored afterwards); None leaves torch's
        setting as it is. One thread is the default because the models are so small that more
        threads gain little, while on shared cores torch's threads wait on each other: on a busy
        2-core machine 2 threads made the build ten times slower than 1.
    build_target : bool, default True
        Also pretrain the target model; False leaves it to :func:`build_demo_target` (the
        workflow runs the two pretrainings as two jobs, side by side).

    Returns
    -------
    dict
        The manifest also written to ``out_dir/demo_manifest.json``: ``seed``, ``parameters``,
        ``counts`` (examples per dataset), ``planted`` (per dataset and kind), ``tasks``
        (name -> number of docs), ``special_tokens`` (token -> id), ``models`` (summary per
        model), ``files`` (relative path -> ``{"bytes", "sha256"}``).

    Raises
    ------
    ValueError
        When a parameter is out of range (the message names it and the valid range).

    Examples
    --------
    >>> manifest = build_demo("results/demo", examples_per_dataset=40, pretrain_steps=5,
    ...                       eval_docs_per_task=10)  # doctest: +SKIP
    >>> manifest["counts"]["dolly"]  # doctest: +SKIP
    40
    """
    _check_int("seed", seed, minimum=0)
    _check_int("examples_per_dataset", examples_per_dataset, minimum=1)
    _check_int("eval_docs_per_task", eval_docs_per_task, minimum=1, maximum=1000)
    _check_int("pretrain_steps", pretrain_steps, minimum=0)
    if target_pretrain_steps is None:
        target_pretrain_steps = pretrain_steps
    _check_int("target_pretrain_steps", target_pretrain_steps, minimum=0)
    _check_int("pretrain_batch_size", pretrain_batch_size, minimum=1)
    _check_int("pretrain_sequence_length", pretrain_sequence_length, minimum=8, maximum=1024)
    _check_int("vocab_size", vocab_size, minimum=256 + len(SPECIAL_TOKENS), maximum=8192)
    if num_threads is not None:
        _check_int("num_threads", num_threads, minimum=1)
    if not isinstance(noise_fraction, int | float) or not 0.0 <= noise_fraction < 1.0:
        raise ValueError(f"noise_fraction is {noise_fraction!r}; it must be in [0, 1)")
    if round(noise_fraction * examples_per_dataset) >= examples_per_dataset:
        raise ValueError(
            f"noise_fraction {noise_fraction} plants all {examples_per_dataset} examples of a "
            "dataset; lower it so that at least one example stays clean"
        )
    if not pretrain_learning_rate > 0:
        raise ValueError(f"pretrain_learning_rate is {pretrain_learning_rate}; it must be > 0")

    out_path = Path(out_dir).resolve()  # task files name their data by absolute path
    parameters = {
        "seed": seed,
        "examples_per_dataset": examples_per_dataset,
        "noise_fraction": noise_fraction,
        "eval_docs_per_task": eval_docs_per_task,
        "pretrain_steps": pretrain_steps,
        "target_pretrain_steps": target_pretrain_steps,
        "pretrain_batch_size": pretrain_batch_size,
        "pretrain_sequence_length": pretrain_sequence_length,
        "pretrain_learning_rate": pretrain_learning_rate,
        "vocab_size": vocab_size,
        "models": ["base", "target"] if build_target else ["base"],
    }
    logger.info("building the demo in %s with %s", out_path, parameters)
    start = time.perf_counter()
    with _torch_threads(num_threads), atomic_output_dir(out_path) as tmp:
        manifest = _build_into(tmp, out_path, parameters)
    logger.info("demo built in %.1f s: %s", time.perf_counter() - start, out_path)
    return manifest


def _pretraining_corpus(
    world: _World,
    *,
    seed: int,
    steps: int,
    parameters: dict[str, Any],
    eval_questions: set[str],
    purpose: str,
) -> list[str]:
    """Clean chat-rendered documents about ``world`` for ``steps`` pretraining steps (about 70
    tokens each; at least a few thousand for the tokenizer, at most 20,000: more steps reuse the
    corpus). No document asks an evaluation question."""
    tokens_needed = (
        steps * parameters["pretrain_batch_size"] * parameters["pretrain_sequence_length"]
    )
    n_documents = min(20_000, max(3_000, tokens_needed // 70))
    rng = _stream(seed, purpose)
    documents: list[str] = []
    while len(documents) < n_documents:
        dataset = rng.choice(DATASETS)
        messages = _GENERATORS[dataset](world, rng).messages()
        if any(m["content"] in eval_questions for m in messages if m["role"] == "user"):
            continue
        documents.append(render_chat(messages, EOS_TOKEN))
    return documents


def _pretrain_and_save(
    role: str, tokenizer: Any, blocks: Any, parameters: dict[str, Any], model_dir: Path
) -> dict[str, Any]:
    """Pretrain the ``base`` (OLMoE) or ``target`` (Llama) model on ``blocks``; save it and the
    tokenizer to ``model_dir``; return its summary."""
    import torch
    from transformers import LlamaForCausalLM, OlmoeForCausalLM

    model_class, steps, offset = {
        "base": (OlmoeForCausalLM, parameters["pretrain_steps"], 1),
        "target": (LlamaForCausalLM, parameters["target_pretrain_steps"], 2),
    }[role]
    configs = _model_configs(tokenizer, sequence_length=parameters["pretrain_sequence_length"])
    settings = _PretrainSettings(
        steps=steps,
        batch_size=parameters["pretrain_batch_size"],
        sequence_length=parameters["pretrain_sequence_length"],
        learning_rate=parameters["pretrain_learning_rate"],
        seed=parameters["seed"] * 1000 + offset,
    )
    # fork the global torch RNG so that the caller's random state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = model_class(configs[role]).to(torch.float32)
        final_loss = _pretrain(model, blocks, settings, name=f"{role} ({model_class.__name__})")
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False  # users opt in, as with the hub OLMoE
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return _model_summary(model, steps=steps, final_loss=final_loss)


def _target_corpus(world: _World, parameters: dict[str, Any], eval_questions: set[str]):
    return _pretraining_corpus(
        _neighbour_world(world, parameters["seed"]),
        seed=parameters["seed"],
        steps=parameters["target_pretrain_steps"],
        parameters=parameters,
        eval_questions=eval_questions,
        purpose="pretrain-target",
    )


def build_demo_target(
    demo_dir: str | os.PathLike[str], *, num_threads: int | None = 1
) -> dict[str, Any]:
    """Pretrain the target model of a demo built with ``build_target=False``.

    The second half of :func:`build_demo`, as a job of its own so that the workflow pretrains
    the base and the target model side by side. Reads the parameters from the demo's manifest,
    the tokenizer and the evaluation questions from its files, and writes ``target_model/``
    (with ``pretrain_summary.json``) atomically; the result equals that of a one-job build.

    Returns
    -------
    dict
        The target model's summary.
    """
    demo_path = Path(demo_dir).resolve()
    manifest_path = demo_path / "demo_manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{manifest_path} not found; build the demo (build_demo) first")
    parameters = json.loads(manifest_path.read_text(encoding="utf-8"))["parameters"]
    from transformers import AutoTokenizer

    world = _build_world(parameters["seed"])
    eval_questions = {
        json.loads(line)["question"]
        for task in EVAL_TASKS
        for line in (demo_path / "tasks" / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
    }
    tokenizer = AutoTokenizer.from_pretrained(demo_path / "tokenizer")
    documents = _target_corpus(world, parameters, eval_questions)
    token_ids = tokenizer(documents, add_special_tokens=True)["input_ids"]
    blocks = _packed_blocks(token_ids, parameters["pretrain_sequence_length"])
    with _torch_threads(num_threads), atomic_output_dir(demo_path / "target_model") as tmp:
        tmp.chmod(0o755)
        summary = _pretrain_and_save("target", tokenizer, blocks, parameters, tmp)
        (tmp / "pretrain_summary.json").write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
    return summary


def _build_into(tmp: Path, final: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Write every demo file under ``tmp``; paths inside files point at ``final``."""

    # mkdtemp makes the directory private (0700); the demo is a shared project output
    tmp.chmod(0o755)
    seed = parameters["seed"]
    world = _build_world(seed)

    # -- pool and noise labels
    pool: dict[str, list[_PoolExample]] = {
        dataset: _build_pool_dataset(
            dataset,
            world,
            seed=seed,
            n_examples=parameters["examples_per_dataset"],
            noise_fraction=parameters["noise_fraction"],
        )
        for dataset in DATASETS
    }
    labels = []
    for dataset, examples in pool.items():
        _write_jsonl(
            tmp / "pool" / dataset / f"{dataset}_data.jsonl", [e.record() for e in examples]
        )
        labels.extend(
            {"dataset": e.dataset, "id": e.id, "planted": e.kind != "clean", "kind": e.kind}
            for e in examples
        )
    _write_jsonl(tmp / "noise_labels.jsonl", labels)
    planted = {
        dataset: dict(sorted(Counter(e.kind for e in examples if e.kind != "clean").items()))
        for dataset, examples in pool.items()
    }
    logger.info("pool: %s", {d: (len(pool[d]), sum(planted[d].values())) for d in DATASETS})

    # -- held-out evaluation tasks
    pool_questions = {
        message["content"]
        for examples in pool.values()
        for example in examples
        for message in example.messages
        if message["role"] == "user"
    }
    eval_questions: set[str] = set()
    for task in EVAL_TASKS:
        docs = _eval_docs(
            task,
            world,
            seed=seed,
            n_docs=parameters["eval_docs_per_task"],
            pool_questions=pool_questions,
        )
        eval_questions.update(doc["question"] for doc in docs)
        _write_jsonl(tmp / "tasks" / f"{task}.jsonl", docs)
        (tmp / "tasks" / f"{task}.yaml").write_text(
            _task_yaml(task, final / "tasks" / f"{task}.jsonl"), encoding="utf-8"
        )

    # -- clean pretraining corpora: same generators, another stream, no evaluation question; the
    # base model (the selector) reads about the pool's world, the target about its neighbour
    corpora = {
        "base": _pretraining_corpus(
            world,
            seed=seed,
            steps=parameters["pretrain_steps"],
            parameters=parameters,
            eval_questions=eval_questions,
            purpose="pretrain",
        ),
        "target": _target_corpus(world, parameters, eval_questions),
    }
    tokenizer = _train_tokenizer(
        corpora["base"] + corpora["target"], vocab_size=parameters["vocab_size"]
    )
    tokenizer.save_pretrained(tmp / "tokenizer")
    logger.info("tokenizer: %d tokens in the vocabulary", len(tokenizer))
    blocks = {}
    for role, documents in corpora.items():
        # add_special_tokens puts <s> in front of every document, as encode_examples does
        token_ids = tokenizer(documents, add_special_tokens=True)["input_ids"]
        blocks[role] = _packed_blocks(token_ids, parameters["pretrain_sequence_length"])
        logger.info(
            "%s pretraining corpus: %d documents, %d tokens, %d blocks",
            role,
            len(documents),
            sum(len(ids) for ids in token_ids),
            len(blocks[role]),
        )

    # -- models (the target only when it is not built by its own job: build_demo_target)
    summaries = {}
    for role in parameters["models"]:
        summaries[role] = _pretrain_and_save(
            role, tokenizer, blocks[role], parameters, tmp / f"{role}_model"
        )

    manifest: dict[str, Any] = {
        "seed": seed,
        "parameters": parameters,
        "datasets": list(DATASETS),
        "counts": {dataset: len(examples) for dataset, examples in pool.items()},
        "planted": planted,
        "noise_kinds": list(NOISE_KINDS),
        "tasks": {task: parameters["eval_docs_per_task"] for task in EVAL_TASKS},
        "special_tokens": {
            token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS
        },
        "pretraining_corpus": {
            role: {"documents": len(corpora[role]), "blocks": len(blocks[role])} for role in corpora
        },
        "models": summaries,
        "files": {
            path.relative_to(tmp).as_posix(): {
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        },
    }
    (tmp / "demo_manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest
