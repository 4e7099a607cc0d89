"""`nanochat chat`: the session (multi-turn, slash commands, Ctrl-C) in-process over a tiny model,
and the real command over a real checkpoint (one-shot -p, piped stdin, a missing checkpoint)."""

from __future__ import annotations

import io

import pytest

from tests.conftest import run_cli
from tests.inference_helpers import display_text, one_torch_thread, tiny_engine, tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def test_session_multi_turn_and_commands():
    from nanochat.engine.chat_loop import ChatSession

    eng = tiny_engine()
    session = ChatSession(eng, temperature=0.0, max_tokens=12)
    lines = iter(["/help", "Hello world!", "/set temperature 1.5", "/set top-k 7", "/set top-k -1", "/bogus", "How are you?", "/clear", "/exit", "never read"])
    out = io.StringIO()
    session.repl(lambda prompt: next(lines), out)
    text = out.getvalue()
    assert "/set temperature X" in text  # the help
    assert "temperature = 1.5" in text and "top-k = 7" in text and "bad value '-1'" in text and "unknown command '/bogus'" in text
    assert session.temperature == 1.5 and session.top_k == 7
    assert session.messages == [] and "(new conversation)" in text
    # the first answer was greedy: it is exactly what the engine writes for that prompt
    expected = greedy_answer_limited(eng, [{"role": "user", "content": "Hello world!"}], 12)
    assert text.split("nanochat> ", 1)[1].startswith(expected + "\n")


def test_session_keeps_history_across_turns():
    from nanochat.engine.chat_loop import ChatSession

    eng = tiny_engine()
    session = ChatSession(eng, temperature=0.0, max_tokens=8)
    a1 = session.answer("Hello world!", io.StringIO())
    a2 = session.answer("The quick brown fox", io.StringIO())
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == a1 and session.messages[3]["content"] == a2
    history = [{"role": "user", "content": "Hello world!"}, {"role": "assistant", "content": a1}, {"role": "user", "content": "The quick brown fox"}]
    # the second answer saw the first turn: it is the greedy answer to the whole history
    assert a2 == greedy_answer_limited(eng, history, 8)


def greedy_answer_limited(engine, messages, n, guards: bool = True):
    """The greedy answer, with the repetition guards chat uses by default (or none)."""
    from nanochat.engine.prompt import render_chat_prompt
    from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY

    kw = dict(repetition_penalty=CHAT_REPETITION_PENALTY, no_repeat_ngram=CHAT_NO_REPEAT_NGRAM) if guards else {}
    seqs, _ = engine.generate_batch(render_chat_prompt(engine.tokenizer, messages, engine.sequence_len - n), max_tokens=n, temperature=0.0, **kw)
    return display_text(engine.tokenizer, seqs[0])


def test_ctrl_c_stops_the_answer_then_exits_at_the_prompt():
    from nanochat.engine.chat_loop import ChatSession

    eng = tiny_engine()
    real = eng.generate
    produced = []

    def interrupted(*a, **kw):
        for i, item in enumerate(real(*a, **kw)):
            if i == 3:
                raise KeyboardInterrupt
            produced.append(item)
            yield item

    eng.generate = interrupted
    session = ChatSession(eng, temperature=1.0, max_tokens=50, seed=1)
    inputs = iter(["Hello world!"])

    def input_fn(prompt):
        try:
            return next(inputs)
        except StopIteration:
            raise KeyboardInterrupt  # the second Ctrl-C, at the prompt
    out = io.StringIO()
    session.repl(input_fn, out)
    assert "[stopped]" in out.getvalue()
    assert len(produced) == 3 and len(session.messages) == 2  # the partial answer is kept


def save_tiny_checkpoint(home, source="sft", tag="d1", step=5):
    from nanochat.common import checkpoint as ckpt

    tok = tiny_tokenizer()
    tok.save(home / "tokenizer")
    model = tiny_model(tok, n_layer=1, sequence_len=128)
    ckpt.save_checkpoint(ckpt.checkpoint_dir(source, tag), step, model_state=model.state_dict(), meta={"model_config": model.config.to_dict(), "step": step}, optimizer_state={}, rank_state={})
    return model, tok


def test_chat_command_over_a_real_checkpoint(nanochat_home):
    model, tok = save_tiny_checkpoint(nanochat_home)
    from nanochat.engine.engine import Engine

    eng = Engine(model, tok, calculator=lambda e: None)
    expected = greedy_answer_limited(eng, [{"role": "user", "content": "Hello world!"}], 20)
    r = run_cli("chat", "-p", "Hello world!", "--temperature", "0", "--max-tokens", "20", "--device", "cpu", input="")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"  # only the answer on stdout; what was loaded goes to stderr
    assert "sft/d1 step 5" in r.stderr
    piped = run_cli("chat", "--temperature", "0", "--max-tokens", "20", "--device", "cpu", "-v", input="Hello world!\n")
    assert piped.returncode == 0 and piped.stdout.startswith(expected + "\n") and "tokens/s" in piped.stdout
    # on this prompt the tiny random model repeats itself, so the guards change its answer: the options reach sampling
    msgs = [{"role": "user", "content": "How are you today?"}]
    guarded = run_cli("chat", "-p", msgs[0]["content"], "--temperature", "0", "--max-tokens", "20", "--device", "cpu", input="")
    plain = run_cli("chat", "-p", msgs[0]["content"], "--temperature", "0", "--max-tokens", "20", "--device", "cpu", "--repetition-penalty", "1", "--no-repeat-ngram", "0", input="")
    def text_mode(s: str) -> str:  # what a text-mode pipe makes of it (a sampled "\r" arrives as a newline)
        return s.replace("\r\n", "\n").replace("\r", "\n") + "\n"

    assert guarded.returncode == 0 and guarded.stdout == text_mode(greedy_answer_limited(eng, msgs, 20))
    assert plain.returncode == 0 and plain.stdout == text_mode(greedy_answer_limited(eng, msgs, 20, guards=False))
    assert plain.stdout != guarded.stdout


def test_chat_without_a_checkpoint_says_how_to_get_one():
    r = run_cli("chat", "-p", "hi", "--device", "cpu", input="")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "nanochat sft" in r.stderr
    bad = run_cli("chat", "-p", "hi", "--temperature", "5", input="")
    assert bad.returncode == 2 and "temperature" in bad.stderr
