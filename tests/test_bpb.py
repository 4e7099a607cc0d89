"""Bits per byte against values computed by hand from the text and the tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from nanochat.eval.bpb import TextBpb, evaluate_bpb, token_stream_batches

DOCS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
    "Naïve café owners say £5 is “too much” — 東京 costs more.",  # multi-byte characters
]


@pytest.fixture(scope="module")
def tokenizer():
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer

    text = open_resource("corpus/austen/emma.txt").read()[:100_000]
    return Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)


class Uniform(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, idx, targets, loss_reduction="none"):
        # every token has probability 1/V: ln V nats per scored target, 0 where the target is ignored
        assert loss_reduction == "none"
        return torch.where(targets >= 0, math.log(self.vocab_size), 0.0)


def test_uniform_model_bpb_is_log2_vocab_over_bytes_per_token(tokenizer):
    V = tokenizer.vocab_size
    batches = []
    for doc in DOCS:
        ids = tokenizer.encode(doc, prepend=tokenizer.bos_id)
        batches.append((torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])))
    # independent count: every target is a text token of a doc (BOS is never a target)
    n_tokens = sum(len(tokenizer.encode(d)) for d in DOCS)
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    expected = math.log2(V) / (n_bytes / n_tokens)
    assert evaluate_bpb(Uniform(V), iter(batches), None, tokenizer.token_bytes()) == pytest.approx(expected, rel=1e-6)
    # steps limits the batches
    first = evaluate_bpb(Uniform(V), iter(batches), 1, tokenizer.token_bytes())
    assert first == pytest.approx(math.log2(V) * len(tokenizer.encode(DOCS[0])) / len(DOCS[0].encode()), rel=1e-6)


def test_ignored_and_special_targets_do_not_count(tokenizer):
    V = tokenizer.vocab_size
    ids = tokenizer.encode(DOCS[0], prepend=tokenizer.bos_id) + [tokenizer.bos_id] + tokenizer.encode(DOCS[1])
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    y[0, :5] = -1  # ignored
    kept = [t for t in y[0].tolist() if t >= 0 and t != tokenizer.bos_id]
    n_bytes = len(tokenizer.decode_bytes(kept))
    expected = math.log2(V) * len(kept) / n_bytes
    assert evaluate_bpb(Uniform(V), iter([(x, y)]), None, tokenizer.token_bytes()) == pytest.approx(expected, rel=1e-6)
    assert evaluate_bpb(Uniform(V), iter([]), None, tokenizer.token_bytes()) == float("inf")


def test_stream_batches_score_every_token_once(tokenizer):
    docs = DOCS * 4
    stream = [t for d in docs for t in tokenizer.encode(d, prepend=tokenizer.bos_id)]
    batches = list(token_stream_batches(tokenizer, iter(docs), batch_size=2, seq_len=16, device="cpu"))
    assert len(batches) == (len(stream) - 1) // 32
    xs = torch.cat([x.reshape(-1) for x, _ in batches]).tolist()
    ys = torch.cat([y.reshape(-1) for _, y in batches]).tolist()
    assert xs == stream[: len(xs)] and ys == stream[1 : len(ys) + 1]


def test_text_bpb_scores_the_stream_prefix_whatever_the_batch_or_process_count(tokenizer):
    V, T = tokenizer.vocab_size, 16
    docs = DOCS * 20
    stream = [t for d in docs for t in tokenizer.encode(d, prepend=tokenizer.bos_id)]
    # 100 tokens are 6 whole rows of 16 targets: targets stream[1:97], each row one token longer than its targets
    expected_rows = [stream[i * T : i * T + T + 1] for i in range(6)]
    for world in (1, 3, 4):
        parts = [TextBpb(tokenizer, iter(docs), 100, T, rank=r, world_size=world) for r in range(world)]
        assert all(p.rows == 6 and p.tokens == 96 for p in parts)
        assert sorted(row for p in parts for row in p._mine.tolist()) == sorted(expected_rows)
    # a uniform model: ln V nats on every target that stands for bytes, counted by hand from the stream
    tb = tokenizer.token_bytes()
    targets = stream[1:97]
    n_bytes = sum(tb[t] for t in targets)
    expected = math.log2(V) * sum(tb[t] > 0 for t in targets) / n_bytes
    one = TextBpb(tokenizer, iter(docs), 100, T)
    for batch in (1, 4, 5):  # 5 leaves a padded last batch: its rows score nothing
        res = one.evaluate(Uniform(V), batch, tb, "cpu")
        assert res.bpb == pytest.approx(expected, rel=1e-6) and res.tokens == 96 and res.bytes == n_bytes
        assert sum(1 for _ in one.batches(batch, "cpu")) == -(-6 // batch)
    # a split shorter than asked: every whole row there is, and the count says so
    short = TextBpb(tokenizer, iter(DOCS), 10**6, T)
    n = sum(len(tokenizer.encode(d)) + 1 for d in DOCS)
    assert short.rows == (n - 1) // T and short.tokens == short.rows * T
