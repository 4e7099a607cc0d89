"""DemoArith, the demo's RL task: disjoint train and test problems, answers that are right by hand,
the calculator's verdict on every reference expression, and exact-answer grading."""

from __future__ import annotations

import re


def _question(conv):
    return conv["messages"][0]["content"]


def test_train_and_test_problems_are_disjoint_and_cover_every_problem_once():
    from nanochat.tasks.arith import DemoArith

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
    from nanochat.tasks.arith import DemoArith

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
    from nanochat.tasks.arith import DemoArith

    task = DemoArith("test")
    conv = task[0]
    n = conv["answer"]
    assert task.evaluate(conv, f"<|python_start|>x<|python_end|>\n\n#### {n}") and task.reward(conv, f"#### {n}") == 1.0
    assert not task.evaluate(conv, f"#### {n + 1}") and not task.evaluate(conv, str(n)) and task.reward(conv, "") == 0.0
