"""`nanochat rl`: policy-gradient training on GSM8K or the demo arithmetic task (options map one to one onto train.rl.RLConfig)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, NNodes, NodeRank, RdzvEndpoint, RdzvId, node_options

P = "Schedule and optimizer"
E = "Evaluation and checkpoints"


def rl(
    source: str = typer.Option("sft", help="Checkpoint family to start from: sft (or rl to continue an RL model)."),
    task: str = typer.Option("gsm8k", help="RL task: gsm8k, or demo-arith (small-number word problems with the calculator; learnable by a CPU-sized model)."),
    model_tag: Optional[str] = typer.Option(None, help="Model tag to start from (default: the newest); RL checkpoints go to checkpoints/rl/<tag>/."),
    step: Optional[int] = typer.Option(None, help="Checkpoint step to start from (default: the newest complete one)."),
    train_split: str = typer.Option("auto", help="auto (GSM8K train from the Hub; offline: a partition carved from the test split), train, or train-from-test."),
    num_epochs: int = typer.Option(1, help="Epochs over the training problems."),
    num_iterations: int = typer.Option(-1, help="Optimizer steps (-1: epochs × problems // examples-per-step)."),
    device_batch_size: int = typer.Option(8, help="Rollouts per sampling batch and rows per forward/backward."),
    examples_per_step: int = typer.Option(16, help="Problems per optimizer step, across all processes (a multiple of their number)."),
    num_samples: int = typer.Option(16, help="Rollouts per problem (a multiple of --device-batch-size)."),
    max_new_tokens: int = typer.Option(256, help="Longest rollout."),
    temperature: float = typer.Option(1.0, callback=ranges.number(low=0), help="Sampling temperature of rollouts and of the pass@k eval."),
    top_k: int = typer.Option(50, help="Top-k sampling (0: off)."),
    embedding_lr: float = typer.Option(0.2, help="AdamW LR of the embeddings (× init-lr-frac).", rich_help_panel=P),
    unembedding_lr: float = typer.Option(0.004, help="AdamW LR of the output head (× init-lr-frac).", rich_help_panel=P),
    matrix_lr: float = typer.Option(0.02, help="Muon LR of the block matrices (× init-lr-frac).", rich_help_panel=P),
    scalar_lr: float = typer.Option(0.5, help="AdamW LR of the per-layer scalars (× init-lr-frac).", rich_help_panel=P),
    init_lr_frac: float = typer.Option(0.05, help="The LRs above are multiplied by this, then decay linearly to 0.", rich_help_panel=P),
    eval_every: int = typer.Option(60, help="pass@k on held-out GSM8K every N steps (and at the end); -1 off.", rich_help_panel=E),
    eval_examples: int = typer.Option(400, help="Held-out problems per evaluation.", rich_help_panel=E),
    save_every: int = typer.Option(60, help="Checkpoint every N steps (and at the end, and on SIGTERM/SIGINT); -1: only then.", rich_help_panel=E),
    keep_last: Optional[int] = typer.Option(None, help="Keep only the newest K RL checkpoints of this tag.", rich_help_panel=E),
    resume: str = typer.Option("auto", help="auto (newest valid RL checkpoint of the tag, if any), never, or a step number.", rich_help_panel=E),
    run: str = typer.Option("dummy", help="wandb run name (needs wandb installed); dummy = no wandb.", rich_help_panel=E),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    nnodes: NNodes = None,
    node_rank: NodeRank = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_id: RdzvId = None,
) -> None:
    """Reinforcement learning on GSM8K (or --task demo-arith) with the calculator tool (REINFORCE with a group-mean baseline)."""
    from nanochat.common import checks
    from nanochat.common.checkpoint import require_checkpoint
    from nanochat.common.launch import maybe_relaunch
    from nanochat.train.rl import RLConfig, run_rl

    checks.nproc(nproc)
    nodes = node_options(nnodes, node_rank, rdzv_endpoint, rdzv_id)
    cfg = RLConfig(
        source=source, task=task, model_tag=model_tag, step=step, train_split=train_split, num_epochs=num_epochs, num_iterations=num_iterations,
        device_batch_size=device_batch_size, examples_per_step=examples_per_step, num_samples=num_samples, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, embedding_lr=embedding_lr, unembedding_lr=unembedding_lr, matrix_lr=matrix_lr,
        scalar_lr=scalar_lr, init_lr_frac=init_lr_frac, eval_every=eval_every, eval_examples=eval_examples, save_every=save_every,
        keep_last=keep_last, resume=resume, device=device, run=run,
    )  # fmt: skip
    # options, then the starting checkpoint's folder: both before any process starts or anything loads
    cfg.validate()
    require_checkpoint(source, model_tag, step)
    maybe_relaunch(nproc, device, nodes=nodes)
    run_rl(cfg)
