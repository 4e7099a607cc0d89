"""The chat-eval task registry: a toy task added with one class and one `register` line runs through
`nanochat eval`'s suite, is named in the report with its unit, and leaves ChatCORE's definition alone."""

from __future__ import annotations

import pytest

from nanochat.tasks import registry
from nanochat.tasks.base import Task


class Echo(Task):
    """Say the word back: 'Repeat: apple' -> 'apple' (the toy task's own module in real use)."""

    name = "Echo"
    eval_type = "generative"
    data_source = "synthetic:echo"
    WORDS = ("apple", "pear", "plum", "fig", "lime")

    def num_examples(self) -> int:
        return len(self.WORDS)

    def get_example(self, index: int):
        w = self.WORDS[index]
        return {"messages": [{"role": "user", "content": f"Repeat: {w}"}, {"role": "assistant", "content": w}]}

    def evaluate(self, conversation, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]


@pytest.fixture
def echo_task():
    registry.register(registry.TaskSpec("echo", "Echo", "generative", 0.0, "words", lambda source: Echo()))
    yield
    registry.unregister("echo")


@pytest.fixture(scope="module")
def tokenizer():
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer

    text = open_resource("corpus/austen/emma.txt").read()[:60_000]
    return Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=400)


def test_the_builtin_tasks_and_chatcore_members():
    assert registry.task_names() == ("arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval", "spellingbee", "demo-arith")
    assert registry.chatcore_names() == registry.task_names()[:6]  # the reference's six; the demo's word problems stay out
    assert [registry.spec(n).chance for n in registry.task_names()] == [0.25, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]
    demo = registry.build("demo-arith")
    assert (demo.split, len(demo), registry.spec("demo-arith").unit) == ("test", 300, "problems")
    with pytest.raises(ValueError, match="taken"):
        registry.register(registry.TaskSpec("mmlu", "x", "categorical", 0.25, "questions", lambda s: None))
    with pytest.raises(ValueError, match="taken"):
        registry.register(registry.TaskSpec("bpb", "x", "categorical", 0.25, "questions", lambda s: None))


def test_a_registered_toy_task_runs_through_the_eval_suite_and_the_report(echo_task, tokenizer):
    from nanochat.eval.report import summary_table
    from nanochat.eval.suite import EvalOptions, default_tasks, parse_tasks, report_data, run_suite
    from nanochat.model import GPTConfig, build_model

    assert parse_tasks("echo,mmlu", "sft") == ("echo", "mmlu") and "echo" in default_tasks("sft")
    assert "echo" not in default_tasks("base")
    model = build_model(GPTConfig(sequence_len=64, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=32), "cpu", seed=0)
    answers = {"apple": "apple", "pear": "pear", "plum": "plum", "fig": "nope", "lime": "nope"}  # 3 of 5 right

    def generate(prompts, num_samples):
        out = []
        for p in prompts:
            word = tokenizer.decode(p).split("Repeat: ")[1].split("<")[0].strip()
            out.append([tokenizer.encode(answers[word])] * num_samples)
        return out

    rows = run_suite(model, tokenizer, {}, EvalOptions(tasks=("echo",)), "cpu", generate=generate)
    assert [r.task for r in rows] == ["echo"]  # not a ChatCORE task: no ChatCORE row from it
    (row,) = rows
    assert (row.metric, row.value, row.examples, row.on, row.source) == ("pass@1", 3 / 5, 5, "5 words", "synthetic:echo")
    res = report_data(rows, step=3)["results"]
    assert res["echo"]["name"] == "Echo" and res["echo"]["chance"] is None
    headers, table = summary_table({"eval-sft": {"data": report_data(rows)}})
    assert any(r[0].startswith("Echo pass@1 on 5 words") for r in table), table


def test_an_unknown_task_names_the_registered_ones():
    from nanochat.common.errors import NanochatError
    from nanochat.eval.suite import parse_tasks

    with pytest.raises(NanochatError, match="choose from core,bpb,arc-easy,arc-challenge,mmlu,gsm8k,humaneval,spellingbee,demo-arith"):
        parse_tasks("mmlu,nosuch", "sft")
    with pytest.raises(NanochatError, match="unknown eval task 'nosuch'"):
        registry.build("nosuch")
