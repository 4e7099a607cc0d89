"""Tasks: views, mixtures, multiple-choice rendering, and each task's data as a user would see it."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Task, TaskMixture, TaskSequence, render_mc


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("NANOCHAT_OFFLINE", "1")


class Numbers(Task):
    name = "numbers"

    def __init__(self, n, tag="n", **kw):
        super().__init__(**kw)
        self.n, self.tag = n, tag

    def num_examples(self):
        return self.n

    def get_example(self, i):
        return {"messages": [], "tag": self.tag, "i": i}


def ids(task):
    return [ex["i"] for ex in task]


def test_views_compose_like_list_slices():
    full = list(range(20))
    t = Numbers(20)
    assert ids(t) == full
    assert ids(Numbers(20, start=3, stop=17, step=2)) == full[3:17:2]
    v = t[2:15:3][1:]
    assert ids(v) == full[2:15:3][1:] and len(v) == len(full[2:15:3][1:])
    assert t[2:15:3][-1]["i"] == full[2:15:3][-1]
    assert ids(t[::-1][:4]) == [19, 18, 17, 16]
    assert len(t) == 20  # the view did not change the original
    with pytest.raises(IndexError):
        t[5:8][3]


def test_mixture_is_seeded_shuffle_with_oversampling():
    a, b = Numbers(5, "a"), Numbers(3, "b")
    mix = TaskMixture([a, b, a])
    assert len(mix) == 13
    tags = [ex["tag"] for ex in mix]
    assert tags.count("a") == 10 and tags.count("b") == 3
    expected = [(t, i) for t, n in ((0, 5), (1, 3), (2, 5)) for i in range(n)]
    random.Random(42).shuffle(expected)
    assert [(ex["tag"], ex["i"]) for ex in mix] == [(["a", "b", "a"][t], i) for t, i in expected]
    assert [(ex["tag"], ex["i"]) for ex in TaskMixture([a, b, a])] == [(ex["tag"], ex["i"]) for ex in mix]


def test_sequence_concatenates_in_order():
    seq = TaskSequence([Numbers(2, "a"), Numbers(3, "b")])
    assert [(ex["tag"], ex["i"]) for ex in seq] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    assert seq[3]["i"] == 1 and seq[-1]["tag"] == "b"
    with pytest.raises(IndexError):
        seq[5]


def test_render_mc_exact_layout():
    got = render_mc("What is 2+2?", ["A", "B"], ["3", "4"])
    assert got == "Multiple Choice question: What is 2+2?\n- 3=A\n- 4=B\n\nRespond only with the letter of the correct answer."


def _packaged_rows(rel):
    from nanochat.data.resources import open_resource

    with open_resource(rel) as f:
        return [json.loads(line) for line in f]


def test_mmlu_packaged_answers_match_the_file():
    from nanochat.tasks.mmlu import MMLU

    t = MMLU(split="validation")
    raw = _packaged_rows("tasks/mmlu_validation.jsonl")
    assert len(t) == len(raw) == 1531
    assert t.data_source == "packaged:tasks/mmlu_validation.jsonl"
    for ex in t[:25]:
        user = ex["messages"][0]["content"]
        rows = [r for r in raw if user.startswith(f"Multiple Choice question: {r['question']}\n") and all(f"- {c}={L}\n" in user for c, L in zip(r["choices"], "ABCD"))]
        row = rows[0]
        assert ex["messages"][1]["content"] == "ABCD"[row["answer"]]
        assert t.evaluate(ex, "ABCD"[row["answer"]]) and not t.evaluate(ex, "ABCD"[(row["answer"] + 1) % 4])
    with pytest.raises(NanochatError, match="auxiliary_train"):
        MMLU(split="auxiliary_train")  # online only


def test_arc_keeps_the_datasets_labels():
    from nanochat.tasks.arc import ARC

    t = ARC("ARC-Challenge", "validation")
    assert len(t) == 299 and "arc_challenge_validation" in t.data_source
    for ex in t:
        user = ex["messages"][0]["content"]
        for letter in ex["letters"]:
            assert f"={letter}\n" in user
        assert ex["messages"][1]["content"] in ex["letters"]
    assert ARC("ARC-Easy", "test").name == "ARC-Easy"
    with pytest.raises(NanochatError, match="ARC-Easy or ARC-Challenge"):
        ARC("ARC-Hard")


def test_spellingbee_counts_and_tool_call():
    from nanochat.engine.tools import use_calculator
    from nanochat.tasks.spellingbee import SimpleSpelling, SpellingBee

    train, test = SpellingBee(50, "train"), SpellingBee(50, "test")
    assert [ex["word"] for ex in train] == [ex["word"] for ex in SpellingBee(50, "train")]  # reproducible
    assert [ex["word"] for ex in train] != [ex["word"] for ex in test]
    for ex in train:
        word, letter = ex["word"], ex["letter"]
        n = sum(1 for c in word if c == letter)
        parts = ex["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "python", "python_output", "text"]
        assert parts[1]["text"] == f"'{word}'.count('{letter}')"
        assert eval(parts[1]["text"]) == n  # the tool call computes the right thing
        assert use_calculator(parts[1]["text"]) == str(n)  # and the engine's calculator accepts it
        assert parts[2]["text"] == str(n) and parts[3]["text"].endswith(f"#### {n}")
        assert train.evaluate(ex, f"so #### {n}") and not train.evaluate(ex, f"#### {n + 1}")
        assert word in ex["messages"][0]["content"]
    s = SimpleSpelling(3, "train")
    ex = s[0]
    w = ex["messages"][0]["content"].removeprefix("Spell the word: ")
    assert ex["messages"][1]["content"] == w + ":" + ",".join(w)
    assert not set(SimpleSpelling(2000, "train").words) & set(SimpleSpelling(2000, "test").words)


def test_customjson_line_numbered_errors(tmp_path):
    from nanochat.tasks.customjson import CustomJSON, PackagedChat

    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    p = tmp_path / "convs.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps({"messages": good}) + "\n\n")
    t = CustomJSON(p)
    assert len(t) == 2 and t[1]["messages"] == good
    bad = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps([{"role": "user", "content": "only me"}]),
        json.dumps([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]),
        json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]),
    ]
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(NanochatError) as e:
        CustomJSON(bad)
    msg = str(e.value)
    for n in (2, 3, 4, 5):
        assert f"bad.jsonl:{n}:" in msg
    assert "bad.jsonl:1:" not in msg and "\n" not in msg
    with pytest.raises(NanochatError, match="does not exist"):
        CustomJSON(tmp_path / "nope.jsonl")
    chat = PackagedChat("chatterbot")
    assert len(chat) == 2026 and chat.data_source == "packaged:chat/chatterbot_english.jsonl"


def test_smoltalk_offline_names_the_substitute():
    from nanochat.tasks.smoltalk import SmolTalk

    with pytest.raises(NanochatError, match="chatterbot") as e:
        SmolTalk("train")
    assert "unavailable" in str(e.value) or "not packaged" in str(e.value)


def test_identity_conversations_name_nanochat(tmp_path):
    from nanochat.tasks.customjson import CustomJSON, validate_messages
    from nanochat.tasks.identity import IdentityConversations, write_identity_jsonl

    t = IdentityConversations(200, seed=1)
    convs = [ex["messages"] for ex in t]
    assert convs == [ex["messages"] for ex in IdentityConversations(200, seed=1)]
    assert len({json.dumps(c) for c in convs}) > 100  # varied, not one template repeated
    for c in convs:
        validate_messages(c)
        assert "nanochat" in c[-1]["content"]
    path = write_identity_jsonl(tmp_path / "id.jsonl", 30)
    assert len(CustomJSON(path)) == 30


def test_humaneval_programs_pass_with_the_canonical_solution():
    from nanochat.tasks.humaneval import HumanEval, build_program, extract_program

    assert extract_program("Sure:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1"
    assert extract_program("```\nx = 2\n```") == "x = 2"
    assert extract_program("def g(): pass") == "def g(): pass"
    t = HumanEval()
    assert len(t) == 164 and "humaneval" in t.data_source
    for ex in t[:2]:
        row = t.rows[ex["row"]]
        good = "```python\n" + row["prompt"] + row["canonical_solution"] + "```"
        bad = "```python\n" + row["prompt"] + "    return None\n```"
        # plain python here: the sandbox is tested by its owner; this checks the program we assemble
        ok = subprocess.run([sys.executable, "-c", build_program(row, good)], capture_output=True, timeout=30)
        ko = subprocess.run([sys.executable, "-c", build_program(row, bad)], capture_output=True, timeout=30)
        assert ok.returncode == 0 and ko.returncode != 0
    try:
        import nanochat.common.sandbox  # noqa: F401
    except ImportError:
        with pytest.raises(NanochatError, match="sandbox"):
            t.evaluate(t[0], "pass")
    else:
        row = t.rows[t[0]["row"]]
        assert t.evaluate(t[0], row["prompt"] + row["canonical_solution"])
        assert not t.evaluate(t[0], row["prompt"] + "    return None\n")


def test_sft_mixtures_fail_clearly_when_unknown_or_offline():
    from nanochat.train.sft_data import sft_mixture

    with pytest.raises(NanochatError, match="SmolTalk"):
        sft_mixture("web")  # offline here: web data fails clearly, no silent fallback
    with pytest.raises(NanochatError, match="not an SFT mixture; use web"):
        sft_mixture("austen")


def test_every_demo_task_renders_for_training():
    """Each task of the demo mixture goes through the chat template, with something to learn in each."""
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.train.sft_data import sft_mixture

    text = open_resource("corpus/austen/emma.txt").read()[:50_000]
    tok = Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=300)
    train, val, parts = sft_mixture("demo")
    seen = set()
    for mix in (train, val):
        for i in range(0, len(mix), max(1, len(mix) // 400)):
            ids, mask = tok.render_conversation(mix[i]["messages"], max_tokens=4096)
            assert len(ids) == len(mask) and sum(mask) > 0
            seen.add(i)
    assert len(seen) >= 200 and len(parts) >= 6

