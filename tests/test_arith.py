"""tasks/arithmetic.py: DemoArith (the demo's RL task) and SimpleArithmetic (the demo SFT's calculator sums).
Disjoint train and test problems in both (and no DemoArith test expression among the sums trained on),
answers that are right by hand, the calculator's verdict on every reference expression, exact-answer grading."""

from __future__ import annotations

import re

import pytest


def _question(conv):
    return conv["messages"][0]["content"]


def test_train_and_test_problems_are_disjoint_and_cover_every_problem_once():
    from nanochat.tasks.arithmetic import DemoArith

    train, test = DemoArith("train"), DemoArith("test")
    train_q = [_question(c) for c in train]
    test_q = [_question(c) for c in test]
    assert len(test_q) == 300 and len(set(test_q)) == 300
    assert len(set(train_q)) == len(train_q) and not set(train_q) & set(test_q)
    # 6 templates × 20 × 20 numbers, less the 2 × 190 subtractions with a negative result
    assert len(train) + len(test) == 6 * 400 - 2 * 190
    assert [_question(c) for c in DemoArith("test")] == test_q  # fixed seed: the same problems every time
    assert len(DemoArith("train", size=5000)) == 5000 and _question(DemoArith("train", size=5000)[len(train)]) == train_q[0]


def test_reference_answers_are_right_by_hand_and_by_the_calculator():
    from nanochat.engine.tools import use_calculator
    from nanochat.tasks.arithmetic import DemoArith

    words = {"more": "+", "in all": "+", "away": "-", "lost": "-", "bags with": "*", "on each of": "*"}
    for conv in list(DemoArith("test")) + list(DemoArith("train"))[:300]:
        q = _question(conv)
        a, b = (int(x) for x in re.findall(r"\d+", q))
        op = next(o for w, o in words.items() if w in q)
        expected = a + b if op == "+" else a - b if op == "-" else a * b
        call, output, text = conv["messages"][1]["content"]
        assert conv["answer"] == expected >= 0
        assert call["type"] == "python" and use_calculator(call["text"]) == output["text"] == str(expected)
        assert text["text"].endswith(f"#### {expected}")


def test_grading_takes_the_exact_final_answer():
    from nanochat.tasks.arithmetic import DemoArith

    task = DemoArith("test")
    conv = task[0]
    n = conv["answer"]
    assert task.evaluate(conv, f"<|python_start|>x<|python_end|>\n\n#### {n}") and task.reward(conv, f"#### {n}") == 1.0
    assert not task.evaluate(conv, f"#### {n + 1}") and not task.evaluate(conv, str(n)) and task.reward(conv, "") == 0.0


def test_arithmetic_calls_give_what_the_calculator_gives_and_the_answer_says_it():
    from nanochat.engine.tools import use_calculator
    from nanochat.tasks.arithmetic import SimpleArithmetic

    ops = set()
    for conv in SimpleArithmetic(size=400):
        user, assistant = conv["messages"]
        call, output, text = assistant["content"]
        assert (call["type"], output["type"], text["type"]) == ("python", "python_output", "text")
        assert use_calculator(call["text"]) == output["text"]  # what the engine will force at inference
        a, op, b = re.fullmatch(r"(\d+)(\+|-|\*|//)(\d+)", call["text"]).groups()
        ops.add(op)
        assert a in user["content"] and b in user["content"]  # the call copies the question's numbers
        assert re.search(rf"\b{output['text']}\.$", text["text"])
        # a naive reference for the value
        want = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "//": int(a) / int(b)}[op]
        assert float(output["text"]) == want and want >= 0 and want == int(want)
    assert ops == {"+", "-", "*", "//"}
    train, test = SimpleArithmetic(size=50), SimpleArithmetic(size=50, split="test")
    assert [c for c in train] == [c for c in SimpleArithmetic(size=50)]  # reproducible
    assert [c["messages"][0] for c in train] != [c["messages"][0] for c in test]
    with pytest.raises(Exception, match="no split"):
        SimpleArithmetic(split="validation")


def test_sums_trained_on_never_include_a_test_sum_or_a_demoarith_test_expression():
    from nanochat.tasks.arithmetic import DemoArith, SimpleArithmetic

    def calls(task):
        return {c["messages"][1]["content"][0]["text"] for c in task}

    train, test = calls(SimpleArithmetic(size=3000)), calls(SimpleArithmetic(size=300, split="test"))
    # DemoArith's held-out expressions, rebuilt from the questions' numbers and wording (not from the module's own list)
    words = {"more": "+", "in all": "+", "away": "-", "lost": "-", "bags with": "*", "on each of": "*"}
    demo_test = set()
    for conv in DemoArith("test"):
        q = _question(conv)
        a, b = re.findall(r"\d+", q)
        if "on each of" in q:  # "puts b things on each of a shelves": the call is a*b
            a, b = b, a
        demo_test.add(f"{a}{next(o for w, o in words.items() if w in q)}{b}")
    assert len(test) > 200 and len(train) > 2000  # mostly distinct draws
    assert not train & test and not train & demo_test
    # small sums (both numbers below 20) come up often, so the rule really had to keep some out
    assert len({c for c in train if re.fullmatch(r"\d+\+\d+", c) and max(map(int, re.findall(r"\d+", c))) < 20}) > 50
    assert SimpleArithmetic(size=5, split="test")[3] == SimpleArithmetic(size=5, split="test")[3]  # a fixed draw
