"""`nanochat data ...`: pretraining shards, eval bundles, importing and listing data sets."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import examples, not_built
from nanochat.commands.prepare_evals import prepare_evals

app = typer.Typer(
    help="Get data: pretraining shards, eval sets, your own text.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command(epilog=examples("nanochat data download --shards 8", "nanochat data download --for-depth 20 --workers 8"))
def download(
    shards: Optional[int] = typer.Option(None, help="How many training shards to fetch (plus the validation shard)."),
    for_depth: Optional[int] = typer.Option(None, help="Fetch as many shards as a run at this depth needs."),
    workers: int = typer.Option(4, help="Parallel downloads."),
    dataset: str = typer.Option("climbmix", help="climbmix or fineweb-edu."),
) -> None:
    """Download pretraining shards (resumable, verified, retried)."""
    not_built("data download", "data")


app.command("prepare-evals", epilog=examples("nanochat data prepare-evals", "nanochat data prepare-evals --offline"))(prepare_evals)


@app.command("import", epilog=examples("nanochat data import ~/books --name books"))
def import_(
    sources: list[str] = typer.Argument(..., help="Files or folders: txt, md, jsonl, parquet, gz/zst."),
    name: str = typer.Option(..., help="Name of the new data set (use it as --data NAME)."),
) -> None:
    """Import your own text into parquet shards."""
    not_built("data import", "data")


@app.command("list", epilog=examples("nanochat data list", "nanochat data list --depth 20"))
def list_(depth: Optional[int] = typer.Option(None, help="Show how many epochs a run at this depth would take.")) -> None:
    """List local data sets and their sizes."""
    not_built("data list", "data")
