"""The terminal chat behind `nanochat chat`: a multi-turn REPL with slash commands, and one-shot mode.

    session = ChatSession(engine, temperature=0.6, top_k=50)
    session.repl(input_fn=input, out=sys.stdout)      # interactive
    session.answer("Why is the sky blue?", out)       # one turn, streamed to `out`

Commands: /help, /clear (forget the conversation), /set temperature X, /set top-k K,
/set repetition-penalty X, /set no-repeat-ngram N, /exit. The repetition guards are on by default
here (`CHAT_REPETITION_PENALTY`, `CHAT_NO_REPEAT_NGRAM` in engine/repetition.py): a small model left
alone at a low temperature tends to loop.
Ctrl-C while an answer streams stops that answer (what was written so far stays in the history);
Ctrl-C (or Ctrl-D) at the prompt exits. With `verbose`, each answer ends with its tokens and tokens/s.

An answer is an `engine.reply.Reply`, the same chat path the server runs (prompt rendering, the
calculator tool, the end-of-turn stop, streaming text that never splits a character).

`score_prompt_set(engine, ...)` is `nanochat chat --score-prompts`: it answers a fixed prompt set
(eval/demo_prompts.py) greedily, prints each answer with its checks and records the report section.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO

from nanochat.engine.prompt import render_chat_prompt
from nanochat.engine.reply import Reply, ReplyParams
from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY, check_repetition_settings

HELP = """commands:
  /help                 this help
  /clear                start a new conversation
  /set temperature X    sampling temperature, 0 (greedy) to 2
  /set top-k K          sample from the K most likely tokens (0: all)
  /set repetition-penalty X   push down tokens the answer already used, 1 (off) to 10
  /set no-repeat-ngram N      never repeat a run of N tokens in an answer (0: off)
  /exit                 quit (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C while the model writes stops the answer."""


class ChatSession:
    """One conversation with an Engine: settings, history, and the streaming of answers."""

    def __init__(self, engine, temperature: float = 0.6, top_k: int | None = 50, max_tokens: int = 1024, seed: int | None = None, verbose: bool = False,
                 repetition_penalty: float = CHAT_REPETITION_PENALTY, no_repeat_ngram: int = CHAT_NO_REPEAT_NGRAM):  # fmt: skip
        check_repetition_settings(repetition_penalty, no_repeat_ngram)
        self.engine = engine
        self.repetition_penalty = repetition_penalty
        self.no_repeat_ngram = no_repeat_ngram
        self.temperature = temperature
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.seed = seed
        self.verbose = verbose
        self.messages: list[dict] = []
        self._turn = 0

    def answer(self, text: str, out: TextIO) -> str:
        """Add a user turn, stream the answer to `out`, keep it in the history; returns the answer.

        KeyboardInterrupt during generation stops it (the partial answer is kept) and re-raises
        nothing: the caller simply gets what was written."""
        self.messages.append({"role": "user", "content": text})
        ctx = self.engine.sequence_len
        max_new = max(1, min(self.max_tokens, ctx // 2))
        prompt = render_chat_prompt(self.engine.tokenizer, self.messages, ctx - max_new)
        seed = None if self.seed is None else self.seed + self._turn
        self._turn += 1
        params = ReplyParams(max_new, self.temperature, self.top_k, None, seed, repetition_penalty=self.repetition_penalty, no_repeat_ngram=self.no_repeat_ngram)
        reply = Reply(self.engine, prompt, params)
        t0 = time.perf_counter()
        stopped = False
        try:
            for event in reply.events():
                _write_delta(out, event)
        except KeyboardInterrupt:
            stopped = True
        for event in reply.close():  # what an interrupted answer still held (half a character)
            _write_delta(out, event)
        dt = time.perf_counter() - t0
        out.write("\n")
        if stopped:
            out.write("[stopped]\n")
        if self.verbose:
            n = reply.counts[0]
            out.write(f"[{n} tokens in {dt:.2f} s, {n / max(dt, 1e-9):.1f} tokens/s]\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": reply.texts[0]})
        return reply.texts[0]

    def command(self, line: str, out: TextIO) -> bool:
        """Run a slash command; False means exit."""
        parts = line.strip().split()
        cmd = parts[0].lower()
        if cmd in ("/exit", "/quit"):
            return False
        if cmd == "/help":
            out.write(HELP + "\n")
        elif cmd == "/clear":
            self.messages = []
            out.write("(new conversation)\n")
        elif cmd == "/set" and len(parts) == 3 and parts[1].lower().replace("_", "-") in ("repetition-penalty", "no-repeat-ngram"):
            name, value = parts[1].lower().replace("_", "-"), parts[2]
            try:
                if name == "repetition-penalty":
                    check_repetition_settings(float(value), 0)
                    self.repetition_penalty = float(value)
                else:
                    check_repetition_settings(1.0, int(value))
                    self.no_repeat_ngram = int(value)
                out.write(f"{name} = {value}" + (" (off)" if float(value) in (0.0, 1.0) else "") + "\n")
            except ValueError:
                out.write(f"bad value {value!r}: repetition-penalty takes 1 (off) to 10, no-repeat-ngram 0 (off) or 2 to 64\n")
        elif cmd == "/set" and len(parts) == 3 and parts[1].lower() in ("temperature", "temp", "top-k", "top_k", "topk"):
            name, value = parts[1].lower(), parts[2]
            try:
                if name.startswith("temp"):
                    v = float(value)
                    if not 0.0 <= v <= 2.0:
                        raise ValueError
                    self.temperature = v
                    out.write(f"temperature = {v}\n")
                else:
                    k = int(value)
                    if k < 0:
                        raise ValueError
                    self.top_k = k or None
                    out.write(f"top-k = {k}" + (" (all tokens)" if k == 0 else "") + "\n")
            except ValueError:
                out.write(f"bad value {value!r}: temperature takes 0 to 2, top-k an integer >= 0\n")
        else:
            out.write(f"unknown command {line.strip()!r}; /help lists the commands\n")
        out.flush()
        return True

    def repl(self, input_fn: Callable[[str], str], out: TextIO, prompt: str = "you> ") -> None:
        """Read lines until /exit, Ctrl-D or Ctrl-C at the prompt."""
        out.write("nanochat: type a message, /help for commands, /exit to quit\n")
        out.flush()
        while True:
            try:
                line = input_fn(prompt)
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                return
            if not line.strip():
                continue
            if line.strip().startswith("/"):
                if not self.command(line, out):
                    return
                continue
            out.write("nanochat> ")
            out.flush()
            try:
                self.answer(line, out)
            except KeyboardInterrupt:  # Ctrl-C before the first token (while the prompt was prepared)
                out.write("\n[stopped]\n")
                if self.messages and self.messages[-1]["role"] == "user":
                    self.messages.pop()


def _write_delta(out: TextIO, event: tuple) -> None:
    if event[0] == "delta":
        out.write(event[2])
        out.flush()


def score_prompt_set(engine, label: str, prompts: str = "demo", max_new_tokens: int | None = None, record: bool = True) -> list:
    """Answer and score every prompt of a prompt set (`demo`: the packaged one); print a table; record
    the `demo-prompts` report section when `record`. Returns the PromptResults."""
    from nanochat.common.logging import console, print0
    from nanochat.eval import demo_prompts as dp

    specs = dp.load_prompts(prompts)
    n = max_new_tokens or dp.MAX_NEW_TOKENS
    results = dp.run_demo_prompts(dp.engine_generate(engine, n), engine.tokenizer, specs)
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"prompts answered by {label} (greedy)"), title_justify="left")
    for col in ("prompt", "answer", "result"):
        t.add_column(col, justify="left")
    for r in results:
        t.add_row(escape(r.spec.prompt), escape(r.answer or "(empty)"), "pass" if r.passed else escape("FAIL: " + ", ".join(r.failed)))
    console().print(t)
    print0(f"demo prompts: {dp.summary(results)}")
    if record:
        dp.record_demo_prompts(results, label, n)
    return results
