"""`nanochat data ...`: pretraining shards, eval bundles, importing and listing data sets."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import NanochatCommand, NanochatGroup, examples
from nanochat.commands.prepare_evals import prepare_evals

app = typer.Typer(
    cls=NanochatGroup,
    help="Get data: pretraining shards, eval sets, your own text.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command(cls=NanochatCommand, epilog=examples("nanochat data download --shards 8", "nanochat data download --for-depth 20 --workers 8"))
def download(
    shards: Optional[int] = typer.Option(None, help="How many training shards to fetch (plus the validation shard)."),
    for_depth: Optional[int] = typer.Option(None, callback=ranges.count(), help="Fetch as many shards as a run at this depth needs."),
    workers: int = typer.Option(4, callback=ranges.count(), help="Parallel downloads."),
    dataset: str = typer.Option("climbmix", help="climbmix or fineweb-edu."),
    ratio: float = typer.Option(12.0, callback=ranges.rate(), help="With --for-depth: training tokens per scaling parameter."),
    retries: int = typer.Option(5, callback=ranges.count(), help="Attempts per shard (waits 1, 2, 4, ... s between them)."),
) -> None:
    """Download pretraining shards (resumable, verified, retried)."""
    import os

    from nanochat.common import checks
    from nanochat.common.errors import UsageError
    from nanochat.common.logging import print0
    from nanochat.data.corpus import WEB_DATASETS
    from nanochat.data.download import download_shards, shards_for_depth

    if shards is not None and for_depth is not None:
        raise UsageError("give --shards or --for-depth, not both")
    checks.one_of("dataset", dataset, WEB_DATASETS)
    ds = WEB_DATASETS[dataset]
    if shards is not None and not 1 <= shards <= ds.num_shards - 1:
        raise UsageError(f"--shards {shards} is out of range; {ds.name} has {ds.num_shards - 1} training shards, ask for 1 to {ds.num_shards - 1}")
    if for_depth is not None:
        est = shards_for_depth(for_depth, ratio)
        shards = min(est["shards"], ds.num_shards - 1)
        print0(
            f"depth {for_depth}: {est['scaling_params'] / 1e6:,.1f}M scaling params × {ratio:g} = {est['tokens'] / 1e9:,.2f}B tokens "
            f"≈ {est['chars'] / 1e9:,.1f}B characters read (incl. ~35% cropped by packing) → {shards} training shards"
        )
    elif shards is None:
        shards = 8
    backoff = float(os.environ.get("NANOCHAT_DOWNLOAD_BACKOFF", "1.0"))  # tests shorten the waits
    res = download_shards(dataset, shards, workers=workers, attempts=retries, backoff=backoff, progress=True)
    print0(
        f"{ds.name}: {len(res.downloaded)} shards downloaded ({res.bytes / 1e6:,.1f} MB in {res.seconds:.1f} s), "
        f"{len(res.skipped)} already present, in {res.directory}"
    )


app.command("prepare-evals", cls=NanochatCommand, epilog=examples("nanochat data prepare-evals", "nanochat data prepare-evals --offline"))(prepare_evals)


@app.command("import", cls=NanochatCommand, epilog=examples("nanochat data import ~/books --name books", "nanochat data import notes.jsonl.gz --name notes --text-field body",
                                                            "nanochat data import chats.jsonl --kind chat --name mychats"))
def import_(
    sources: list[str] = typer.Argument(..., help="Files or folders: txt, md, jsonl, parquet, gz/zst (--kind chat: jsonl or parquet conversations)."),
    name: str = typer.Option(..., help="Name of the new data set (use it as --data NAME)."),
    kind: str = typer.Option("text", help="text (pretraining documents) or chat (conversations in the OpenAI messages format, for sft --data/--add NAME)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="--kind chat: leave out bad lines (counted) instead of stopping at the first."),
    text_field: str = typer.Option("text", help="JSONL field / parquet column holding the text."),
    max_doc_chars: int = typer.Option(20_000, callback=ranges.count(low=0), help="Cut longer text files into documents at blank lines (0: never)."),
    val_fraction: float = typer.Option(0.01, callback=ranges.number(low=0, high=0.5, low_open=True), help="Share of documents kept for validation (at least one)."),
    seed: int = typer.Option(42, callback=ranges.count(low=0), help="Shuffle seed."),
    force: bool = typer.Option(False, "--force", help="Replace an existing data set of that name."),
) -> None:
    """Import your own text into parquet shards, or your own conversations (--kind chat) for SFT."""
    from nanochat.common import checks
    from nanochat.common.errors import NanochatError, UsageError
    from nanochat.common.logging import print0, table
    from nanochat.data.importer import import_dataset, validate_name

    try:
        validate_name(name)
    except NanochatError as e:  # a name that cannot be a data set is bad usage
        raise UsageError(str(e)) from None
    checks.one_of("kind", kind, ("text", "chat"))
    if kind == "chat":
        return _import_chat(sources, name, skip_bad, force)

    r = import_dataset(sources, name, text_field=text_field, max_doc_chars=max_doc_chars, val_fraction=val_fraction, seed=seed, force=force)
    print0(
        table(
            f"Imported {name!r}",
            [
                ("files read", f"{r.files:,}" + (f" ({r.skipped_files:,} skipped: hidden or unknown type)" if r.skipped_files else "")),
                ("train", f"{r.train_docs:,} documents, {r.train_chars:,} characters, {r.train_shards} shard(s)"),
                ("validation", f"{r.val_docs:,} documents, {r.val_chars:,} characters"),
                ("folder", str(r.directory)),
                ("use it", f"nanochat tokenize-train --data {name}; nanochat pretrain --data {name}"),
            ],
        )
    )


def _import_chat(sources: list[str], name: str, skip_bad: bool, force: bool) -> None:
    from nanochat.common.logging import print0, table, warn0
    from nanochat.data.chat_jsonl import import_chat

    r = import_chat(sources, name, skip_bad=skip_bad, force=force)
    if r.skipped:
        warn0(f"{len(r.skipped):,} bad line(s) skipped (--skip-bad); the first: {r.skipped[0]}")
    rows = [("files read", f"{r.files:,}"), ("conversations", f"{r.conversations:,} (each checked)"), ("folder", str(r.directory)),
            ("use it", f"nanochat sft --data {name}, or on top of a mixture: nanochat sft --data demo --add {name}")]  # fmt: skip
    print0(table(f"Imported conversations {name!r}", rows))


@app.command("list", cls=NanochatCommand, epilog=examples("nanochat data list", "nanochat data list --depth 20"))
def list_(depth: Optional[int] = typer.Option(None, callback=ranges.count(), help="Show how many epochs a run at this depth would take.")) -> None:
    """List local data sets and their sizes."""
    from nanochat.common import paths
    from nanochat.common.logging import print0, table
    from nanochat.data.catalog import list_datasets
    from nanochat.data.download import shards_for_depth

    need = shards_for_depth(depth)["chars"] if depth is not None else None
    infos = list_datasets()
    rows = []
    for d in infos:
        row = [d.name, d.kind, f"{d.train_shards}+{1 if d.has_val else 0}", f"{d.docs:,}" if d.docs is not None else "?", d.size_text, d.chars_text]
        if need is not None:
            row.append(f"{need / d.train_chars:,.1f}" if d.train_chars else "?")
        rows.append(row)
    headers = ["data set", "kind", "shards", "documents", "on disk", "train chars"]
    if need is not None:
        headers.append(f"epochs at d{depth}")
    print0(table(f"Data sets in {paths.data_dir()}", rows, headers))
    print0("shards: training + validation. demo: Jane Austen's novels, packaged (Persuasion is the validation split).")
    for d in infos:
        if d.note:
            print0(f"{d.name}: {d.note}")
    if need is not None:
        print0(f"A depth-{depth} run at ratio 12 reads ≈{need / 1e9:,.1f}B characters (see `nanochat data download --for-depth {depth}`).")
