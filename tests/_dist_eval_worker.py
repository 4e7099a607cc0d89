"""Run under torchrun (2 CPU ranks, gloo) by test_core_eval: CORE and chat-eval results must be
all-reduced, so every rank prints the accuracy over all items, not just its own share."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from nanochat.common.dist import cleanup, init_distributed
from nanochat.data.resources import open_resource
from nanochat.data.tokenizer import Tokenizer
from nanochat.eval.chat_eval import run_generative
from nanochat.eval.core import evaluate_task
from tests._rigged import Oracle

ITEMS = [
    {"query": "Q: sky?", "choices": ["green", "blue"], "gold": 1},
    {"query": "Q: grass?", "choices": ["green", "blue"], "gold": 0},
    {"query": "Q: snow?", "choices": ["white", "black"], "gold": 0},
]


class Task:
    """Four problems; the answer to problem i is i."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"messages": [{"role": "user", "content": f"problem {i}"}, {"role": "assistant", "content": f"#### {i}"}], "i": i}

    def evaluate(self, conv, completion):
        return completion.strip() == f"#### {conv['i']}"


def main(out: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    text = open_resource("corpus/austen/emma.txt").read()[:50_000]
    tok = Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=300)
    known = ["Q: sky? blue", "Q: grass? green", "Q: snow? black"]  # right on items 0 and 1, wrong on 2
    model = Oracle([tok.encode(t, prepend=tok.bos_id) for t in known], tok.vocab_size)
    spec = {"num_fewshot": 0, "task_type": "multiple_choice", "continuation_delimiter": " "}
    core_acc = evaluate_task(model, tok, ITEMS, spec, "cpu")

    def generate(prompts, n):  # right on problems 0, 1, 2; wrong on 3
        out = []
        for prompt in prompts:
            i = int(tok.decode(prompt).split("problem ")[1][0])
            out.append([tok.encode(f"#### {i if i < 3 else 9}")])
        return out

    gen = run_generative(generate, tok, Task(), "cpu")
    (out / f"rank{info.rank}.json").write_text(json.dumps({"core": core_acc, "passed": gen.passed, "total": gen.total, "world": info.world_size}))
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
