"""A family of planted noise, not one pool: labelled pools for choosing selection scores.

The demo plants five kinds of noise and ``tests/second_pool.py`` five more. A score chosen on
one pool may have learned that pool's noise, not quality; so this module plants 17 kinds in 4
families, each at two severities, over two worlds of content, and writes pools with labels
(kind, family, severity) for measuring which kinds a score finds and which it misses.

Kinds (the noise hits the last assistant answer unless the row says otherwise):

===================== ======== ================================= =================================
kind                  family   mild                              severe
===================== ======== ================================= =================================
wrong_fact            content  the generator's wrong variant:    the wrong variant and a second
                               one value wrong, the rest intact  error: its other numbers wrong
                                                                 too (the reasoning wrong);
                                                                 without other numbers, the wrong
                                                                 value replaced by a world word of
                                                                 another domain (a name for a
                                                                 common word and back: a category
                                                                 error) or a wrong number by an
                                                                 absurd one
wrong_arithmetic      content  the final result miscomputed: the each computed number (after
                               last number and the same value    ``=``) and the last one wrong on
                               after an ``=`` (``8 + 3 = 12``,   its own, so that the answer
                               "The answer is 12.")              contradicts the working too
                                                                 (operands kept); no ``=``: every
                                                                 number; a lone number: an absurd
                                                                 one
other_question_answer content  another answer of the same        the least similar of the same 8
                               dataset: the most similar (word   candidates
                               overlap) of 8 random candidates
truncated_word        form     cut at a word boundary, keeping   the same, keeping about 15-40 %
                               about 60-85 % of the characters
truncated_mid_word    form     cut inside a word, keeping about  the same, keeping about 15-40 %
                               60-85 % of the characters
repetition_loop       form     the first 2-5 words stutter, 2-3  the first 2-5 words looped 6-10
                               loops, then the whole answer      times, and nothing else
scrambled_order       form     sentences (lines) shuffled; in    every word shuffled (a one-word
                               one sentence, two adjacent words  answer: its letters)
                               swapped
gibberish             form     30 % of the words replaced by     every word replaced by junk
                               junk (random characters, junk
                               syllables)
markup_debris         form     1-2 pieces of debris (HTML tags,  debris glued to every 2nd-4th
                               ``&nbsp;``, ``[citation           word (at least 3 pieces where the
                               needed]``, NBSP, markdown, url    answer has 2 words)
                               fragments) glued to words
duplicated_text       form     one sentence (line) twice, back   the whole answer 3-4 times, back
                               to back                           to back
echo                  dialogue "You asked: " (or a like prefix)  the question verbatim
                               and the question
refusal               dialogue a hedge ("I'm not sure, but ")    a boilerplate refusal
                               and the first half of the
                               answer's words
swapped_roles         dialogue the last exchange's question and  every exchange swapped (the same
                               answer trade places               as mild in one exchange)
language_switch       dialogue half of the words (at random) in  every word in the invented
                               an invented language (one fixed   language (numbers, punctuation
                               word map for every pool); an      and layout stay)
                               answer of numbers only: written
                               out, then translated
off_topic             dialogue chit-chat naming one keyword of   unrelated chit-chat sharing the
                               the question that the answer      fewest words with the
                               lacks (a name if any), nothing    conversation
                               of the answer
near_empty            length   one short word of at most 3       a single punctuation mark (never
                               characters ("Yes", "OK.", "Hm.")  an empty string)
filler_padding        length   the answer with one filler phrase the answer with 4-6 filler
                               before or after it                phrases around it (they may
                                                                 repeat)
===================== ======== ================================= =================================

Single-word answers have no word boundary: there ``truncated_word`` cuts inside the word as
``truncated_mid_word`` does, mild ``gibberish`` garbles 30 % of the word's characters, and
``language_switch`` and ``scrambled_order`` have nothing to grade (mild and severe do the same);
so do ``swapped_roles`` in conversations of one exchange. ``wrong_arithmetic`` on an answer
without numbers, and ``other_question_answer`` without another answer, fall back to
``wrong_fact`` of the same severity. Every planted conversation differs from its clean version,
has no blank content and ends with an assistant message (:func:`plant` checks it).

Worlds:

- ``demo``: the demo's invented world (:func:`selectmoe.demo.world._build_world` and the demo's
  generators), so that the demo's tokenizer and models know its words. Its ``world_seed``
  defaults to 0, the demo's config seed (``demo.seed`` in ``config/config.yaml``): give the
  demo's seed to get the demo's world.
- ``atlas``: a second world written here with other templates and other vocabulary (real
  English words; invented-but-English-looking planets, rivers, elements, inventors and towns
  drawn by ``world_seed``): ``cot`` unit conversions, shopping totals and time arithmetic with
  worked steps and "The answer is N."; ``dolly`` closed and open QA, summaries and extraction on
  short passages; ``flan_v2`` classification and extraction instructions; ``oasst1`` one to
  three exchanges of practical chat about cooking, travel, gardening and studying.

Every random choice comes from ``random.Random`` streams seeded by strings, so a build is
byte-identical for the same arguments.

Usage: ``python -m tests.noise_family OUT_DIR [--world demo|atlas] [--world-seed N]
[--seed N]`` writes ``OUT_DIR/pool/{dataset}/{dataset}_data.jsonl`` and
``OUT_DIR/noise_labels.jsonl`` (:mod:`selectmoe.data.labels`; the extra fields ``family`` and
``severity`` are ignored there).
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectmoe.demo.conversations import _GENERATORS, _Conversation, _Exchange
from selectmoe.demo.world import (
    _ANIMALS,
    _LEXICON_ENGLISH,
    _OBJECTS,
    _SORT_WORDS,
    DATASETS,
    _build_world,
)

Message = dict[str, str]

KINDS: dict[str, str] = {
    "wrong_fact": "content",
    "wrong_arithmetic": "content",
    "other_question_answer": "content",
    "truncated_word": "form",
    "truncated_mid_word": "form",
    "repetition_loop": "form",
    "scrambled_order": "form",
    "gibberish": "form",
    "markup_debris": "form",
    "duplicated_text": "form",
    "echo": "dialogue",
    "refusal": "dialogue",
    "swapped_roles": "dialogue",
    "language_switch": "dialogue",
    "off_topic": "dialogue",
    "near_empty": "length",
    "filler_padding": "length",
}
"""Planted kind -> its family (the module docstring describes each)."""

FAMILIES: dict[str, tuple[str, ...]] = {
    family: tuple(kind for kind, of in KINDS.items() if of == family)
    for family in ("content", "form", "dialogue", "length")
}
"""Family -> its kinds."""

SEVERITIES: tuple[str, ...] = ("mild", "severe")
WORLDS: tuple[str, ...] = ("demo", "atlas")
CLEAN = "clean"

MARKUP_DEBRIS: tuple[str, ...] = (
    "<br/>", "</div>", "<p>", "</p>", '<span class="mw-editsection">', "&nbsp;", "&amp;",
    "[citation needed]", "[edit]", "[1]", "**", "##", "[[", "]]", "](https://", "https://www.",
    "?utm_source=rss", "index.php?title=", "{{cite web}}", "\u00a0",
)  # fmt: skip
"""What ``markup_debris`` glues to words (removing these strings restores the answer)."""

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that request.",
    "As an AI assistant, I am not able to provide an answer to this question.",
    "I'm afraid that is outside of what I can discuss.",
    "Unfortunately I cannot answer that. Please consult another source.",
    "I won't be able to assist with this one.",
    "That request goes against my guidelines, so I must decline.",
)
"""Severe ``refusal`` answers."""

HEDGES: tuple[str, ...] = (
    "I'm not sure, but ",
    "I might be wrong, but ",
    "I can't say for certain, but perhaps ",
    "I'd rather not commit to this, but maybe ",
)
"""Mild ``refusal`` answers start with one of these."""

ECHO_PREFIXES: tuple[str, ...] = (
    "You asked: ",
    "Your question was: ",
    "So the question is: ",
    "You want to know: ",
)

OFF_TOPIC: tuple[str, ...] = (
    "The weather has been lovely this week, perfect for a long walk along the canal.",
    "My favourite soup recipe needs leeks, potatoes and a splash of cream.",
    "Have you seen the new film everyone is talking about? The ending surprised me.",
    "I spent the whole weekend repainting the garden fence a pale shade of green.",
    "There is a wonderful bakery near the station that sells warm cinnamon buns.",
    "My cousin just adopted a puppy and sends me photographs every single morning.",
    "Rain is forecast for tomorrow, so remember to bring an umbrella to work.",
    "I finally finished that thousand-piece jigsaw puzzle of a lighthouse at sunset.",
    "The football match last night went to extra time and nobody could stop cheering.",
    "Knitting a scarf is such a relaxing hobby once you get used to the needles.",
    "Our neighbours are holding a barbecue on Saturday with grilled corn and salads.",
    "I've been listening to a podcast about the history of jazz during my commute.",
)
"""Severe ``off_topic`` answers (generic chit-chat, no conversation's words)."""

OFF_TOPIC_KEYWORD: tuple[str, ...] = (
    "Speaking of {kw}, did you hear that the weather will be sunny all weekend?",
    "{kw} reminds me of my grandmother's kitchen, where she baked bread every Sunday.",
    "Oh, {kw}! That makes me think of the summer holidays I spent at the seaside.",
    "Before we get into {kw}, have you tried the new café on the corner?",
    "Funny you mention {kw}; my neighbour was talking about her garden all morning.",
    "{kw} aside, I have been meaning to start a new jigsaw puzzle this week.",
)
"""Mild ``off_topic`` answers: chit-chat naming a keyword ``{kw}`` of the question."""

NEAR_EMPTY_MILD: tuple[str, ...] = ("Yes", "No.", "OK.", "ok", "Hm.", "Mm.", "Eh?", "Hi.")
NEAR_EMPTY_SEVERE: tuple[str, ...] = (".", "?", "…", "-", "!")

FILLERS: tuple[str, ...] = (
    "As an AI language model, I want to make sure that my answer is as helpful as possible.",
    "In conclusion, it is important to note that every situation is different in its own way.",
    "It is worth mentioning that there are many different factors to consider here.",
    "I hope this helps, and please feel free to ask if you have any other questions at all.",
    "Great question! Many people wonder about exactly this kind of thing every day.",
    "To put it simply, the answer depends on a number of important considerations.",
    "Let me explain this in detail so that everything is perfectly clear to you.",
    "Of course, this is just one of many possible ways of looking at the question.",
    "At the end of the day, what matters most is a good understanding of the basics.",
    "Needless to say, accuracy is very important when answering questions like this.",
    "First and foremost, thank you so much for asking such an interesting question.",
    "Please keep in mind that I always strive to provide accurate and useful information.",
)
"""``filler_padding`` phrases (each at least half as long as the longest)."""

_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "about after again also among answer been before being could does each every from have "
        "into many more most much only other over please same should some such than that their "
        "them then there these they this those through under very what when where which while "
        "will with would your tell know like want need give just make think",
    )
)
_NUMBER = re.compile(r"\d+")
_TOKEN = re.compile(r"\w+|\W+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ALPHA_WORD = re.compile(r"[A-Za-z]+")


def _rng(*parts: object) -> random.Random:
    """A generator of its own per purpose (str seeds are hashed with SHA-512: stable)."""
    return random.Random("selectmoe-noise-family/" + "/".join(str(part) for part in parts))


# ----------------------------------------------------------------------------------------------
# text helpers


def _last_index(messages: Sequence[Message], role: str) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == role)


def _with_answer(messages: Sequence[Message], answer: str) -> list[Message]:
    """A copy of ``messages`` whose last assistant answer is ``answer``."""
    copy = [dict(m) for m in messages]
    copy[_last_index(copy, "assistant")] = {"role": "assistant", "content": answer}
    return copy


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)}


def _content_words(text: str) -> list[str]:
    """Alphabetic words of 4+ letters that are not function words, in order, no repeats."""
    seen: dict[str, None] = {}
    for word in _ALPHA_WORD.findall(text):
        if len(word) >= 4 and word.lower() not in _STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def _segments(text: str) -> tuple[list[str], str]:
    """Lines (if several) or sentences of ``text``, and the separator to join them again."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) >= 2:
        return lines, "\n"
    return [s for s in _SENTENCE_END.split(text.strip()) if s], " "


def _shift(rng: random.Random, value: int, avoid: Collection[int] = ()) -> int:
    """A plausible wrong number near ``value`` (non-negative, not ``value``, not in ``avoid``)."""
    offsets = [d for d in (-3, -2, -1, 1, 2, 3, 10) if value + d >= 0 and value + d not in avoid]
    if not offsets:
        offsets = [next(d for d in range(11, 10_000) if value + d not in avoid)]
    return value + rng.choice(offsets)


def _replace_numbers(
    text: str,
    chosen: Callable[[re.Match[str]], bool],
    rng: random.Random,
    *,
    consistent: bool = True,
) -> str:
    """``text`` with every chosen number changed to a number it does not hold; ``consistent``:
    the same value always to the same number, else each occurrence on its own."""
    avoid = {int(m.group()) for m in _NUMBER.finditer(text)}
    mapping: dict[int, int] = {}
    pieces, end = [], 0
    for match in _NUMBER.finditer(text):
        if chosen(match):
            value = int(match.group())
            if value not in mapping or not consistent:
                mapping[value] = _shift(rng, value, avoid)
                avoid.add(mapping[value])
            pieces += [text[end : match.start()], str(mapping[value])]
            end = match.end()
    return "".join([*pieces, text[end:]])


def _after_equals(text: str, match: re.Match[str]) -> bool:
    return text[: match.start()].rstrip().endswith("=")


def _cut(text: str, keep: tuple[float, float], rng: random.Random, *, inside_word: bool) -> str:
    """A strict prefix of ``text`` of about ``keep`` of its length, ending inside a word or at a
    word boundary (the next character is a space); inside a word when there is no boundary."""
    target = rng.uniform(*keep) * len(text)
    boundaries = [i for i in range(1, len(text)) if text[i].isspace() and not text[i - 1].isspace()]
    inside = [i for i in range(1, len(text)) if text[i - 1].isalnum() and text[i].isalnum()]
    cuts = inside if inside_word or not boundaries else boundaries
    if not cuts:
        return text[:1] if len(text.strip()) > 1 else "…"
    return text[: min(cuts, key=lambda i: (abs(i - target), i))]


def _shuffled(items: list[str], rng: random.Random) -> list[str]:
    """``items`` in another order (``items`` must hold two different values)."""
    result = list(items)
    while result == items:
        rng.shuffle(result)
    return result


def _scramble_word(word: str, rng: random.Random) -> str:
    if len(set(word)) >= 2:
        return "".join(_shuffled(list(word), rng))
    return word[::-1] + "…"


def _junk_word(rng: random.Random, avoid: Collection[str]) -> str:
    while True:
        if rng.random() < 0.5:  # random characters
            alphabet = string.ascii_letters + string.digits + "#$%&*+/<=>@^~"
            word = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 10)))
        else:  # invented junk: odd consonant clusters
            word = "".join(
                rng.choice(("xq", "zz", "kr", "pf", "vh", "gk", "tz", "wq", "jj", "sx"))
                + rng.choice("aeiouy")
                for _ in range(rng.randint(1, 3))
            )
        if word.lower() not in avoid:
            return word


def _gibberish(text: str, share: float, rng: random.Random) -> str:
    """``text`` with ``share`` of its words (at least one) replaced by junk, spacing kept."""
    pieces = re.split(r"(\s+)", text.strip())
    word_at = [i for i, piece in enumerate(pieces) if piece and not piece.isspace()]
    avoid = {piece.lower() for piece in pieces}
    if share < 1 and len(word_at) == 1 and len(pieces[word_at[0]]) > 1:  # one word: its letters
        letters = list(pieces[word_at[0]])
        for i in rng.sample(range(len(letters)), max(1, round(share * len(letters)))):
            letters[i] = rng.choice([c for c in string.ascii_letters + "#$%&*" if c != letters[i]])
        pieces[word_at[0]] = "".join(letters)
        return "".join(pieces)
    n = len(word_at) if share >= 1 else max(1, round(share * len(word_at)))
    for i in sorted(rng.sample(word_at, n)):
        pieces[i] = _junk_word(rng, avoid)
    return "".join(pieces)


def _foreign_word(word: str) -> str:
    """The invented language's word for ``word``: a fixed map, the same in every pool."""
    rng = random.Random("selectmoe-noise-family/language/" + word.lower())
    onsets = ("k", "zh", "q", "x", "y", "w", "j", "kv", "tl", "sk", "hr", "ng")
    vowels = ("a", "e", "i", "o", "u", "aa", "ei", "uo")
    syllables = max(1, min(4, (len(word) + 2) // 3))
    foreign = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
    if foreign == word.lower():
        foreign += "q"
    if word.isupper() and len(word) > 1:
        return foreign.upper()
    return foreign.capitalize() if word[0].isupper() else foreign


def _translate(text: str, share: float, rng: random.Random) -> str:
    """``text`` with ``share`` of its alphabetic words (at least one) in the invented language;
    numbers, punctuation and layout stay."""
    matches = list(_ALPHA_WORD.finditer(text))
    if not matches:  # numbers only: written out in words (below 1000), then translated
        spelled = _NUMBER.sub(
            lambda m: _number_words(int(m.group())) if len(m.group()) <= 3 else m.group(), text
        )
        return text if spelled == text else _translate(spelled, 1.0, rng)
    n = len(matches) if share >= 1 else max(1, round(share * len(matches)))
    chosen = set(rng.sample(range(len(matches)), n))
    pieces, end = [], 0
    for index, match in enumerate(matches):
        if index in chosen:
            pieces += [text[end : match.start()], _foreign_word(match.group())]
            end = match.end()
    return "".join([*pieces, text[end:]])


def _debris(text: str, severity: str, rng: random.Random) -> str:
    """Markup debris glued to words: before the first word (slot 0) or after word ``s - 1``."""
    pieces = re.split(r"(\s+)", text.strip())
    word_at = [i for i, piece in enumerate(pieces) if piece and not piece.isspace()]
    n_slots = len(word_at) + 1
    if severity == "mild":
        slots = rng.sample(range(n_slots), min(n_slots, rng.randint(1, 2)))
    else:
        slots, slot = [], rng.randint(0, 1)
        while slot < n_slots:
            slots.append(slot)
            slot += rng.randint(2, 4)
        if len(slots) < min(3, n_slots):
            rest = [s for s in range(n_slots) if s not in slots]
            slots += rng.sample(rest, min(3, n_slots) - len(slots))
    for slot in slots:
        piece = rng.choice(MARKUP_DEBRIS)
        if slot == 0:
            pieces[word_at[0]] = piece + pieces[word_at[0]]
        else:
            pieces[word_at[slot - 1]] += piece
    return "".join(pieces)


def _keyword(messages: Sequence[Message]) -> str:
    """A word of the last question that the answer lacks, for mild ``off_topic``: a name if
    there is one (a capitalised word inside a sentence), else the longest content word."""
    question = messages[_last_index(messages, "user")]["content"]
    in_answer = _words(messages[-1]["content"])
    candidates = [w for w in _content_words(question) if w.lower() not in in_answer]
    names = [
        match.group()
        for match in _ALPHA_WORD.finditer(question)
        if match.group()[0].isupper()
        and match.group() in candidates
        and not re.search(r"(^|[.!?:\n]\s*|\A\s*)$", question[: match.start()])
    ]
    if names or candidates:
        return names[0] if names else max(candidates, key=len)
    return "that"


def _severe_wrong(
    clean: str, wrong: str, conversation: str, world_words: Sequence[str], rng: random.Random
) -> str:
    """``wrong`` with a second error: its other numbers (those it shares with ``clean``) changed
    too; without any, its wrong value(s) (the words that differ from ``clean``) replaced by a
    word of the world from outside the conversation, or a wrong number by an absurd one."""
    clean_tokens, tokens = _TOKEN.findall(clean), _TOKEN.findall(wrong)
    matcher = difflib.SequenceMatcher(a=clean_tokens, b=tokens, autojunk=False)
    changed = [
        j
        for tag, _, _, j1, j2 in matcher.get_opcodes()
        if tag in ("replace", "insert")
        for j in range(j1, j2)
        if tokens[j][0].isalnum()
    ]
    others = [j for j, token in enumerate(tokens) if token.isdigit() and j not in changed]
    if others:  # the reasoning goes wrong too
        avoid = {int(token) for token in [*clean_tokens, *tokens] if token.isdigit()}
        mapping: dict[str, str] = {}
        for j in others:
            if tokens[j] not in mapping:
                mapping[tokens[j]] = str(_shift(rng, int(tokens[j]), avoid))
                avoid.add(int(mapping[tokens[j]]))
            tokens[j] = mapping[tokens[j]]
        return "".join(tokens)
    if not changed:
        changed = [j for j, token in enumerate(tokens) if token[0].isalnum()][-1:]
    used = _words(conversation) | _words(wrong)
    options = sorted({w for w in world_words if w.lower() not in used and w.isalpha()})
    for j in changed:
        token = tokens[j]
        # another domain: a common word for a name, a name for a common word
        other_domain = [w for w in options if w[0].isupper() != token[0].isupper()]
        if token.isdigit():
            tokens[j] = str(int(token) * rng.randint(40, 400) + rng.randint(1, 9))
        elif other_domain or options:
            word = rng.choice(other_domain or options)
            tokens[j] = word[0].upper() + word[1:] if token[0].isupper() else word
        else:
            tokens[j] = _foreign_word(token)
    return "".join(tokens)


def _derive_wrong(answer: str, world_words: Sequence[str], rng: random.Random) -> str:
    """A wrong variant when the generator gives none: the last number changed, else a word of
    the world in the answer replaced by another, else the last word by the foreign word."""
    numbers = list(_NUMBER.finditer(answer))
    if numbers:
        last = numbers[-1]
        return _replace_numbers(answer, lambda m: m.start() == last.start(), rng)
    vocabulary = {w.lower() for w in world_words}
    tokens = _TOKEN.findall(answer)
    known = [j for j, token in enumerate(tokens) if token.lower() in vocabulary]
    if known:
        j = rng.choice(known)
        options = sorted({w for w in world_words if w.lower() != tokens[j].lower()})
        tokens[j] = rng.choice(options)
        return "".join(tokens)
    alpha = [j for j, token in enumerate(tokens) if token.isalpha()]
    if not alpha:
        return answer + " 1"
    tokens[alpha[-1]] = _foreign_word(tokens[alpha[-1]])
    return "".join(tokens)


# ----------------------------------------------------------------------------------------------
# planting one kind


def _wrong_arithmetic(severity: str, answer: str, rng: random.Random) -> str | None:
    matches = list(_NUMBER.finditer(answer))
    if not matches:
        return None
    last = matches[-1]
    if severity == "mild":
        return _replace_numbers(
            answer,
            lambda m: (
                m.start() == last.start()
                or (m.group() == last.group() and _after_equals(answer, m))
            ),
            rng,
        )
    targets = {m.start() for m in matches if _after_equals(answer, m)} | {last.start()}
    if len(targets) == 1 and len(matches) > 1 and not _after_equals(answer, last):
        targets = {m.start() for m in matches}  # no working shown: every number
    if len(targets) == 1:  # one number only: an absurd one
        absurd = str(int(last.group()) * rng.randint(40, 400) + rng.randint(1, 9))
        return answer[: last.start()] + absurd + answer[last.end() :]
    # each on its own, so that the final answer contradicts the working as well
    return _replace_numbers(answer, lambda m: m.start() in targets, rng, consistent=False)


def _other_answer(severity: str, answer: str, others: Sequence[Sequence[Message]]) -> str | None:
    candidates = [
        other[-1]["content"]
        for other in others
        if other and other[-1]["content"].strip() and other[-1]["content"] != answer
    ]
    if not candidates:
        return None
    mine = _words(answer)

    def overlap(text: str) -> float:
        words = _words(text)
        return len(mine & words) / max(1, len(mine | words))

    scored = [(overlap(text), index) for index, text in enumerate(candidates)]
    closest = candidates[max(scored)[1]]
    if severity == "mild":
        return closest
    # the farthest, and another answer than the closest where there is one
    scored = [s for s in scored if candidates[s[1]] != closest] or scored
    return candidates[min(scored)[1]]


def _answer_noise(kind: str, severity: str, messages: list[Message], rng: random.Random) -> str:
    """The noisy last answer for the kinds that only rewrite it from its own text."""
    answer = messages[-1]["content"]
    mild = severity == "mild"
    if kind in ("truncated_word", "truncated_mid_word"):
        keep = (0.60, 0.85) if mild else (0.15, 0.40)
        return _cut(answer, keep, rng, inside_word=kind == "truncated_mid_word")
    if kind == "repetition_loop":
        words = answer.split()
        loop = " ".join(words[: min(len(words), rng.randint(2, 5))])
        if mild:
            return (loop + " ") * (rng.randint(2, 3) - 1) + answer.strip()
        return " ".join([loop] * rng.randint(6, 10))
    if kind == "scrambled_order":
        segments, separator = _segments(answer)
        words = answer.split()
        if mild and len(set(segments)) >= 2:
            return separator.join(_shuffled(segments, rng))
        if mild and len(set(words)) >= 2:
            pairs = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
            i = rng.choice(pairs)
            words[i], words[i + 1] = words[i + 1], words[i]
            return " ".join(words)
        if len(set(words)) >= 2:
            return " ".join(_shuffled(words, rng))
        return _scramble_word(answer.strip(), rng)
    if kind == "gibberish":
        return _gibberish(answer, 0.3 if mild else 1.0, rng)
    if kind == "markup_debris":
        return _debris(answer, severity, rng)
    if kind == "duplicated_text":
        if mild:
            segments, separator = _segments(answer)
            j = rng.randrange(len(segments))
            return separator.join([*segments[: j + 1], segments[j], *segments[j + 1 :]])
        separator = "\n" if "\n" in answer else " "
        return separator.join([answer.strip()] * rng.randint(3, 4))
    if kind == "echo":
        question = messages[_last_index(messages, "user")]["content"]
        return rng.choice(ECHO_PREFIXES) + question if mild else question
    if kind == "refusal":
        if not mild:
            return rng.choice(REFUSALS)
        words = answer.split()
        return rng.choice(HEDGES) + " ".join(words[: (len(words) + 1) // 2])
    if kind == "language_switch":
        return _translate(answer, 0.5 if mild else 1.0, rng)
    if kind == "off_topic":
        if mild:
            return rng.choice(OFF_TOPIC_KEYWORD).format(kw=_keyword(messages))
        used = _words("\n".join(m["content"] for m in messages))
        order = rng.sample(range(len(OFF_TOPIC)), len(OFF_TOPIC))
        return OFF_TOPIC[
            min(order, key=lambda i: len({w.lower() for w in _content_words(OFF_TOPIC[i])} & used))
        ]
    if kind == "near_empty":
        options = NEAR_EMPTY_MILD if mild else NEAR_EMPTY_SEVERE
        return rng.choice([option for option in options if option != answer.strip()])
    if kind == "filler_padding":
        separator = "\n" if "\n" in answer else " "
        if mild:
            filler = rng.choice(FILLERS)
            parts = [filler, answer] if rng.random() < 0.5 else [answer, filler]
        else:
            fillers = rng.choices(FILLERS, k=rng.randint(4, 6))
            before = rng.randint(1, len(fillers) - 1)
            parts = [*fillers[:before], answer, *fillers[before:]]
        return separator.join(parts)
    raise ValueError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def _swap_roles(messages: list[Message], severity: str) -> list[Message]:
    """Every exchange (a user message and the assistant's answer) keeps its place; its two texts
    trade places: the last exchange only (mild) or every exchange (severe)."""
    swapped = [dict(m) for m in messages]
    exchanges = [
        i
        for i in range(len(messages) - 1)
        if messages[i]["role"] == "user" and messages[i + 1]["role"] == "assistant"
    ]
    for i in exchanges if severity == "severe" else exchanges[-1:]:
        swapped[i]["content"] = messages[i + 1]["content"]
        swapped[i + 1]["content"] = messages[i]["content"]
    return swapped


def plant(
    kind: str,
    severity: str,
    messages: Sequence[Message],
    *,
    other_messages: Sequence[Sequence[Message]] = (),
    wrong_messages: Sequence[Message] | None = None,
    rng: random.Random,
    world_words: Sequence[str] = (),
) -> list[Message]:
    """The conversation ``messages`` with one kind of noise planted at one severity.

    Parameters
    ----------
    kind, severity
        One of :data:`KINDS` and one of :data:`SEVERITIES` (the module docstring's table).
    messages
        The clean conversation (LESS messages ending with an assistant answer); not changed.
    other_messages
        Other conversations of the same dataset, the candidates of ``other_question_answer``
        (without one that answers differently, it falls back to ``wrong_fact``).
    wrong_messages
        The conversation with a plausible wrong last answer (one value wrong), from the
        generator; without it ``wrong_fact`` derives one (a number or a word of the world
        changed).
    rng
        Draws every choice.
    world_words
        The world's vocabulary (names and common words), for the category errors of severe
        ``wrong_fact``: a common word replaces a name and a name a common word.

    Returns
    -------
    A new list of messages that differs from ``messages``, has no blank content and ends with
    an assistant message.

    Raises
    ------
    ValueError
        For an unknown kind or severity, a conversation that does not end with an assistant
        answer or has no user message, or a planting that broke the rules above (a bug).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; valid: {', '.join(SEVERITIES)}")
    clean = [dict(m) for m in messages]
    if not clean or clean[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in clean):
        raise ValueError("a conversation must have a user message and end with an answer")
    answer = clean[-1]["content"]
    text: str | None = None
    if kind == "other_question_answer":
        text = _other_answer(severity, answer, other_messages)
    elif kind == "wrong_arithmetic":
        text = _wrong_arithmetic(severity, answer, rng)
    elif kind not in ("wrong_fact", "swapped_roles"):
        text = _answer_noise(kind, severity, clean, rng)
    if kind == "swapped_roles":
        planted = _swap_roles(clean, severity)
    else:
        if KINDS[kind] == "content" and (text is None or text == answer):  # and fallbacks
            wrong = wrong_messages[-1]["content"] if wrong_messages else answer
            if wrong == answer:
                wrong = _derive_wrong(answer, world_words, rng)
            text = wrong
            if severity == "severe":
                conversation = "\n".join(m["content"] for m in clean)
                text = _severe_wrong(answer, wrong, conversation, world_words, rng)
        assert text is not None
        planted = _with_answer(clean, text)
    if planted == clean:  # e.g. a question equal to its answer: garble instead
        planted = _with_answer(clean, _gibberish(answer, 1.0, rng))
    problems = [
        problem
        for problem, bad in (
            ("unchanged", planted == clean),
            ("blank content", any(not m["content"].strip() for m in planted)),
            ("no final answer", planted[-1]["role"] != "assistant"),
        )
        if bad
    ]
    if problems:
        raise ValueError(f"planting {kind}/{severity} failed: {', '.join(problems)}")
    return planted


# ----------------------------------------------------------------------------------------------
# the atlas world: other templates, other vocabulary (real English words and invented names
# built from English parts)

_FIRST_NAMES: tuple[str, ...] = (
    "Agnes", "Bartholomew", "Cecilia", "Desmond", "Eleanor", "Fergus", "Gertrude", "Horace",
    "Isadora", "Jerome", "Lavinia", "Mortimer", "Ophelia", "Percival", "Rosalind", "Silas",
    "Theodora", "Virgil", "Winifred", "Ambrose", "Beatrice", "Cornelius", "Delphine", "Edmund",
    "Priya", "Dmitri", "Fatima", "Hector", "Ingrid", "Kenji", "Tobias", "Yasmin",
)  # fmt: skip
_PLACE_HEADS: tuple[str, ...] = (
    "Ash", "Bram", "Cal", "Dun", "Elm", "Fen", "Glen", "Hart", "Holt", "Kings", "Lang", "Mar",
    "North", "Oak", "Pem", "Red", "Rook", "Stan", "Thorn", "Wex", "Wyn", "Bright", "Cold",
    "Haver", "Lark", "Mill", "Sedge", "Willow",
)  # fmt: skip
_PLACE_TAILS: tuple[str, ...] = (
    "ford", "wick", "mere", "ton", "bury", "holm", "field", "ley", "more", "shaw", "combe",
    "dale", "gate", "worth", "stead", "haven",
)  # fmt: skip
_SURNAME_TAILS: tuple[str, ...] = ("wood", "worth", "ton", "ley", "ridge", "well", "by", "more")
_PLANET_ROOTS: tuple[str, ...] = (
    "Aster", "Bellar", "Corvin", "Delph", "Eldor", "Halcy", "Lumin", "Merid", "Nerid", "Orph",
    "Pell", "Quill", "Seren", "Tamar", "Umbr", "Vesper", "Caly", "Solv",
)  # fmt: skip
_PLANET_ENDS: tuple[str, ...] = ("ia", "on", "is", "us", "ara", "ine")
_ELEMENT_ROOTS: tuple[str, ...] = (
    "Ember", "Glimmer", "Tallow", "Sorrel", "Quarry", "Cobble", "Lantern", "Thistle", "Marrow",
    "Bramble", "Copper", "Pewter", "Saffron", "Cinder",
)  # fmt: skip
_ELEMENT_ENDS: tuple[str, ...] = ("ium", "ite", "ine", "on")
_COLOURS: tuple[str, ...] = (
    "silver", "amber", "crimson", "violet", "turquoise", "ivory", "bronze", "emerald",
    "charcoal", "golden", "scarlet", "indigo",
)  # fmt: skip
_INVENTIONS: tuple[str, ...] = (
    "folding umbrella", "pocket compass", "steam kettle", "glass lantern", "bicycle bell",
    "printing press", "brass telescope", "weather vane", "wind-up clock", "sewing machine",
    "rope bridge", "pocket microscope", "water pump", "weaving loom", "reading lamp",
    "spring scale", "diving helmet", "street lamp",
)  # fmt: skip
_SEAS: tuple[str, ...] = (
    "Grey Sea", "Amber Gulf", "Northern Sound", "Silent Bay", "Western Ocean", "Salt Marshes",
    "Copper Strait", "Misty Lagoon",
)  # fmt: skip
_RANGES: tuple[str, ...] = (
    "Iron Mountains", "Blue Hills", "Granite Peaks", "Whistling Downs", "Frost Ridge",
    "Shepherd Fells", "Cloud Plateau", "Bracken Moors",
)  # fmt: skip
_ORDINALS: tuple[str, ...] = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")
_MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_ITEMS: tuple[tuple[str, str], ...] = (
    ("notebook", "notebooks"), ("lantern", "lanterns"), ("scarf", "scarves"),
    ("teacup", "teacups"), ("umbrella", "umbrellas"), ("battery", "batteries"),
    ("blanket", "blankets"), ("helmet", "helmets"), ("kettle", "kettles"),
    ("mitten", "mittens"), ("napkin", "napkins"), ("paintbrush", "paintbrushes"),
    ("pillow", "pillows"), ("postcard", "postcards"), ("spoon", "spoons"), ("towel", "towels"),
    ("whistle", "whistles"), ("wrench", "wrenches"), ("jar", "jars"), ("basket", "baskets"),
)  # fmt: skip
_VEHICLES: tuple[str, ...] = ("cyclist", "tram", "ferry", "lorry", "coach", "hiker", "courier")
_SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a knowledgeable and practical companion.",
    "Answer as a concise, practical helper.",
    "You give friendly, down-to-earth advice.",
    "You are a calm assistant who explains things plainly.",
)


@dataclass(frozen=True)
class _Planet:
    name: str
    order: int
    moons: int
    day_hours: int
    year: int
    astronomer: str


@dataclass(frozen=True)
class _River:
    name: str
    length_km: int
    source: str
    sea: str
    towns: tuple[str, str]


@dataclass(frozen=True)
class _Element:
    name: str
    colour: str
    melting_point: int
    year: int
    chemist: str


@dataclass(frozen=True)
class _Inventor:
    name: str
    invention: str
    year: int
    town: str


@dataclass(frozen=True)
class _Atlas:
    planets: tuple[_Planet, ...]
    rivers: tuple[_River, ...]
    elements: tuple[_Element, ...]
    inventors: tuple[_Inventor, ...]
    towns: tuple[str, ...]
    people: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        """Its vocabulary: every name and word list, sorted (for category errors)."""
        names = {p.name for p in self.planets} | {r.name for r in self.rivers}
        names |= {e.name for e in self.elements} | set(self.towns) | set(self.people)
        listed = [*_COLOURS, *_MONTHS, *(w for pair in _ITEMS for w in pair), *_HERBS, *_DISHES]
        listed += [*_PLANTS, *_SUBJECTS, *_ANIMAL_CLASS, *_FOOD_CLASS, *_PRODUCTS]
        return tuple(sorted({w for name in [*names, *listed] for w in name.split()}))


def _distinct(count: int, make: Callable[[], str], taken: set[str]) -> list[str]:
    """``count`` new names from ``make``, none in ``taken`` (which is updated)."""
    names: list[str] = []
    while len(names) < count:
        name = make()
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _two(items: list[str]) -> tuple[str, str]:
    return items[0], items[1]


def _build_atlas(world_seed: int) -> _Atlas:
    """The atlas world of one seed: names drawn from English parts, facts with numbers."""
    rng = _rng("atlas", world_seed, "world")
    taken: set[str] = set()
    towns = _distinct(24, lambda: rng.choice(_PLACE_HEADS) + rng.choice(_PLACE_TAILS), taken)
    people = _distinct(
        24,
        lambda: (
            rng.choice(_FIRST_NAMES) + " " + rng.choice(_PLACE_HEADS) + rng.choice(_SURNAME_TAILS)
        ),
        taken,
    )
    planet_names = _distinct(8, lambda: rng.choice(_PLANET_ROOTS) + rng.choice(_PLANET_ENDS), taken)
    river_names = _distinct(
        8,
        lambda: rng.choice(_PLACE_HEADS) + rng.choice(("burn", "water", "wyn", "rush")),
        taken,
    )
    element_names = _distinct(
        8, lambda: rng.choice(_ELEMENT_ROOTS) + rng.choice(_ELEMENT_ENDS), taken
    )
    inventions = rng.sample(_INVENTIONS, 10)
    planets = tuple(
        _Planet(
            name,
            rng.randint(1, 7),
            rng.randint(0, 21),
            rng.randint(8, 60),
            rng.randint(1620, 1990),
            rng.choice(people),
        )
        for name in planet_names
    )
    rivers = tuple(
        _River(
            name,
            rng.randint(40, 2900),
            rng.choice(_RANGES),
            rng.choice(_SEAS),
            _two(rng.sample(towns, 2)),
        )
        for name in river_names
    )
    elements = tuple(
        _Element(
            name,
            rng.choice(_COLOURS),
            rng.randint(120, 3400),
            rng.randint(1700, 1960),
            rng.choice(people),
        )
        for name in element_names
    )
    inventors = tuple(
        _Inventor(person, invention, rng.randint(1650, 1950), rng.choice(towns))
        for person, invention in zip(rng.sample(people, 10), inventions, strict=True)
    )
    return _Atlas(planets, rivers, elements, inventors, tuple(towns), tuple(people))


def _other(rng: random.Random, options: Sequence[Any], value: Any) -> Any:
    """A value of ``options`` other than ``value``."""
    return rng.choice([option for option in options if option != value])


def _fill(
    rng: random.Random,
    user: str,
    answer: str,
    values: dict[str, Any],
    alternatives: dict[str, Sequence[Any]],
) -> _Exchange:
    """An exchange from templates; its wrong answer changes one slot of ``answer`` (a number
    is shifted, a word is another of its ``alternatives``)."""
    slots = [
        name
        for name in re.findall(r"{(\w+)}", answer)
        if isinstance(values[name], int) or name in alternatives
    ]
    slot = rng.choice(sorted(set(slots)))
    value = values[slot]
    wrong = _shift(rng, value) if isinstance(value, int) else _other(rng, alternatives[slot], value)
    return _Exchange(
        user.format(**values), answer.format(**values), answer.format(**{**values, slot: wrong})
    )


# -- cot: worked arithmetic ---------------------------------------------------------------------


def _cot_problem(atlas: _Atlas, rng: random.Random) -> tuple[str, list[str], int]:
    """A word problem: the question, the worked steps (``{R}`` is the result) and the result."""
    name = rng.choice(_FIRST_NAMES)
    item, items = rng.choice(_ITEMS)
    town = rng.choice(atlas.towns)
    task = rng.randrange(10)
    if task == 0:
        a, p, q = rng.randint(2, 9), rng.randint(2, 15), rng.randint(3, 30)
        item2 = _other(rng, [i for i, _ in _ITEMS], item)
        r1 = a * p
        question = (
            f"{name} buys {a} {items} at {p} dollars each and one {item2} for {q} dollars. "
            f"How much does {name} spend in total?"
        )
        steps = [
            f"The {items} cost {a} x {p} = {r1} dollars.",
            f"Adding the {item2} gives {r1} + {q} = {{R}} dollars.",
        ]
        return question, steps, r1 + q
    if task == 1:
        a, b = rng.randint(2, 30), rng.randint(5, 95)
        question = f"How many centimetres are there in {a} metres and {b} centimetres?"
        steps = [
            f"One metre is 100 centimetres, so {a} metres are {a} x 100 = {a * 100}.",
            f"Adding {b} centimetres gives {a * 100} + {b} = {{R}}.",
        ]
        return question, steps, a * 100 + b
    if task == 2:
        h, m = rng.randint(1, 4), rng.randint(5, 55)
        question = f"A film at the {town} cinema lasts {h} hours and {m} minutes. How many "
        question += "minutes is that?"
        steps = [
            f"Each hour has 60 minutes, so {h} hours are {h} x 60 = {h * 60} minutes.",
            f"Then {h * 60} + {m} = {{R}} minutes.",
        ]
        return question, steps, h * 60 + m
    if task == 3:
        note = rng.choice((20, 50, 100))
        cost = rng.randint(3, note - 1)
        question = (
            f"At the {town} market, {name} pays for groceries costing {cost} dollars with a "
            f"{note}-dollar note. How much change should {name} get?"
        )
        steps = [f"The change is the note minus the cost: {note} - {cost} = {{R}} dollars."]
        return question, steps, note - cost
    if task == 4:
        vehicle = rng.choice(_VEHICLES)
        v, t = rng.randint(4, 60), rng.randint(2, 9)
        question = f"A {vehicle} travels at {v} kilometres per hour for {t} hours. How far does "
        question += f"the {vehicle} go?"
        steps = [
            "Distance is speed multiplied by time.",
            f"So the distance is {v} x {t} = {{R}} kilometres.",
        ]
        return question, steps, v * t
    if task == 5:
        servings, per = rng.randint(2, 6), rng.randint(20, 90)
        k = rng.randint(2, 4)
        grams = servings * per
        question = (
            f"A recipe uses {grams} grams of flour for {servings} servings. How many grams of "
            f"flour are needed for {servings * k} servings?"
        )
        steps = [
            f"One serving needs {grams} / {servings} = {per} grams.",
            f"For {servings * k} servings we need {per} x {servings * k} = {{R}} grams.",
        ]
        return question, steps, per * servings * k
    if task == 6:
        weekly, weeks = rng.randint(5, 40), rng.randint(3, 20)
        question = (
            f"{name} saves {weekly} dollars every week for a new {item}. How much has {name} "
            f"saved after {weeks} weeks?"
        )
        steps = [
            f"Each week adds {weekly} dollars.",
            f"After {weeks} weeks: {weekly} x {weeks} = {{R}} dollars.",
        ]
        return question, steps, weekly * weeks
    if task == 7:
        rows, seats = rng.randint(5, 25), rng.randint(8, 30)
        taken = rng.randint(1, rows * seats - 1)
        question = (
            f"The {town} theatre has {rows} rows with {seats} seats in each row, and {taken} "
            "seats are already sold. How many seats are still free?"
        )
        steps = [
            f"The theatre has {rows} x {seats} = {rows * seats} seats.",
            f"Free seats: {rows * seats} - {taken} = {{R}}.",
        ]
        return question, steps, rows * seats - taken
    if task == 8:
        start_h, start_m = rng.randint(6, 18), rng.choice((0, 10, 15, 20, 30, 40, 45))
        duration = rng.randint(20, 170)
        question = (
            f"A train leaves {town} at {start_h}:{start_m:02d} and the journey takes {duration} "
            "minutes. How many minutes after midnight does it arrive?"
        )
        depart = start_h * 60 + start_m
        steps = [
            f"It leaves {start_h} x 60 + {start_m} = {depart} minutes after midnight.",
            f"It arrives {depart} + {duration} = {{R}} minutes after midnight.",
        ]
        return question, steps, depart + duration
    kilos, grams = rng.randint(2, 12), rng.randint(50, 950)
    question = f"A parcel weighs {kilos} kilograms and its wrapping adds {grams} grams. What is "
    question += "the total weight in grams?"
    steps = [
        f"{kilos} kilograms are {kilos} x 1000 = {kilos * 1000} grams.",
        f"With the wrapping: {kilos * 1000} + {grams} = {{R}} grams.",
    ]
    return question, steps, kilos * 1000 + grams


_COT_OPENINGS: tuple[str, ...] = (
    "Let us work it out.", "Here is the working.", "Step by step:", "We can solve this in steps.",
)  # fmt: skip


def _atlas_cot(atlas: _Atlas, rng: random.Random) -> _Conversation:
    question, steps, result = _cot_problem(atlas, rng)
    opening = rng.choice(_COT_OPENINGS)

    def render(value: int) -> str:
        body = "\n".join(steps).replace("{R}", str(value))
        return f"{opening}\n{body}\nThe answer is {value}."

    return _Conversation((_Exchange(question, render(result), render(_shift(rng, result))),))


# -- dolly: passages, closed and open questions, summaries, extraction --------------------------


def _planet_passage(planet: _Planet) -> str:
    return (
        f"{planet.name} is the {_ORDINALS[planet.order - 1]} planet from its star. It has "
        f"{planet.moons} moons, and a single day there lasts {planet.day_hours} hours. The "
        f"astronomer {planet.astronomer} first described it in {planet.year}."
    )


def _river_passage(river: _River) -> str:
    return (
        f"The {river.name} rises in the {river.source} and flows for {river.length_km} "
        f"kilometres before it reaches the {river.sea}. The towns of {river.towns[0]} and "
        f"{river.towns[1]} stand on its banks."
    )


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _element_passage(element: _Element) -> str:
    return (
        f"{element.name} is {_a(element.colour)} metal that melts at {element.melting_point} "
        f"degrees Celsius. The chemist {element.chemist} isolated it in {element.year}."
    )


def _inventor_passage(inventor: _Inventor) -> str:
    return (
        f"{inventor.name} grew up in {inventor.town} and built the first {inventor.invention} "
        f"in {inventor.year}, working alone in a small rented workshop."
    )


def _atlas_dolly(atlas: _Atlas, rng: random.Random) -> _Conversation:
    topic = rng.choice(("planet", "river", "element", "inventor"))
    task = rng.choices(("closed_qa", "open_qa", "summary", "extraction"), (4, 2, 2, 1))[0]
    people = atlas.people
    if topic == "planet":
        entity = rng.choice(atlas.planets)
        passage = _planet_passage(entity)
        values: dict[str, Any] = {
            "n": entity.name,
            "moons": entity.moons,
            "hours": entity.day_hours,
            "who": entity.astronomer,
            "year": entity.year,
        }
        alternatives: dict[str, Sequence[Any]] = {"who": people}
        questions = (
            ("According to the passage, how many moons does {n} have?", "{n} has {moons} moons."),
            ("How long is a day on {n}, based on the text?", "A day on {n} lasts {hours} hours."),
            ("Who first described {n}, and when?", "{who} first described {n} in {year}."),
        )
        open_qa = ("How many moons does the planet {n} have?", "{n} has {moons} moons.")
        summary = "{n} is a planet with {moons} moons that {who} described in {year}."
        extract = (
            "List the numbers that appear in this passage.",
            "- {moons}\n- {hours}\n- {year}",
        )
    elif topic == "river":
        entity = rng.choice(atlas.rivers)
        passage = _river_passage(entity)
        values = {
            "n": entity.name,
            "km": entity.length_km,
            "source": entity.source,
            "sea": entity.sea,
            "t1": entity.towns[0],
            "t2": entity.towns[1],
        }
        alternatives = {"source": _RANGES, "sea": _SEAS, "t1": atlas.towns, "t2": atlas.towns}
        questions = (
            ("How long is the {n}, according to the passage?", "The {n} is {km} kilometres long."),
            ("Where does the {n} end?", "The {n} flows into the {sea}."),
            ("In which mountains does the {n} begin?", "The {n} rises in the {source}."),
        )
        open_qa = ("Which sea does the river {n} flow into?", "The {n} flows into the {sea}.")
        summary = "The {n} runs {km} kilometres from the {source} to the {sea}."
        extract = ("Extract the names of the towns mentioned in the passage.", "- {t1}\n- {t2}")
    elif topic == "element":
        entity = rng.choice(atlas.elements)
        passage = _element_passage(entity)
        values = {
            "n": entity.name,
            "colour": entity.colour,
            "mp": entity.melting_point,
            "who": entity.chemist,
            "year": entity.year,
        }
        alternatives = {"colour": _COLOURS, "who": people}
        questions = (
            ("At what temperature does {n} melt?", "{n} melts at {mp} degrees Celsius."),
            ("What colour is {n}, based on the text?", "{n} is a metal of {colour} colour."),
            ("Who isolated {n}?", "The chemist {who} isolated {n} in {year}."),
        )
        open_qa = (
            "In which year was the element {n} first isolated?",
            "{n} was first isolated in {year} by {who}.",
        )
        summary = "{n}, a metal of {colour} colour, melts at {mp} degrees; {who} isolated it."
        extract = (
            "Extract the melting point and the year from the passage.",
            "Melting point: {mp} degrees Celsius\nYear: {year}",
        )
    else:
        entity = rng.choice(atlas.inventors)
        passage = _inventor_passage(entity)
        values = {
            "n": entity.name,
            "thing": entity.invention,
            "year": entity.year,
            "town": entity.town,
        }
        alternatives = {"thing": _INVENTIONS, "town": atlas.towns, "n": people}
        questions = (
            ("What did {n} build, according to the passage?", "{n} built the first {thing}."),
            ("Where did {n} grow up?", "{n} grew up in {town}."),
            (
                "In which year was the first {thing} built?",
                "The first {thing} was built in {year}.",
            ),
        )
        open_qa = ("Who invented the {thing}?", "{n} invented the {thing} in {year}.")
        summary = "{n} of {town} built the first {thing} in {year}."
        extract = (
            "Extract the person's name and the year from the passage.",
            "Name: {n}\nYear: {year}",
        )
    if task == "closed_qa":
        ask, answer = rng.choice(questions)
        intro = rng.choice(
            (
                "Read the passage and answer the question.",
                "Answer the question using only the text below.",
            )
        )
        user = f"{intro}\n{passage}\n{ask}"
    elif task == "open_qa":
        user, answer = open_qa
    elif task == "summary":
        user = (
            rng.choice(
                (
                    "Summarise the following passage in one sentence.\n",
                    "Give a one-sentence summary of this text:\n",
                )
            )
            + passage
        )
        answer = summary
    else:
        user, answer = f"{passage}\n{extract[0]}", extract[1]
    return _Conversation((_fill(rng, user, answer, values, alternatives),))


# -- flan_v2: classification and extraction instructions ----------------------------------------

_HEADLINES: dict[str, tuple[str, ...]] = {
    "sports": (
        "{town} Rovers win the cup after a dramatic penalty shootout",
        "Young sprinter breaks the {town} record in the relay final",
        "{town} rowing crew finishes second at the summer regatta",
        "Veteran goalkeeper signs a new contract with {town} United",
    ),
    "politics": (
        "Mayor of {town} announces a new budget for public libraries",
        "Parliament debates reform of regional transport taxes",
        "Council elections in {town} see a record turnout",
        "Minister resigns after a dispute over housing policy",
    ),
    "science": (
        "Astronomers measure a new moon orbiting {planet}",
        "Chemists find a cheaper way to purify {element}",
        "Telescope images reveal enormous storms on {planet}",
        "Laboratory study explains why {element} glows when heated",
    ),
    "business": (
        "{town} bakery chain opens twelve new branches",
        "Shares in kettle makers rise after strong holiday sales",
        "Factory in {town} hires two hundred new workers",
        "Small shops report falling profits as rents increase",
    ),
    "weather": (
        "Heavy snow expected across the {range} this weekend",
        "Flood warnings issued for towns along the {river}",
        "Heatwave brings record temperatures to {town}",
        "Strong winds cancel ferries on the {sea}",
    ),
}
_TOPIC_ASKS: tuple[str, ...] = (
    "Classify the topic of this headline as sports, politics, science, business or weather.\n"
    "Headline: {h}",
    "Headline: {h}\nWhich newspaper section does this headline belong to? Options: sports, "
    "politics, science, business, weather.",
    "What is the topic of the following headline (sports, politics, science, business or "
    "weather)?\n{h}",
)
_EVENTS: tuple[str, ...] = (
    "harvest festival", "annual regatta", "lantern parade", "flower show", "chess tournament",
    "book fair", "cheese market", "brass band contest",
)  # fmt: skip
_ANIMAL_CLASS: dict[str, str] = {
    "walrus": "mammal", "hedgehog": "mammal", "gorilla": "mammal", "dolphin": "mammal",
    "camel": "mammal", "pelican": "bird", "sparrow": "bird", "penguin": "bird",
    "flamingo": "bird", "woodpecker": "bird", "iguana": "reptile", "tortoise": "reptile",
    "gecko": "reptile", "cobra": "reptile", "alligator": "reptile", "salmon": "fish",
    "tuna": "fish", "trout": "fish", "herring": "fish", "mackerel": "fish", "beetle": "insect",
    "wasp": "insect", "dragonfly": "insect", "cricket": "insect", "moth": "insect",
}  # fmt: skip
_FOOD_CLASS: dict[str, str] = {
    "apricot": "fruit", "papaya": "fruit", "blueberry": "fruit", "raspberry": "fruit",
    "pineapple": "fruit", "spinach": "vegetable", "turnip": "vegetable",
    "broccoli": "vegetable", "cabbage": "vegetable", "parsnip": "vegetable", "barley": "grain",
    "quinoa": "grain", "millet": "grain", "oats": "grain", "buckwheat": "grain",
    "cumin": "spice", "nutmeg": "spice", "paprika": "spice", "cinnamon": "spice",
    "turmeric": "spice",
}  # fmt: skip
_PRODUCTS: tuple[str, ...] = (
    "blender", "backpack", "headphones", "desk lamp", "toaster", "raincoat", "bicycle pump",
    "suitcase", "alarm clock", "hair dryer",
)  # fmt: skip
_GOOD: tuple[str, ...] = ("sturdy", "reliable", "comfortable", "elegant", "durable", "handy")
_BAD: tuple[str, ...] = ("flimsy", "leaky", "scratched", "wobbly", "faulty", "fragile")
_UNITS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS: tuple[str, ...] = (
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)  # fmt: skip


def _number_words(n: int) -> str:
    """English words for 0 <= n < 1000 ("three hundred and forty-two")."""
    if n >= 100:
        rest = n % 100
        head = f"{_UNITS[n // 100]} hundred"
        return head if rest == 0 else f"{head} and {_number_words(rest)}"
    if n < 20:
        return _UNITS[n]
    return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _UNITS[n % 10])


def _atlas_flan(atlas: _Atlas, rng: random.Random) -> _Conversation:
    task = rng.randrange(9)
    town, person = rng.choice(atlas.towns), rng.choice(atlas.people)
    if task == 0:
        topic = rng.choice(sorted(_HEADLINES))
        headline = rng.choice(_HEADLINES[topic]).format(
            town=town,
            planet=rng.choice(atlas.planets).name,
            element=rng.choice(atlas.elements).name,
            range=rng.choice(_RANGES),
            river=rng.choice(atlas.rivers).name,
            sea=rng.choice(_SEAS),
        )
        user = rng.choice(_TOPIC_ASKS).format(h=headline)
        return _Conversation((_Exchange(user, topic, _other(rng, sorted(_HEADLINES), topic)),))
    if task == 1:
        values: dict[str, Any] = {
            "day": rng.randint(4, 18),
            "month": rng.choice(_MONTHS),
            "year": rng.randint(1890, 2024),
        }
        sentence = rng.choice(
            (
                f"The {rng.choice(_EVENTS)} in {town} took place on {{day}} {{month}} {{year}}.",
                f"{person} signed the lease on {{day}} {{month}} {{year}}, before the fair.",
                f"On {{day}} {{month}} {{year}}, the new bridge over the "
                f"{rng.choice(atlas.rivers).name} opened.",
            )
        )
        user = (
            rng.choice(
                (
                    "Extract the date from the following sentence.\n",
                    "Which date is mentioned here?\n",
                )
            )
            + sentence
        )
        return _Conversation(
            (_fill(rng, user, "{day} {month} {year}", values, {"month": _MONTHS}),)
        )
    if task == 2:
        sentence = rng.choice(
            (
                f"Yesterday {person} repaired the old clock tower in {town}.",
                f"The prize for the best pie went to {person} of {town}.",
                f"Visitors to {town} can now tour the garden planted by {person}.",
            )
        )
        user = (
            rng.choice(
                (
                    "Extract the name of the person mentioned in this sentence: ",
                    "Who is named in the following sentence? ",
                )
            )
            + sentence
        )
        return _Conversation((_Exchange(user, person, _other(rng, atlas.people, person)),))
    if task == 3:
        animal = rng.choice(sorted(_ANIMAL_CLASS))
        kind = _ANIMAL_CLASS[animal]
        user = rng.choice(
            (
                f"Classify the following animal as a mammal, a bird, a reptile, a fish or an "
                f"insect: {animal}.",
                f"Is a {animal} a mammal, a bird, a reptile, a fish or an insect?",
            )
        )
        wrong = _other(rng, sorted(set(_ANIMAL_CLASS.values())), kind)
        return _Conversation((_Exchange(user, kind, wrong),))
    if task == 4:
        food = rng.choice(sorted(_FOOD_CLASS))
        kind = _FOOD_CLASS[food]
        user = rng.choice(
            (
                f"Is {food} a fruit, a vegetable, a grain or a spice?",
                f"Categorise this food as fruit, vegetable, grain or spice: {food}",
            )
        )
        wrong = _other(rng, sorted(set(_FOOD_CLASS.values())), kind)
        return _Conversation((_Exchange(user, f"It is a {kind}.", f"It is a {wrong}."),))
    if task == 5:
        number = rng.randint(21, 999)
        user = rng.choice(
            (
                f"Write the number {_number_words(number)} in digits.",
                f"Convert to digits: {_number_words(number)}",
            )
        )
        return _Conversation((_Exchange(user, str(number), str(_shift(rng, number))),))
    if task == 6:
        item = rng.choice(_ITEMS)[0]
        values = {"price": rng.randint(2, 180)}
        user = rng.choice(
            (
                f"Extract the price from this sentence: The {item} costs {{price}} dollars at the "
                f"{town} market.",
                f"How much does the {item} cost? A stall in {town} sells the {item} for {{price}} "
                "dollars.",
            )
        )
        return _Conversation((_fill(rng, user, "{price} dollars", values, {}),))
    if task == 7:
        product = rng.choice(_PRODUCTS)
        good = rng.random() < 0.5
        words = rng.sample(_GOOD if good else _BAD, 2)
        review = (
            f"The {product} arrived quickly and feels {words[0]}. It is {words[1]} and I would "
            "buy it again."
            if good
            else f"The {product} is {words[0]} and stopped working after a week. Very {words[1]}."
        )
        user = rng.choice(
            (
                "Does the following review say the customer is satisfied? Answer yes or no.\n"
                f"Review: {review}",
                f"{review}\nIs this customer happy with the purchase? Answer yes or no.",
            )
        )
        answer = "yes" if good else "no"
        return _Conversation((_Exchange(user, answer, "no" if good else "yes"),))
    table = _ANIMAL_CLASS if rng.random() < 0.5 else _FOOD_CLASS
    kind = rng.choice(sorted(set(table.values())))
    same = rng.sample(sorted(w for w, k in table.items() if k == kind), 3)
    odd = rng.choice(sorted(w for w, k in table.items() if k != kind))
    words = [*same, odd]
    rng.shuffle(words)
    user = f"Which word does not belong with the others: {', '.join(words)}?"
    return _Conversation((_Exchange(user, odd, rng.choice(same)),))


# -- oasst1: practical multi-turn chat ----------------------------------------------------------

_DISHES: tuple[str, ...] = (
    "lentil soup", "vegetable curry", "mushroom risotto", "roast chicken", "chickpea stew",
    "omelette", "focaccia", "pancakes", "shepherd's pie", "ratatouille", "gnocchi", "fish pie",
    "frittata", "minestrone",
)  # fmt: skip
_HERBS: tuple[str, ...] = (
    "basil", "thyme", "rosemary", "oregano", "parsley", "coriander", "dill", "sage", "chives",
    "mint", "tarragon",
)  # fmt: skip
_INGREDIENTS: tuple[str, ...] = (
    "garlic", "ginger", "shallots", "leeks", "courgette", "aubergine", "celery", "fennel",
    "spring onions", "red pepper",
)  # fmt: skip
_TRANSPORT: tuple[str, ...] = ("train", "ferry", "coach", "bicycle", "tram", "rental car")
_SEASONS: tuple[str, ...] = ("spring", "summer", "autumn", "winter")
_PACKING: tuple[str, ...] = (
    "raincoat", "pair of walking boots", "sun hat", "power adapter", "travel pillow", "guidebook",
)  # fmt: skip
_PLANTS: tuple[str, ...] = (
    "courgettes", "lettuces", "strawberries", "sunflowers", "lavender", "peppers", "cucumbers",
    "marigolds", "sweet peas", "dahlias",
)  # fmt: skip
_FERTILISERS: tuple[str, ...] = (
    "compost", "seaweed feed", "bone meal", "well-rotted manure", "liquid feed",
)  # fmt: skip
_SUBJECTS: tuple[str, ...] = (
    "chemistry", "history", "algebra", "geography", "biology", "economics", "literature",
    "physics", "statistics", "philosophy",
)  # fmt: skip
_TECHNIQUES: tuple[str, ...] = (
    "flashcards", "practice tests", "spaced repetition", "mind maps", "written summaries",
    "past papers",
)  # fmt: skip

# per topic: openers (user phrasings, answer), follow-ups (user, answer); {slots} from values
_CHATS: dict[str, tuple[tuple[tuple[str, ...], str], tuple[tuple[str, str], ...]]] = {
    "cooking": (
        (
            ("How do I make a good {dish}?", "I'd like to cook {dish} tonight. Any tips?",
             "What's the secret to a tasty {dish}?"),
            "Start by softening the {ingredient} in olive oil, then add the rest and let it cook "
            "for about {minutes} minutes. Finish with a handful of fresh {herb}.",
        ),
        (
            ("What oven temperature should I use?",
             "Bake it at {temp} degrees Celsius for around {bake} minutes, until the top turns "
             "golden."),
            ("Which herb would you add?",
             "I would add fresh {herb} near the end so that it keeps its flavour."),
            ("Can I replace the {ingredient}?",
             "Yes, {substitute} works well instead; use about {grams} grams."),
            ("How long will the leftovers keep?",
             "In a sealed container in the fridge, it keeps for {days} days."),
        ),
    ),
    "travel": (
        (
            ("I'm planning a trip to {town}. Any advice?",
             "What should I know before visiting {town}?", "Is {town} worth a visit?"),
            "{town} is at its best in {season}. Plan on about {days} days and use the "
            "{transport} to get between the sights.",
        ),
        (
            ("How much should I budget per day?",
             "A comfortable budget is around {budget} euros a day, including meals and local "
             "transport."),
            ("What should I pack?",
             "Bring a {item}, a few warm layers and a refillable water bottle."),
            ("How do I get into town from the airport?",
             "The {transfer} is the easiest option; the ride takes about {minutes} minutes."),
            ("Any tips for saving money there?",
             "Buy a travel pass for {days} days and eat lunch at the markets, which costs far less "
             "than dinner out."),
        ),
    ),
    "gardening": (
        (
            ("When should I plant {plant}?",
             "I want to grow {plant} this year. When do I start?",
             "What's the best time to sow {plant}?"),
            "Sow {plant} in {month}, about {spacing} centimetres apart, once the soil has "
            "warmed up.",
        ),
        (
            ("How often should I water them?",
             "Give them about {litres} litres of water every {every} days, and more during hot "
             "spells."),
            ("Do they need any fertiliser?",
             "A monthly dose of {fertiliser} keeps them healthy and productive."),
            ("How long until they're ready?",
             "You can expect the first harvest or flowers after roughly {weeks} weeks."),
            ("Could I grow them in pots?",
             "Pots work if they are at least {depth} centimetres deep and stand in full sun."),
        ),
    ),
    "study": (
        (
            ("How can I study better for my {subject} exam?", "Any tips for revising {subject}?",
             "I keep struggling with {subject}. How should I study?"),
            "Try {technique} and work in focused sessions of about {minutes} minutes, with a "
            "short break after each.",
        ),
        (
            ("How many hours a week should I revise?",
             "Around {hours} hours a week, spread over several days, works well for most "
             "students."),
            ("When should I start revising?",
             "Start about {weeks} weeks before the exam so that you can go over everything "
             "twice."),
            ("What should I do the night before?",
             "Look over your {review} briefly, then get at least {sleep} hours of sleep."),
            ("How long should my breaks be?",
             "Keep breaks to about {pause} minutes; stand up, stretch and drink some water."),
        ),
    ),
}  # fmt: skip


def _chat_values(
    topic: str, atlas: _Atlas, rng: random.Random
) -> tuple[dict[str, Any], dict[str, Sequence[Any]]]:
    """The slot values of one chat and the alternatives of its word slots."""
    if topic == "cooking":
        ingredient, substitute = rng.sample(_INGREDIENTS, 2)
        values: dict[str, Any] = {
            "dish": rng.choice(_DISHES),
            "ingredient": ingredient,
            "substitute": substitute,
            "herb": rng.choice(_HERBS),
            "minutes": rng.randrange(10, 61, 5),
            "temp": rng.randrange(160, 231, 10),
            "bake": rng.randrange(15, 61, 5),
            "grams": rng.randrange(50, 401, 25),
            "days": rng.randint(2, 5),
        }
        return values, {"herb": _HERBS, "ingredient": _INGREDIENTS, "substitute": _INGREDIENTS}
    if topic == "travel":
        transport, transfer = rng.sample(_TRANSPORT, 2)
        values = {
            "town": rng.choice(atlas.towns),
            "season": rng.choice(_SEASONS),
            "days": rng.randint(2, 14),
            "transport": transport,
            "transfer": transfer,
            "budget": rng.randrange(40, 201, 10),
            "item": rng.choice(_PACKING),
            "minutes": rng.randrange(15, 91, 5),
        }
        return values, {
            "season": _SEASONS,
            "transport": _TRANSPORT,
            "transfer": _TRANSPORT,
            "item": _PACKING,
        }
    if topic == "gardening":
        values = {
            "plant": rng.choice(_PLANTS),
            "month": rng.choice(_MONTHS[1:7]),
            "spacing": rng.randrange(10, 61, 5),
            "litres": rng.randint(1, 10),
            "every": rng.randint(2, 7),
            "fertiliser": rng.choice(_FERTILISERS),
            "weeks": rng.randint(6, 20),
            "depth": rng.randrange(20, 61, 5),
        }
        return values, {"month": _MONTHS[1:7], "fertiliser": _FERTILISERS}
    technique, review = rng.sample(_TECHNIQUES, 2)
    values = {
        "subject": rng.choice(_SUBJECTS),
        "technique": technique,
        "review": review,
        "minutes": rng.randrange(25, 51, 5),
        "hours": rng.randint(4, 15),
        "weeks": rng.randint(2, 8),
        "sleep": rng.randint(7, 9),
        "pause": rng.randint(5, 15),
    }
    return values, {"technique": _TECHNIQUES, "review": _TECHNIQUES}


def _atlas_oasst(atlas: _Atlas, rng: random.Random) -> _Conversation:
    topic = rng.choice(sorted(_CHATS))
    (openers, first_answer), follow_ups = _CHATS[topic]
    values, alternatives = _chat_values(topic, atlas, rng)
    n_turns = rng.choices((1, 2, 3), (3, 4, 3))[0]
    turns = [(rng.choice(openers), first_answer), *rng.sample(follow_ups, n_turns - 1)]
    exchanges = []
    for index, (user, answer) in enumerate(turns):
        if index > 0 and rng.random() < 0.3:
            user = rng.choice(("Thanks! ", "Great, thank you. ", "Okay. ")) + user
        exchanges.append(_fill(rng, user, answer, values, alternatives))
    system = rng.choice(_SYSTEM_PROMPTS) if rng.random() < 0.35 else None
    return _Conversation(tuple(exchanges), system)


_ATLAS_GENERATORS: dict[str, Callable[[_Atlas, random.Random], _Conversation]] = {
    "cot": _atlas_cot,
    "dolly": _atlas_dolly,
    "flan_v2": _atlas_flan,
    "oasst1": _atlas_oasst,
}


# ----------------------------------------------------------------------------------------------
# the pools


def _generator(
    world: str, world_seed: int, dataset: str
) -> tuple[Callable[[random.Random], _Conversation], tuple[str, ...]]:
    """The conversation generator of one dataset of a world, and the world's vocabulary."""
    if world == "demo":
        demo = _build_world(world_seed)
        generate = _GENERATORS[dataset]
        names = [country.name for country in demo.countries] + demo.values("language")
        words = sorted({*_OBJECTS, *_ANIMALS, *_SORT_WORDS, *_LEXICON_ENGLISH, *names})
        return (lambda rng: generate(demo, rng)), tuple(words)
    atlas = _build_atlas(world_seed)
    atlas_generate = _ATLAS_GENERATORS[dataset]
    return (lambda rng: atlas_generate(atlas, rng)), atlas.words


def build_noise_family(
    out_dir: str | Path,
    *,
    world: str = "demo",
    world_seed: int = 0,
    seed: int = 1,
    examples_per_dataset: int = 500,
    noise_fraction: float = 0.3,
    kinds: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a labelled pool of planted noise; return ``{"counts", "planted"}``.

    Writes ``out_dir/pool/{dataset}/{dataset}_data.jsonl`` (``{"dataset", "id", "messages"}``
    records, LESS messages) and ``out_dir/noise_labels.jsonl`` (one line per example:
    ``{"dataset", "id", "planted", "kind", "family", "severity"}``; clean examples have kind and
    family ``"clean"`` and severity ``"none"``).

    Parameters
    ----------
    world
        ``"demo"`` or ``"atlas"`` (:data:`WORLDS`).
    world_seed
        Draws the world (for ``demo``, give the demo's seed, 0 by default, to get its world).
    seed
        Draws the conversations and the noise, on generators of their own per dataset.
    examples_per_dataset, noise_fraction
        ``round(noise_fraction * examples_per_dataset)`` examples of each dataset are planted,
        spread evenly over the (kind, severity) pairs: cycled through (the cycle goes on in the
        next dataset, so that a small pool still has every pair once), then shuffled.
    kinds
        The kinds to plant (default: all of :data:`KINDS`, in its order).

    Returns
    -------
    ``{"counts": {dataset: n}, "planted": {dataset: {kind: n}}}``.
    """
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; valid worlds: {', '.join(WORLDS)}")
    chosen = list(KINDS) if kinds is None else list(kinds)
    unknown = [kind for kind in chosen if kind not in KINDS]
    if unknown or not chosen:
        raise ValueError(f"unknown or no kinds {unknown}; valid kinds: {', '.join(KINDS)}")
    chosen = [kind for kind in KINDS if kind in chosen]  # documented order, no repeats
    if examples_per_dataset < 2:
        raise ValueError("examples_per_dataset must be at least 2")
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise_fraction must be in [0, 1], not {noise_fraction}")
    pairs = [(kind, severity) for kind in chosen for severity in SEVERITIES]
    out = Path(out_dir)
    labels: list[dict[str, Any]] = []
    planted: dict[str, dict[str, int]] = {}
    offset = 0  # the cycle goes on from dataset to dataset: every pair occurs where it can
    for dataset in DATASETS:
        generate, world_words = _generator(world, world_seed, dataset)
        conversation_rng = _rng(world, world_seed, seed, "conversations", dataset)
        rng = _rng(world, world_seed, seed, "noise", dataset)
        conversations = [generate(conversation_rng) for _ in range(examples_per_dataset)]
        n_planted = round(noise_fraction * examples_per_dataset)
        positions = rng.sample(range(examples_per_dataset), n_planted)
        noise = [pairs[(offset + i) % len(pairs)] for i in range(n_planted)]
        offset += n_planted
        rng.shuffle(noise)
        noise_at = dict(zip(positions, noise, strict=True))
        records = []
        for position, conversation in enumerate(conversations):
            sample_id = f"{dataset}_{position}"
            label: dict[str, Any] = {"dataset": dataset, "id": sample_id}
            if position in noise_at:
                kind, severity = noise_at[position]
                candidates = rng.sample(
                    [i for i in range(examples_per_dataset) if i != position],
                    min(8, examples_per_dataset - 1),
                )
                messages = plant(
                    kind,
                    severity,
                    conversation.messages(),
                    other_messages=[conversations[i].messages() for i in candidates],
                    wrong_messages=conversation.messages(wrong=True),
                    rng=rng,
                    world_words=world_words,
                )
                label |= {"planted": True, "kind": kind, "family": KINDS[kind]}
                label["severity"] = severity
            else:
                messages = conversation.messages()
                label |= {"planted": False, "kind": CLEAN, "family": CLEAN, "severity": "none"}
            records.append({"dataset": dataset, "id": sample_id, "messages": messages})
            labels.append(label)
        path = out / "pool" / dataset / f"{dataset}_data.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        planted[dataset] = dict(sorted(Counter(kind for kind, _ in noise).items()))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "noise_labels.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps(label) + "\n" for label in labels)
    return {"counts": {d: examples_per_dataset for d in DATASETS}, "planted": planted}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.noise_family OUT_DIR [--world demo|atlas] [--world-seed N] [--seed N]``;
    prints the counts."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.noise_family",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir")
    parser.add_argument("--world", choices=WORLDS, default="demo")
    parser.add_argument(
        "--world-seed",
        type=int,
        default=0,
        help="the world's seed (demo: the demo's seed, 0 in config/config.yaml)",
    )
    parser.add_argument("--seed", type=int, default=1, help="draws conversations and noise")
    parser.add_argument("--examples-per-dataset", type=int, default=500)
    parser.add_argument("--noise-fraction", type=float, default=0.3)
    args = parser.parse_args(argv)
    result = build_noise_family(
        args.out_dir,
        world=args.world,
        world_seed=args.world_seed,
        seed=args.seed,
        examples_per_dataset=args.examples_per_dataset,
        noise_fraction=args.noise_fraction,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
