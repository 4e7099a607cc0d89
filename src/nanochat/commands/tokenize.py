"""`nanochat tokenize-train` and `nanochat tokenize-eval`: the BPE tokenizer."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges

MAX_VAL_CHARS = 1_000_000  # of the validation split, for tokenize-eval


def tokenize_train(
    vocab_size: str = typer.Option("32768", help="Vocabulary size, special tokens included; or auto: chosen from your text (see --depth)."),
    max_chars: float = typer.Option(2e9, callback=ranges.number(low=1), help="Characters of training text to read."),
    data: str = typer.Option("web", help="web, demo, or an imported data set."),
    doc_cap: int = typer.Option(10_000, callback=ranges.count(), help="Characters used from each document (so long documents don't dominate)."),
    depth: int = typer.Option(20, callback=ranges.count(), help="With --vocab-size auto: the model depth the size is chosen for."),
) -> None:
    """Train the byte-level BPE tokenizer."""
    from nanochat.common import paths
    from nanochat.common.errors import UsageError
    from nanochat.common.logging import print0, table, warn0
    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import MAX_VOCAB, MIN_VOCAB, Tokenizer
    from nanochat.data.vocab_choice import CANDIDATES

    auto = vocab_size.strip().lower() == "auto"
    if not auto:
        try:
            size = int(vocab_size)
        except ValueError:
            raise UsageError(f"--vocab-size {vocab_size!r} is not a number; give a size such as 32768, or auto") from None
        if not MIN_VOCAB <= size <= MAX_VOCAB:
            raise UsageError(f"--vocab-size {size} is out of range; use {MIN_VOCAB} (256 bytes + 9 special tokens) to {MAX_VOCAB}, or auto")
    else:
        size = max(CANDIDATES)
    corpus = open_corpus(data, "train")  # an unknown --data fails here, before any text is read
    held_out = _held_out_texts(data) if auto else None  # auto needs the val split: fail before training if absent
    what = f"{size:,}-token" if not auto else f"{size:,}-token (then cut to the best of {', '.join(f'{c:,}' for c in CANDIDATES)})"
    print0(f"Training a {what} BPE on the train split of {data!r} ({corpus.location}); up to {max_chars:,.0f} chars, {doc_cap:,} per document")
    tok = Tokenizer.train(corpus.iter_texts(), size, max_chars=int(max_chars), doc_cap=doc_cap)
    tok.info["data"] = data
    if tok.vocab_size < size and not auto:
        warn0(f"the text held only enough pairs for {tok.vocab_size:,} tokens, not {size:,}; use more text (or a smaller --vocab-size)")
    elif tok.vocab_size < size:
        warn0(f"the text held only enough pairs for {tok.vocab_size:,} tokens: sizes above that are not candidates (more text with --max-chars makes them so)")
    if auto:
        tok = _choose_vocab(tok, held_out, depth, data)
    where = tok.save(paths.tokenizer_dir())
    info = tok.info
    sample = "Hello world! 12345 tokens."
    ids = tok.encode(sample)
    print0(
        table(
            "Tokenizer",
            [
                ("vocab size", f"{tok.vocab_size:,} ({tok.vocab_size - 9:,} learned + 9 special; <|bos|> = {tok.bos_id})"),
                ("trained on", f"{info['train_docs']:,} documents, {info['train_chars']:,} characters of {data!r}"),
                ("time", f"{info['train_seconds']:.1f} s"),
                ("sample", f"{len(sample.encode())} bytes -> {len(ids)} tokens: " + "|".join(tok.decode([i]) for i in ids)),
                ("saved to", str(where)),
            ],
        )
    )


def _held_out_texts(data: str) -> list[str]:
    """Up to MAX_VAL_CHARS of the validation split, the text `--vocab-size auto` measures compression on."""
    from nanochat.common.errors import NanochatError
    from nanochat.data.corpus import open_corpus

    texts, size = [], 0
    try:
        for text in open_corpus(data, "val").iter_texts():
            texts.append(text[: MAX_VAL_CHARS - size])
            size += len(texts[-1])
            if size >= MAX_VAL_CHARS:
                break
    except NanochatError as e:
        raise NanochatError(f"--vocab-size auto measures compression on the validation split, and {data!r} has none ({e}); give a number instead") from None
    if not size:
        raise NanochatError(f"the validation split of {data!r} is empty; --vocab-size auto needs held-out text (or give a number)")
    return texts


def _choose_vocab(tok, held_out: list[str], depth: int, data: str):
    from nanochat.common.logging import print0, table
    from nanochat.data.vocab_choice import CANDIDATES, choose, measure, truncated
    from nanochat.train.pretrain import vocab_cost

    rows = measure(tok, held_out, [c for c in CANDIDATES if c <= tok.vocab_size] or [tok.vocab_size], vocab_cost(depth))
    best = choose(rows)
    top = max(r.bytes_per_flop for r in rows)
    body = [[f"{r.vocab_size:,}" + (" *" if r is best else ""), f"{r.bytes_per_token:.3f}", f"{r.flops_per_token:.3e}", f"{100 * r.embedding_share:.1f}%",
             f"{r.bytes_per_flop / top:.3f}"] for r in rows]  # fmt: skip
    headers = ["vocab size", "bytes/token", "FLOPs/token", "embedding share", "bytes per FLOP (rel.)"]
    print0(table(f"Vocabulary size for {data!r} at depth {depth} (held-out val text)", body, headers))
    print0(f"chosen: {best.vocab_size:,} (the smallest size within 1% of the most bytes of text per training FLOP)")
    return truncated(tok, best.vocab_size)


def tokenize_eval(
    data: Optional[str] = typer.Option(None, help="Whose validation split to include (default: the data set the tokenizer was trained on)."),
) -> None:
    """Compare compression against the GPT-2 and GPT-4 tokenizers."""
    from nanochat.common import paths
    from nanochat.common.atomic import atomic_write_json
    from nanochat.common.errors import NanochatError
    from nanochat.common.logging import print0, table, warn0
    from nanochat.data.corpus import check_data_name, open_corpus
    from nanochat.data.tokenizer import get_tokenizer
    from nanochat.data.tokenizer_eval import compare, relative, sample_texts

    if data is not None:
        check_data_name(data)  # named on the command line: it must exist (a default that is gone only warns)
    tok = get_tokenizer()
    data = data or tok.info.get("data") or "demo"
    val_text = None
    try:
        parts, size = [], 0
        for text in open_corpus(data, "val").iter_texts():
            parts.append(text)
            size += len(text)
            if size >= MAX_VAL_CHARS:
                break
        val_text = "\n\n".join(parts)[:MAX_VAL_CHARS]
    except NanochatError as e:
        warn0(f"no validation text from {data!r}: {e}")
    results = compare(tok, sample_texts(val_text, f"{data} val"))
    rows = [
        [
            r.kind,
            f"{r.bytes:,}",
            f"{r.ratio('gpt2'):.2f}",
            f"{r.ratio('gpt4'):.2f}",
            f"{r.ratio('ours'):.2f}",
            f"{relative(r.tokens['ours'], r.tokens['gpt2']):+.1f}%",
            f"{relative(r.tokens['ours'], r.tokens['gpt4']):+.1f}%",
        ]
        for r in results
    ]
    headers = ["text", "bytes", "GPT-2", "GPT-4", "ours", "vs GPT-2", "vs GPT-4"]
    print0(table(f"Bytes per token (higher = better compression): GPT-2 (50K vocab), GPT-4 cl100k (100K), ours ({tok.vocab_size:,})", rows, headers))
    print0("vs X: how many fewer tokens ours needs than X on that text (negative = more tokens).")
    atomic_write_json(
        paths.tokenizer_dir() / "eval.json",
        {
            "vocab_size": tok.vocab_size,
            "results": [{"kind": r.kind, "bytes": r.bytes, "tokens": r.tokens} for r in results],
        },
    )
