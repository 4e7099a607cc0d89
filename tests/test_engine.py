"""The inference engine: KV-cache decoding against a naive full recompute, seeds, samples, the
calculator tool, sampling filters, UTF-8-safe streaming and prompt truncation (tiny random model)."""

from __future__ import annotations

import collections

import pytest
import torch

from tests.inference_helpers import one_torch_thread, tiny_engine, tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def naive_greedy(model, prompt: list[int], steps: int, stop: set[int]) -> list[int]:
    """Reference decoder: no cache, the whole sequence through the model every step."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            t = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(t)
            ids.append(t)
            if t in stop:
                break
    return out


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(n_layer=2, sequence_len=128)


def prompt_of(tok, text: str) -> list[int]:
    return [tok.bos_id, tok.special_id("<|user_start|>"), *tok.encode(text), tok.special_id("<|user_end|>"), tok.special_id("<|assistant_start|>")]


def test_greedy_kv_cache_equals_full_recompute(engine):
    tok = engine.tokenizer
    prompt = prompt_of(tok, "The quick brown fox")
    expected = naive_greedy(engine.model, prompt, 40, engine.terminal)
    got = [col[0] for col, _ in engine.generate(prompt, max_tokens=40, temperature=0.0)]
    assert got == expected
    assert len(set(expected)) > 3, "the random model should not be degenerate, or this test proves little"


def test_greedy_samples_and_different_prompts_in_one_batch(engine):
    tok = engine.tokenizer
    prompts = [prompt_of(tok, "Hello world!"), prompt_of(tok, "Numbers: 12 + 30 = 42, and more words here"), [tok.bos_id]]
    seqs, masks = engine.generate_batch(prompts, num_samples=2, max_tokens=24, temperature=0.0)
    assert len(seqs) == 6
    for i, p in enumerate(prompts):
        ref = [t for t in naive_greedy(engine.model, p, 24, engine.terminal) if t not in engine.terminal]
        assert seqs[2 * i] == ref and seqs[2 * i + 1] == ref
        assert masks[2 * i] == [1] * len(ref)


def test_same_seed_same_text_and_samples_differ(engine):
    tok = engine.tokenizer
    prompt = prompt_of(tok, "Hello")
    a, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=20, temperature=1.0, seed=123)
    b, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=20, temperature=1.0, seed=123)
    c, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=20, temperature=1.0, seed=124)
    assert a == b
    assert a != c
    assert len({tuple(s) for s in a}) == 4, "samples of one prompt at temperature 1 should differ"


def test_generation_stops_at_the_context(engine):
    tok = engine.tokenizer
    prompt = [tok.bos_id] + tok.encode("The quick brown fox " * 6)[: engine.sequence_len - 10]
    steps = list(engine.generate(prompt, max_tokens=1000, temperature=1.0, seed=1))
    assert len(prompt) + len(steps) <= engine.sequence_len
    with pytest.raises(Exception, match="context"):
        list(engine.generate([tok.bos_id] * engine.sequence_len, max_tokens=5))


def test_tool_call_is_executed_and_its_output_forced():
    """Script the model to write <|python_start|>12+30<|python_end|> and then end its turn; the engine
    must run the calculator and force <|output_start|>42<|output_end|> (mask 0) before that."""
    from nanochat.engine.tools import use_calculator

    calls = []

    def calculator(expr):  # the real calculator, recording its calls
        calls.append(expr)
        return use_calculator(expr)

    eng = tiny_engine(calculator=calculator)
    tok = eng.tokenizer
    ps, pe = tok.special_id("<|python_start|>"), tok.special_id("<|python_end|>")
    os_, oe, end = tok.special_id("<|output_start|>"), tok.special_id("<|output_end|>"), tok.special_id("<|assistant_end|>")
    script = [ps, *tok.encode("12+30"), pe, end, end, end, end, end, end, end, end]
    fed: list[list[int]] = []
    real_forward = eng._forward
    state = {"i": 0}

    def scripted_forward(idx, cache, last_only=True):
        fed.append(idx[:, -1].tolist())
        logits = real_forward(idx, cache, last_only).clone()
        want = script[min(state["i"], len(script) - 1)]
        state["i"] += 1
        logits[:, -1, :] = -1e9
        logits[:, -1, want] = 1e9
        return logits

    from nanochat.engine.engine import Engine

    assert Engine(eng.model, tok).calculator("2+3") == "5"  # by default the engine uses nanochat.engine.tools
    eng._forward = scripted_forward
    cols = list(eng.generate(prompt_of(tok, "what is 12+30?"), max_tokens=40, temperature=1.0, seed=0))
    tokens = [c[0][0] for c in cols]
    masks = [m[0] for _, m in cols]
    forced = [os_, *tok.encode("42"), oe]
    n_call = len(tok.encode("12+30")) + 2
    assert calls == ["12+30"]
    assert tokens == script[:n_call] + forced + [end]
    assert masks == [1] * n_call + [0] * len(forced) + [1]
    # the forced tokens went through the model (they are in the KV cache, not just in the output)
    assert [f[0] for f in fed[1:]] == tokens[:-1]
    state["i"] = 0
    seqs, ms = eng.generate_batch(prompt_of(tok, "x"), max_tokens=40, temperature=0.0)
    assert seqs == [tokens[:-1]] and ms == [masks[:-1]]  # completions come without the terminal token


def test_calculator_failure_forces_nothing():
    eng = tiny_engine(calculator=lambda expr: None)
    from nanochat.engine.engine import RowState

    tok = eng.tokenizer
    row = RowState(eng.ids, tok.encode, tok.decode, eng.calculator)
    for t in [eng.ids["python_start"], *tok.encode("1/0"), eng.ids["python_end"]]:
        row.observe(t)
    assert not row.forced and not row.done
    assert row.next_token(7) == (7, 1)


# ---- sampling ----


def test_sampling_filters():
    from nanochat.engine.sampling import make_generator, sample_next_token

    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    g = make_generator(0, "cpu")
    assert sample_next_token(logits, g, temperature=0.0).tolist() == [0]
    for tiny in (1e-300, 1e-45, 1e-6):  # no overflow to inf/nan: greedy in effect
        assert sample_next_token(logits, g, temperature=tiny).tolist() == [0]
    assert sample_next_token(torch.tensor([[0.0, 1e4]]), g, temperature=1e-3).tolist() == [1]
    draws = collections.Counter(int(sample_next_token(logits, g, 1.0, top_k=2)) for _ in range(2000))
    assert set(draws) == {0, 1}
    draws = collections.Counter(int(sample_next_token(logits, g, 1.0, top_p=0.5)) for _ in range(2000))
    assert set(draws) == {0, 1}  # mass before token 1 is 0.4 < 0.5; before token 2 it is 0.7
    assert abs(draws[0] / 2000 - 4 / 7) < 0.05  # renormalised 0.4 / 0.7
    draws = collections.Counter(int(sample_next_token(logits, g, 1.0)) for _ in range(4000))
    assert abs(draws[3] / 4000 - 0.1) < 0.03
    # low temperature sharpens: p0 ∝ 0.4^4 etc.
    draws = collections.Counter(int(sample_next_token(logits, g, 0.25)) for _ in range(2000))
    p0 = 0.4**4 / sum(x**4 for x in (0.4, 0.3, 0.2, 0.1))
    assert abs(draws[0] / 2000 - p0) < 0.05


def test_sampling_same_seed_same_draws():
    from nanochat.engine.sampling import make_generator, sample_next_token

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(5))
    a = [sample_next_token(logits, make_generator(9, "cpu"), 1.0, top_k=20, top_p=0.9).tolist() for _ in range(3)]
    assert a[0] == a[1] == a[2]


# ---- streaming ----


class ByteTokenizer:
    """Every byte its own token (ids 0..255); specials after them. Splits every multi-byte character."""

    names = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>", "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]

    def special_id(self, name):
        return 256 + self.names.index(name)

    def decode_bytes(self, ids):
        return bytes(ids)


def test_stream_decoder_never_splits_a_character():
    from nanochat.engine.streaming import StreamDecoder

    text = "héllo 😀 你好 — ok"
    dec = StreamDecoder(ByteTokenizer())
    chunks = [dec.push(b) for b in text.encode("utf-8")] + [dec.flush()]
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)
    assert "😀" in chunks  # the four bytes of the emoji come out together, as one chunk
    # calculator tokens render GSM8K-style
    t = ByteTokenizer()
    dec = StreamDecoder(t)
    ids = [t.special_id("<|python_start|>"), *b"2+2", t.special_id("<|python_end|>"), t.special_id("<|output_start|>"), *b"4", t.special_id("<|output_end|>")]
    assert "".join(dec.push(i) for i in ids) + dec.flush() == "<<2+2 = 4>>"
    # a truncated character at the end becomes one U+FFFD, not an exception
    dec = StreamDecoder(t)
    assert dec.push("😀".encode()[0]) == ""
    assert dec.flush() == "\ufffd"


def test_stream_decoder_with_the_real_tokenizer():
    from nanochat.engine.streaming import StreamDecoder

    tok = tiny_tokenizer()
    text = "Héllo wörld, naïve café — 你好，世界。 😀 🎉 done"
    dec = StreamDecoder(tok)
    chunks = [dec.push(i) for i in tok.encode(text)] + [dec.flush()]
    assert "".join(chunks) == text and all("\ufffd" not in c for c in chunks)


# ---- prompts ----


def test_prompt_matches_the_chat_template_and_truncates_oldest_turns():
    from nanochat.engine.prompt import render_chat_prompt

    tok = tiny_tokenizer()
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello world!"},
        {"role": "assistant", "content": "Hello! How are you?"},
        {"role": "user", "content": "The quick brown fox, 12 + 30 = 42? Héllo wörld"},
    ]
    full = render_chat_prompt(tok, convo, 1000)
    assert full == tok.render_for_completion(convo)  # the tokenizer's own renderer agrees
    # room for the last exchange only: the oldest user/assistant pair goes, the system prompt stays
    u, a = tok.special_id("<|user_start|>"), tok.special_id("<|assistant_start|>")
    last = [tok.bos_id, u, *tok.encode("Be brief.\n\nThe quick brown fox, 12 + 30 = 42? Héllo wörld"), tok.special_id("<|user_end|>"), a]
    assert render_chat_prompt(tok, convo, len(last)) == last
    # less room still: the system prompt goes too, then the oldest tokens of the last message
    bare = [tok.bos_id, u, *tok.encode("The quick brown fox, 12 + 30 = 42? Héllo wörld"), tok.special_id("<|user_end|>"), a]
    assert render_chat_prompt(tok, convo, len(bare)) == bare
    cut = render_chat_prompt(tok, convo, len(bare) - 2)
    assert len(cut) == len(bare) - 2 and cut[:2] == [tok.bos_id, u] and cut[-2:] == bare[-2:]
    assert cut[2:-2] == bare[4:-2]
    for budget in range(8, 60):
        assert len(render_chat_prompt(tok, convo * 3, budget)) <= budget


# ---- static-shape decoding (the CUDA-graph path) ----


def test_static_decode_path_equals_eager():
    """The static-shape step (what CUDA graphs replay) gives the same tokens as eager decoding,
    for one prompt, several samples, and several prompts of different lengths; and reusing it
    for a second request starts clean."""
    from nanochat.engine.engine import Engine

    eng = tiny_engine()
    static = Engine(eng.model, eng.tokenizer, calculator=eng.calculator, decode="static")
    tok = eng.tokenizer
    p1, p2 = prompt_of(tok, "Hello world!"), prompt_of(tok, "The quick brown fox jumps over the lazy dog")
    for prompts, n in [(p1, 1), (p1, 3), ([p1, p2], 2), (p2, 1)]:
        a = eng.generate_batch(prompts, num_samples=n, max_tokens=20, temperature=0.0)
        b = static.generate_batch(prompts, num_samples=n, max_tokens=20, temperature=0.0)
        assert a == b
    a = eng.generate_batch(p1, num_samples=2, max_tokens=20, temperature=0.9, seed=3)
    assert static.generate_batch(p1, num_samples=2, max_tokens=20, temperature=0.9, seed=3) == a
    # new parameter tensors (as after `model.to(dtype)`): the static steps are rebuilt, not stale
    before = static.generate_batch(p1, max_tokens=20, temperature=0.0)
    with torch.no_grad():
        for prm in eng.model.parameters():
            prm.data = prm.data.clone() * 1.5
    assert static.generate_batch(p1, max_tokens=20, temperature=0.0) == eng.generate_batch(p1, max_tokens=20, temperature=0.0) != before


@pytest.mark.gpu
def test_cuda_graph_decode_equals_eager_on_gpu():
    from nanochat.engine.engine import Engine

    eng = tiny_engine()
    model = eng.model.to("cuda")
    eager = Engine(model, eng.tokenizer, calculator=eng.calculator, decode="eager")
    graph = Engine(model, eng.tokenizer, calculator=eng.calculator, decode="graph")
    p = prompt_of(eng.tokenizer, "Hello world!")
    for n in (1, 4):
        assert graph.generate_batch(p, num_samples=n, max_tokens=30, temperature=0.0) == eager.generate_batch(p, num_samples=n, max_tokens=30, temperature=0.0)
    # parameters moved to new memory (as `model.to(...)` or an assigning loader does): the graphs must be recaptured
    with torch.no_grad():
        for prm in model.parameters():
            prm.data = prm.data.clone() * 1.5
    assert graph.generate_batch(p, max_tokens=30, temperature=0.0) == eager.generate_batch(p, max_tokens=30, temperature=0.0)
