"""Repetition guards: the penalty and the n-gram block against hand-computed examples, through the
engine with a scripted model (greedy loops are cut, the turn still ends at <|assistant_end|>, forced
tool output is not penalised), off by default for evals and on by default for chat and serve."""

from __future__ import annotations

import io
import json

import httpx
import pytest
import torch

from tests.inference_helpers import ThreadServer, make_app, one_torch_thread, tiny_engine


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def test_penalty_on_a_five_token_vocab_by_hand():
    from nanochat.engine.sampling import apply_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    # seen positive logits are halved, seen negative ones doubled, zero stays zero, unseen ones untouched
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0, 0.0]]
    assert apply_repetition_penalty(logits, seen, 1.0).tolist() == logits.tolist()
    # with token 3 seen as well: 3.0 / 2 = 1.5 still beats the unseen 0.5, but 3.0 / 8 no longer does
    both = torch.tensor([[True, True, False, True, True]])
    assert apply_repetition_penalty(logits, both, 2.0).tolist() == [[1.0, -2.0, 0.5, 1.5, 0.0]]
    assert int(apply_repetition_penalty(logits, both, 8.0).argmax()) == 2  # 3 / 8 < 0.5


def test_ngram_block_forbids_exactly_the_tokens_that_repeat_a_seen_trigram():
    from nanochat.engine.repetition import NgramBlocker

    b = NgramBlocker(3)
    for t in [5, 6, 7, 5, 6]:
        b.push(t)
    # trigrams seen: (5,6,7) (6,7,5) (7,5,6); the last two tokens are (5,6): only 7 would repeat one
    assert b.banned() == {7}
    b.push(8)  # (5,6,8) is new; nothing follows (6,8) yet
    assert b.banned() == set()
    b.push(5)
    b.push(6)  # the last two are (5,6) again: 7 and 8 both followed it
    assert b.banned() == {7, 8}
    two = NgramBlocker(2)
    for t in [1, 2, 1]:
        two.push(t)
    assert two.banned() == {2}
    assert NgramBlocker(4).banned() == set()
    with pytest.raises(ValueError):
        NgramBlocker(1)


def test_settings_are_checked():
    from nanochat.engine.repetition import check_repetition_settings

    check_repetition_settings(1.0, 0)
    check_repetition_settings(10.0, 64)
    for bad in [(0.9, 0), (float("nan"), 0), (11.0, 0), (1.0, 1), (1.0, -2), (1.0, 65)]:
        with pytest.raises(ValueError):
            check_repetition_settings(*bad)


def scripted(eng, table: dict[int, dict[int, float]]):
    """Make the engine's model a table: the last fed token -> {token: logit} (everything else -1e9)."""
    real = eng._forward

    def forward(idx, cache, last_only=True):
        logits = real(idx, cache, last_only).clone()
        logits[:, -1, :] = -1e9
        for row, last in enumerate(idx[:, -1].tolist()):
            for t, v in table.get(last, {}).items():
                logits[row, -1, t] = v
        return logits

    eng._forward = forward
    return eng


def test_greedy_loop_is_cut_by_the_ngram_block_and_the_turn_ends():
    eng = tiny_engine()
    tok = eng.tokenizer
    a, b, c = (tok.encode(w)[0] for w in ("a", "b", "c"))
    end, start = tok.special_id("<|assistant_end|>"), tok.special_id("<|assistant_start|>")
    # a -> b -> c -> a ... forever under plain greedy; the end of the turn is always second best
    scripted(eng, {start: {a: 10.0, end: 1.0}, a: {b: 10.0, end: 1.0}, b: {c: 10.0, end: 2.0}, c: {a: 10.0, end: 5.0}})
    prompt = [tok.bos_id, tok.special_id("<|user_start|>"), *tok.encode("x"), tok.special_id("<|user_end|>"), start]
    plain = [col[0] for col, _ in eng.generate(prompt, max_tokens=9, temperature=0.0)]
    assert plain == [a, b, c, a, b, c, a, b, c]
    # n = 3: a b c a b, then c would repeat the trigram (a, b, c): the next best, <|assistant_end|>, ends the turn
    cut = [col[0] for col, _ in eng.generate(prompt, max_tokens=9, temperature=0.0, no_repeat_ngram=3)]
    assert cut == [a, b, c, a, b, end]
    seqs, _ = eng.generate_batch([prompt, prompt], max_tokens=9, temperature=0.0, no_repeat_ngram=3)
    assert seqs == [[a, b, c, a, b], [a, b, c, a, b]]  # batched rows, each its own history
    # the penalty alone (3): after a b c, the seen `a` drops to 10 / 3 < 5, so <|assistant_end|> wins
    pen = [col[0] for col, _ in eng.generate(prompt, max_tokens=9, temperature=0.0, repetition_penalty=3.0)]
    assert pen == [a, b, c, end]


def test_penalty_skips_the_prompt_and_forced_tool_output():
    from nanochat.engine.tools import use_calculator

    eng = tiny_engine(calculator=use_calculator)
    tok = eng.tokenizer
    s = tok.special_id
    ps, pe, oe, end, start = s("<|python_start|>"), s("<|python_end|>"), s("<|output_end|>"), s("<|assistant_end|>"), s("<|assistant_start|>")
    plus = tok.encode("1+2")
    assert len(plus) == 3 and len(tok.encode("3")) == 1
    one, op, two = plus
    three, x = tok.encode("3")[0], tok.encode("x")[0]
    # the model writes <|python_start|>1+2<|python_end|>, the engine forces <|output_start|>3<|output_end|>;
    # then the model prefers "3" (3.0) over "x" (2.0), then ends
    table = {start: {ps: 10.0}, ps: {one: 10.0}, one: {op: 10.0}, op: {two: 10.0}, two: {pe: 10.0}, oe: {three: 3.0, x: 2.0}, three: {end: 9.0}, x: {end: 9.0}}
    scripted(eng, table)
    prompt = [tok.bos_id, s("<|user_start|>"), three, s("<|user_end|>"), start]  # "3" in the prompt too
    out = [col[0] for col, _ in eng.generate(prompt, max_tokens=20, temperature=0.0, repetition_penalty=2.0)]
    assert out[-2:] == [three, end], "3 / 2 = 1.5 would lose to 2.0: neither the prompt's 3 nor the forced 3 may count"
    # when the model itself wrote the 3 earlier, it is penalised: the row picks x
    table[two] = {three: 10.0}
    table[three] = {pe: 10.0}
    table[pe] = {three: 3.0, x: 2.0}
    table[x] = {end: 9.0}
    eng2 = scripted(tiny_engine(calculator=lambda e: None), table)
    out2 = [col[0] for col, _ in eng2.generate(prompt, max_tokens=20, temperature=0.0, repetition_penalty=2.0)]
    assert out2 == [ps, one, op, two, three, pe, x, end]


def test_guards_are_off_by_default_and_on_in_chat_and_serve():
    import inspect

    from nanochat.commands.chat import chat
    from nanochat.commands.serve import serve
    from nanochat.engine.chat_loop import ChatSession
    from nanochat.engine.engine import Engine
    from nanochat.serve.app import ServeConfig

    for f in (Engine.generate, Engine.generate_batch):
        sig = inspect.signature(f)
        assert sig.parameters["repetition_penalty"].default == 1.0 and sig.parameters["no_repeat_ngram"].default == 0
    on = inspect.signature(ChatSession).parameters
    assert on["repetition_penalty"].default > 1.0 and on["no_repeat_ngram"].default >= 2
    for cmd in (chat, serve):
        p = inspect.signature(cmd).parameters
        assert p["repetition_penalty"].default.default == on["repetition_penalty"].default
        assert p["no_repeat_ngram"].default.default == on["no_repeat_ngram"].default
    assert ServeConfig().repetition_penalty == on["repetition_penalty"].default and ServeConfig().no_repeat_ngram == on["no_repeat_ngram"].default


def test_chat_session_passes_its_settings_and_set_changes_them():
    from nanochat.engine.chat_loop import ChatSession

    eng = tiny_engine()
    seen = []
    real = eng.generate

    def recording(*args, **kw):
        seen.append((kw["repetition_penalty"], kw["no_repeat_ngram"]))
        return real(*args, **kw)

    eng.generate = recording
    session = ChatSession(eng, temperature=0.0, max_tokens=8)
    out = io.StringIO()
    session.answer("hello", out)
    session.command("/set repetition-penalty 1", out)
    session.command("/set no-repeat-ngram 0", out)
    session.answer("hello", out)
    session.command("/set no-repeat-ngram 1", out)
    from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY

    assert seen == [(CHAT_REPETITION_PENALTY, CHAT_NO_REPEAT_NGRAM), (1.0, 0)]
    assert "repetition-penalty = 1 (off)" in out.getvalue() and "bad value '1'" in out.getvalue()


def test_serve_request_fields_and_server_defaults():
    from nanochat.serve.validation import ApiError, parse_chat_request

    body = lambda **kw: json.dumps({"messages": [{"role": "user", "content": "hi"}], **kw}).encode()  # noqa: E731
    kw = dict(context_len=128, vocab_size=300, default_max_tokens=16)
    req = parse_chat_request(body(), **kw, default_repetition_penalty=1.15, default_no_repeat_ngram=8)
    assert (req.repetition_penalty, req.no_repeat_ngram) == (1.15, 8)
    req = parse_chat_request(body(repetition_penalty=1.0, no_repeat_ngram_size=0), **kw, default_repetition_penalty=1.15, default_no_repeat_ngram=8)
    assert (req.repetition_penalty, req.no_repeat_ngram) == (1.0, 0)
    for bad in ({"repetition_penalty": 0.5}, {"repetition_penalty": "x"}, {"no_repeat_ngram_size": 1}, {"no_repeat_ngram_size": 2.5}):
        with pytest.raises(ApiError) as e:
            parse_chat_request(body(**bad), **kw)
        assert e.value.status == 422 and e.value.param == next(iter(bad))

    # over HTTP: the request's fields reach the engine, else the server's defaults
    with ThreadServer(make_app()) as srv:
        msgs = [{"role": "user", "content": "Hello world!"}]
        r_off = httpx.post(srv.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 24, "temperature": 0.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0})
        r_on = httpx.post(srv.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 24, "temperature": 0.0})
        r_bad = httpx.post(srv.url + "/v1/chat/completions", json={"messages": msgs, "no_repeat_ngram_size": 100})
    assert r_off.status_code == 200 and r_on.status_code == 200 and r_bad.status_code == 422
    eng = tiny_engine()
    from nanochat.engine.prompt import render_chat_prompt
    from tests.inference_helpers import display_text

    prompt = render_chat_prompt(eng.tokenizer, msgs, 100)
    plain, _ = eng.generate_batch(prompt, max_tokens=24, temperature=0.0)
    from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY

    guarded, _ = eng.generate_batch(prompt, max_tokens=24, temperature=0.0, repetition_penalty=CHAT_REPETITION_PENALTY, no_repeat_ngram=CHAT_NO_REPEAT_NGRAM)
    assert r_off.json()["choices"][0]["message"]["content"] == display_text(eng.tokenizer, plain[0])
    assert r_on.json()["choices"][0]["message"]["content"] == display_text(eng.tokenizer, guarded[0])
    assert plain != guarded, "the tiny random model loops under plain greedy, so the guards must change its answer"


def test_ngram_block_never_bans_a_special_token():
    eng = tiny_engine(calculator=lambda e: None)
    tok = eng.tokenizer
    s = tok.special_id
    ps, pe, end, start = s("<|python_start|>"), s("<|python_end|>"), s("<|assistant_end|>"), s("<|assistant_start|>")
    one, a = tok.encode("1")[0], tok.encode("a")[0]
    scripted(eng, {start: {ps: 10.0}, ps: {one: 10.0}, one: {pe: 10.0, end: 1.0}, pe: {a: 10.0, end: 5.0}, a: {ps: 10.0}})
    prompt = [tok.bos_id, s("<|user_start|>"), a, s("<|user_end|>"), start]
    out = [col[0] for col, _ in eng.generate(prompt, max_tokens=20, temperature=0.0, no_repeat_ngram=3)]
    # the second (<|python_start|>, 1, <|python_end|>) is allowed (special), then (1, <|python_end|>, a) is not
    assert out == [ps, one, pe, a, ps, one, pe, end]


def test_greedy_stops_at_the_end_of_turn_in_the_chat_session():
    """The answer ends at <|assistant_end|>, with the repetition guards on (their defaults) or off,
    and no token after it is generated."""
    from nanochat.engine.chat_loop import ChatSession

    eng = tiny_engine()
    tok = eng.tokenizer
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    script = [a, b, tok.special_id("<|assistant_end|>")]  # then b, b, b ...: anything after the end would show
    calls = {"n": 0}
    real = eng._forward

    def forward(idx, cache, last_only=True):
        logits = real(idx, cache, last_only).clone()
        logits[:, -1, :] = -1e9
        logits[:, -1, script[calls["n"]] if calls["n"] < len(script) else b] = 1e9
        calls["n"] += 1
        return logits

    eng._forward = forward
    for guards in ({}, {"repetition_penalty": 1.0, "no_repeat_ngram": 0}):
        calls["n"] = 0
        assert ChatSession(eng, temperature=0.0, max_tokens=50, **guards).answer("x", io.StringIO()) == "ab"
        assert calls["n"] == 3  # the prefill and two decode steps: none after the end of the turn


def test_openai_frequency_and_presence_penalties_by_hand():
    from nanochat.engine.repetition import check_openai_penalties
    from nanochat.engine.sampling import apply_frequency_presence

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    counts = torch.tensor([[2, 1, 0, 0]])
    # token 0 used twice: 2 - 0.5*2 - 0.25 = 0.75; token 1 once: -1 - 0.5 - 0.25 = -1.75; unused ones untouched
    assert apply_frequency_presence(logits, counts, 0.5, 0.25).tolist() == [[0.75, -1.75, 0.5, 3.0]]
    assert apply_frequency_presence(logits, counts, 0.0, 0.0).tolist() == logits.tolist()
    assert apply_frequency_presence(logits, counts, -1.0, 0.0).tolist() == [[4.0, 0.0, 0.5, 3.0]]  # negative: encouraged
    check_openai_penalties(-2.0, 2.0)
    for bad in [(2.5, 0.0), (0.0, -2.1), (float("nan"), 0.0)]:
        with pytest.raises(ValueError):
            check_openai_penalties(*bad)


def test_frequency_presence_and_repetition_penalties_are_different_things():
    """a -> b -> a -> ... under plain greedy; after b the end of the turn scores 8.5 against a's 10."""
    eng = tiny_engine()
    tok = eng.tokenizer
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    end, start = tok.special_id("<|assistant_end|>"), tok.special_id("<|assistant_start|>")
    scripted(eng, {start: {a: 10.0, end: 1.0}, a: {b: 10.0, end: 1.0}, b: {a: 10.0, end: 8.5}})
    prompt = [tok.bos_id, tok.special_id("<|user_start|>"), *tok.encode("x"), tok.special_id("<|user_end|>"), start]

    def run(**kw):
        return [col[0] for col, _ in eng.generate(prompt, max_tokens=8, temperature=0.0, **kw)]

    assert run() == [a, b] * 4
    # frequency grows with the count: a after one a is 10 - 1 = 9 > 8.5, after two it is 8 < 8.5
    assert run(frequency_penalty=1.0) == [a, b, a, b, end]
    # presence is flat: 10 - 1 = 9 every time, the loop goes on; 10 - 2 = 8 ends it at once
    assert run(presence_penalty=1.0) == [a, b] * 4
    assert run(presence_penalty=2.0) == [a, b, end]
    # the multiplicative penalty: 10 / 1.2 = 8.33 < 8.5 on the first repeat
    assert run(repetition_penalty=1.2) == [a, b, end]
    with pytest.raises(Exception, match="frequency penalty"):
        run(frequency_penalty=3.0)


def test_serve_takes_openai_penalties_apart_from_the_guards_on_both_endpoints():
    from nanochat.serve.completions import parse_completion_request
    from nanochat.serve.validation import ApiError, parse_chat_request

    chat = lambda **kw: json.dumps({"messages": [{"role": "user", "content": "hi"}], **kw}).encode()  # noqa: E731
    kw = dict(context_len=128, vocab_size=300, default_max_tokens=16, default_repetition_penalty=1.15, default_no_repeat_ngram=8)
    req = parse_chat_request(chat(frequency_penalty=0.5, presence_penalty=-0.5), **kw)
    # the OpenAI fields leave the guards at the server's defaults, and the guards leave them at 0
    assert (req.frequency_penalty, req.presence_penalty, req.repetition_penalty, req.no_repeat_ngram) == (0.5, -0.5, 1.15, 8)
    req = parse_chat_request(chat(repetition_penalty=2.0), **kw)
    assert (req.frequency_penalty, req.presence_penalty, req.repetition_penalty) == (0.0, 0.0, 2.0)
    for bad in ({"frequency_penalty": 2.5}, {"presence_penalty": -3}, {"frequency_penalty": True}, {"presence_penalty": "1"}):
        with pytest.raises(ApiError) as e:
            parse_chat_request(chat(**bad), **kw)
        assert e.value.status == 422 and e.value.param == next(iter(bad))

    eng = tiny_engine()
    tok = eng.tokenizer
    comp = lambda **kw: json.dumps({"prompt": "Hello", **kw}).encode()  # noqa: E731
    c = parse_completion_request(comp(), tokenizer=tok, context_len=128, vocab_size=tok.vocab_size)
    assert (c.repetition_penalty, c.no_repeat_ngram, c.frequency_penalty, c.presence_penalty) == (1.0, 0, 0.0, 0.0)  # raw by default
    c = parse_completion_request(comp(repetition_penalty=1.3, no_repeat_ngram_size=4, frequency_penalty=1.0), tokenizer=tok, context_len=128, vocab_size=tok.vocab_size)
    assert (c.repetition_penalty, c.no_repeat_ngram, c.frequency_penalty, c.presence_penalty) == (1.3, 4, 1.0, 0.0)
    with pytest.raises(ApiError) as e:
        parse_completion_request(comp(presence_penalty=9), tokenizer=tok, context_len=128, vocab_size=tok.vocab_size)
    assert e.value.status == 422 and e.value.param == "presence_penalty"

    # over HTTP the fields reach the engine: the answers equal the engine's own with the same settings
    from nanochat.engine.prompt import render_chat_prompt
    from tests.inference_helpers import display_text

    msgs = [{"role": "user", "content": "Hello world!"}]
    off = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    with ThreadServer(make_app()) as srv:
        r_chat = httpx.post(srv.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 24, "temperature": 0.0, "frequency_penalty": 2.0, **off})
        # logprobs 0: the completion's tokens by name, which compare exactly (its text drops some special tokens)
        r_raw = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 24, "temperature": 0.0, "logprobs": 0})
        r_pres = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 24, "temperature": 0.0, "logprobs": 0, "presence_penalty": 2.0})
    assert r_chat.status_code == r_raw.status_code == r_pres.status_code == 200
    prompt = render_chat_prompt(tok, msgs, 100)
    plain, _ = eng.generate_batch(prompt, max_tokens=24, temperature=0.0)
    freq, _ = eng.generate_batch(prompt, max_tokens=24, temperature=0.0, frequency_penalty=2.0)
    assert freq != plain, "the tiny random model loops under plain greedy, so the penalty must change its answer"
    assert r_chat.json()["choices"][0]["message"]["content"] == display_text(tok, freq[0])
    text_prompt = [tok.bos_id] + tok.encode("Hello")
    raw, _ = eng.generate_batch(text_prompt, max_tokens=24, temperature=0.0)
    pres, _ = eng.generate_batch(text_prompt, max_tokens=24, temperature=0.0, presence_penalty=2.0)
    from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY

    chat_guards, _ = eng.generate_batch(text_prompt, max_tokens=24, temperature=0.0, repetition_penalty=CHAT_REPETITION_PENALTY, no_repeat_ngram=CHAT_NO_REPEAT_NGRAM)
    assert raw != pres and raw != chat_guards  # so the checks below tell the three apart
    from nanochat.engine.choice_output import TokenNames

    names = TokenNames(tok)
    assert r_raw.json()["choices"][0]["logprobs"]["tokens"] == [names(t)[0] for t in raw[0]]  # text completions: no guards unless asked
    assert r_pres.json()["choices"][0]["logprobs"]["tokens"] == [names(t)[0] for t in pres[0]]
