"""`nanochat sft`: chat fine-tuning of a base checkpoint (options map one to one onto train.sft.SFTConfig)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, NNodes, NodeRank, RdzvEndpoint, RdzvId, node_options

P = "Schedule and optimizer (None: inherit from the base checkpoint)"
E = "Evaluation and checkpoints"


def sft(
    source: str = typer.Option("base", help="Checkpoint family to start from: base (or sft, to continue fine-tuning)."),
    model_tag: Optional[str] = typer.Option(None, help="Model tag to start from (default: the newest)."),
    step: Optional[int] = typer.Option(None, help="Checkpoint step to start from (default: the newest complete one)."),
    data: str = typer.Option("web", help="web (SmolTalk + MMLU + GSM8K, online), demo (packaged conversations, offline), or your own: FILE.jsonl or an imported chat set alone."),
    add: list[str] = typer.Option([], "--add", help="Mix in your conversations: FILE.jsonl (or .parquet, or an imported chat set), FILE.jsonl:3 for three epochs; repeatable."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out bad lines of your conversation files (counted) instead of stopping at the first."),
    num_iterations: int = typer.Option(-1, help="Optimizer steps; -1: one epoch of the mixture."),
    max_seq_len: Optional[int] = typer.Option(None, help="Row length (default: the base run's)."),
    device_batch_size: Optional[int] = typer.Option(None, help="Rows per process per micro-step (default: the base run's)."),
    total_batch_size: Optional[int] = typer.Option(None, help="Tokens per optimizer step (default: the base run's)."),
    embedding_lr: Optional[float] = typer.Option(None, help="AdamW LR of the embedding, before batch scaling.", rich_help_panel=P),
    unembedding_lr: Optional[float] = typer.Option(None, help="AdamW LR of the output head, before batch scaling.", rich_help_panel=P),
    matrix_lr: Optional[float] = typer.Option(None, help="Muon LR of the block matrices, before batch scaling.", rich_help_panel=P),
    scalar_lr: float = typer.Option(0.5, help="AdamW LR of the per-layer scalars (not inherited).", rich_help_panel=P),
    init_lr_frac: float = typer.Option(0.8, help="Every LR × this fraction.", rich_help_panel=P),
    warmup_ratio: float = typer.Option(0.0, help="Fraction of the run in linear LR warmup.", rich_help_panel=P),
    warmdown_ratio: float = typer.Option(0.5, help="Fraction of the run in the final linear warmdown.", rich_help_panel=P),
    final_lr_frac: float = typer.Option(0.0, help="LR multiplier at the end.", rich_help_panel=P),
    load_optimizer: bool = typer.Option(True, "--load-optimizer/--no-load-optimizer", help="Warm-start the optimizer moments from the base run (re-sharded if it had another process count).", rich_help_panel=P),
    mmlu_epochs: int = typer.Option(3, help="Copies of MMLU auxiliary_train in the web mixture.", rich_help_panel=P),
    gsm8k_epochs: int = typer.Option(4, help="Copies of GSM8K train in the web mixture.", rich_help_panel=P),
    eval_every: int = typer.Option(200, help="Val bpb on held-out conversations every N steps (and at the end); -1 off.", rich_help_panel=E),
    eval_tokens: int = typer.Option(-1, help="Tokens per val evaluation; -1: 40×2^19 on CUDA, 20 micro-batches elsewhere.", rich_help_panel=E),
    chatcore_every: int = typer.Option(-1, help="ChatCORE on a sample of the chat evals every N steps (and at the end), as the reference does; -1 off.", rich_help_panel=E),
    chatcore_max_cat: int = typer.Option(-1, help="With --chatcore-every: problems per categorical task (-1: all).", rich_help_panel=E),
    chatcore_max_sample: int = typer.Option(24, help="With --chatcore-every: problems per generative task (-1: all).", rich_help_panel=E),
    save_every: int = typer.Option(-1, help="Checkpoint every N steps; -1: at the end (and on SIGTERM/SIGINT).", rich_help_panel=E),
    keep_last: Optional[int] = typer.Option(None, help="Keep only the newest K sft checkpoints of the tag.", rich_help_panel=E),
    resume: str = typer.Option("auto", help="auto (newest valid sft checkpoint of the tag, if any), never, or a step number.", rich_help_panel=E),
    out_tag: Optional[str] = typer.Option(None, help="Tag of the sft checkpoints (default: the base model's tag).", rich_help_panel=E),
    run: str = typer.Option("dummy", help="wandb run name (needs wandb installed); dummy = no wandb.", rich_help_panel=E),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    nnodes: NNodes = None,
    node_rank: NodeRank = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_id: RdzvId = None,
    seed: int = typer.Option(42, callback=ranges.count(low=0), help="Seed of the mixture order."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model; default: on CUDA only."),
    max_bad_steps: int = typer.Option(5, help="Stop after this many non-finite-loss steps in a row."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Load the checkpoint and mixture, print the plan and exit."),
) -> None:
    """Fine-tune a base model into a chat model on a conversation mixture (assistant tokens only)."""
    from nanochat.common import checks
    from nanochat.common.checkpoint import require_checkpoint
    from nanochat.common.launch import maybe_relaunch
    from nanochat.common.logging import warn0
    from nanochat.train.sft import SFTConfig, run_sft

    checks.nproc(nproc)
    nodes = node_options(nnodes, node_rank, rdzv_endpoint, rdzv_id)
    cfg = SFTConfig(
        source=source, model_tag=model_tag, step=step, data=data, add=tuple(add), skip_bad=skip_bad, num_iterations=num_iterations, max_seq_len=max_seq_len,
        device_batch_size=device_batch_size, total_batch_size=total_batch_size, embedding_lr=embedding_lr,
        unembedding_lr=unembedding_lr, matrix_lr=matrix_lr, scalar_lr=scalar_lr, init_lr_frac=init_lr_frac,
        warmup_ratio=warmup_ratio, warmdown_ratio=warmdown_ratio, final_lr_frac=final_lr_frac, load_optimizer=load_optimizer,
        mmlu_epochs=mmlu_epochs, gsm8k_epochs=gsm8k_epochs, eval_every=eval_every, eval_tokens=eval_tokens,
        chatcore_every=chatcore_every, chatcore_max_cat=chatcore_max_cat, chatcore_max_sample=chatcore_max_sample, run=run, save_every=save_every, keep_last=keep_last, resume=resume, out_tag=out_tag, device=device, seed=seed,
        compile=compile, max_bad_steps=max_bad_steps, dry_run=dry_run,
    )  # fmt: skip
    # options, your conversation files, then the starting checkpoint's folder: all before any process starts or anything loads
    cfg.validate()
    for f in cfg.check_data():
        if f.skipped:
            warn0(f"{f.path}: {len(f.skipped):,} bad line(s) skipped (--skip-bad), {len(f.conversations):,} conversations kept; the first: {f.skipped[0]}")
    require_checkpoint(source, model_tag, step)
    if not dry_run:
        maybe_relaunch(nproc, device, nodes=nodes)
    run_sft(cfg)
