"""The vendored data pack: every file present, readable through open_resource, and unchanged."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from nanochat.common.errors import NanochatError
from nanochat.data import resources

# Published hashes of the raw tokenizer files (tiktoken's openai_public.py expected hashes).
TOKENIZER_HASHES = {
    "tokenizers/gpt2/encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "tokenizers/gpt2/vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "tokenizers/cl100k_base.tiktoken": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}


def test_every_listed_file_matches_its_checksum():
    names = resources.list_resources("")
    listed = [n for n in names if not n.startswith(("licenses/", "samples/")) and n != "SHA256SUMS"]
    sums = resources._sums()
    assert set(listed) <= set(sums), "a packaged data file has no recorded checksum"
    for name, digest in sums.items():
        assert hashlib.sha256(resources.read_bytes(name)).hexdigest() == digest, name


def test_tokenizer_files_are_the_published_ones():
    for name, digest in TOKENIZER_HASHES.items():
        resources.verify_resource(name, digest)


def test_layout_and_transparent_gzip():
    # The Austen novels: five training novels and Persuasion, as text, starting with their titles.
    with resources.open_resource("corpus/austen/persuasion.txt") as f:
        assert f.readline().strip() == "Persuasion"
    first = resources.read_text("core/eval_data/commonsense_reasoning/copa.jsonl").splitlines()[0]
    assert set(json.loads(first)) >= {"query", "choices", "gold"}
    assert resources.resource_path("tasks/gsm8k_test.jsonl").name == "gsm8k_test.jsonl.gz"
    assert resources.exists("chat/chitchat_subset.jsonl") and not resources.exists("chat/nope.jsonl")
    with resources.open_resource("tasks/humaneval.jsonl", "rb") as f:
        assert json.loads(f.readline())["task_id"] == "HumanEval/0"
    with pytest.raises(NanochatError, match="reinstall"):
        resources.resource_path("corpus/austen/ulysses.txt")


def test_gzip_is_deterministic():
    # mtime 0 and no file name in the header, so a rebuild gives the same bytes.
    raw = resources.resource_path("corpus/austen/emma.txt").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[3] & 0x08 == 0  # FNAME flag unset
    assert raw[4:8] == b"\0\0\0\0"
    assert gzip.compress(gzip.decompress(raw), compresslevel=9, mtime=0) == raw
