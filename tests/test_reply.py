"""The one chat path (engine/reply.py) that `nanochat chat` and the server both run: its events against the
engine's own batch output, against hand-written scripts (stop tokens, stop sequences, max_tokens, usage),
and an interrupted reply that still hands back half a character."""

from __future__ import annotations

import pytest

from tests.inference_helpers import display_text, tiny_engine, tiny_tokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedEngine:
    """Emits one fixed script of tokens per row, then `<|bos|>` (as the engine pads a finished row)."""

    def __init__(self, scripts: list[list[int]]):
        self.tokenizer = tiny_tokenizer()
        self.scripts = scripts

    def generate(self, prompt_ids, num_samples=1, max_tokens=None, **kw):
        assert num_samples == len(self.scripts)
        for step in range(max_tokens):
            yield [s[step] if step < len(s) else self.tokenizer.bos_id for s in self.scripts], [1] * num_samples


def _params(**kw):
    from nanochat.engine.reply import ReplyParams

    return ReplyParams(**{"max_tokens": 20, "temperature": 1.0, "top_k": None, "top_p": None, "seed": 5, **kw})


def _run(engine, prompt, params, **kw):
    from nanochat.engine.reply import Reply

    reply = Reply(engine, prompt, params, **kw)
    return reply, list(reply.events())


def _texts(events, n):
    out = [""] * n
    for ev in events:
        if ev[0] == "delta":
            out[ev[1]] += ev[2]
    return out


def test_sampled_choices_equal_the_engines_batch_output():
    from nanochat.engine.prompt import render_chat_prompt

    eng = tiny_engine()
    prompt = render_chat_prompt(eng.tokenizer, [{"role": "user", "content": "Hello world!"}], 100)
    reply, events = _run(eng, prompt, _params(n=3))
    seqs, _ = eng.generate_batch(prompt, num_samples=3, max_tokens=20, temperature=1.0, seed=5)
    assert _texts(events, 3) == [display_text(eng.tokenizer, s) for s in seqs] == reply.texts
    assert len(set(reply.texts)) == 3  # the seed gives each choice its own sample
    # the random model never ends a turn: every choice runs to max_tokens
    assert [ev for ev in events if ev[0] == "finish"] == [("finish", i, "length") for i in range(3)]
    assert events[-1] == ("done", {"prompt_tokens": len(prompt), "completion_tokens": 60, "total_tokens": len(prompt) + 60})


def test_end_tokens_stop_sequences_and_max_tokens_finish_each_choice_on_its_own():
    tok = tiny_tokenizer()
    end = tok.special_id("<|assistant_end|>")
    hello, long, lines = tok.encode("Hello world!"), tok.encode("How are you today? I am fine"), tok.encode("ab\ncd")
    engine = ScriptedEngine([hello + [end], long, lines + [tok.bos_id]])
    reply, events = _run(engine, [1, 2, 3], _params(n=3, max_tokens=8, stop=("\n",)))
    cut = next(k for k in range(1, len(lines) + 1) if "\n" in tok.decode(lines[:k]))  # the token that completes "\n"
    assert len(hello) + 1 < 8 < len(long)
    assert _texts(events, 3) == ["Hello world!", tok.decode(long[:8]), "ab"]
    finishes = {ev[1]: ev[2] for ev in events if ev[0] == "finish"}
    assert finishes == {0: "stop", 1: "length", 2: "stop"}
    assert reply.counts == [len(hello) + 1, 8, cut]
    assert events[-1] == ("done", {"prompt_tokens": 3, "completion_tokens": len(hello) + 1 + 8 + cut, "total_tokens": 3 + len(hello) + 1 + 8 + cut})
    # every choice's finish comes after all of its text
    for i in range(3):
        kinds = [ev[0] for ev in events if len(ev) > 1 and ev[1] == i]
        assert kinds[-1] == "finish" and kinds.count("finish") == 1


def test_a_stop_sequence_from_a_real_continuation_counts_the_tokens_up_to_it():
    from nanochat.engine.prompt import render_chat_prompt

    eng = tiny_engine()
    prompt = render_chat_prompt(eng.tokenizer, [{"role": "user", "content": "The quick brown fox"}], 100)
    seq = eng.generate_batch(prompt, max_tokens=30, temperature=0.0)[0][0]
    full = display_text(eng.tokenizer, seq)
    stop = full[6:8]
    assert len(stop) == 2 and "\ufffd" not in stop
    reply, events = _run(eng, prompt, _params(temperature=0.0, max_tokens=30, stop=(stop,)))
    assert reply.texts[0] == _texts(events, 1)[0] == full[: full.index(stop)]
    assert ("finish", 0, "stop") in events
    # a naive count: the first k tokens whose text holds the stop sequence
    assert reply.counts[0] == next(k for k in range(1, len(seq) + 1) if stop in display_text(eng.tokenizer, seq[:k]))


def test_a_reply_told_to_stop_ends_silently_and_close_hands_back_half_a_character():
    tok = tiny_tokenizer()
    script = tok.encode("ab😀")
    assert len(script) >= 4  # the emoji is split over several tokens
    steps = []
    reply, events = _run(ScriptedEngine([script]), [1], _params(), should_stop=lambda: len(steps) >= 3, on_step=lambda k, running: steps.append((k, running)))
    assert steps == [(1, 1), (2, 1), (3, 1)]
    assert _texts(events, 1) == ["ab"] and all(ev[0] == "delta" for ev in events)  # no finish, no done: the client left
    assert reply.close() == [("delta", 0, "\ufffd", [])]  # the emoji's first byte, shown as a broken character
    assert reply.texts[0] == "ab\ufffd"
