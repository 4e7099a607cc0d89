"""The BPE tokenizer: training, encoding vs a naive BPE, round trips, special tokens, saving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat.common.errors import NanochatError
from nanochat.data import resources
from nanochat.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, get_tokenizer, load_token_bytes


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = resources.read_text("corpus/austen/persuasion.txt")[:150_000]
    return Tokenizer.train(text.split("\n\n"), vocab_size=512)


def naive_bpe(text: str, ranks: dict[bytes, int]) -> list[int]:
    """Textbook BPE: split with the pattern, then in each chunk merge the lowest-ranked pair until none."""
    out = []
    for chunk in regex.findall(SPLIT_PATTERN, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            pairs = [p for p in pairs if p[0] is not None]
            if not pairs:
                break
            _, i = min(pairs)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        out.extend(ranks[p] for p in parts)
    return out


def test_first_merge_is_the_most_frequent_pair():
    # Chunks "ab", " ab", " ab", " ab": the pair (a, b) occurs 4 times, (" ", a) 3 times.
    t = Tokenizer.train(["ab ab ab ab"], vocab_size=256 + 9 + 1)
    assert t.vocab_size == 266
    assert t.mergeable_ranks[b"ab"] == 256
    assert t.encode(" ab") == [ord(" "), 256]


def test_special_tokens_are_the_last_nine_ids(tok):
    assert tok.vocab_size == 512
    assert [tok.special_id(s) for s in SPECIAL_TOKENS] == list(range(503, 512))
    assert tok.bos_id == 503 and SPECIAL_TOKENS[0] == "<|bos|>"
    assert tok.decode([tok.special_id("<|assistant_end|>")]) == "<|assistant_end|>"
    with pytest.raises(KeyError):
        tok.special_id("<|endoftext|>")


def test_encode_matches_naive_bpe(tok):
    for text in ["Anne Elliot, with an elegant mind and sweet character!", "In 1814: 12345 pounds.\n\n  x", "naïve café — ünïcode 東京"]:
        assert tok.encode(text) == naive_bpe(text, tok.mergeable_ranks)


def test_numbers_split_into_at_most_two_digits(tok):
    pieces = [tok.decode([i]) for i in tok.encode("1234567")]
    assert "".join(pieces) == "1234567" and all(len(p) <= 2 for p in pieces)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tok, s):
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert tok.decode_bytes(ids) == s.encode("utf-8")
    assert all(0 <= i < 503 for i in ids)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(SPECIAL_TOKENS), st.text(max_size=8)), max_size=8))
def test_special_tokens_never_come_from_plain_text(tok, pieces):
    text = "".join(pieces)
    ids = tok.encode(text)
    assert all(i < 503 for i in ids)
    assert tok.decode(ids) == text


def test_prepend_append_and_batch(tok):
    texts = ["Captain Wentworth", "", "Kellynch Hall, Somersetshire"]
    batch = tok.encode_batch(texts, prepend="<|bos|>", num_threads=2)
    assert batch == [[503] + tok.encode(t) for t in texts]
    assert tok.encode("hi", prepend=tok.bos_id, append="<|user_end|>") == [503] + tok.encode("hi") + [505]
    with pytest.raises(TypeError):
        tok.encode(["not", "a", "string"])


def test_token_bytes_sum_to_utf8_length(tok):
    tb = tok.token_bytes()
    assert len(tb) == 512 and tb[503:] == [0] * 9 and tb[:256] == [1] * 256
    text = "Mary Musgrove — £10 «quoted» and 日本"
    assert sum(tb[i] for i in tok.encode(text)) == len(text.encode("utf-8"))


def test_save_load_round_trip_without_pickle(tok, tmp_path):
    d = tok.save(tmp_path / "tokenizer")
    assert sorted(p.name for p in d.iterdir()) == ["mergeable_ranks.tiktoken", "token_bytes.json", "tokenizer.json"]
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.glob(".tmp-*"))
    loaded = Tokenizer.load(d)
    text = "Lady Russell had only a moderate interest in the 22 guests."
    assert loaded.encode(text) == tok.encode(text) and loaded.vocab_size == tok.vocab_size
    assert load_token_bytes(d) == tok.token_bytes()
    # The ranks file is tiktoken's own format: "base64 rank" lines.
    first = (d / "mergeable_ranks.tiktoken").read_text().splitlines()[65]
    assert first == "QQ== 65"  # byte 'A'
    meta = json.loads((d / "tokenizer.json").read_text())
    assert meta["special_tokens"] == SPECIAL_TOKENS and meta["vocab_size"] == 512


def test_corrupt_or_missing_tokenizer_is_a_clear_error(tok, tmp_path):
    with pytest.raises(NanochatError, match="tokenize-train"):
        get_tokenizer()  # empty NANOCHAT_HOME
    d = tok.save(tmp_path / "t")
    ranks = d / "mergeable_ranks.tiktoken"
    ranks.write_text(ranks.read_text().replace("QQ== 65", "QQ== 66"))
    with pytest.raises(NanochatError, match="checksum"):
        Tokenizer.load(d)


def test_default_location_and_training_limits(tmp_path):
    docs = ["a" * 50 + " tail", "bbbb " * 30, "cccc"]
    t = Tokenizer.train(docs, vocab_size=300, doc_cap=20, max_chars=42)
    # 20 + 20 (each document cut to doc_cap) + 2 (the budget left for "cccc")
    assert t.info["train_chars"] == 42 and t.info["train_docs"] == 3
    t.save()
    assert get_tokenizer().vocab_size == t.vocab_size
    for bad in (100, 264, 2**21):
        with pytest.raises(NanochatError, match="vocab size"):
            Tokenizer.train(docs, vocab_size=bad)
    with pytest.raises(NanochatError, match="no training text"):
        Tokenizer.train(["", ""], vocab_size=300)


def test_offline_gpt2_and_gpt4_match_published_counts():
    from nanochat.data.tokenizer_eval import cl100k_encoding, gpt2_encoding

    gpt2, gpt4 = gpt2_encoding(), cl100k_encoding()
    assert gpt2.encode_ordinary("Hello world") == [15496, 995] and gpt2.n_vocab == 50257
    assert gpt4.encode_ordinary("Hello world") == [9906, 1917]
    # The data pack's README counts 220,986 GPT-2 tokens in Emma.
    assert len(gpt2.encode_ordinary(resources.read_text("corpus/austen/emma.txt"))) == 220_986


def test_small_text_gives_a_smaller_vocabulary_not_a_wrong_one():
    t = Tokenizer.train(["abab"], vocab_size=512)
    # Chunk "abab": pairs ab, ba, ab -> merge "ab" (256), then "abab" (257); nothing more to merge.
    assert t.vocab_size == 256 + 2 + 9 and t.info["requested_vocab_size"] == 512
    assert t.encode("abab") == [257] and t.bos_id == 258
