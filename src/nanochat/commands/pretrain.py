"""`nanochat pretrain`: train the base model (options map one to one onto train.pretrain.PretrainConfig)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, NNodes, NodeRank, RdzvEndpoint, RdzvId, node_options

P = "Schedule and optimizer"
E = "Evaluation and checkpoints"


def _auto_or_count(value: str, flag: str, unit: str) -> int:
    """`auto` (-1) or a positive whole number."""
    from nanochat.common.errors import UsageError

    if value == "auto":
        return -1
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{flag} {value!r} must be auto or a positive number of {unit}")
    return int(value)


def pretrain(
    depth: int = typer.Option(20, help="Model depth: the one dial every other size is derived from."),
    data: str = typer.Option("web", help="web, demo, or an imported data set."),
    num_iterations: int = typer.Option(-1, help="Optimizer steps (wins over --target-flops and --target-param-data-ratio); -1 derives them."),
    target_flops: float = typer.Option(-1.0, help="Train for this many FLOPs (-1: off)."),
    target_param_data_ratio: float = typer.Option(12.0, help="Tokens = ratio × scaling parameters (when no steps or FLOPs are given)."),
    device_batch_size: str = typer.Option("32", help="Rows of --max-seq-len tokens per process per micro-step, or auto: the most that fit the GPU (measured before step 0; the total batch is kept)."),
    total_batch_size: str = typer.Option("auto", help="Tokens per optimizer step, or auto (power law in depth on CUDA; one micro-batch per process elsewhere)."),
    max_seq_len: int = typer.Option(2048, help="Context length."),
    aspect_ratio: int = typer.Option(64, help="Width ≈ depth × aspect ratio (rounded up to the head dim)."),
    head_dim: int = typer.Option(128, help="Attention head dimension."),
    n_kv_head: Optional[int] = typer.Option(None, help="Key/value heads (GQA); default: as many as query heads."),
    window_pattern: str = typer.Option("SSSL", help="Sliding-window pattern over layers (S short, L long; the last layer is always L)."),
    smear: bool = typer.Option(True, "--smear/--no-smear", help="Gate the previous token's embedding into each position."),
    backout: bool = typer.Option(False, "--backout/--no-backout", help="Subtract a learned share of the mid-depth residual before the head (off by default: it cost bpb at d12)."),
    attn_gate: bool = typer.Option(False, "--attn-gate/--no-attn-gate", help="Scale each attention head's output by a learned, input-dependent gate."),
    embedding_lr: float = typer.Option(0.3, help="AdamW LR of the token embedding (before × √(B/B_ref)).", rich_help_panel=P),
    unembedding_lr: float = typer.Option(0.008, help="AdamW LR of the output head (before scaling).", rich_help_panel=P),
    matrix_lr: float = typer.Option(0.02, help="Muon LR of the block matrices (before scaling).", rich_help_panel=P),
    scalar_lr: float = typer.Option(0.5, help="AdamW LR of the per-layer scalars (before scaling).", rich_help_panel=P),
    weight_decay: float = typer.Option(0.28, help="Muon weight decay at depth 12 (rescaled for this run).", rich_help_panel=P),
    warmup_steps: int = typer.Option(40, help="Linear LR warmup steps.", rich_help_panel=P),
    warmdown_ratio: float = typer.Option(0.65, help="Fraction of the steps in the final linear LR warmdown.", rich_help_panel=P),
    final_lr_frac: float = typer.Option(0.05, help="LR multiplier at the last step.", rich_help_panel=P),
    warmdown_shape: str = typer.Option("linear", help="LR warmdown: linear, or sqrt (1 - sqrt of its progress).", rich_help_panel=P),
    eval_every: int = typer.Option(250, help="Val bits-per-byte every N steps (and at the end); -1 off.", rich_help_panel=E),
    eval_tokens: int = typer.Option(-1, help="Tokens per val bpb evaluation; -1: 80×2^19 on CUDA, 20 micro-batches elsewhere.", rich_help_panel=E),
    sample_every: int = typer.Option(2000, help="Greedy samples of fixed prompts every N steps (and at the end); -1 off.", rich_help_panel=E),
    core_metric_every: Optional[int] = typer.Option(None, help="CORE eval every N steps (and at the end); default 2000 on CUDA, off elsewhere; -1 off.", rich_help_panel=E),
    core_metric_max_per_task: int = typer.Option(500, help="Examples per CORE task during training (-1: all).", rich_help_panel=E),
    save_every: int = typer.Option(-1, help="Checkpoint every N steps; -1: only at the end (and on SIGTERM/SIGINT).", rich_help_panel=E),
    keep_last: Optional[int] = typer.Option(None, help="Keep only the newest K checkpoints of this model tag.", rich_help_panel=E),
    resume: str = typer.Option("auto", help="auto (newest valid checkpoint of the tag, if any), never, or a step number.", rich_help_panel=E),
    model_tag: Optional[str] = typer.Option(None, help="Checkpoint folder name; default d<depth>.", rich_help_panel=E),
    run: str = typer.Option("dummy", help="wandb run name (needs wandb installed); dummy = no wandb.", rich_help_panel=E),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    nnodes: NNodes = None,
    node_rank: NodeRank = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_id: RdzvId = None,
    seed: int = typer.Option(42, callback=ranges.count(low=0), help="Seed of the initialisation (the data order is fixed by the corpus)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model; default: on CUDA only."),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing/--no-activation-checkpointing", help="Recompute each block in the backward pass: ~1/3 more compute, activations of about one block (for depths that fit no batch otherwise)."),
    max_bad_steps: int = typer.Option(5, help="Stop after this many non-finite-loss steps in a row (each is skipped)."),
    tokenizer_threads: int = typer.Option(4, help="Threads tokenising training text in the background."),
    fp8: bool = typer.Option(False, "--fp8", help="FP8 matmuls (H100+); not available in this version."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build on the meta device, print the plan (parameters, FLOPs, batch, memory, data) and exit."),
    skip_restore: str = typer.Option("", hidden=True, help="Tests only: comma list of loader,rng not to restore on resume."),
) -> None:
    """Pretrain the base GPT on web or demo text; resumable exactly from its checkpoints."""
    from nanochat.common import checks
    from nanochat.common.errors import UsageError
    from nanochat.common.launch import maybe_relaunch
    from nanochat.data.corpus import check_data_name, open_corpus
    from nanochat.train.pretrain import PretrainConfig, run_pretrain

    if fp8:
        raise UsageError("--fp8 is not available in this version of nanochat; train in bf16 (drop --fp8)")
    checks.nproc(nproc)
    nodes = node_options(nnodes, node_rank, rdzv_endpoint, rdzv_id)
    skip = {s.strip() for s in skip_restore.split(",") if s.strip()}
    cfg = PretrainConfig(
        depth=depth, data=data, aspect_ratio=aspect_ratio, head_dim=head_dim, n_kv_head=n_kv_head, window_pattern=window_pattern,
        smear=smear, backout=backout, attn_gate=attn_gate,
        max_seq_len=max_seq_len, device_batch_size=_auto_or_count(device_batch_size, "--device-batch-size", "rows"),
        total_batch_size=_auto_or_count(total_batch_size, "--total-batch-size", "tokens"),
        num_iterations=num_iterations, target_flops=target_flops, target_param_data_ratio=target_param_data_ratio,
        embedding_lr=embedding_lr, unembedding_lr=unembedding_lr, matrix_lr=matrix_lr, scalar_lr=scalar_lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, warmdown_ratio=warmdown_ratio, final_lr_frac=final_lr_frac, warmdown_shape=warmdown_shape, eval_every=eval_every,
        eval_tokens=eval_tokens, sample_every=sample_every, core_metric_every=core_metric_every, core_metric_max_per_task=core_metric_max_per_task, save_every=save_every, keep_last=keep_last, resume=resume,
        model_tag=model_tag, device=device, seed=seed, compile=compile, activation_checkpointing=activation_checkpointing, max_bad_steps=max_bad_steps,
        tokenizer_threads=tokenizer_threads, run=run, dry_run=dry_run,
        restore_loader="loader" not in skip, restore_rng="rng" not in skip,
    )  # fmt: skip
    # every check that needs no model, before any process is started or anything loaded
    cfg.validate()
    if dry_run:
        check_data_name(data)  # a plan may name data still to download, never data that cannot exist
        import os

        from nanochat.common.launch import resolve_nodes, visible_gpu_count

        # plan for the processes a real run would start (see common.launch), on every machine
        gpus = visible_gpu_count() if device in ("auto", "cuda") else 0
        cfg.dry_run_world_size = (nproc if nproc else (gpus if gpus > 1 else 1)) * resolve_nodes(nodes, os.environ).nnodes
    else:
        open_corpus(data, "train")
        open_corpus(data, "val")
        maybe_relaunch(nproc, device, nodes=nodes)
    run_pretrain(cfg)
