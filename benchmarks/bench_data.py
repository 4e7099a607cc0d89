"""Data-pipeline speed: BPE training, batch encoding by thread count, and parquet corpus reading.

Run: PYTHONPATH=src python benchmarks/bench_data.py [--scale 10] [--threads 1,2,4,8,16]
Prints one table. Uses only packaged data (the Austen corpus, repeated `--scale` times for encoding)
and a synthetic parquet shard written to a temporary folder; no network.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=int, default=10, help="repeat the demo corpus this many times for encoding")
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--shard-docs", type=int, default=200_000, help="documents in the synthetic parquet shard")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.console import Console
    from rich.table import Table

    from nanochat.data.corpus import ParquetShard, Corpus, open_corpus
    from nanochat.data.tokenizer import Tokenizer

    rows = []
    docs = [t for t, _ in open_corpus("demo", "train").iter_docs(loop=False)]
    chars = sum(map(len, docs))
    for vocab in (4096, 32768):
        t0 = time.perf_counter()
        tok = Tokenizer.train(docs, vocab)
        dt = time.perf_counter() - t0
        rows.append((f"train BPE, vocab {vocab:,} (got {tok.vocab_size:,})", f"{chars / 1e6:.1f}M chars", f"{dt:.2f} s", f"{chars / dt / 1e6:.1f}M chars/s"))

    big = docs * args.scale
    nbytes = sum(len(d.encode()) for d in big)
    for n in [int(x) for x in args.threads.split(",")]:
        t0 = time.perf_counter()
        out = tok.encode_batch(big, prepend="<|bos|>", num_threads=n)
        dt = time.perf_counter() - t0
        ntok = sum(map(len, out))
        rows.append((f"encode_batch, {n} thread(s), vocab {tok.vocab_size:,}", f"{nbytes / 1e6:.0f} MB", f"{dt:.2f} s", f"{ntok / dt / 1e6:.2f}M tok/s, {nbytes / dt / 1e6:.0f} MB/s"))

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "shard_00000.parquet"
        texts = [big[i % len(big)] for i in range(args.shard_docs)]
        pq.write_table(pa.table({"text": texts}), path, row_group_size=1024, compression="zstd")
        corpus = Corpus("bench", "train", [ParquetShard(path)])
        t0 = time.perf_counter()
        n = size = 0
        for text, _ in corpus.iter_docs(loop=False):
            n += 1
            size += len(text)
        dt = time.perf_counter() - t0
        rows.append(("Corpus.iter_docs (parquet, zstd, 1024-row groups)", f"{n:,} docs", f"{dt:.2f} s", f"{n / dt / 1e3:.0f}K docs/s, {size / dt / 1e6:.0f}M chars/s"))

    t = Table(title=f"nanochat data pipeline ({os.cpu_count()} CPUs)")
    for h in ("what", "input", "time", "rate"):
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    Console().print(t)


if __name__ == "__main__":
    main()
