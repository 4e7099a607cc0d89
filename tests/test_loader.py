"""The packing loader: best-fit rows equal a naive reference, BOS alignment, sharding, exact resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from nanochat.common import checkpoint as ck
from nanochat.common.errors import NanochatError
from nanochat.data.loader import PackingLoader

BOS = 0


class FakeTokenizer:
    """One token per character (ids 1..255), BOS = 0."""

    bos_id = BOS

    def encode_batch(self, texts, prepend=None, num_threads=1):
        return [([prepend] if prepend is not None else []) + [1 + (ord(c) % 255) for c in t] for t in texts]


class FakeCorpus:
    """Documents as one row group each; rank r of W reads docs r, r+W, ...; positions {epoch, index}."""

    split = "train"

    def __init__(self, n: int = 300, seed: int = 0, max_len: int = 120, fail_at: int | None = None):
        rng = random.Random(seed)
        alphabet = "abcdefghijklmnopqrstuvwxyz"
        self.docs = ["".join(rng.choice(alphabet) for _ in range(rng.choice([rng.randint(1, 30), rng.randint(1, max_len)]))) for _ in range(n)]
        self.fail_at = fail_at

    def iter_docs(self, rank=0, world_size=1, start=None):
        epoch, after = (start["epoch"], start["index"]) if start else (1, -1)
        while True:
            for i in range(rank, len(self.docs), world_size):
                if i <= after:
                    continue
                if self.fail_at is not None and i >= self.fail_at:
                    raise NanochatError("shard 3 is unreadable")
                yield self.docs[i], {"epoch": epoch, "index": i}
            epoch, after = epoch + 1, -1


def naive_rows(corpus, tok, batch, seq_len, buffer_size, n_batches, rank=0, world=1):
    """Straightforward list-based best-fit packing, the specification written plainly."""
    stream = (tok.encode_batch([t], prepend=BOS)[0] for t, _ in corpus.iter_docs(rank, world))
    cap, buf, out = seq_len + 1, [], []
    for _ in range(n_batches * batch):
        row: list[int] = []
        while len(row) < cap:
            while len(buf) < buffer_size:
                buf.append(next(stream))
            room = cap - len(row)
            fits = [i for i, d in enumerate(buf) if len(d) <= room]
            if fits:
                best = max(fits, key=lambda i: (len(buf[i]), -i))
                row += buf.pop(best)
            else:
                shortest = min(range(len(buf)), key=lambda i: (len(buf[i]), i))
                row += buf.pop(shortest)[:room]
        out.append(row)
    return np.array(out).reshape(n_batches, batch, cap)


@pytest.mark.parametrize("seq_len,buffer_size", [(64, 16), (33, 5), (200, 40)])
def test_rows_match_naive_best_fit(seq_len, buffer_size):
    corpus, tok = FakeCorpus(), FakeTokenizer()
    loader = PackingLoader(corpus, tok, 4, seq_len, buffer_size=buffer_size, threads=1, chunk_docs=7)
    expect = naive_rows(corpus, tok, 4, seq_len, buffer_size, 12)
    for b in range(12):
        x, y = next(loader)
        assert x.shape == (4, seq_len) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        assert (x[:, 0] == BOS).all()  # every row starts with a document
        full = torch.cat([x, y[:, -1:]], dim=1).numpy()
        np.testing.assert_array_equal(full, expect[b])
    loader.close()


def test_ranks_read_disjoint_documents():
    corpus, tok = FakeCorpus(n=40, max_len=20), FakeTokenizer()
    seen = []
    for rank in range(2):
        loader = PackingLoader(corpus, tok, 2, 32, rank=rank, world_size=2, buffer_size=4, threads=1, chunk_docs=3)
        next(loader)
        seen.append(loader.last_position["index"] % 2)
        expect = naive_rows(corpus, tok, 2, 32, 4, 1, rank=rank, world=2)
        loader2 = PackingLoader(corpus, tok, 2, 32, rank=rank, world_size=2, buffer_size=4, threads=1, chunk_docs=3)
        x, y = next(loader2)
        np.testing.assert_array_equal(torch.cat([x, y[:, -1:]], 1).numpy(), expect[0])
        loader.close(), loader2.close()
    assert seen == [0, 1]


def test_resume_gives_the_same_batches_token_for_token():
    corpus, tok = FakeCorpus(n=120, max_len=150), FakeTokenizer()
    kw = dict(buffer_size=20, threads=1, chunk_docs=16)
    straight = PackingLoader(corpus, tok, 3, 48, **kw)
    batches, state = [], None
    for b in range(30):  # several epochs of this small corpus
        batches.append(next(straight))
        if b == 11:
            state = straight.state_dict()
    straight.close()
    # through the checkpoint encoding (JSON + tensors), as a real resume does
    tensors: dict = {}
    restored = ck.decode_tree(json.loads(json.dumps(ck.encode_tree(state, tensors))), tensors)
    resumed = PackingLoader(corpus, tok, 3, 48, state=restored, **kw)
    for b in range(12, 30):
        x, y = next(resumed)
        assert torch.equal(x, batches[b][0]) and torch.equal(y, batches[b][1]), f"batch {b} differs after resume"
    assert resumed.epoch >= 2
    # negative control: a loader started afresh gives different batches
    fresh = PackingLoader(corpus, tok, 3, 48, **kw)
    assert not torch.equal(next(fresh)[0], batches[12][0])
    resumed.close(), fresh.close()


def test_bad_state_and_reader_failures_are_clear():
    corpus, tok = FakeCorpus(), FakeTokenizer()
    loader = PackingLoader(corpus, tok, 2, 32, buffer_size=8, threads=1)
    next(loader)
    state = loader.state_dict()
    loader.close()
    with pytest.raises(NanochatError, match="--max-seq-len"):
        PackingLoader(corpus, tok, 2, 64, state=state)
    broken = PackingLoader(FakeCorpus(fail_at=50), tok, 2, 32, buffer_size=8, threads=1, chunk_docs=4)
    with pytest.raises(NanochatError, match="unreadable"):
        for _ in range(100):
            next(broken)


def test_micro_step_loader_splits_a_step_the_same_way_for_any_process_count():
    # rows of one optimizer step: micro-step m of 1 process == rank m of 2 processes == the plain
    # best-fit specification over data shard m of 2
    from nanochat.data.loader import MicroStepLoader

    corpus, tok = FakeCorpus(), FakeTokenizer()
    # buffer_size is the step's total: 64 documents, so 32 for each of the two data shards
    spec = [naive_rows(corpus, tok, 2, 16, 32, 3, rank=m, world=2) for m in range(2)]
    one = MicroStepLoader(corpus, tok, 2, 16, rank=0, world_size=1, accum=2, threads=1, buffer_size=64)
    ranks = [MicroStepLoader(corpus, tok, 2, 16, rank=r, world_size=2, accum=1, threads=1, buffer_size=64) for r in range(2)]
    try:
        for b in range(3):
            for m in range(2):
                x = next(one)[0]
                assert torch.equal(x, torch.from_numpy(spec[m][b, :, :-1]).long())
                assert torch.equal(x, next(ranks[m])[0])
        # a resume from the state continues with the same micro-batches
        state = one.state_dict()
        again = MicroStepLoader(corpus, tok, 2, 16, rank=0, world_size=1, accum=2, threads=1, buffer_size=64, state=state)
        try:
            for _ in range(4):
                assert torch.equal(next(one)[0], next(again)[0])
        finally:
            again.close()
        with pytest.raises(NanochatError, match="micro-steps"):
            MicroStepLoader(corpus, tok, 2, 16, accum=4, threads=1, state=state)
    finally:
        for loader in (one, *ranks):
            loader.close()


def _pack_stats(loaders, steps):
    for _ in range(steps):
        for loader in loaders:
            loader.next_rows()
    cropped = sum(x.tokens_cropped for x in loaders)
    packed = sum(x.tokens_packed for x in loaders)
    stats = cropped / (cropped + packed), sum(x.docs_read for x in loaders)
    for loader in loaders:
        loader.close()
    return stats


def test_micro_step_loaders_share_one_buffer_budget():
    """Four micro-step loaders hold the documents one loader of the whole step would hold between them (each 1/4),
    so they train on the same mix: documents longer than a row pile up in every buffer, and four full-size buffers
    kept four times as many of them out of training, cropping far fewer tokens than the one loader did."""
    from nanochat.data.loader import MicroStepLoader, shard_buffer_size

    assert shard_buffer_size(1000, 8) == 125 and shard_buffer_size(1000, 1) == 1000 and shard_buffer_size(1000, 512) == 32
    corpus = FakeCorpus(n=4000, seed=5, max_len=400)  # about a third of the documents are longer than a 65-token row
    tok = FakeTokenizer()
    one = _pack_stats([PackingLoader(corpus, tok, 16, 64, buffer_size=256, threads=1)], 40)
    shared = MicroStepLoader(corpus, tok, 4, 64, accum=4, buffer_size=256, threads=1)
    assert [x.buffer_size for x in shared.loaders] == [64] * 4
    split = _pack_stats(shared.loaders, 40)
    full = _pack_stats([PackingLoader(corpus, tok, 4, 64, rank=m, world_size=4, buffer_size=256, threads=1) for m in range(4)], 40)
    assert abs(split[0] - one[0]) < 0.03 and abs(split[1] - one[1]) < 0.1 * one[1], (one, split)
    assert one[0] - full[0] > 0.1, (one, full)  # the old split is measurably different: the check above can fail
