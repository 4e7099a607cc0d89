"""The demo prompts: a fixed set of everyday prompts, answered greedily by a chat model and scored by rules.

The set (`resources/eval/demo_prompts.jsonl`, one JSON object per line) has greetings, questions about
the assistant, questions about Jane Austen's novels, small sums and an everyday question:

    {"id": "sum-times", "category": "sums", "prompt": "What is 12 times 7?", "calc": 84, "seen": false}
    {"id": "austen-novels", "category": "novels", "prompt": "...", "any": ["emma", "persuasion", ...], "at_least": 3}

`seen` says whether the prompt, word for word, is a user turn of the demo's fine-tuning data (the
others are paraphrases or new numbers). Every answer must pass every check that applies to it:

- `ended`: the answer ends with `<|assistant_end|>` within the token budget (no rambling to the limit);
- `well-formed`: no special token outside a complete calculator call (`<|python_start|>`...
  `<|python_end|>`, then the tool's `<|output_start|>`...`<|output_end|>`);
- `non-empty`: the visible text (tool calls aside) has at least one word;
- `no-loop`: no run of four words occurs twice (case and punctuation ignored);
- `english`: at least 85% of the words are English (the packaged SCOWL word list), names (a capital
  letter), or words of the prompt and its rules; a stand-in for "grammatical" that catches word soup;
- `on-topic` (prompts with `any`): at least `at_least` (default 1) of the keywords occur as whole
  words or phrases, case-insensitively;
- `calculator` (prompts with `calc`): a calculator call returned that number, and the text says it.

Answers are greedy (temperature 0) with the repetition guards off, as in every eval, so a score
measures the model itself and the same checkpoint always gets the same score. `score_answer` is the
pure part (tokens in, checks out); `run_demo_prompts` generates with any `generate(prompt_ids)`
callable; `record_demo_prompts` writes the `demo-prompts` report section.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from nanochat.common.errors import NanochatError

PACKAGED = "eval/demo_prompts.jsonl"
ENGLISH_FRACTION = 0.85
LOOP_WORDS = 4
MAX_NEW_TOKENS = 128
WORD_RE = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*|\d+(?:\.\d+)?")
ALWAYS_KNOWN = {"nanochat", "chatgpt", "gpt", "ai", "ok"}


@dataclass(frozen=True)
class PromptSpec:
    id: str
    category: str
    prompt: str
    any: tuple[str, ...] = ()
    at_least: int = 1
    calc: float | None = None
    seen: bool = False


@dataclass
class Parsed:
    """A generated answer taken apart: its visible text, its calculator calls, and what was wrong."""

    text: str
    calls: list[tuple[str, str | None]] = field(default_factory=list)  # (expression, tool output or None)
    ended: bool = False
    stray: list[str] = field(default_factory=list)  # special tokens out of place


@dataclass
class PromptResult:
    spec: PromptSpec
    answer: str  # for people: the text with each call shown as [calculator: expr = output]
    passed: bool
    failed: list[str]


def load_prompts(source: str | Path = "demo") -> list[PromptSpec]:
    """The packaged set (`demo`) or a JSONL file of the same format; NanochatError names a bad line."""
    if str(source) == "demo":
        from nanochat.data.resources import read_text

        text, where = read_text(PACKAGED), f"packaged:{PACKAGED}"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise NanochatError(f"{path} does not exist; give a JSONL file of prompts, or `demo` for the packaged set")
        text, where = path.read_text(encoding="utf-8"), str(path)
    specs, ids = [], set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            spec = _spec(obj)
        except (ValueError, TypeError, KeyError) as e:
            raise NanochatError(f"{where}:{lineno}: {e}; each line needs id, category, prompt and `any` keywords or a `calc` number") from None
        if spec.id in ids:
            raise NanochatError(f"{where}:{lineno}: the id {spec.id!r} is used twice; give each prompt its own id")
        ids.add(spec.id)
        specs.append(spec)
    if not specs:
        raise NanochatError(f"{where} holds no prompts; add one JSON object per line")
    return specs


def _spec(obj) -> PromptSpec:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    unknown = set(obj) - {"id", "category", "prompt", "any", "at_least", "calc", "seen"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    for key in ("id", "category", "prompt"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string")
    keywords = obj.get("any", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ValueError("'any' must be a list of keywords")
    calc = obj.get("calc")
    if calc is not None and (isinstance(calc, bool) or not isinstance(calc, (int, float))):
        raise ValueError("'calc' must be a number")
    if not keywords and calc is None:
        raise ValueError("no rule: give `any` keywords or a `calc` number")
    at_least = obj.get("at_least", 1)
    if not isinstance(at_least, int) or not 1 <= at_least <= max(1, len(keywords)):
        raise ValueError("'at_least' must be between 1 and the number of keywords")
    return PromptSpec(obj["id"], obj["category"], obj["prompt"], tuple(keywords), at_least, calc, bool(obj.get("seen", False)))


# ------------------------------------------------------------------------------------------------
# scoring


def parse_answer(tokenizer, tokens: list[int], ended: bool) -> Parsed:
    """Split generated tokens (without the terminal token) into text and calculator calls."""
    s = tokenizer.special_id
    ps, pe, os_, oe = s("<|python_start|>"), s("<|python_end|>"), s("<|output_start|>"), s("<|output_end|>")
    specials = {v: k for k, v in tokenizer.special_tokens.items()}
    text: list[int] = []
    parsed = Parsed(text="", ended=ended)
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        if t == ps:
            j = i + 1
            while j < n and tokens[j] != pe and tokens[j] not in specials:
                j += 1
            if j >= n or tokens[j] != pe:
                parsed.stray.append("<|python_start|> without <|python_end|>")
                i = j
                continue
            expr = tokenizer.decode(tokens[i + 1 : j])
            output = None
            if j + 1 < n and tokens[j + 1] == os_:
                k = j + 2
                while k < n and tokens[k] != oe:
                    k += 1
                output = tokenizer.decode(tokens[j + 2 : k])
                j = k
            parsed.calls.append((expr, output))
            i = j + 1
            continue
        if t in specials:
            parsed.stray.append(specials[t])
        else:
            text.append(t)
        i += 1
    parsed.text = tokenizer.decode(text).strip()
    return parsed


def _words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(phrase.lower()) + r"(?![A-Za-z0-9])", text.lower()) is not None


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    from nanochat.data.resources import read_text

    return frozenset(w.strip().lower() for w in read_text("tasks/words_scowl_large.txt").splitlines() if w.strip())


def english_fraction(text: str, extra: set[str] = frozenset()) -> float:
    """Share of the words (numbers left out) that are English, a capitalised name, or in `extra`."""
    words = [w for w in _words(text) if not w[0].isdigit()]
    if not words:
        return 1.0
    known = english_words()

    def ok(w: str) -> bool:
        base = re.split(r"['’]", w)[0].lower()
        return base in known or w.lower() in extra or base in extra or base in ALWAYS_KNOWN or (w[0].isupper() and w[1:].islower())

    return sum(ok(w) for w in words) / len(words)


def has_loop(text: str, n: int = LOOP_WORDS) -> bool:
    """True when some run of n words (case and punctuation ignored) occurs twice."""
    words = [w.lower() for w in _words(text)]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def _number_equal(text: str | None, value: float) -> bool:
    try:
        return text is not None and abs(float(text.strip()) - value) < 1e-9
    except ValueError:
        return False


def score_answer(spec: PromptSpec, parsed: Parsed) -> list[str]:
    """The names of the checks the answer fails (empty: it passes)."""
    failed = []
    if not parsed.ended:
        failed.append("ended")
    if parsed.stray:
        failed.append("well-formed")
    if not _words(parsed.text):
        failed.append("non-empty")
    if has_loop(parsed.text):
        failed.append("no-loop")
    extra = {w.lower() for w in _words(spec.prompt + " " + " ".join(spec.any))}
    if english_fraction(parsed.text, extra) < ENGLISH_FRACTION:
        failed.append("english")
    if spec.any and sum(_has_phrase(parsed.text, k) for k in spec.any) < spec.at_least:
        failed.append("on-topic")
    if spec.calc is not None:
        value = float(spec.calc)
        shown = f"{value:g}" if value != int(value) else str(int(value))
        if not any(_number_equal(out, value) for _, out in parsed.calls) or not _has_phrase(parsed.text, shown):
            failed.append("calculator")
    return failed


def display(parsed: Parsed) -> str:
    calls = "".join(f"[calculator: {e} = {o if o is not None else '(no result)'}] " for e, o in parsed.calls)
    return (calls + parsed.text).strip()


# ------------------------------------------------------------------------------------------------
# running


def run_demo_prompts(generate: Callable[[list[int]], tuple[list[int], bool]], tokenizer, specs: list[PromptSpec]) -> list[PromptResult]:
    """Answer every prompt with `generate(prompt_ids) -> (tokens without the terminal one, ended)` and score it."""
    results = []
    for spec in specs:
        tokens, ended = generate(tokenizer.render_for_completion([{"role": "user", "content": spec.prompt}]))
        parsed = parse_answer(tokenizer, tokens, ended)
        failed = score_answer(spec, parsed)
        results.append(PromptResult(spec, display(parsed), not failed, failed))
    return results


def engine_generate(engine, max_new_tokens: int = MAX_NEW_TOKENS) -> Callable[[list[int]], tuple[list[int], bool]]:
    """A greedy `generate` over an Engine, repetition guards off (the Engine's defaults)."""

    def generate(prompt: list[int]) -> tuple[list[int], bool]:
        out: list[int] = []
        for column, _ in engine.generate(prompt, num_samples=1, max_tokens=max_new_tokens, temperature=0.0):
            if column[0] in engine.terminal:
                return out, True
            out.append(column[0])
        return out, False

    return generate


def summary(results: list[PromptResult]) -> str:
    k, n = sum(r.passed for r in results), len(results)
    return f"{k} of {n} prompts pass ({100 * k / max(n, 1):.0f}%)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_data(results: list[PromptResult], label: str, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """The `demo-prompts` report section: the score, per category, and every prompt's answer."""
    cats: dict[str, list[PromptResult]] = {}
    for r in results:
        cats.setdefault(r.spec.category, []).append(r)
    by_cat = ["| category | pass |", "|---|---|"] + [f"| {c} | {sum(r.passed for r in rs)} of {len(rs)} |" for c, rs in cats.items()]
    seen = [r for r in results if r.spec.seen]
    rows = ["| prompt | answer | result |", "|---|---|---|"]
    for r in results:
        rows.append(f"| {_cell(r.spec.prompt)}{' (seen)' if r.spec.seen else ''} | {_cell(r.answer) or '(empty)'} | {'pass' if r.passed else 'FAIL: ' + ', '.join(r.failed)} |")
    return {
        "score": summary(results),
        "passed": sum(r.passed for r in results),
        "total": len(results),
        "pass_rate": sum(r.passed for r in results) / max(len(results), 1),
        "unseen_prompts": f"{sum(r.passed for r in results if not r.spec.seen)} of {len(results) - len(seen)} pass (prompts not word for word in the fine-tuning data)",
        "model": label,
        "decoding": f"greedy, repetition guards off, at most {max_new_tokens} tokens",
        "by_category": "\n".join(by_cat),
        "prompts": "\n".join(rows),
    }


def record_demo_prompts(results: list[PromptResult], label: str, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
    from nanochat.eval.report import record_section

    record_section("demo-prompts", report_data(results, label, max_new_tokens), title="Demo prompts")
