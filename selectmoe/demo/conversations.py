"""The pool's conversations per dataset; every exchange carries a plausible wrong answer (for
the wrong_answer noise)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from selectmoe.demo.world import (
    _ANTONYMS,
    _FACT_ATTRIBUTES,
    _FACT_NOUN,
    _FACT_POOL_TEMPLATES,
    _LEXICON_ENGLISH,
    _OBJECTS,
    _PEOPLE,
    _REVIEW_SUBJECTS,
    _SENTIMENT_LABELS,
    _SENTIMENT_WORDS,
    _SORT_WORDS,
    _SYSTEM_PROMPTS,
    _TIPS,
    _TRANSLATION_SENTENCE,
    Message,
    _Country,
    _World,
)

logger = logging.getLogger(__name__)


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
