"""`tokenize-train --vocab-size auto`: truncating a large BPE run equals a smaller run, the choice rule by hand,
and the command end to end on the packaged demo text."""

from __future__ import annotations

import json

import pytest

from nanochat.data.vocab_choice import VocabRow, choose, truncated
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def austen():
    from nanochat.data.resources import open_resource

    text = open_resource("corpus/austen/emma.txt").read()
    return [text[i : i + 3000] for i in range(0, 400_000, 3000)], text[500_000:520_000]


def test_the_first_merges_of_a_large_run_are_a_small_run(austen):
    from nanochat.data.tokenizer import Tokenizer

    docs, held_out = austen
    big = Tokenizer.train(docs, 1200, doc_cap=None)
    small = Tokenizer.train(docs, 500, doc_cap=None)
    cut = truncated(big, 500)
    assert cut.mergeable_ranks == small.mergeable_ranks
    assert cut.encode(held_out) == small.encode(held_out)
    assert cut.vocab_size == 500 and cut.bos_id == 491  # specials follow the kept ranks
    with pytest.raises(ValueError):
        truncated(small, 1200)


def test_choose_takes_the_smallest_size_within_one_percent_of_the_most_bytes_per_flop():
    # bytes per FLOP (x1e-9): 3.0/1.0 = 3.0, 3.5/1.1 = 3.1818, 3.8/1.2 = 3.1667 (within 1% of 3.1818), 4.0/1.5 = 2.667
    rows = [VocabRow(4096, 3.0, 1e9, 0.1), VocabRow(8192, 3.5, 1.1e9, 0.2), VocabRow(16384, 3.8, 1.2e9, 0.3), VocabRow(32768, 4.0, 1.5e9, 0.4)]
    assert choose(rows).vocab_size == 8192
    assert choose(rows[2:]).vocab_size == 16384  # 3.1667 vs 2.667: no tie
    # a tie within 1% goes to the smaller size: 3.0 vs 3.02
    assert choose([VocabRow(65536, 3.02, 1e9, 0.5), VocabRow(32768, 3.0, 1e9, 0.4)]).vocab_size == 32768


def test_auto_vocab_size_end_to_end(nanochat_home):
    r = run_cli("tokenize-train", "--data", "demo", "--vocab-size", "auto", "--max-chars", "1e6", "--depth", "4", timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "bytes per FLOP" in r.stdout and "chosen: " in r.stdout
    chosen = int(r.stdout.split("chosen: ")[1].split(" ")[0].replace(",", ""))
    meta = json.loads((nanochat_home / "tokenizer" / "tokenizer.json").read_text())
    assert meta["vocab_size"] == chosen and chosen in (4096, 8192, 16384)
    # the starred row of the table is the one chosen
    starred = [line for line in r.stdout.splitlines() if " * " in line or "* │" in line]
    assert len(starred) == 1 and f"{chosen:,}" in starred[0]


@pytest.mark.parametrize("value,message", [("banana", "is not a number"), ("100", "out of range")])
def test_bad_vocab_sizes_fail_in_one_line(nanochat_home, value, message):
    r = run_cli("tokenize-train", "--data", "demo", "--vocab-size", value, timeout=120)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
