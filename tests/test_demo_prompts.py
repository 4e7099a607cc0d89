"""The demo prompts: the packaged set (and its copy in tests/data), every scoring rule on hand-built
answers, the `seen` labels against the real fine-tuning mixture, and the report section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inference_helpers import tiny_tokenizer

DATA = Path(__file__).parent / "data" / "demo_prompts.jsonl"


def test_the_packaged_set_is_the_one_in_tests_data():
    from nanochat.data.resources import read_text, verify_resource
    from nanochat.eval.demo_prompts import PACKAGED, load_prompts

    assert DATA.read_text() == read_text(PACKAGED)
    verify_resource(PACKAGED)
    specs = load_prompts("demo")
    assert len(specs) >= 30 and len({s.id for s in specs}) == len(specs)
    cats = {s.category for s in specs}
    assert {"greeting", "identity", "novels", "sums"} <= cats
    sums = [s for s in specs if s.calc is not None]
    assert len(sums) >= 6 and all(s.category == "sums" for s in sums)
    assert [s.prompt for s in load_prompts(DATA)] == [s.prompt for s in specs]


def test_bad_prompt_files_are_one_clear_error(tmp_path):
    from nanochat.common.errors import NanochatError
    from nanochat.eval.demo_prompts import load_prompts

    bad = tmp_path / "p.jsonl"
    for lines, msg in (
        (['{"id": "a", "category": "c", "prompt": "hi"}'], ":1: no rule"),
        (['{"id": "a", "category": "c", "prompt": "hi", "any": ["x"]}', "{nope"], ":2:"),
        (['{"id": "a", "category": "c", "prompt": "hi", "any": ["x"]}'] * 2, "used twice"),
        (['{"id": "a", "category": "c", "prompt": "hi", "any": ["x"], "at_least": 2}'], "at_least"),
        ([], "holds no prompts"),
    ):
        bad.write_text("\n".join(lines) + "\n")
        with pytest.raises(NanochatError, match=msg):
            load_prompts(bad)
    with pytest.raises(NanochatError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")


def _answer(tok, *parts, ended=True):
    """Tokens of an answer: str parts are text, ("call", expr, output) a calculator call, ("special", name) one token."""
    out = []
    for p in parts:
        if isinstance(p, str):
            out += tok.encode(p)
        elif p[0] == "call":
            out += [tok.special_id("<|python_start|>"), *tok.encode(p[1]), tok.special_id("<|python_end|>")]
            if p[2] is not None:
                out += [tok.special_id("<|output_start|>"), *tok.encode(p[2]), tok.special_id("<|output_end|>")]
        else:
            out.append(tok.special_id(p[1]))
    return out, ended


def _fails(spec, tokens_ended):
    from nanochat.eval.demo_prompts import parse_answer, score_answer

    tok = tiny_tokenizer()
    return score_answer(spec, parse_answer(tok, *tokens_ended))


def test_each_rule_on_hand_built_answers():
    from nanochat.eval.demo_prompts import PromptSpec

    tok = tiny_tokenizer()
    calc = PromptSpec("s", "sums", "What is 12 times 7?", calc=84)
    assert _fails(calc, _answer(tok, ("call", "12*7", "84"), "12 times 7 is 84.")) == []
    assert _fails(calc, _answer(tok, ("call", "12*7", "84"), "12 times 7 is 85.")) == ["calculator"]  # the text must say it
    assert _fails(calc, _answer(tok, "12 times 7 is 84.")) == ["calculator"]  # no call
    assert _fails(calc, _answer(tok, ("call", "12*8", "96"), "The answer is 84.")) == ["calculator"]  # the call must give it
    assert _fails(calc, _answer(tok, ("call", "12*7", "84"), "The answer is 840.")) == ["calculator"]  # a whole number, not a prefix
    assert _fails(calc, _answer(tok, ("call", "12*7", None), "It is 84.")) == ["calculator"]  # the tool gave nothing

    topic = PromptSpec("a", "novels", "Who wrote Pride and Prejudice?", any=("austen",))
    assert _fails(topic, _answer(tok, "Jane Austen wrote it.")) == []
    assert _fails(topic, _answer(tok, "It is a nice day.")) == ["on-topic"]
    assert _fails(topic, _answer(tok, "Jane Austen wrote it.", ended=False)) == ["ended"]
    assert _fails(topic, _answer(tok, "Jane Austen", ("special", "<|user_start|>"), " wrote it.")) == ["well-formed"]
    assert _fails(topic, _answer(tok, ("special", "<|python_start|>"), "Austen")) == ["well-formed", "non-empty", "on-topic"]  # an open call swallows the rest
    assert _fails(topic, _answer(tok, "")) == ["non-empty", "on-topic"]
    # a run of four words seen twice is a loop; three words twice is not
    assert _fails(topic, _answer(tok, "Austen wrote it. I think Austen wrote it. I think so.")) == ["no-loop"]
    assert _fails(topic, _answer(tok, "Austen wrote it, and Austen wrote more.")) == []
    # English: 1 known word of 4 (the prompt's words count as known) is under 85%
    assert _fails(topic, _answer(tok, "Austen xqzv blorf zzkt.")) == ["english"]

    hi = PromptSpec("h", "greeting", "Hey", any=("hi", "hello"))
    assert _fails(hi, _answer(tok, "This is it.")) == ["on-topic"]  # "hi" inside "this" does not count
    assert _fails(hi, _answer(tok, "Hi there!")) == []
    three = PromptSpec("n", "novels", "Which novels?", any=("emma", "persuasion", "mansfield park"), at_least=2)
    assert _fails(three, _answer(tok, "Emma and Mansfield Park.")) == []
    assert _fails(three, _answer(tok, "Emma, Emma and Emma's friend.")) == ["on-topic"]


def test_english_fraction_by_hand():
    from nanochat.eval.demo_prompts import english_fraction, has_loop

    # Hello, I(m), Darcy's (a name), friend: known; xyzzy: not -> 4 of 5; the number is not a word
    assert english_fraction("Hello, I'm Darcy's friend xyzzy 42.") == pytest.approx(0.8)
    assert english_fraction("xyzzy", extra={"xyzzy"}) == 1.0
    assert english_fraction("!!!") == 1.0
    assert has_loop("a b c d a b c d") and not has_loop("a b c d a b c e")


def test_seen_labels_match_the_demo_fine_tuning_mixture():
    """`seen` is true exactly for the prompts that are, word for word, a user turn of the training mixture."""
    from nanochat.eval.demo_prompts import load_prompts
    from nanochat.train.sft_data import sft_mixture

    train, _, _ = sft_mixture("demo")
    user_turns = {m["content"] for conv in train for m in conv["messages"] if m["role"] == "user" and isinstance(m["content"], str)}
    wrong = [(s.id, s.seen) for s in load_prompts("demo") if s.seen != (s.prompt in user_turns)]
    assert not wrong, f"these prompts' `seen` labels are wrong: {wrong}"


def test_run_and_record_a_section_with_a_scripted_model(nanochat_home):
    from nanochat.eval.demo_prompts import PromptSpec, record_demo_prompts, run_demo_prompts, summary

    tok = tiny_tokenizer()
    specs = [PromptSpec("a", "g", "Hello!", any=("hello",)), PromptSpec("b", "s", "What is 2 + 3?", calc=5), PromptSpec("c", "g", "Bye!", any=("bye",))]
    answers = {"Hello!": _answer(tok, "Hello to you."), "What is 2 + 3?": _answer(tok, ("call", "2+3", "5"), "2 plus 3 is 5."), "Bye!": _answer(tok, "Hello.")}

    def generate(prompt_ids):
        text = tok.decode(prompt_ids)
        return next(v for k, v in answers.items() if k in text)

    results = run_demo_prompts(generate, tok, specs)
    assert [r.passed for r in results] == [True, True, False] and results[2].failed == ["on-topic"]
    assert results[1].answer == "[calculator: 2+3 = 5] 2 plus 3 is 5."
    assert summary(results) == "2 of 3 prompts pass (67%)"
    record_demo_prompts(results, "sft/x step 1")
    section = json.loads((nanochat_home / "report" / "sections" / "demo-prompts.json").read_text())
    assert section["title"] == "Demo prompts" and section["data"]["score"] == "2 of 3 prompts pass (67%)"
    assert "| Bye! | Hello. | FAIL: on-topic |" in section["data"]["prompts"]
    assert "| g | 1 of 2 |" in section["data"]["by_category"]
