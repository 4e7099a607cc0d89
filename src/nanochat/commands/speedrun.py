"""`nanochat speedrun`: every stage in order, resumable, ending in a report card (see train.speedrun)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP, NPROC_HELP


def speedrun(
    depth: int = typer.Option(26, help="Model depth of the web-data run (ignored with --demo)."),
    demo: bool = typer.Option(False, "--demo", help="A tiny run on the packaged data: vocab 4096, depth 4, 256-token rows; CPU, minutes."),
    from_stage: Optional[str] = typer.Option(None, help="Rerun from this stage on (download, prepare-evals, tokenizer, pretrain, base-eval, sft, rl, chat-eval, rl-eval, report)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (each stage's command line and status) and exit."),
    target_param_data_ratio: float = typer.Option(8.0, callback=ranges.rate(), help="Web run: training tokens per scaling parameter (the reference speedrun's 8)."),
    skip: list[str] = typer.Option([], "--skip", help="Leave a stage out: rl (RL and the eval after it; RL runs by default)."),
    with_rl: bool = typer.Option(False, "--with-rl", hidden=True, help="Accepted for old scripts: RL is a default stage now."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    data: Optional[str] = typer.Option(None, help="Your own text for the tokenizer, pretraining and base eval: an imported data set (nanochat data import) or a folder of shards."),
    sft_data: list[str] = typer.Option([], "--sft-data", help="Your conversations mixed into SFT: FILE.jsonl, FILE.jsonl:3 (three epochs) or an imported chat set; repeatable."),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="Tests: an even smaller demo (vocab 512, depth 2, 64-token rows)."),
) -> None:
    """Run every stage in order, from tokenizer to report card; a rerun continues where it stopped."""
    from nanochat.common import checks
    from nanochat.common.device import check_device_name
    from nanochat.common.errors import UsageError
    from nanochat.train.speedrun import speedrun as run

    # the stages would each refuse these, one after another; refuse them before the first starts
    checks.nproc(nproc)
    check_device_name(device)
    for name in skip:
        if name != "rl":
            raise UsageError(f"--skip {name!r}: only rl can be left out (the other stages feed each other); use --skip rl")
    run(depth=depth, demo=demo, tiny=tiny, with_rl="rl" not in skip, from_stage=from_stage, dry_run=dry_run, device=device, nproc=nproc,
        ratio=target_param_data_ratio, data=data, sft_add=tuple(sft_data))
