"""SpellingBee and SimpleSpelling: synthetic spelling tasks from the packaged word list.

SpellingBee asks how many times a letter occurs in a word (in several languages and phrasings).
The answer spells the word out, counts by hand, checks the count with a python tool call
(`'word'.count('l')`) and ends with `#### N`, scored like GSM8K. Example i of the train split is
generated from `random.Random(i)`, of the test split from `random.Random(10_000_000 + i)`, so
both are reproducible and disjoint in seed.

SimpleSpelling (training data only) teaches spelling itself: "Spell the word: cat" -> "cat:c,a,t".

The words are SCOWL's american-english-large list packaged with nanochat (115,188 words).
"""

from __future__ import annotations

import random
from functools import lru_cache

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, Task
from nanochat.tasks.gsm8k import extract_answer

WORDS_FILE = "tasks/words_scowl_large.txt"
TEST_SEED_OFFSET = 10_000_000
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# {letter} and {word} are filled in; quotes and the question mark are added at random.
TEMPLATES = (
    "How many {letter} are in the word {word}",
    "How many times does the letter {letter} appear in {word}",
    "Count the letter {letter} in the word {word}",
    "How often does {letter} occur in {word}",
    "In the word {word}, how many {letter}s are there",
    "What is the number of {letter} letters in {word}",
    "Tell me how many {letter} there are in {word}",
    "Can you count how many times {letter} shows up in {word}",
    "How many occurrences of the letter {letter} does {word} have",
    "Number of {letter} in {word}",
    "¿Cuántas {letter} hay en la palabra {word}",
    "¿Cuántas veces aparece la letra {letter} en {word}",
    "Combien de {letter} y a-t-il dans le mot {word}",
    "Combien de fois la lettre {letter} apparaît-elle dans {word}",
    "Wie viele {letter} sind im Wort {word}",
    "Wie oft kommt der Buchstabe {letter} in {word} vor",
    "Quantas letras {letter} há na palavra {word}",
    "Quante {letter} ci sono nella parola {word}",
    "{word} 这个词里有几个 {letter}",
    "单词 {word} 中字母 {letter} 出现了几次",
    "{word} という単語に {letter} はいくつありますか",
    "{word} 에 {letter} 가 몇 개 있나요",
)


@lru_cache(maxsize=1)
def load_words() -> tuple[str, ...]:
    from nanochat.data.resources import open_resource

    with open_resource(WORDS_FILE) as f:
        words = tuple(w.strip() for w in f if w.strip())
    if not words:
        raise NanochatError(f"the packaged word list {WORDS_FILE} is empty; reinstall nanochat")
    return words


def _quote(rng: random.Random, s: str) -> str:
    q = rng.choice(("", "", "'", '"'))
    return f"{q}{s}{q}"


def spelling_answer(word: str, letter: str) -> list[dict]:
    """The assistant's parts: spell, count by hand, check with a python call, give `#### N`."""
    count = 0
    steps = []
    for i, ch in enumerate(word, 1):
        if ch == letter:
            count += 1
            steps.append(f"{i}. {ch} <- {letter} number {count}")
        else:
            steps.append(f"{i}. {ch}")
    by_hand = (
        f"I need to count the letter '{letter}' in the word '{word}'. First I spell the word out:\n\n"
        f"{word}: {','.join(word)}\n\nNow I go through it letter by letter:\n" + "\n".join(steps) + f"\n\nBy hand I count {count}. Let me check that with Python:\n\n"
    )
    return [
        {"type": "text", "text": by_hand},
        {"type": "python", "text": f"'{word}'.count('{letter}')"},
        {"type": "python_output", "text": str(count)},
        {"type": "text", "text": f"\n\nPython agrees: the letter '{letter}' appears {count} time{'s' if count != 1 else ''} in '{word}'.\n\n#### {count}"},
    ]


def _seed(split: str, index: int) -> int:
    if split not in ("train", "test"):
        raise NanochatError(f"unknown split {split!r}; use train or test")
    return index if split == "train" else TEST_SEED_OFFSET + index


class SpellingBee(Task):
    name = "SpellingBee"
    eval_type = "generative"
    random_baseline = 0.0

    def __init__(self, size: int = 1000, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        _seed(split, 0)
        self.size = size
        self.split = split
        self.words = load_words()
        self.data_source = f"synthetic from packaged:{WORDS_FILE} ({len(self.words):,} words)"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        rng = random.Random(_seed(self.split, index))
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(LETTERS)
        template = rng.choice(TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()
        question = template.format(letter=_quote(rng, letter), word=_quote(rng, word))
        if rng.random() < 0.5:
            question += "?"
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": spelling_answer(word, letter)},
            ],
            "word": word,
            "letter": letter,
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        expected = str(conversation["word"].count(conversation["letter"]))
        return extract_answer(completion) == expected


class SimpleSpelling(Task):
    name = "SimpleSpelling"
    eval_type = None

    def __init__(self, size: int = 1000, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        _seed(split, 0)
        words = list(load_words())
        random.Random(42).shuffle(words)
        # train draws from the front of the shuffled list, test from the back: no word in both
        half = len(words) // 2
        self.words = words[:half] if split == "train" else words[half:]
        self.size = size
        self.split = split
        self.data_source = f"synthetic from packaged:{WORDS_FILE}"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        word = self.words[index % len(self.words)]
        return {
            "messages": [
                {"role": "user", "content": f"Spell the word: {word}"},
                {"role": "assistant", "content": f"{word}:{','.join(word)}"},
            ]
        }
