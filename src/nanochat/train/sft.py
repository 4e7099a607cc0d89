"""Supervised fine-tuning: `run_sft(SFTConfig(...))` is what `nanochat sft` runs (facts of the reference in docs/reference.md).

The steps of a run:

1. the base checkpoint (`--source base --model-tag --step`, default the newest valid one, printed);
   sequence length, batch sizes and learning rates are inherited from its meta unless given;
2. the mixture (`train.sft_data.sft_mixture`: web = SmolTalk + MMLU + GSM8K, demo = packaged
   chats, identity, spelling and non-test multiple-choice splits), printed set by set;
3. optimizer (Muon + AdamW, no weight decay), optionally warm-started from the base run's per-rank
   optimizer state (`--load-optimizer`: moments kept, learning rates reset to this run's; re-sharded
   when the base run had another number of processes);
4. the loop: val bpb on the held-out conversations every `eval_every` steps (assistant tokens only),
   one optimizer step of `grad_accum_steps` packed micro-batches (`SFTPacker`), checkpoints to
   `checkpoints/sft/<tag>/` every `save_every` steps, at the end and on SIGTERM/SIGINT.

Length: `--num-iterations N`, or -1 for one epoch of the mixture. The LR multiplier is a function of
progress p in [0, 1] (step / N, or epochs consumed): warmup over `warmup_ratio`, flat, then a linear
warmdown over the last `warmdown_ratio` to `final_lr_frac`; all × `init_lr_frac`. Muon momentum goes
0.85 → 0.95 over the first 300 steps. With one epoch, "done" is agreed by all ranks every step
(all-reduce MAX), so a rank that finishes its share first never leaves the others hanging.

Resuming (`--resume auto`) restores weights, optimizer, packer state (cursor and buffer), RNG and
loop state from the newest sft checkpoint of the tag, on the number of processes that saved it (each
rank's packer holds its own share of the mixture, which cannot be dealt out anew; another count is
refused with one line).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from nanochat.common import checkpoint as ck
from nanochat.engine.loading import load_model
from nanochat.common.errors import NanochatError, UsageError
from nanochat.common.logging import print0, table, warn0
from nanochat.eval.bpb import bpb_stats
from nanochat.optim import schedules
from nanochat.train.loop import (
    Stage,
    StepResult,
    TrainingRun,
    format_duration,
    forward_backward,
    record_report,
    run_distributed,
    sync_step_stats,
    wandb_run,
)
from nanochat.train.scaling import lr_scale
from nanochat.train.sft_config import SFTConfig  # declared there, torch-free, for the CLI


def _inherit(cfg: SFTConfig, meta: dict) -> dict:
    """Sequence length, batch and (unscaled) learning rates: the flag, else the base run's, else the reference default."""
    uc = meta.get("user_config", {})
    seq = cfg.max_seq_len or meta.get("max_seq_len") or uc.get("max_seq_len") or 2048
    dbs = cfg.device_batch_size or meta.get("device_batch_size") or uc.get("device_batch_size") or 32
    tbs = cfg.total_batch_size or meta.get("total_batch_size") or 524288
    return {
        "max_seq_len": int(seq), "device_batch_size": int(dbs), "total_batch_size": int(tbs),
        "embedding_lr": cfg.embedding_lr if cfg.embedding_lr is not None else uc.get("embedding_lr", 0.3),
        "unembedding_lr": cfg.unembedding_lr if cfg.unembedding_lr is not None else uc.get("unembedding_lr", 0.004),
        "matrix_lr": cfg.matrix_lr if cfg.matrix_lr is not None else uc.get("matrix_lr", 0.02),
        "scalar_lr": cfg.scalar_lr,
    }  # fmt: skip


def _report_data(summary: dict, step: int) -> dict:
    """The report section: the summary, with the final chat val bpb as a metric named with its token count."""
    from nanochat.eval.report import metric

    data = {k: v for k, v in summary.items() if k not in ("chat_val_bpb_final", "chat_val_bpb_min", "chat_val_tokens")}
    if summary["chat_val_bpb_final"] is not None and summary["chat_val_tokens"]:
        data["results"] = {"chat_val_bpb": metric("chat val bpb", summary["chat_val_bpb_final"], summary["chat_val_tokens"], "assistant tokens", step=step,
                                                  source="held-out conversations of the SFT mixture")}  # fmt: skip
        data["series_labels"] = {"val_bpb": f"chat val bpb (bits per byte) on {summary['chat_val_tokens']:,} assistant tokens"}
    if summary.get("chatcore_during_sft"):
        data.setdefault("series_labels", {})["chatcore"] = "ChatCORE on a sample of the chat evals (during SFT)"
    return data


def chatcore_tasks() -> tuple[str, ...]:
    """ChatCORE's tasks that can run here: HumanEval needs the code sandbox, and without one it is left out
    (with a warning; the ChatCORE recorded is then marked partial)."""
    from nanochat.tasks import registry

    names = list(registry.chatcore_names())
    for name in [n for n in names if registry.spec(n).needs_sandbox]:
        from nanochat.tasks.humaneval import sandbox_runner

        try:
            probe = sandbox_runner()("print(1)")
            problem = None if probe.success else probe.error
        except NanochatError as e:
            problem = str(e).split(";")[0]
        if problem:
            warn0(f"ChatCORE during SFT leaves {name} out: {problem} (the ChatCORE recorded is partial)")
            names.remove(name)
    return tuple(names)


def chatcore_sample(model, tokenizer, device, cfg: SFTConfig, tasks: tuple[str, ...], batch_size: int, max_new_tokens: int) -> dict:
    """ChatCORE on a sample of the chat evals, as the reference's SFT does (every categorical problem unless
    --chatcore-max-cat, the first --chatcore-max-sample generative ones): {"chatcore", "chatcore_cat", task: accuracy, ...}."""
    from nanochat.eval.chat_eval import chatcore_partial, evaluate_chatcore
    from nanochat.tasks import registry

    cat = None if cfg.chatcore_max_cat < 0 else cfg.chatcore_max_cat
    gen = None if cfg.chatcore_max_sample < 0 else cfg.chatcore_max_sample
    out = evaluate_chatcore(model, tokenizer, device, cat, gen, batch_size, max_new_tokens, tasks)
    if "chatcore" not in out:
        out["chatcore"] = chatcore_partial(out)
    out["partial"] = len(tasks) < len(registry.chatcore_names())
    return out


def _chatcore_line(series: list, tasks: tuple[str, ...]) -> str | None:
    """The report's line of the ChatCORE points measured during SFT (None when it was off)."""
    from nanochat.tasks.registry import chatcore_names

    if not series:
        return None
    partial = f" (partial: over {', '.join(tasks)})" if len(tasks) < len(chatcore_names()) else ""
    return "; ".join(f"step {s}: {v:.4f}" for s, v in series) + partial


def _finite(x):
    return x if x is not None and math.isfinite(x) else None


def _broadcast_int(value: int, world: int, device) -> int:
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def run_sft(cfg: SFTConfig) -> dict:
    """Fine-tune (or resume); returns a summary dict (rank 0's view)."""
    cfg.validate()
    return run_distributed(cfg.device, lambda device_type, info: _train(cfg, device_type, info.rank, info.world_size, info.device))


@dataclass
class _Batch:
    """The batch of one SFT step: rows × tokens × processes × accumulation."""

    seq: int
    dbs: int
    tbs: int
    accum: int
    scale: float  # the learning rates' batch scale


def _batch(hp: dict, context: int, world: int) -> _Batch:
    seq, dbs = hp["max_seq_len"], hp["device_batch_size"]
    if seq > context:
        raise NanochatError(f"--max-seq-len {seq} is longer than the model's context {context}; use at most that")
    tokens_per_micro = dbs * seq * world
    tbs = hp["total_batch_size"]
    if tbs % tokens_per_micro:
        tbs = max(1, round(tbs / tokens_per_micro)) * tokens_per_micro
        warn0(f"total batch rounded to {tbs:,} tokens: a multiple of device batch × seq × processes ({tokens_per_micro:,})")
    return _Batch(seq, dbs, tbs, tbs // tokens_per_micro, lr_scale(tbs))


def _mixture(cfg: SFTConfig):
    """(train, val, parts): the same mixture on every machine (one that fell back to other task data stops all before step 0)."""
    import hashlib

    from nanochat.common.dist import agree
    from nanochat.train.sft_data import sft_mixture

    def mixture():
        train, val, p = sft_mixture(cfg.data, seed=cfg.seed, mmlu_epochs=cfg.mmlu_epochs, gsm8k_epochs=cfg.gsm8k_epochs, add=tuple(cfg.add), skip_bad=cfg.skip_bad)
        digest = hashlib.sha256(repr([(x.name, x.train, x.val, x.source) for x in p]).encode()).hexdigest()[:12]
        return (train, val, p), {"mixtures": f"{len(train):,} train and {len(val):,} val conversations (parts sha256 {digest})"}

    return agree("the SFT data", mixture, fix="give every machine the same task data (or one shared NANOCHAT_HOME) and network access alike")


def _resume(cfg: SFTConfig, tag: str, gpt_config, base, base_meta: dict, model, optimizer, rank: int, world: int, device):
    """Restore the sft checkpoint to resume (weights, optimizer, RNG), or warm-start the optimizer from the base run.
    Returns (resumed step or -1, loop state, packer state)."""
    from nanochat.common.dist import SameOnEveryRank

    resume_step = -1
    if rank == 0:
        if cfg.resume == "auto":
            found = ck.find_latest("sft", tag)
            resume_step = found.step if found else -1
        elif cfg.resume != "never":
            resume_step = ck.resolve_checkpoint("sft", tag, int(cfg.resume)).step
    resume_step = _broadcast_int(resume_step, world, device)
    if resume_step >= 0:
        path = ck.checkpoint_dir("sft", tag) / ck.step_name(resume_step)
        meta = ck.load_meta(path)
        if meta.get("model_config") != gpt_config.to_dict():
            raise NanochatError(f"{path} holds a different model than {base.path}; pass --resume never or another --out-tag")
        saved_world = meta.get("world_size", 1)
        if saved_world != world:  # each rank's place in the mixture (its cursor and buffer) cannot be dealt out anew
            raise SameOnEveryRank(
                f"{path} was saved by {saved_world} processes and this run has {world}: an SFT run resumes on as many processes as saved it "
                f"(its data order is split per process); run {saved_world} processes in all (--nproc x --nnodes), or start afresh with --resume never"
            )
        model.load_state_dict(ck.load_weights(path, device), strict=True)
        opt_state, rank_state = ck.load_rank_state(path, rank, device)
        optimizer.load_state_dict(opt_state)
        ck.restore_rng(rank_state["rng"])
        print0(f"resuming sft/{tag} from step {resume_step} ({path})")
        return resume_step, meta.get("loop_state", {}), rank_state["packer"]
    if cfg.load_optimizer and cfg.source == "base":
        if base_meta.get("world_size", 1) == world:
            base_opt, _ = ck.load_rank_state(base.path, rank, device)
        else:  # the base run had another number of processes: its moments re-sharded for this one
            base_opt = optimizer.reshard_state(ck.load_all_rank_states(base.path, device)[0])
        fresh = optimizer.state_dict()
        fresh["state"] = base_opt["state"]  # the moments; this run's param groups (LRs, no weight decay)
        optimizer.load_state_dict(fresh)
        print0(f"optimizer warm-started from {base.path} (moments kept, learning rates reset)")
    return -1, {}, None


def _steps(cfg: SFTConfig, tokenizer, train_set, b: _Batch) -> tuple[int, bool]:
    """(N steps, epoch mode): N given, or one epoch estimated for the plan line (the epoch end decides)."""
    if cfg.num_iterations >= 0:
        return cfg.num_iterations, False
    sample = [len(tokenizer.render_conversation(train_set[i], max_tokens=b.seq + 1)[0]) for i in range(0, len(train_set), max(1, len(train_set) // 500))]
    mean_len = sum(sample) / len(sample)
    return max(1, math.ceil(len(train_set) * mean_len / (b.tbs * 0.9))), True  # ~90% of a packed row is conversation


def _print_plan(cfg: SFTConfig, gpt_config, model, base, parts, train_set, val_set, b: _Batch, world: int, device, n: int, epoch_mode: bool,
                lrs: dict, compile_model: bool, eval_every: int, eval_steps: int, run_dir, start: str) -> None:
    print0(table("SFT mixture", [(p.name, f"{p.train:,} train / {p.val:,} val ({p.source})") for p in parts]
                 + [("total", f"{len(train_set):,} train / {len(val_set):,} val conversations")]))  # fmt: skip
    rows = [
        ("model", f"{gpt_config.n_layer} layers, width {gpt_config.n_embd}, {model.param_counts()['total']:,} parameters"),
        ("start", f"{cfg.source}/{base.tag} step {base.step}" + start),
        ("batch", f"{b.dbs} rows × {b.seq} tokens × {world} processes × {b.accum} accumulation = {b.tbs:,} tokens/step"),
        ("iterations", f"{n:,}" + (" (one epoch, estimated; the epoch end stops the run)" if epoch_mode else "")),
        ("learning rates", ", ".join(f"{k} {v:.4g}" for k, v in lrs.items()) + f" (×{cfg.init_lr_frac:g} init_lr_frac; batch scale {b.scale:.3g})"),
        ("schedule", f"warmup {cfg.warmup_ratio:g}, warmdown {cfg.warmdown_ratio:g} → {cfg.final_lr_frac:g}; {schedules.describe_sft_momentum()}; no weight decay"),
        ("device", f"{device} × {world} ({str(model.compute_dtype).removeprefix('torch.')}{', compiled' if compile_model else ''})"),
        ("eval", f"val bpb every {eval_every} steps on {eval_steps} batches of held-out conversations" if eval_every > 0 else "val bpb off"),
        ("ChatCORE", f"every {cfg.chatcore_every} steps and at the end, on a sample (categorical: {'all' if cfg.chatcore_max_cat < 0 else cfg.chatcore_max_cat}, "
                     f"generative: {'all' if cfg.chatcore_max_sample < 0 else cfg.chatcore_max_sample} per task)" if cfg.chatcore_every > 0 else "off"),
        ("checkpoints", f"{run_dir}"),
    ]  # fmt: skip
    print0(table(f"nanochat sft: {cfg.data}", rows))


class SFTStage(Stage):
    """Fine-tuning steps over packed conversations; chat val bpb and ChatCORE at the top of a step."""

    max_bad_steps = 0  # set from the config

    def __init__(self, cfg: SFTConfig, run: TrainingRun, *, model, train_model, tokenizer, optimizer, packer, val_set, b: _Batch,
                 n: int, epoch_mode: bool, eval_every: int, eval_steps: int, token_bytes, device, world: int, peak, loop_state: dict,
                 checkpoint_meta: dict) -> None:
        self.cfg, self.run, self.model, self.train_model, self.tokenizer, self.optimizer = cfg, run, model, train_model, tokenizer, optimizer
        self.packer, self.val_set, self.b, self.n, self.epoch_mode = packer, val_set, b, n, epoch_mode
        self.eval_every, self.eval_steps, self.token_bytes, self.device, self.world, self.peak = eval_every, eval_steps, token_bytes, device, world, peak
        self.checkpoint_meta = checkpoint_meta  # what every checkpoint's meta holds besides the loop state
        self.max_bad_steps = cfg.max_bad_steps
        self.bad_steps_fix = f"lower --init-lr-frac and resume from {run.run_dir}"
        self.cc_tasks = chatcore_tasks() if cfg.chatcore_every > 0 else ()
        self.cc_done_for = loop_state.get("chatcore_step", -1)  # a resumed run does not measure its checkpoint's step twice
        self.cc_series: list = []
        self.val_bpb = loop_state.get("val_bpb")
        min_val = loop_state.get("min_val_bpb")
        self.min_val = float("inf") if min_val is None else min_val
        self.val_tokens = loop_state.get("val_tokens")  # assistant tokens the chat val bpb is measured on
        self.smooth, self.smooth_n = loop_state.get("smooth_loss", 0.0), loop_state.get("smooth_n", 0)
        self.done = loop_state.get("done", False)
        self.train_series: list = []
        self.val_series: list = []

    def is_last(self, step: int) -> bool:
        return self.done or (not self.epoch_mode and step >= self.n)

    def evaluate(self, step: int, last: bool) -> None:
        cfg, b = self.cfg, self.b
        if self.eval_every > 0 and (last or step % self.eval_every == 0) and not (self.run.resumed and step == self.run.start_step and self.val_bpb is not None):
            from nanochat.train.sft_data import SFTPacker

            self.model.eval()
            val = SFTPacker(self.val_set, self.tokenizer, b.dbs, b.seq, rank=self.run.rank, world_size=self.world, device=self.device)
            res = bpb_stats(self.train_model, val, self.eval_steps, self.token_bytes)
            self.model.train()
            self.val_bpb, self.val_tokens = res.bpb, res.tokens
            self.min_val = min(self.min_val, self.val_bpb)
            self.val_series.append([step, self.val_bpb])
            self.run.note(f"step {step:05d} | chat val bpb {self.val_bpb:.4f} on {self.val_tokens:,} assistant tokens (lowest {self.min_val:.4f})")
            self.run.metrics.write({"kind": "eval", "step": step, "val_bpb": self.val_bpb, "tokens": self.val_tokens})
        if cfg.chatcore_every > 0 and (last or (step > 0 and step % cfg.chatcore_every == 0)) and step != self.cc_done_for:
            self.model.eval()  # the uncompiled model: generation changes shapes every step
            cc = chatcore_sample(self.model, self.tokenizer, self.device, cfg, self.cc_tasks, b.dbs, min(512, b.seq))
            self.model.train()
            self.cc_done_for = step
            self.cc_series.append([step, cc["chatcore"]])
            self.run.note(f"step {step:05d} | ChatCORE {cc['chatcore']:.4f}{' (partial)' if cc['partial'] else ''} | " + ", ".join(f"{t} {cc[t]:.3f}" for t in self.cc_tasks))
            self.run.metrics.write({"kind": "chatcore", "step": step, **cc})

    def save(self, step: int) -> None:
        loop = {"smooth_loss": self.smooth, "smooth_n": self.smooth_n, "min_val_bpb": _finite(self.min_val), "val_bpb": _finite(self.val_bpb),
                "val_tokens": self.val_tokens, "total_training_time": self.run.clock.total, "done": self.done, "chatcore_step": self.cc_done_for}  # fmt: skip
        meta = {**self.checkpoint_meta, "val_bpb": _finite(self.val_bpb), "loop_state": loop} if self.run.rank == 0 else None
        self.run.checkpoint(step, self.model, self.optimizer, meta, {"packer": self.packer.state_dict(), "rng": ck.capture_rng()})

    def forward_backward(self, step: int, stop_requested: bool) -> StepResult:
        loss_sum = forward_backward(self.train_model, self.packer, self.b.accum, self.device)
        return StepResult(*sync_step_stats(loss_sum, self.b.accum, stop_requested, self.world))

    def discard(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, step: int, loss: float) -> None:
        cfg = self.cfg
        self.p = _sync_progress(self.packer.progress if self.epoch_mode else (step + 1) / self.n, self.world, self.device)
        self.lrm = schedules.sft_lr_multiplier(self.p, cfg.init_lr_frac, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac)
        self.optimizer.set_schedule(self.lrm, schedules.sft_muon_momentum(step), 0.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.epoch_mode and self.p >= 1.0:
            self.done = True
            self.n = step + 1

    def record(self, step: int, dt: float, loss: float) -> tuple[str, dict]:
        tbs, n = self.b.tbs, self.n
        self.smooth = 0.9 * self.smooth + 0.1 * loss
        self.smooth_n += 1
        debiased = self.smooth / (1 - 0.9**self.smooth_n)
        mfu = self.model.flops_per_token() * tbs / dt / (self.peak * self.world) if self.peak else None
        line = (f"step {step:05d}/{n:05d} ({100 * min(self.p, 1.0):.1f}%) | loss {debiased:.4f} | lrm {self.lrm:.3f} | dt {dt * 1000:.0f}ms | "
                f"tok/s {tbs / dt:,.0f} | mfu {f'{100 * mfu:.2f}%' if mfu is not None else '-'} | eta {format_duration(self.run.clock.eta(max(n - step, 0), dt))}")  # fmt: skip
        self.train_series.append([step - 1, loss])
        return line, {"kind": "train", "step": step - 1, "loss": loss, "smooth_loss": debiased, "lrm": self.lrm, "progress": self.p, "dt": dt,
                      "tok_per_s": tbs / dt, "mfu": mfu, "time": time.time()}  # fmt: skip


def _train(cfg: SFTConfig, device_type: str, rank: int, world: int, device) -> dict:
    import torch

    from nanochat.common.device import peak_flops
    from nanochat.common.dist import check_shared_dir
    from nanochat.model.config import GPTConfig
    from nanochat.optim import build_optimizer
    from nanochat.train.sft_data import SFTPacker

    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(cfg.seed)
    base = ck.resolve_checkpoint(cfg.source, cfg.model_tag, cfg.step)
    model, tokenizer, base_meta = load_model(cfg.source, base.tag, base.step, device=device, quiet=True)
    print0(f"starting from {cfg.source}/{base.tag} step {base.step} ({base.path})")
    model.train()
    gpt_config = GPTConfig(**base_meta["model_config"])
    hp = _inherit(cfg, base_meta)
    b = _batch(hp, gpt_config.sequence_len, world)
    lrs = {k: hp[k] * b.scale for k in ("embedding_lr", "unembedding_lr", "matrix_lr")} | {"scalar_lr": hp["scalar_lr"] * b.scale}
    optimizer = build_optimizer(model, weight_decay=0.0, **lrs)
    tag = cfg.out_tag or base.tag
    if cfg.source == "sft" and tag == base.tag:
        raise UsageError(f"--source sft continues from sft/{base.tag}: pass --out-tag with a new name for this run's checkpoints")
    run_dir = ck.checkpoint_dir("sft", tag)
    check_shared_dir(run_dir)  # every rank writes into the checkpoint folder rank 0 creates
    train_set, val_set, parts = _mixture(cfg)
    eval_every = cfg.eval_every if len(val_set) else -1
    if cfg.eval_every > 0 and not len(val_set):
        warn0("no conversation of the mixture was held out for validation (a set this small has none): val bpb is off")
    start_step, loop_state, packer_state = _resume(cfg, tag, gpt_config, base, base_meta, model, optimizer, rank, world, device)
    resumed = start_step >= 0
    start_step = max(start_step, 0)
    n, epoch_mode = _steps(cfg, tokenizer, train_set, b)
    eval_tokens = cfg.eval_tokens if cfg.eval_tokens > 0 else (40 * 2**19 if device_type == "cuda" else 20 * b.dbs * b.seq * world)
    eval_steps = max(1, eval_tokens // (b.dbs * b.seq * world))
    compile_model = cfg.compile if cfg.compile is not None else device_type == "cuda"
    if compile_model or device_type == "cuda":
        from nanochat.common.compile_cache import use_compile_cache

        use_compile_cache()  # before the first compile: kernels compiled by pretraining (or an earlier SFT) are reused
    if rank == 0:
        _print_plan(cfg, gpt_config, model, base, parts, train_set, val_set, b, world, device, n, epoch_mode, lrs, compile_model, eval_every,
                    eval_steps, run_dir, f"; resumed at step {start_step}" if resumed else "")  # fmt: skip
    if cfg.dry_run:
        print0("dry run: nothing trained")
        return {"iterations": n}

    user_config = asdict(cfg) | {"inherited": hp}
    run = TrainingRun("sft", run_dir, n, start_step, resumed, rank=rank, world=world, device_type=device_type, save_every=cfg.save_every,
                      keep_last=cfg.keep_last, loop_state=loop_state, clock_warmup=10 if compile_model else 0,
                      wandb=wandb_run(cfg.run, rank, "nanochat-sft", user_config))  # fmt: skip
    checkpoint_meta = {
        "model_config": gpt_config.to_dict(), "user_config": {**base_meta.get("user_config", {}), **hp}, "sft_config": user_config,
        "source": {"kind": cfg.source, "tag": base.tag, "step": base.step}, "device_batch_size": b.dbs, "max_seq_len": b.seq,
        "total_batch_size": b.tbs, "tokenizer_vocab_size": tokenizer.vocab_size, "data": base_meta.get("data"), "sft_data": cfg.data,
    }  # fmt: skip
    stage = SFTStage(cfg, run, model=model, train_model=torch.compile(model, dynamic=False) if compile_model else model, tokenizer=tokenizer,
                     optimizer=optimizer, packer=SFTPacker(train_set, tokenizer, b.dbs, b.seq, rank=rank, world_size=world, device=device, state=packer_state),
                     val_set=val_set, b=b, n=n, epoch_mode=epoch_mode, eval_every=eval_every, eval_steps=eval_steps,
                     token_bytes=torch.tensor(tokenizer.token_bytes(), dtype=torch.int64, device=device), device=device, world=world,
                     peak=peak_flops(device_type), loop_state=loop_state, checkpoint_meta=checkpoint_meta)  # fmt: skip
    run.run(stage)
    return _finish(cfg, run, stage, base, parts, lrs, compile_model)


def _finish(cfg: SFTConfig, run: TrainingRun, stage: SFTStage, base, parts, lrs: dict, compile_model: bool) -> dict:
    """The summary, the done line and the report section (rank 0)."""
    step, tbs, val_bpb, val_tokens = run.step, stage.b.tbs, stage.val_bpb, stage.val_tokens
    # chat_val_bpb: bits per byte of the assistant's tokens in held-out conversations, named apart from
    # the base model's val bpb of plain text (the report's summary row) so the two are never compared
    summary = {
        "source": f"{cfg.source}/{base.tag} step {base.step}", "model_tag": run.run_dir.name, "data": cfg.data, "iterations": step,
        "tokens": step * tbs, "total_batch_size": tbs, "world_size": run.world, "device": run.device_type, "init_lr_frac": cfg.init_lr_frac,
        **lrs, "optimizer_warm_start": cfg.load_optimizer and cfg.source == "base", "chat_val_bpb_min": _finite(stage.min_val),
        "chat_val_bpb_final": _finite(val_bpb), "chat_val_tokens": val_tokens, "total_time_s": run.clock.total,
        "wall_time_s": time.time() - run.t_start, "stopped_by": run.stop.signame if run.stopped_by_signal else None,
        "chatcore_during_sft": _chatcore_line(stage.cc_series, stage.cc_tasks),
        "mixture": "\n".join(["| set | train | val | source |", "|---|---|---|---|"] + [f"| {p.name} | {p.train} | {p.val} | {p.source} |" for p in parts]),
    }  # fmt: skip
    mem_note = run.peak_note(summary)
    if run.rank == 0:
        if summary["stopped_by"]:
            print0(run.stopped_line())
        else:
            bpb_note = f"chat val bpb {val_bpb:.4f} on {val_tokens:,} assistant tokens" if _finite(val_bpb) is not None and val_tokens else "val bpb off"
            first = run.clock.first_step_s
            print0(f"done: {step} steps, {bpb_note}, {run.clock.describe()}"
                   + (f", first step {first:.1f}s{' (compile)' if compile_model else ''}" if first is not None else "") + mem_note
                   + "; chat with `nanochat chat --source sft`")
            record_report("sft", _report_data(summary, step), {"train_loss": stage.train_series, "val_bpb": stage.val_series}
                          | ({"chatcore": stage.cc_series} if stage.cc_series else {}))  # fmt: skip
    return summary


def _sync_progress(p: float, world: int, device) -> float:
    """The largest progress of any rank (the epoch ends for everyone when it ends for one)."""
    if world == 1:
        return p
    import torch
    import torch.distributed as dist

    t = torch.tensor([p], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
