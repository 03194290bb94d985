"""The invented world: fixed word lists, and the seeded countries (capitals, currencies,
languages, animals) and lexicon."""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass

from selectmoe.data.pool import CHAT_TAGS

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

# Jinja version of SPEC §4's template (``data.template: less``, LESS's ``concat_messages``: every
# message ends in a newline), so that ``tokenizer.apply_chat_template`` agrees with
# ``selectmoe.data.encoding.render_chat``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] | trim }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
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
