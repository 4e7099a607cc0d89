"""Pretraining the base GPT: `run_pretrain(PretrainConfig(...))` is what `nanochat pretrain` runs.

One entry point for CPU, one GPU and several (torchrun; gloo on CPU, NCCL on CUDA; the optimizer
synchronises gradients, no DDP wrapper). The steps of a run:

1. tokenizer, model config from `--depth`, model (seeded init, identical on every rank);
2. every derived number from `train.scaling`, printed as one table before step 0;
3. optimizer (Muon + AdamW), data loader (BOS best-fit packing), resume from a checkpoint;
4. the loop over steps 0..num_iterations: val bpb every `eval_every` steps, CORE every
   `core_metric_every` (via nanochat.eval.core), greedy samples every `sample_every`, a checkpoint every `save_every` (and at the end, and on SIGTERM/SIGINT), then one
   optimizer step of `grad_accum_steps` micro-batches (bf16 on CUDA, fp32 on CPU; compiled on CUDA).
   A step whose loss is not finite is skipped without touching parameters or optimizer state; after
   `max_bad_steps` such steps in a row the run stops with an error (the last checkpoint is intact).

Resuming is exact: weights, per-rank optimizer state, data-loader state (position and packing buffer),
RNG states and loop state are restored, so a run cut at step k and resumed in a new process
computes the same losses, bit for bit, as one that never stopped (same device, threads, world size).
On another number of processes (a machine fewer, or more) the optimizer state is re-sharded and the
data streams dealt out anew, provided processes x micro-steps is unchanged (the same total and device
batch): the run continues with the same rows and the losses of the uninterrupted run, up to float
summation order. Otherwise it refuses with one line saying so.
"""

from __future__ import annotations

import gc
import math
import os
import random
import time
from dataclasses import asdict

from nanochat.common import checkpoint as ck
from nanochat.common.errors import NanochatError
from nanochat.common.logging import console, print0, table, warn0
from nanochat.common.memory import check_fits, over_budget
from nanochat.optim import schedules
from nanochat.eval.bpb import TextBpb, corpus_docs
from nanochat.train.loop import (
    MetricsLog,
    Progress,
    StepClock,
    StopSignal,
    format_duration,
    forward_backward,
    record_report,
    run_distributed,
    greedy_samples,
    peak_memory,
    sync_step_stats,
    wandb_run,
)
from nanochat.train.scaling import B_REF, REF_DEPTH, ModelFacts, ScalingOptions, TrainPlan, plan_rows, plan_training
from nanochat.train.pretrain_config import PretrainConfig  # declared there, torch-free, for the CLI


# ------------------------------------------------------------------------------------------------
# setup


def model_config(cfg: PretrainConfig, vocab_size: int, depth: int | None = None):
    from nanochat.model.config import GPTConfig

    return GPTConfig.from_depth(
        cfg.depth if depth is None else depth, vocab_size, cfg.max_seq_len,
        aspect_ratio=cfg.aspect_ratio, head_dim=cfg.head_dim, n_kv_head=cfg.n_kv_head if depth is None else None,
        window_pattern=cfg.window_pattern, smear=cfg.smear, backout=cfg.backout, attn_gate=cfg.attn_gate,
    )  # fmt: skip


def model_facts(cfg: PretrainConfig, model, vocab_size: int) -> ModelFacts:
    """The numbers the scaling laws need, from the model and a meta-device depth-12 twin."""
    import torch

    from nanochat.model.gpt import GPT

    with torch.device("meta"):
        ref = GPT(model_config(cfg, vocab_size, depth=REF_DEPTH))
    counts = model.param_counts()
    return ModelFacts(
        depth=cfg.depth,
        model_dim=model.config.n_embd,
        n_head=model.config.n_head,
        total_params=counts["total"],
        scaling_params=counts["scaling"],
        ref_scaling_params=ref.param_counts()["scaling"],
        flops_per_token=model.flops_per_token(),
    )


def vocab_cost(depth: int, seq_len: int = 2048):
    """cost(V) -> (training FLOPs per token, embedding share of parameters) of the default model at `depth` with a
    V-token vocabulary (a meta-device build: nothing is allocated), for `tokenize-train --vocab-size auto`."""
    import torch

    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import GPT

    def cost(vocab_size: int) -> tuple[float, float]:
        with torch.device("meta"):
            m = GPT(GPTConfig.from_depth(depth, vocab_size, seq_len))
        c = m.param_counts()
        return m.flops_per_token(), (c["wte"] + c["value_embeds"] + c["lm_head"]) / c["total"]

    return cost


def scaling_options(cfg: PretrainConfig, world_size: int) -> ScalingOptions:
    return ScalingOptions(
        device_batch_size=cfg.device_batch_size, max_seq_len=cfg.max_seq_len, world_size=world_size,
        total_batch_size=cfg.total_batch_size, num_iterations=cfg.num_iterations, target_flops=cfg.target_flops,
        target_param_data_ratio=cfg.target_param_data_ratio, embedding_lr=cfg.embedding_lr,
        unembedding_lr=cfg.unembedding_lr, matrix_lr=cfg.matrix_lr, scalar_lr=cfg.scalar_lr, weight_decay=cfg.weight_decay,
    )  # fmt: skip


def memory_estimate(facts: ModelFacts, cfg: PretrainConfig, vocab_size: int, dtype_bytes: int) -> tuple[float, float]:
    """(state bytes, activation bytes), rough: fp32 weights + grads + ~2 optimizer moments; activations
    of ~20 d-wide tensors per layer per token in the compute dtype plus three fp32 copies of the logits.
    With activation checkpointing a layer keeps only its input (1 d-wide tensor), and one block's 20 are live
    while it is recomputed."""
    tokens = cfg.device_batch_size * cfg.max_seq_len
    state = facts.total_params * 4 * 4
    per_token_layers = facts.depth + 20 if cfg.activation_checkpointing else facts.depth * 20
    acts = tokens * (per_token_layers * facts.model_dim * dtype_bytes + vocab_size * 4 * 3)
    return float(state), float(acts)


MEMORY_HINTS = "lower --device-batch-size (the total batch stays, with more gradient accumulation), --max-seq-len or --depth"


def planned_memory(cfg: PretrainConfig, vocab_size: int, device_type: str, facts: ModelFacts | None = None) -> tuple[float, float]:
    """`memory_estimate` for this run, from a model built on the meta device when no `facts` are given."""
    if facts is None:
        import torch

        from nanochat.model.gpt import GPT

        with torch.device("meta"):
            facts = model_facts(cfg, GPT(model_config(cfg, vocab_size)), vocab_size)
    return memory_estimate(facts, cfg, vocab_size, 2 if device_type == "cuda" else 4)


AUTO_ROWS = -1  # --device-batch-size auto


def resolve_device_batch(cfg: PretrainConfig, facts: ModelFacts, vocab: int, world: int, device_type: str,
                         row_bytes: float | None = None, device_bytes: float | None = None) -> tuple[PretrainConfig, str]:
    """`cfg` with a concrete device batch, and why. `auto`: the resumed checkpoint's rows (its data streams depend on
    them); off the GPU the default; on it the most rows that fit (batch_choice), from `row_bytes` measured on the
    device or, for a dry run, the estimate."""
    from dataclasses import replace

    from nanochat.train.batch_choice import DEFAULT_ROWS, choose_device_batch

    if cfg.device_batch_size != AUTO_ROWS:
        return cfg, "--device-batch-size"
    if cfg.resume != "never":
        info = ck.find_latest("base", cfg.tag) if cfg.resume == "auto" else None
        saved = ck.load_meta(info.path).get("device_batch_size") if info is not None else None
        if saved:
            return replace(cfg, device_batch_size=int(saved)), "auto: the rows of the checkpoint being resumed"
    if device_type != "cuda" or device_bytes is None:
        return replace(cfg, device_batch_size=DEFAULT_ROWS), f"auto: {DEFAULT_ROWS} (no GPU memory to measure)"
    one = replace(cfg, device_batch_size=1)
    total = plan_training(scaling_options(one, world), facts, power_law_batch=True).total_batch_size
    state, acts_one = memory_estimate(facts, one, vocab, 2)
    measured = row_bytes is not None
    choice = choose_device_batch(total // (cfg.max_seq_len * world), state, row_bytes if measured else acts_one, device_bytes,
                                 source="measured" if measured else "estimated")
    return replace(cfg, device_batch_size=choice.device_batch_size), "auto: " + choice.reason


def _resolve_resume(cfg: PretrainConfig, rank: int, world_size: int, device: str) -> ck.CheckpointInfo | None:
    """The checkpoint to resume from (rank 0 decides; the others follow its choice)."""
    import torch

    step = -1
    if rank == 0:
        if cfg.resume == "auto":
            info, why = ck.latest_or_why("base", cfg.tag)
            step = info.step if info else -1
            if why is not None:  # every checkpoint there is damaged: never start over from step 0 silently
                raise NanochatError(
                    f"--resume auto: every checkpoint in {ck.checkpoint_dir('base', cfg.tag)} is damaged (the newest: {why}); "
                    "pass --resume never to start over"
                )
        elif cfg.resume != "never":
            step = ck.resolve_checkpoint("base", cfg.tag, int(cfg.resume)).step
    if world_size > 1:
        import torch.distributed as dist

        t = torch.tensor([step], dtype=torch.long, device=device)
        dist.broadcast(t, 0)
        step = int(t.item())
    if step < 0:
        return None
    if rank == 0:
        return ck.CheckpointInfo(ck.checkpoint_dir("base", cfg.tag) / ck.step_name(step), "base", cfg.tag, step)
    return ck.resolve_checkpoint("base", cfg.tag, step)


def _data_summary(data: str) -> str:
    from nanochat.data.corpus import open_corpus

    try:
        train = open_corpus(data, "train")
        open_corpus(data, "val")
    except NanochatError as e:
        return f"absent: {e}"
    return f"{data}: {train.num_shards} train shards ({train.location})"


# ------------------------------------------------------------------------------------------------
# dry run


def dry_run(cfg: PretrainConfig) -> dict:
    """Build on the meta device and print the plan; no training, no data read."""
    import torch

    from nanochat.common import paths
    from nanochat.model.gpt import GPT

    cfg.validate()
    try:
        from nanochat.data.tokenizer import get_tokenizer

        tok = get_tokenizer()
        vocab, tok_line = tok.vocab_size, f"present, {tok.vocab_size} tokens ({paths.tokenizer_dir()})"
    except NanochatError as e:
        vocab, tok_line = 32768, f"absent ({e}); planning with vocab 32768"
    device_type = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    world = cfg.dry_run_world_size
    with torch.device("meta"):
        model = GPT(model_config(cfg, vocab))
    facts = model_facts(cfg, model, vocab)
    dev_bytes = torch.cuda.get_device_properties(0).total_memory if device_type == "cuda" and torch.cuda.is_available() else None
    cfg, batch_why = resolve_device_batch(cfg, facts, vocab, world, device_type, device_bytes=dev_bytes)
    opts = scaling_options(cfg, world)
    plan = plan_training(opts, facts, power_law_batch=device_type == "cuda")
    state, acts = planned_memory(cfg, vocab, device_type, facts)
    rows = plan_rows(facts, opts, plan) + [
        ("device (planned)", f"{device_type} × {world}"),
        ("device batch", f"{cfg.device_batch_size} rows ({batch_why})"),
        ("memory per device (rough)", f"{state / 2**30:.2f} GiB weights+grads+optimizer, {acts / 2**30:.2f} GiB activations"),
        ("tokenizer", tok_line),
        ("data", _data_summary(cfg.data)),
        ("checkpoints", str(ck.checkpoint_dir("base", cfg.tag))),
    ]
    console().print(table(f"nanochat pretrain --dry-run (depth {cfg.depth})", rows))
    too_big = over_budget(state, acts, device_type, MEMORY_HINTS)
    if too_big:  # a plan is still shown; the run itself would refuse
        warn0(f"a real run would stop here: {too_big}")
    print0("dry run: nothing trained")
    return {"plan": plan.to_dict(), "facts": asdict(facts)}


# ------------------------------------------------------------------------------------------------
# the run


def _device_batch_on_device(cfg: PretrainConfig, model, facts: ModelFacts, vocab: int, world: int, device_type: str, device: str):
    """resolve_device_batch with one row's activations measured on this GPU; every process takes the smallest choice."""
    import torch

    if cfg.device_batch_size != AUTO_ROWS:
        return cfg, "--device-batch-size"
    row_bytes = dev_bytes = None
    if device_type == "cuda":
        from nanochat.train.batch_choice import measure_row_bytes

        row_bytes = measure_row_bytes(model, cfg.max_seq_len, device)
        dev_bytes = torch.cuda.get_device_properties(device).total_memory
    cfg, why = resolve_device_batch(cfg, facts, vocab, world, device_type, row_bytes, dev_bytes)
    if world > 1:
        import dataclasses

        import torch.distributed as dist

        rows = torch.tensor([cfg.device_batch_size], device=device)
        dist.all_reduce(rows, op=dist.ReduceOp.MIN)
        cfg = dataclasses.replace(cfg, device_batch_size=int(rows.item()))
    return cfg, why


def _finite(x: float | None) -> float | None:
    """JSON has no inf/nan: a missing or non-finite value is stored as null."""
    return x if x is not None and math.isfinite(x) else None


def _report_data(summary: dict, step: int, min_val_step: int | None) -> dict:
    """The report section: the summary, with its val bpbs as metrics named with their token count."""
    from nanochat.eval.report import metric

    data = {k: v for k, v in summary.items() if k not in ("min_val_bpb", "final_val_bpb")}
    tokens, source = summary["val_bpb_tokens"], f"corpus:{summary['data']} (val split)"
    results = {}
    if _finite(summary["final_val_bpb"]) is not None:
        # the final checkpoint's, by the training loop: `nanochat eval --tasks bpb` of that checkpoint is the
        # same computation (its entry replaces this one in the summary); named apart in case a compiled
        # model's rounding makes the two differ in the last digit
        results["val_bpb"] = metric("end-of-training val bpb", summary["final_val_bpb"], tokens, "tokens", step=step, source=source)
    if summary["min_val_bpb"] is not None:
        results["min_val_bpb"] = metric("lowest val bpb during training", summary["min_val_bpb"], tokens, "tokens", step=min_val_step, source=source, summary=False)
    if results:
        data["results"] = results
        data["series_labels"] = {"val_bpb": f"val bpb (bits per byte) on {tokens:,} tokens"}
    return data


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _core_metric(model, tokenizer, device: str, max_per_task: int) -> tuple[float, str] | None:
    """CORE (or CORE-offline) of the model, when the eval stage is installed; every rank takes part."""
    try:
        from nanochat.eval.core import evaluate_core, find_bundle
    except ImportError:
        return None
    bundle = find_bundle()
    result = evaluate_core(model, tokenizer, bundle, device, max_per_task=max_per_task)
    return result.core, result.label


def run_pretrain(cfg: PretrainConfig) -> dict:
    """Train (or resume) a base model; returns a summary dict (rank 0's view)."""
    if cfg.dry_run:
        return dry_run(cfg)
    cfg.validate()
    return run_distributed(cfg.device, lambda device_type, info: _train(cfg, device_type, info.rank, info.world_size, info.device))


def _train(cfg: PretrainConfig, device_type: str, rank: int, world: int, device: str) -> dict:
    import torch

    from nanochat.common.compile_cache import use_compile_cache
    from nanochat.common.device import choose_dtype, peak_flops
    from nanochat.common.dist import SameOnEveryRank, agree, check_shared_dir
    from nanochat.data.corpus import open_corpus
    from nanochat.data.loader import MicroStepLoader, buffer_for, regroup_states
    from nanochat.data.tokenizer import get_tokenizer
    from nanochat.model.gpt import build_model
    from nanochat.optim import build_optimizer

    master = rank == 0
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    _seed_everything(cfg.seed)

    def inputs():
        tok = get_tokenizer()
        train, val = open_corpus(cfg.data, "train"), open_corpus(cfg.data, "val")  # fail fast, naming what to download or import
        return (tok, train, val), {"tokenizers": tok.fingerprint(), "train shards": train.fingerprint(), "val shards": val.fingerprint()}

    # every machine must hold the same tokenizer and shards: one that differs (or lacks them) stops all before step 0
    tokenizer, train_corpus, val_corpus = agree(
        "the tokenizer and data", inputs,
        fix=f"give every machine the same tokenizer and {cfg.data!r} shards (`nanochat tokenize-train`, `nanochat data download` "
            "with the same options on each) or one shared NANOCHAT_HOME",
    )  # fmt: skip
    vocab = tokenizer.vocab_size
    if cfg.device_batch_size != AUTO_ROWS:  # auto chooses a batch that fits, after measuring
        check_fits(*planned_memory(cfg, vocab, device_type), device, MEMORY_HINTS)  # before a model too big is allocated
    if master:
        ck.check_writable(ck.checkpoint_dir("base", cfg.tag))  # before training, not at the first save
    gpt_config = model_config(cfg, vocab)
    dtype = choose_dtype(device_type).dtype
    model = build_model(gpt_config, device, init=True, dtype=dtype, seed=cfg.seed)
    model.activation_checkpointing = cfg.activation_checkpointing
    facts = model_facts(cfg, model, vocab)
    cfg, batch_why = _device_batch_on_device(cfg, model, facts, vocab, world, device_type, device)
    opts = scaling_options(cfg, world)
    plan: TrainPlan = plan_training(opts, facts, power_law_batch=device_type == "cuda")
    n = plan.num_iterations
    optimizer = build_optimizer(
        model, matrix_lr=plan.matrix_lr, embedding_lr=plan.embedding_lr, unembedding_lr=plan.unembedding_lr,
        scalar_lr=plan.scalar_lr, weight_decay=plan.weight_decay,
    )  # fmt: skip
    run_dir = ck.checkpoint_dir("base", cfg.tag)
    check_shared_dir(run_dir)  # every rank writes into the checkpoint folder rank 0 creates

    # ---- resume
    start_step, loop_state, loader_state = 0, {}, None
    info = _resolve_resume(cfg, rank, world, device)
    if info is not None:
        meta = ck.load_meta(info.path)
        if meta.get("model_config") != gpt_config.to_dict():
            raise NanochatError(
                f"{info.path} holds a different model ({meta.get('model_config')}); pass --resume never, or another --model-tag"
            )
        saved_world = meta.get("world_size", 1)
        model.load_state_dict(ck.load_weights(info.path, device), strict=True)
        if saved_world == world:
            opt_state, rank_state = ck.load_rank_state(info.path, rank, device)
        else:  # another process count: gather every rank's optimizer shards and data streams, split them anew
            opt_states, rank_states = ck.load_all_rank_states(info.path, device)
            saved_accum = len(rank_states[0]["loader"]["shards"])
            if saved_world * saved_accum != world * plan.grad_accum_steps:
                raise SameOnEveryRank(
                    f"{info.path} read its data as {saved_world * saved_accum} streams ({saved_world} processes x {saved_accum} micro-steps) "
                    f"and this run would read {world * plan.grad_accum_steps} ({world} x {plan.grad_accum_steps}); resume with "
                    f"--total-batch-size {meta.get('total_batch_size')} --device-batch-size {meta.get('device_batch_size')} as it had, "
                    f"or on {saved_world} processes in all (--nproc x --nnodes), or start afresh with --resume never"
                )
            regrouped = regroup_states([s["loader"] for s in rank_states], rank, world, plan.grad_accum_steps)
            opt_state = optimizer.reshard_state(opt_states)
            # RNG: a rank the checkpoint had continues its own stream, a new one rank 0's (pretraining draws none after init)
            rank_state = {"loader": regrouped, "rng": rank_states[rank if rank < saved_world else 0]["rng"]}
            print0(f"re-sharding the optimizer state and data streams of {saved_world} processes for {world}")
        optimizer.load_state_dict(opt_state)
        if cfg.restore_loader:
            loader_state = rank_state["loader"]
        if cfg.restore_rng:
            ck.restore_rng(rank_state["rng"])
        loop_state = meta.get("loop_state", {})
        start_step = info.step
        if meta.get("plan", {}).get("num_iterations") not in (None, n):
            warn0(f"the checkpoint was planned for {meta['plan']['num_iterations']} iterations, this run for {n}; the schedules follow this run")
        print0(f"resuming {cfg.tag} from step {start_step} ({info.path})")
        if start_step >= n:
            print0(f"step {start_step} already completes a run of {n} iterations; nothing to train (raise --num-iterations to go on)")
            return {"final_step": start_step, "iterations": n, "min_val_bpb": loop_state.get("min_val_bpb"), "model_tag": cfg.tag}
    elif cfg.resume == "never" and ck.latest_valid(run_dir, report=None) is not None:
        # a fresh run mixing its checkpoints with an older run's would let --resume auto pick the wrong one later
        # (beside damaged ones only, starting over is allowed: it is what --resume auto's refusal asks for)
        raise NanochatError(
            f"--resume never, but {run_dir} holds checkpoints of an earlier run; pass another --model-tag, "
            f"delete that folder, or use --resume auto to continue it"
        )
    elif cfg.resume == "never" and ck.list_steps("base", cfg.tag):
        warn0(f"--resume never: starting over beside damaged step folders in {run_dir}; they are skipped (delete them when you no longer need them)")

    # ---- print every derived value
    peak = peak_flops(device_type)
    eval_tokens = cfg.eval_tokens if cfg.eval_tokens > 0 else (80 * B_REF if device_type == "cuda" else 20 * cfg.device_batch_size * cfg.max_seq_len * world)
    # val bpb is TextBpb: the same rows of the val split for any batch size or process count, and the
    # same computation `nanochat eval --tasks bpb` runs on this run's checkpoints (it reads val_bpb_tokens)
    val_text = (TextBpb(tokenizer, corpus_docs(val_corpus), eval_tokens, cfg.max_seq_len, rank, world, max(1, min(cfg.tokenizer_threads, os.cpu_count() or 1)))
                if cfg.eval_every > 0 else None)  # fmt: skip
    val_tokens = val_text.tokens if val_text is not None else max(1, eval_tokens // cfg.max_seq_len) * cfg.max_seq_len
    compile_model = cfg.compile if cfg.compile is not None else device_type == "cuda"
    compile_cache = use_compile_cache() if compile_model or device_type == "cuda" else None  # before the first compile
    core_every = cfg.core_metric_every if cfg.core_metric_every is not None else (2000 if device_type == "cuda" else -1)
    rows = plan_rows(facts, opts, plan) + [
        ("schedule", f"warmup {cfg.warmup_steps}, {cfg.warmdown_shape} warmdown {cfg.warmdown_ratio:g} → {cfg.final_lr_frac:g}× LR; Muon momentum 0.85→0.97→0.90; WD cosine to 0"),
        ("device", f"{device} × {world} ({str(dtype).removeprefix('torch.')}{', compiled' if compile_model else ''}{', activation checkpointing' if cfg.activation_checkpointing else ''}; attention {model.attn_backend})"),
        *([("compile cache", compile_cache.describe())] if compile_cache else []),
        ("device batch", f"{cfg.device_batch_size} rows ({batch_why})"),
        ("peak FLOP/s (MFU)", f"{peak * world:.3g}" if peak else "unknown (MFU not shown)"),
        ("data", f"{cfg.data} (train); " + (f"val bpb every {cfg.eval_every} steps on {val_tokens:,} tokens"
                                              if cfg.eval_every > 0 else "val bpb off")),
        ("CORE", f"every {core_every} steps and at the end, {cfg.core_metric_max_per_task} per task" if core_every > 0 else "off"),
        ("checkpoints", f"{run_dir} (every {cfg.save_every if cfg.save_every > 0 else '-'} steps and at the end; keep {cfg.keep_last or 'all'})"),
        ("start", f"step {start_step}" + (" (resumed)" if info else "")),
    ]
    print0(table(f"nanochat pretrain: depth {cfg.depth}", rows))

    # ---- data, compile, logs
    threads = max(1, min(cfg.tokenizer_threads, os.cpu_count() or 1))
    loader = MicroStepLoader(train_corpus, tokenizer, cfg.device_batch_size, cfg.max_seq_len, rank=rank, world_size=world,
                             accum=plan.grad_accum_steps, device=device, threads=threads, buffer_size=buffer_for(train_corpus), state=loader_state)  # fmt: skip
    token_bytes = torch.tensor(tokenizer.token_bytes(), dtype=torch.int64, device=device)
    train_model = torch.compile(model, dynamic=False) if compile_model else model
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if info else None, enabled=master)
    user_config = {k: v for k, v in asdict(cfg).items() if k not in ("restore_loader", "restore_rng", "dry_run_world_size")}
    wb = wandb_run(cfg.run, rank, "nanochat", {**user_config, **plan.to_dict()})
    stop = StopSignal().install()
    clock = StepClock(total=loop_state.get("total_training_time", 0.0))
    progress = Progress(n, start_step, enabled=master)

    smooth = loop_state.get("smooth_loss", 0.0)
    smooth_n = loop_state.get("smooth_n", 0)
    min_val = loop_state.get("min_val_bpb")
    min_val = float("inf") if min_val is None else min_val
    min_val_step = loop_state.get("min_val_bpb_step")
    val_bpb = loop_state.get("val_bpb")
    bad_in_row = 0
    tokens_per_step = plan.total_batch_size
    flops_per_step = facts.flops_per_token * tokens_per_step
    train_series: list = []
    val_series: list = []
    core_series: list = []
    step = start_step
    t_run = time.time()
    gc_frozen = False
    stopped_by_signal = False
    stop_synced = False  # the stop request as all ranks agreed on it (set by the per-step all-reduce)
    top_done_for = -1  # eval/sample/save run once per step, even when a skipped step repeats it

    def save(at_step: int) -> None:
        t0 = time.time()
        loop = {"smooth_loss": smooth, "smooth_n": smooth_n, "min_val_bpb": _finite(min_val), "min_val_bpb_step": min_val_step, "val_bpb": _finite(val_bpb),
                "total_training_time": clock.total}  # fmt: skip
        meta = {
            "model_config": gpt_config.to_dict(), "user_config": user_config, "plan": plan.to_dict(),
            "device_batch_size": cfg.device_batch_size, "max_seq_len": cfg.max_seq_len, "total_batch_size": plan.total_batch_size,
            "val_bpb": _finite(val_bpb), "val_bpb_tokens": val_tokens, "loop_state": loop, "tokenizer_vocab_size": vocab, "data": cfg.data,
        } if master else None  # fmt: skip
        rank_state = {"loader": loader.state_dict(), "rng": ck.capture_rng()}
        path = ck.save_checkpoint(
            run_dir, at_step, model_state=model.state_dict() if master else None, meta=meta,
            optimizer_state=optimizer.state_dict(), rank_state=rank_state, rank=rank, world_size=world, keep_last=cfg.keep_last,
        )  # fmt: skip
        progress.note(f"saved step {at_step} to {path} ({time.time() - t0:.1f}s)")

    try:
        while True:
            last = step == n
            top = top_done_for != step
            top_done_for = step
            # ---- evaluate, sample, save (at the top of a step: the state after `step` updates)
            if top and cfg.eval_every > 0 and (last or step % cfg.eval_every == 0) and not (info and step == start_step and val_bpb is not None):
                model.eval()
                val_bpb = val_text.evaluate(train_model, cfg.device_batch_size, token_bytes, device).bpb
                model.train()
                if val_bpb < min_val:
                    min_val, min_val_step = val_bpb, step
                val_series.append([step, val_bpb])
                progress.note(f"step {step:05d} | val bpb {val_bpb:.4f} on {val_tokens:,} tokens (lowest {min_val:.4f})")
                metrics.write({"kind": "eval", "step": step, "val_bpb": val_bpb, "tokens": val_tokens})
                if wb:
                    wb.log({"step": step, "val/bpb": val_bpb})
            if top and core_every > 0 and (last or step % core_every == 0) and step > 0:
                model.eval()
                core = _core_metric(model, tokenizer, device, cfg.core_metric_max_per_task)
                model.train()
                if core is not None:
                    core_series.append([step, core[0]])
                    progress.note(f"step {step:05d} | {core[1]}: {core[0]:.4f}")
                    metrics.write({"kind": "core", "step": step, "core": core[0], "label": core[1]})
                    if wb:
                        wb.log({"step": step, "core_metric": core[0]})
            if top and master and cfg.sample_every > 0 and (last or step % cfg.sample_every == 0) and step > 0:
                model.eval()
                for line in greedy_samples(model, tokenizer, device=device):
                    progress.note(f"sample: {line!r}")
                model.train()
            if last or stop_synced or (top and cfg.save_every > 0 and step % cfg.save_every == 0 and step != start_step):
                save(step)
            if last or stop_synced:
                stopped_by_signal = stop_synced and not last
                break

            # ---- one optimizer step
            clock.start(device_type)
            loss_sum = forward_backward(train_model, loader, plan.grad_accum_steps, device)
            loss_value, stop_synced = sync_step_stats(loss_sum, plan.grad_accum_steps, stop.requested, world)
            if not math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)  # parameters and optimizer state untouched
                bad_in_row += 1
                clock.stop(device_type, 0)
                progress.note(f"step {step:05d} | loss {loss_value} is not finite: step skipped ({bad_in_row}/{cfg.max_bad_steps})")
                metrics.write({"kind": "skip", "step": step, "loss": str(loss_value)})
                if bad_in_row >= cfg.max_bad_steps:
                    raise NanochatError(
                        f"{bad_in_row} steps in a row had a non-finite loss at step {step}; lower the learning rates "
                        f"(e.g. --matrix-lr) and resume from the last checkpoint in {run_dir}"
                    )
                continue
            bad_in_row = 0
            lrm = schedules.lr_multiplier(step, n, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac, cfg.warmdown_shape)
            momentum = schedules.muon_momentum(step, n, warmdown_ratio=cfg.warmdown_ratio)
            wd = schedules.weight_decay(step, n, plan.weight_decay)
            optimizer.set_schedule(lrm, momentum, wd)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dt = clock.stop(device_type, step - start_step)
            step += 1

            smooth = 0.9 * smooth + 0.1 * loss_value
            smooth_n += 1
            debiased = smooth / (1 - 0.9**smooth_n)
            tok_s = tokens_per_step / dt
            mfu = flops_per_step / dt / (peak * world) if peak else None
            eta = clock.eta(n - step, dt)
            line = (f"step {step:05d}/{n:05d} ({100 * step / n:.1f}%) | loss {debiased:.4f} | lrm {lrm:.3f} | dt {dt * 1000:.0f}ms | "
                    f"tok/s {tok_s:,.0f} | mfu {f'{100 * mfu:.2f}%' if mfu is not None else '-'} | epoch {loader.epoch} | eta {format_duration(eta)}")  # fmt: skip
            progress.step(line, step)
            metrics.write({"kind": "train", "step": step - 1, "loss": loss_value, "smooth_loss": debiased, "lrm": lrm, "dt": dt,
                           "tok_per_s": tok_s, "mfu": mfu, "epoch": loader.epoch, "time": time.time(),
                           **({"peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30} if device_type == "cuda" else {})})  # fmt: skip
            train_series.append([step - 1, loss_value])
            if wb and step % 100 == 0:
                wb.log({"step": step, "train/loss": debiased, "train/lrm": lrm, "train/tok_per_s": tok_s, "train/mfu": mfu})
            # the reference's GC policy: freeze what exists after the first step, collect by hand rarely
            if not gc_frozen:
                gc.collect()
                gc.freeze()
                gc.disable()
                gc_frozen = True
            elif step % 5000 == 0:
                gc.collect()
    finally:
        progress.close()
        stop.uninstall()
        loader.close()
        metrics.close()
        if gc_frozen:
            gc.enable()

    summary = {
        "depth": cfg.depth, "model_tag": cfg.tag, "data": cfg.data, "params": facts.total_params, "scaling_params": facts.scaling_params,
        "flops_per_token": facts.flops_per_token, "iterations": n, "final_step": step, "tokens": plan.total_tokens,
        "total_batch_size": plan.total_batch_size, "world_size": world, "device": device_type,
        "min_val_bpb": min_val if math.isfinite(min_val) else None, "final_val_bpb": val_bpb, "val_bpb_tokens": val_tokens, "total_time_s": time.time() - t_run, "training_time_s": clock.total,
        "mfu_pct": (100 * flops_per_step * clock.timed_steps / clock.total / (peak * world)) if (peak and clock.total) else None,
        "stopped_by": stop.signame if stopped_by_signal else None, "first_step_s": clock.first_step_s,
    }  # fmt: skip
    peak_mem = peak_memory(device_type)
    if peak_mem:
        summary["peak_memory_gib"] = round(peak_mem[1], 2)
    if master:
        if stopped_by_signal:
            print0(f"{stop.signame}: saved step {step} and stopped; `nanochat pretrain ... --resume auto` continues")
        else:
            bpb_note = f"val bpb {val_bpb:.4f} on {val_tokens:,} tokens (lowest {min_val:.4f}, step {min_val_step})" if val_bpb is not None and math.isfinite(val_bpb) else "val bpb off"
            mem_note = f", {peak_mem[0]} {peak_mem[1]:.1f} GiB" if peak_mem else ""
            first_note = f", first step {clock.first_step_s:.1f}s{' (compile)' if compile_model else ''}" if clock.first_step_s is not None else ""
            print0(f"done: {step} steps, {bpb_note}, training time {format_duration(clock.total)}{first_note}{mem_note}")
            if core_series:
                summary["core"] = core_series[-1][1]
            record_report("pretrain", _report_data(summary, step, min_val_step), {"train_loss": train_series, "val_bpb": val_series, **({"core": core_series} if core_series else {})}, title="Base model training")
    if wb:
        wb.finish()
    return summary
