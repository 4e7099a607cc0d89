"""The fuller OpenAI API of `nanochat serve`, through the official openai client against a real uvicorn:
/v1/completions (echo, logprobs with alternatives checked against a direct forward, stop sequences, token-id
prompts, streaming, seeds, scoring with max_tokens=0), stop and logprobs on chat completions, the model
name check (404), refusal of fields that would change the answer (400), and the stop-sequence logic itself."""

from __future__ import annotations

import json
from functools import lru_cache

import httpx
import pytest

openai = pytest.importorskip("openai")

from tests.inference_helpers import ThreadServer, tiny_engine, tiny_model, tiny_tokenizer  # noqa: E402
from tests.test_serve_malformed import BAD_VALUES  # noqa: E402

MODEL = "nanochat-test"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@lru_cache(maxsize=1)
def _model():
    return tiny_model(tiny_tokenizer())  # the same seed-0 weights the server's engine has


def _log_softmax(ids: list[int]):
    """The served model's log-softmax at every position of `ids`, from one plain forward (no cache)."""
    import torch

    model = _model()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


def _name(tok, i: int) -> str:
    return tok.id_to_bytes(i).decode("utf-8", errors="replace") if not tok.is_special(i) else tok.decode([i])


def test_completion_echo_logprobs_equal_a_direct_forward(client):
    tok = tiny_tokenizer()
    prompt = "Hello world! How are you"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, logprobs=5, echo=True, temperature=0.0)
    assert r.object == "text_completion" and r.model == MODEL
    choice = r.choices[0]
    prompt_ids = tok.encode(prompt)
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    n_gen = len(lp.tokens) - len(prompt_ids)
    assert n_gen == r.usage.completion_tokens == 8 and r.usage.prompt_tokens == len(prompt_ids) + 1  # + the <|bos|>
    # greedy: each generated token is the argmax; rebuild the whole sequence and score it with one forward
    ids = [tok.bos_id] + prompt_ids
    for _ in range(n_gen):
        nxt = int(_log_softmax(ids)[-1].argmax())
        ids.append(nxt)
    rows = _log_softmax(ids)
    expected = [float(rows[p - 1, ids[p]]) for p in range(1, len(ids))]  # every token after the <|bos|>
    assert lp.tokens == [_name(tok, i) for i in ids[1:]]
    assert lp.token_logprobs == pytest.approx(expected, abs=1e-4)
    for p, top in zip(range(1, len(ids)), lp.top_logprobs):
        values, alts = rows[p - 1].topk(5)
        want = {}
        for v, i in zip(values.tolist(), alts.tolist()):
            want.setdefault(_name(tok, i), v)
        assert list(top) == list(want) and list(top.values()) == pytest.approx(list(want.values()), abs=1e-4)
    # text offsets point at each token's text (ASCII tokens: exactly)
    for t, off in zip(lp.tokens, lp.text_offset):
        if t.isascii():
            assert choice.text[off : off + len(t)] == t
    assert choice.text == prompt + tok.decode(ids[1 + len(prompt_ids) :])


def test_token_id_prompt_scoring_and_text_prompt_agree(client):
    tok = tiny_tokenizer()
    text = "The quick brown fox jumps"
    ids = [tok.bos_id] + tok.encode(text)
    by_text = client.completions.create(model=MODEL, prompt=text, max_tokens=6, temperature=0.0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0.0)
    assert by_ids.choices[0].text == by_text.choices[0].text and by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens
    # max_tokens=0 with echo scores the prompt: token ids as sent, the first one without a log-probability
    s = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=0)
    lp = s.choices[0].logprobs
    rows = _log_softmax(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.tokens[0] == "<|bos|>"
    assert lp.token_logprobs[1:] == pytest.approx([float(rows[p - 1, ids[p]]) for p in range(1, len(ids))], abs=1e-4)
    assert s.usage.completion_tokens == 0 and s.choices[0].finish_reason == "length"


def test_stop_sequence_from_a_real_continuation(client):
    full = client.completions.create(model=MODEL, prompt="Hello world!", max_tokens=30, temperature=0.0).choices[0].text
    stop = full[6:8]
    assert len(stop) == 2
    cut = full.index(stop)
    r = client.completions.create(model=MODEL, prompt="Hello world!", max_tokens=30, temperature=0.0, stop=[stop, "never seen"])
    assert r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 30
    # streaming with the same stop gives the same text
    chunks = list(client.completions.create(model=MODEL, prompt="Hello world!", max_tokens=30, temperature=0.0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full[:cut]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


class ScriptedEngine:
    """Wraps an Engine but emits a fixed script of tokens (then the end of the answer), counting its steps."""

    def __init__(self, engine, script: list[int]):
        self.engine, self.script = engine, script
        self.tokenizer, self.sequence_len, self.device, self.model = engine.tokenizer, engine.sequence_len, engine.device, engine.model
        self.steps = 0

    def generate(self, prompt_ids, num_samples=1, max_tokens=None, **kw):
        end = self.tokenizer.special_id("<|assistant_end|>")
        for t in (self.script + [end])[:max_tokens]:
            self.steps += 1
            yield [t] * num_samples, [1] * num_samples


def test_stop_newline_ends_the_answer_there():
    from nanochat.serve.app import ServeConfig, create_app

    tok = tiny_tokenizer()
    script = tok.encode("Hello world!\nHow are you today?\n")
    engine = ScriptedEngine(tiny_engine(), script)
    with ThreadServer(create_app(ServeConfig(model_name=MODEL), lambda: [engine])) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        r = c.completions.create(model=MODEL, prompt="Hi", max_tokens=40, stop=["\n"])
        assert r.choices[0].text == "Hello world!" and r.choices[0].finish_reason == "stop"
        assert engine.steps < len(script)  # generation stopped at the newline, not at the end of the script
        chat = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=40, stop="\n")
        assert chat.choices[0].message.content == "Hello world!" and chat.choices[0].finish_reason == "stop"
        stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=40, stop=["you to", "are you"], stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "Hello world!\nHow "
        # without a stop sequence the whole script comes back, ending at <|assistant_end|>
        r = c.completions.create(model=MODEL, prompt="Hi", max_tokens=40)
        assert r.choices[0].text == "Hello world!\nHow are you today?\n" and r.choices[0].finish_reason == "stop"


def _greedy_reference(ids: list[int], steps: int, penalty: float) -> list[int]:
    """Greedy continuation of `ids` by plain forwards, with a CTRL repetition penalty written out here:
    a token the answer already sampled (special tokens never) has its logit divided by `penalty` when
    positive, multiplied when negative. penalty 1 is the model's own argmax."""
    tok = tiny_tokenizer()
    import torch

    model, out, seen = _model(), list(ids), set()
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([out]))[0, -1].float().clone()
        for t in seen:
            logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
        nxt = int(logits.argmax())
        out.append(nxt)
        if not tok.is_special(nxt):
            seen.add(nxt)
    return out


@pytest.mark.parametrize("guards", ["off", "server default"])
def test_chat_logprobs_equal_a_direct_forward(client, guards):
    """The log-probabilities are the model's own (before the repetition guards), whatever picked the token:
    with the guards off greedy is the raw argmax; with the server's default guards (penalty 1.15; an 8-gram
    cannot repeat in 6 tokens) it is the argmax after the penalty, computed by hand above."""
    from nanochat.engine.prompt import render_chat_prompt
    from nanochat.engine.repetition import CHAT_REPETITION_PENALTY

    tok = tiny_tokenizer()
    msgs = [{"role": "user", "content": "Hello world!"}]
    extra = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0} if guards == "off" else {}
    kw = dict(model=MODEL, messages=msgs, max_tokens=6, temperature=0.0, logprobs=True, top_logprobs=3, extra_body=extra)
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    prompt = render_chat_prompt(tok, msgs, 100)
    n_prompt = len(prompt)
    ids = _greedy_reference(prompt, len(content), 1.0 if guards == "off" else CHAT_REPETITION_PENALTY)
    assert [it.token for it in content] == [_name(tok, i) for i in ids[n_prompt:]]
    if guards != "off":  # on this prompt the penalty changes the greedy answer, so the check above has teeth
        assert ids != _greedy_reference(prompt, len(content), 1.0)
    rows = _log_softmax(ids)
    assert [it.logprob for it in content] == pytest.approx([float(rows[p - 1, ids[p]]) for p in range(n_prompt, len(ids))], abs=1e-4)
    for it, p in zip(content, range(n_prompt, len(ids))):
        assert len(it.top_logprobs) == 3 and it.top_logprobs[0].logprob == pytest.approx(float(rows[p - 1].max()), abs=1e-4)
    # streamed, the same log-probabilities arrive chunk by chunk
    stream = client.chat.completions.create(**kw, stream=True)
    streamed = [it.logprob for ch in stream if ch.choices and ch.choices[0].logprobs for it in ch.choices[0].logprobs.content]
    assert streamed == pytest.approx([it.logprob for it in content], abs=1e-6)
    # without logprobs there are none
    assert client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2).choices[0].logprobs is None


def test_streamed_completion_equals_the_whole_one_and_seeds_repeat(client):
    kw = dict(model=MODEL, prompt="Numbers: 12 + 30 =", max_tokens=10, temperature=0.0, logprobs=2, echo=True)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(whole.choices[0].logprobs.token_logprobs, abs=1e-5)
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    sampled = dict(model=MODEL, prompt="Hello", max_tokens=8, temperature=1.0, seed=11, n=3)
    a, b = client.completions.create(**sampled), client.completions.create(**sampled)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1


def test_unknown_model_is_404_and_the_served_name_or_nanochat_work(client):
    for call in (
        lambda m: client.completions.create(model=m, prompt="hi", max_tokens=1),
        lambda m: client.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=1),
    ):
        with pytest.raises(openai.NotFoundError) as e:
            call("gpt-4")
        assert e.value.body["code"] == "model_not_found" and "nanochat-test" in e.value.body["message"]
        assert call(MODEL).usage.completion_tokens >= 1
        assert call("nanochat").usage.completion_tokens >= 1


def test_fields_that_would_change_the_answer_are_refused(client, server):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model=MODEL, messages=msgs, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model=MODEL, messages=msgs, response_format={"type": "json_object"})
    assert client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1, response_format={"type": "text"}).choices
    for body in ({"prompt": "hi", "suffix": "end"}, {"prompt": "hi", "best_of": 3}):
        r = httpx.post(server.url + "/v1/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x" * 10, "max_tokens": 120})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


COMPLETION_FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stream", "stop", "echo", "logprobs", "best_of", "suffix"]


def test_malformed_completion_requests_never_5xx(server):
    good = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0.0}
    cases = [{**good, f: v} for f in COMPLETION_FIELDS for v in BAD_VALUES] + [{k: v for k, v in good.items() if k != f} for f in COMPLETION_FIELDS]
    cases += [{**good, "prompt": p} for p in ([[1, 2], [3]], ["a", "b"], [10**9], [-1], [1.5], [[]], [None], "😀" * 40_000)]
    cases += [{**good, "stop": s} for s in (["a"] * 5, ["a" * 201], [""], [1])] + [{**good, "logprobs": 21}, {**good, "stream": True, "stream_options": "on"}]
    statuses = {}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for body in cases:
            r = c.post("/v1/completions", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (body, r.text[:300])
            if r.status_code >= 400:
                err = r.json()["error"]
                assert err["message"] and err["type"]
    assert {200, 400, 404, 413, 422} <= set(statuses)


def test_choice_output_holds_back_a_possible_stop_and_cuts_at_one():
    from nanochat.engine.choice_output import ChoiceOutput

    tok = tiny_tokenizer()

    def run(text: str, stop: list[str]):
        out = ChoiceOutput(tok, stop)
        pieces, stopped = [], False
        for t in tok.encode(text):
            piece, _, stopped = out.push(t)
            pieces.append(piece)
            if stopped:
                break
        if not stopped:
            pieces.append(out.finish()[0])
        return pieces, stopped

    pieces, stopped = run("abc END def", ["END"])
    assert "".join(pieces) == "abc " and stopped
    pieces, stopped = run("abc EN", ["END"])  # a stop that never completes is released at the end
    assert "".join(pieces) == "abc EN" and not stopped and pieces[-1].endswith("EN")
    pieces, stopped = run("😀 then 你好", ["你"])
    assert "".join(pieces) == "😀 then " and stopped and "\ufffd" not in "".join(pieces)
    pieces, _ = run("aaa", [])
    assert "".join(pieces) == "aaa"


def test_served_model_name_must_be_a_name():
    from tests.conftest import run_cli

    r = run_cli("serve", "--served-model-name", " ", "--device", "cpu")
    assert r.returncode == 2 and "--served-model-name" in r.stderr and r.stderr.count("\n") == 1
