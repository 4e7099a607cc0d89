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
from dataclasses import asdict, dataclass
from typing import Any

from nanochat.common import checkpoint as ck
from nanochat.common.errors import NanochatError
from nanochat.common.logging import console, print0, table, warn0
from nanochat.common.memory import check_fits, gpu_bytes, over_budget
from nanochat.optim import schedules
from nanochat.eval.bpb import TextBpb, corpus_docs
from nanochat.train.loop import (
    Stage,
    StepResult,
    TrainingRun,
    format_duration,
    forward_backward,
    record_report,
    run_distributed,
    greedy_samples,
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
    dev_bytes = gpu_bytes(0) if device_type == "cuda" and torch.cuda.is_available() else None
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
        dev_bytes = gpu_bytes(torch.device(device).index or 0)
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


def _inputs(cfg: PretrainConfig):
    """(tokenizer, train corpus, val corpus): the same on every machine; one that differs (or lacks them) stops all before step 0."""
    from nanochat.common.dist import agree
    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import get_tokenizer

    def inputs():
        tok = get_tokenizer()
        train, val = open_corpus(cfg.data, "train"), open_corpus(cfg.data, "val")  # fail fast, naming what to download or import
        return (tok, train, val), {"tokenizers": tok.fingerprint(), "train shards": train.fingerprint(), "val shards": val.fingerprint()}

    return agree(
        "the tokenizer and data", inputs,
        fix=f"give every machine the same tokenizer and {cfg.data!r} shards (`nanochat tokenize-train`, `nanochat data download` "
            "with the same options on each) or one shared NANOCHAT_HOME",
    )  # fmt: skip


def _restore(cfg: PretrainConfig, info: ck.CheckpointInfo, model, optimizer, plan: TrainPlan, gpt_config, rank: int, world: int, device: str):
    """Load the checkpoint `info` into the model and optimizer (re-sharding another process count's state);
    returns (loop state, loader state or None)."""
    from nanochat.common.dist import SameOnEveryRank
    from nanochat.data.loader import regroup_states

    meta = ck.load_meta(info.path)
    if meta.get("model_config") != gpt_config.to_dict():
        raise NanochatError(f"{info.path} holds a different model ({meta.get('model_config')}); pass --resume never, or another --model-tag")
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
    if cfg.restore_rng:
        ck.restore_rng(rank_state["rng"])
    n = plan.num_iterations
    if meta.get("plan", {}).get("num_iterations") not in (None, n):
        warn0(f"the checkpoint was planned for {meta['plan']['num_iterations']} iterations, this run for {n}; the schedules follow this run")
    print0(f"resuming {cfg.tag} from step {info.step} ({info.path})")
    return meta.get("loop_state", {}), rank_state["loader"] if cfg.restore_loader else None


def _refuse_mixing(cfg: PretrainConfig, run_dir) -> None:
    """A fresh run (`--resume never`) must not mix its checkpoints with an older run's: --resume auto would later pick the wrong one
    (beside damaged ones only, starting over is allowed: it is what --resume auto's refusal asks for)."""
    if cfg.resume != "never":
        return
    if ck.latest_valid(run_dir, report=None) is not None:
        raise NanochatError(
            f"--resume never, but {run_dir} holds checkpoints of an earlier run; pass another --model-tag, "
            f"delete that folder, or use --resume auto to continue it"
        )
    if ck.list_steps("base", cfg.tag):
        warn0(f"--resume never: starting over beside damaged step folders in {run_dir}; they are skipped (delete them when you no longer need them)")


@dataclass
class _Model:
    """The model of a run and everything derived from it before step 0."""

    cfg: PretrainConfig  # with a concrete device batch
    gpt_config: Any
    model: Any
    dtype: Any
    facts: ModelFacts
    opts: ScalingOptions
    plan: TrainPlan
    optimizer: Any
    batch_why: str


def _build(cfg: PretrainConfig, vocab: int, device_type: str, world: int, device: str) -> _Model:
    from nanochat.common.device import choose_dtype
    from nanochat.model.gpt import build_model
    from nanochat.optim import build_optimizer

    gpt_config = model_config(cfg, vocab)
    dtype = choose_dtype(device_type).dtype
    model = build_model(gpt_config, device, init=True, dtype=dtype, seed=cfg.seed)
    model.activation_checkpointing = cfg.activation_checkpointing
    if cfg.fp8:
        model.use_fp8()
    facts = model_facts(cfg, model, vocab)
    cfg, batch_why = _device_batch_on_device(cfg, model, facts, vocab, world, device_type, device)
    opts = scaling_options(cfg, world)
    plan: TrainPlan = plan_training(opts, facts, power_law_batch=device_type == "cuda")
    optimizer = build_optimizer(
        model, matrix_lr=plan.matrix_lr, embedding_lr=plan.embedding_lr, unembedding_lr=plan.unembedding_lr,
        scalar_lr=plan.scalar_lr, weight_decay=plan.weight_decay,
    )  # fmt: skip
    return _Model(cfg, gpt_config, model, dtype, facts, opts, plan, optimizer, batch_why)


def _plan_table(m: _Model, device: str, world: int, peak, val_tokens: int, compile_model: bool, compile_cache, core_every: int, run_dir,
                start: str) -> str:
    cfg = m.cfg
    rows = plan_rows(m.facts, m.opts, m.plan) + [
        ("schedule", f"warmup {cfg.warmup_steps}, {cfg.warmdown_shape} warmdown {cfg.warmdown_ratio:g} → {cfg.final_lr_frac:g}× LR; {schedules.describe_pretrain_momentum()}; WD cosine to 0"),
        ("device", f"{device} × {world} ({str(m.dtype).removeprefix('torch.')}{', compiled' if compile_model else ''}{', activation checkpointing' if cfg.activation_checkpointing else ''}{', fp8 block matmuls' if cfg.fp8 else ''}; attention {m.model.attn_backend})"),
        *([("compile cache", compile_cache.describe())] if compile_cache else []),
        ("device batch", f"{cfg.device_batch_size} rows ({m.batch_why})"),
        ("peak FLOP/s (MFU)", f"{peak * world:.3g}" if peak else "unknown (MFU not shown)"),
        ("data", f"{cfg.data} (train); " + (f"val bpb every {cfg.eval_every} steps on {val_tokens:,} tokens"
                                              if cfg.eval_every > 0 else "val bpb off")),
        ("CORE", f"every {core_every} steps and at the end, {cfg.core_metric_max_per_task} per task" if core_every > 0 else "off"),
        ("checkpoints", f"{run_dir} (every {cfg.save_every if cfg.save_every > 0 else '-'} steps and at the end; keep {cfg.keep_last or 'all'})"),
        ("start", start),
    ]  # fmt: skip
    return table(f"nanochat pretrain: depth {cfg.depth}", rows)


class PretrainStage(Stage):
    """Pretraining steps over BOS-aligned packed rows; val bpb, CORE and greedy samples at the top of a step."""

    def __init__(self, run: TrainingRun, m: _Model, *, train_model, tokenizer, loader, val_text, val_tokens: int, token_bytes, core_every: int,
                 peak, device: str, loop_state: dict, checkpoint_meta: dict, wb) -> None:
        self.run, self.m, self.cfg, self.model, self.optimizer, self.plan = run, m, m.cfg, m.model, m.optimizer, m.plan
        self.train_model, self.tokenizer, self.loader, self.val_text, self.val_tokens = train_model, tokenizer, loader, val_text, val_tokens
        self.token_bytes, self.core_every, self.peak, self.device, self.wb = token_bytes, core_every, peak, device, wb
        self.checkpoint_meta = checkpoint_meta  # what every checkpoint's meta holds besides the loop state and val bpb
        self.max_bad_steps = self.cfg.max_bad_steps
        self.bad_steps_fix = f"lower the learning rates (e.g. --matrix-lr) and resume from the last checkpoint in {run.run_dir}"
        self.smooth, self.smooth_n = loop_state.get("smooth_loss", 0.0), loop_state.get("smooth_n", 0)
        min_val = loop_state.get("min_val_bpb")
        self.min_val = float("inf") if min_val is None else min_val
        self.min_val_step = loop_state.get("min_val_bpb_step")
        self.val_bpb = loop_state.get("val_bpb")
        self.flops_per_step = m.facts.flops_per_token * m.plan.total_batch_size
        self.train_series: list = []
        self.val_series: list = []
        self.core_series: list = []
        self.gc_frozen = False

    def is_last(self, step: int) -> bool:
        return step == self.plan.num_iterations

    def evaluate(self, step: int, last: bool) -> None:
        cfg, run = self.cfg, self.run
        if cfg.eval_every > 0 and (last or step % cfg.eval_every == 0) and not (run.resumed and step == run.start_step and self.val_bpb is not None):
            self.model.eval()
            self.val_bpb = self.val_text.evaluate(self.train_model, cfg.device_batch_size, self.token_bytes, self.device).bpb
            self.model.train()
            if self.val_bpb < self.min_val:
                self.min_val, self.min_val_step = self.val_bpb, step
            self.val_series.append([step, self.val_bpb])
            run.note(f"step {step:05d} | val bpb {self.val_bpb:.4f} on {self.val_tokens:,} tokens (lowest {self.min_val:.4f})")
            run.metrics.write({"kind": "eval", "step": step, "val_bpb": self.val_bpb, "tokens": self.val_tokens})
            if self.wb:
                self.wb.log({"step": step, "val/bpb": self.val_bpb})
        if self.core_every > 0 and (last or step % self.core_every == 0) and step > 0:
            self.model.eval()
            core = _core_metric(self.model, self.tokenizer, self.device, cfg.core_metric_max_per_task)
            self.model.train()
            if core is not None:
                self.core_series.append([step, core[0]])
                run.note(f"step {step:05d} | {core[1]}: {core[0]:.4f}")
                run.metrics.write({"kind": "core", "step": step, "core": core[0], "label": core[1]})
                if self.wb:
                    self.wb.log({"step": step, "core_metric": core[0]})
        if run.rank == 0 and cfg.sample_every > 0 and (last or step % cfg.sample_every == 0) and step > 0:
            self.model.eval()
            for line in greedy_samples(self.model, self.tokenizer, device=self.device):
                run.note(f"sample: {line!r}")
            self.model.train()

    def save(self, step: int) -> None:
        loop = {"smooth_loss": self.smooth, "smooth_n": self.smooth_n, "min_val_bpb": _finite(self.min_val), "min_val_bpb_step": self.min_val_step,
                "val_bpb": _finite(self.val_bpb), "total_training_time": self.run.clock.total}  # fmt: skip
        meta = {**self.checkpoint_meta, "val_bpb": _finite(self.val_bpb), "loop_state": loop} if self.run.rank == 0 else None
        self.run.checkpoint(step, self.model, self.optimizer, meta, {"loader": self.loader.state_dict(), "rng": ck.capture_rng()})

    def forward_backward(self, step: int, stop_requested: bool) -> StepResult:
        loss_sum = forward_backward(self.train_model, self.loader, self.plan.grad_accum_steps, self.device)
        return StepResult(*sync_step_stats(loss_sum, self.plan.grad_accum_steps, stop_requested, self.run.world))

    def discard(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, step: int, loss: float) -> None:
        cfg, n = self.cfg, self.plan.num_iterations
        self.lrm = schedules.lr_multiplier(step, n, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac, cfg.warmdown_shape)
        momentum = schedules.muon_momentum(step, n, warmdown_ratio=cfg.warmdown_ratio)
        self.optimizer.set_schedule(self.lrm, momentum, schedules.weight_decay(step, n, self.plan.weight_decay))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def record(self, step: int, dt: float, loss: float) -> tuple[str, dict]:
        n, world, tokens_per_step = self.plan.num_iterations, self.run.world, self.plan.total_batch_size
        self.smooth = 0.9 * self.smooth + 0.1 * loss
        self.smooth_n += 1
        debiased = self.smooth / (1 - 0.9**self.smooth_n)
        tok_s = tokens_per_step / dt
        mfu = self.flops_per_step / dt / (self.peak * world) if self.peak else None
        line = (f"step {step:05d}/{n:05d} ({100 * step / n:.1f}%) | loss {debiased:.4f} | lrm {self.lrm:.3f} | dt {dt * 1000:.0f}ms | "
                f"tok/s {tok_s:,.0f} | mfu {f'{100 * mfu:.2f}%' if mfu is not None else '-'} | epoch {self.loader.epoch} | eta {format_duration(self.run.clock.eta(n - step, dt))}")  # fmt: skip
        record = {"kind": "train", "step": step - 1, "loss": loss, "smooth_loss": debiased, "lrm": self.lrm, "dt": dt,
                  "tok_per_s": tok_s, "mfu": mfu, "epoch": self.loader.epoch, "time": time.time()}  # fmt: skip
        self.train_series.append([step - 1, loss])
        if self.wb and step % 100 == 0:
            self.wb.log({"step": step, "train/loss": debiased, "train/lrm": self.lrm, "train/tok_per_s": tok_s, "train/mfu": mfu})
        self._collect_garbage(step)
        return line, record

    def _collect_garbage(self, step: int) -> None:
        """The reference's GC policy: freeze what exists after the first step, collect by hand rarely."""
        if not self.gc_frozen:
            gc.collect()
            gc.freeze()
            gc.disable()
            self.gc_frozen = True
        elif step % 5000 == 0:
            gc.collect()

    def close(self) -> None:
        self.loader.close()
        if self.gc_frozen:
            gc.enable()


def _train(cfg: PretrainConfig, device_type: str, rank: int, world: int, device: str) -> dict:
    import torch

    from nanochat.common.compile_cache import use_compile_cache
    from nanochat.common.device import peak_flops
    from nanochat.common.dist import check_shared_dir
    from nanochat.data.loader import MicroStepLoader, buffer_for

    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    _seed_everything(cfg.seed)
    tokenizer, train_corpus, val_corpus = _inputs(cfg)
    vocab = tokenizer.vocab_size
    if cfg.device_batch_size != AUTO_ROWS:  # auto chooses a batch that fits, after measuring
        check_fits(*planned_memory(cfg, vocab, device_type), device, MEMORY_HINTS)  # before a model too big is allocated
    if rank == 0:
        ck.check_writable(ck.checkpoint_dir("base", cfg.tag))  # before training, not at the first save
    m = _build(cfg, vocab, device_type, world, device)
    cfg, plan, n = m.cfg, m.plan, m.plan.num_iterations
    run_dir = ck.checkpoint_dir("base", cfg.tag)
    check_shared_dir(run_dir)  # every rank writes into the checkpoint folder rank 0 creates
    start_step, loop_state, loader_state = 0, {}, None
    info = _resolve_resume(cfg, rank, world, device)
    if info is not None:
        loop_state, loader_state = _restore(cfg, info, m.model, m.optimizer, plan, m.gpt_config, rank, world, device)
        start_step = info.step
        if start_step >= n:
            print0(f"step {start_step} already completes a run of {n} iterations; nothing to train (raise --num-iterations to go on)")
            return {"final_step": start_step, "iterations": n, "min_val_bpb": loop_state.get("min_val_bpb"), "model_tag": cfg.tag}
    else:
        _refuse_mixing(cfg, run_dir)

    # ---- print every derived value
    peak = peak_flops(device_type)
    eval_tokens = cfg.eval_tokens if cfg.eval_tokens > 0 else (80 * B_REF if device_type == "cuda" else 20 * cfg.device_batch_size * cfg.max_seq_len * world)
    threads = max(1, min(cfg.tokenizer_threads, os.cpu_count() or 1))
    # val bpb is TextBpb: the same rows of the val split for any batch size or process count, and the
    # same computation `nanochat eval --tasks bpb` runs on this run's checkpoints (it reads val_bpb_tokens)
    val_text = TextBpb(tokenizer, corpus_docs(val_corpus), eval_tokens, cfg.max_seq_len, rank, world, threads) if cfg.eval_every > 0 else None
    val_tokens = val_text.tokens if val_text is not None else max(1, eval_tokens // cfg.max_seq_len) * cfg.max_seq_len
    compile_model = cfg.compile if cfg.compile is not None else device_type == "cuda"
    compile_cache = use_compile_cache() if compile_model or device_type == "cuda" else None  # before the first compile
    core_every = cfg.core_metric_every if cfg.core_metric_every is not None else (2000 if device_type == "cuda" else -1)
    print0(_plan_table(m, device, world, peak, val_tokens, compile_model, compile_cache, core_every, run_dir,
                       f"step {start_step}" + (" (resumed)" if info else "")))  # fmt: skip

    # ---- data, compile, logs
    loader = MicroStepLoader(train_corpus, tokenizer, cfg.device_batch_size, cfg.max_seq_len, rank=rank, world_size=world,
                             accum=plan.grad_accum_steps, device=device, threads=threads, buffer_size=buffer_for(train_corpus), state=loader_state)  # fmt: skip
    user_config = {k: v for k, v in asdict(cfg).items() if k not in ("restore_loader", "restore_rng", "dry_run_world_size")}
    run = TrainingRun("pretrain", run_dir, n, start_step, info is not None, rank=rank, world=world, device_type=device_type,
                      save_every=cfg.save_every, keep_last=cfg.keep_last, loop_state=loop_state, clock_warmup=10)  # fmt: skip
    checkpoint_meta = {
        "model_config": m.gpt_config.to_dict(), "user_config": user_config, "plan": plan.to_dict(),
        "device_batch_size": cfg.device_batch_size, "max_seq_len": cfg.max_seq_len, "total_batch_size": plan.total_batch_size,
        "val_bpb_tokens": val_tokens, "tokenizer_vocab_size": vocab, "data": cfg.data,
    }  # fmt: skip
    stage = PretrainStage(run, m, train_model=torch.compile(m.model, dynamic=False) if compile_model else m.model, tokenizer=tokenizer,
                          loader=loader, val_text=val_text, val_tokens=val_tokens,
                          token_bytes=torch.tensor(tokenizer.token_bytes(), dtype=torch.int64, device=device), core_every=core_every,
                          peak=peak, device=device, loop_state=loop_state, checkpoint_meta=checkpoint_meta,
                          wb=wandb_run(cfg.run, rank, "nanochat", {**user_config, **plan.to_dict()}))  # fmt: skip
    run.run(stage)
    return _finish(run, stage, compile_model)


def _finish(run: TrainingRun, stage: PretrainStage, compile_model: bool) -> dict:
    """The summary, the done line and the report section (rank 0)."""
    cfg, facts, plan, peak, world, step = stage.cfg, stage.m.facts, stage.plan, stage.peak, run.world, run.step
    min_val, val_bpb, clock = stage.min_val, stage.val_bpb, run.clock
    summary = {
        "depth": cfg.depth, "model_tag": cfg.tag, "data": cfg.data, "params": facts.total_params, "scaling_params": facts.scaling_params,
        "flops_per_token": facts.flops_per_token, "iterations": plan.num_iterations, "final_step": step, "tokens": plan.total_tokens,
        "total_batch_size": plan.total_batch_size, "world_size": world, "device": run.device_type,
        "min_val_bpb": min_val if math.isfinite(min_val) else None, "final_val_bpb": val_bpb, "val_bpb_tokens": stage.val_tokens,
        "total_time_s": time.time() - run.t_start, "training_time_s": clock.total,
        "mfu_pct": (100 * stage.flops_per_step * clock.timed_steps / clock.total / (peak * world)) if (peak and clock.total) else None,
        "stopped_by": run.stop.signame if run.stopped_by_signal else None, "first_step_s": clock.first_step_s,
    }  # fmt: skip
    mem_note = run.peak_note(summary)
    if run.rank == 0:
        if run.stopped_by_signal:
            print0(run.stopped_line())
        else:
            bpb_note = (f"val bpb {val_bpb:.4f} on {stage.val_tokens:,} tokens (lowest {min_val:.4f}, step {stage.min_val_step})"
                        if val_bpb is not None and math.isfinite(val_bpb) else "val bpb off")  # fmt: skip
            first_note = f", first step {clock.first_step_s:.1f}s{' (compile)' if compile_model else ''}" if clock.first_step_s is not None else ""
            print0(f"done: {step} steps, {bpb_note}, {clock.describe()}{first_note}{mem_note}")
            if stage.core_series:
                summary["core"] = stage.core_series[-1][1]
            series = {"train_loss": stage.train_series, "val_bpb": stage.val_series, **({"core": stage.core_series} if stage.core_series else {})}
            record_report("pretrain", _report_data(summary, step, stage.min_val_step), series, title="Base model training")
    if stage.wb:
        stage.wb.finish()
    return summary
