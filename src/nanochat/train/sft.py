"""Supervised fine-tuning: `run_sft(SFTConfig(...))` is what `nanochat sft` runs (REFERENCE §2.6).

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
from dataclasses import asdict

from nanochat.common import checkpoint as ck
from nanochat.engine.loading import load_model
from nanochat.common.errors import NanochatError, UsageError
from nanochat.common.logging import print0, table, warn0
from nanochat.eval.bpb import bpb_stats
from nanochat.optim import schedules
from nanochat.train.loop import (
    MetricsLog,
    Progress,
    StepClock,
    StopSignal,
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


def _train(cfg: SFTConfig, device_type: str, rank: int, world: int, device) -> dict:
    import torch

    from nanochat.common.device import peak_flops
    from nanochat.model.config import GPTConfig
    from nanochat.optim import build_optimizer
    import hashlib

    from nanochat.common.dist import SameOnEveryRank, agree, check_shared_dir
    from nanochat.train.sft_data import SFTPacker, sft_mixture

    master = rank == 0
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(cfg.seed)

    # ---- the starting checkpoint
    base = ck.resolve_checkpoint(cfg.source, cfg.model_tag, cfg.step)
    model, tokenizer, base_meta = load_model(cfg.source, base.tag, base.step, device=device, quiet=True)
    print0(f"starting from {cfg.source}/{base.tag} step {base.step} ({base.path})")
    model.train()
    gpt_config = GPTConfig(**base_meta["model_config"])
    hp = _inherit(cfg, base_meta)
    seq, dbs = hp["max_seq_len"], hp["device_batch_size"]
    if seq > gpt_config.sequence_len:
        raise NanochatError(f"--max-seq-len {seq} is longer than the model's context {gpt_config.sequence_len}; use at most that")
    tokens_per_micro = dbs * seq * world
    tbs = hp["total_batch_size"]
    if tbs % tokens_per_micro:
        tbs = max(1, round(tbs / tokens_per_micro)) * tokens_per_micro
        warn0(f"total batch rounded to {tbs:,} tokens: a multiple of device batch × seq × processes ({tokens_per_micro:,})")
    accum = tbs // tokens_per_micro
    scale = lr_scale(tbs)
    lrs = {k: hp[k] * scale for k in ("embedding_lr", "unembedding_lr", "matrix_lr")} | {"scalar_lr": hp["scalar_lr"] * scale}
    optimizer = build_optimizer(model, weight_decay=0.0, **lrs)
    tag = cfg.out_tag or base.tag
    if cfg.source == "sft" and tag == base.tag:
        raise UsageError(f"--source sft continues from sft/{base.tag}: pass --out-tag with a new name for this run's checkpoints")
    run_dir = ck.checkpoint_dir("sft", tag)
    check_shared_dir(run_dir)  # every rank writes into the checkpoint folder rank 0 creates

    # ---- data (the same mixture on every machine: one that fell back to other task data stops all before step 0)
    def mixture():
        train, val, p = sft_mixture(cfg.data, seed=cfg.seed, mmlu_epochs=cfg.mmlu_epochs, gsm8k_epochs=cfg.gsm8k_epochs, add=tuple(cfg.add), skip_bad=cfg.skip_bad)
        digest = hashlib.sha256(repr([(x.name, x.train, x.val, x.source) for x in p]).encode()).hexdigest()[:12]
        return (train, val, p), {"mixtures": f"{len(train):,} train and {len(val):,} val conversations (parts sha256 {digest})"}

    train_set, val_set, parts = agree("the SFT data", mixture, fix="give every machine the same task data (or one shared NANOCHAT_HOME) and network access alike")
    eval_every = cfg.eval_every if len(val_set) else -1
    if cfg.eval_every > 0 and not len(val_set):
        warn0("no conversation of the mixture was held out for validation (a set this small has none): val bpb is off")

    # ---- resume, or warm-start the optimizer from the base run
    start_step, loop_state, packer_state = 0, {}, None
    resume_step = -1
    if master:
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
        packer_state = rank_state["packer"]
        ck.restore_rng(rank_state["rng"])
        loop_state = meta.get("loop_state", {})
        start_step = resume_step
        print0(f"resuming sft/{tag} from step {start_step} ({path})")
    elif cfg.load_optimizer and cfg.source == "base":
        if base_meta.get("world_size", 1) == world:
            base_opt, _ = ck.load_rank_state(base.path, rank, device)
        else:  # the base run had another number of processes: its moments re-sharded for this one
            base_opt = optimizer.reshard_state(ck.load_all_rank_states(base.path, device)[0])
        fresh = optimizer.state_dict()
        fresh["state"] = base_opt["state"]  # the moments; this run's param groups (LRs, no weight decay)
        optimizer.load_state_dict(fresh)
        print0(f"optimizer warm-started from {base.path} (moments kept, learning rates reset)")

    # ---- length: N steps, or one epoch (estimated for the plan line; the epoch end decides)
    n = cfg.num_iterations
    epoch_mode = n < 0
    if epoch_mode:
        sample = [len(tokenizer.render_conversation(train_set[i], max_tokens=seq + 1)[0]) for i in range(0, len(train_set), max(1, len(train_set) // 500))]
        mean_len = sum(sample) / len(sample)
        n = max(1, math.ceil(len(train_set) * mean_len / (tbs * 0.9)))  # ~90% of a packed row is conversation
    eval_tokens = cfg.eval_tokens if cfg.eval_tokens > 0 else (40 * 2**19 if device_type == "cuda" else 20 * dbs * seq * world)
    eval_steps = max(1, eval_tokens // (dbs * seq * world))
    compile_model = cfg.compile if cfg.compile is not None else device_type == "cuda"
    if compile_model or device_type == "cuda":
        from nanochat.common.compile_cache import use_compile_cache

        use_compile_cache()  # before the first compile: kernels compiled by pretraining (or an earlier SFT) are reused
    peak = peak_flops(device_type)

    if master:
        print0(table("SFT mixture", [(p.name, f"{p.train:,} train / {p.val:,} val ({p.source})") for p in parts]
                     + [("total", f"{len(train_set):,} train / {len(val_set):,} val conversations")]))  # fmt: skip
        rows = [
            ("model", f"{gpt_config.n_layer} layers, width {gpt_config.n_embd}, {model.param_counts()['total']:,} parameters"),
            ("start", f"{cfg.source}/{base.tag} step {base.step}" + (f"; resumed at step {start_step}" if resume_step >= 0 else "")),
            ("batch", f"{dbs} rows × {seq} tokens × {world} processes × {accum} accumulation = {tbs:,} tokens/step"),
            ("iterations", f"{n:,}" + (" (one epoch, estimated; the epoch end stops the run)" if epoch_mode else "")),
            ("learning rates", ", ".join(f"{k} {v:.4g}" for k, v in lrs.items()) + f" (×{cfg.init_lr_frac:g} init_lr_frac; batch scale {scale:.3g})"),
            ("schedule", f"warmup {cfg.warmup_ratio:g}, warmdown {cfg.warmdown_ratio:g} → {cfg.final_lr_frac:g}; Muon momentum 0.85→0.95 over {schedules.SFT_MOMENTUM_WARMUP_STEPS} steps; no weight decay"),
            ("device", f"{device} × {world} ({str(model.compute_dtype).removeprefix('torch.')}{', compiled' if compile_model else ''})"),
            ("eval", f"val bpb every {eval_every} steps on {eval_steps} batches of held-out conversations" if eval_every > 0 else "val bpb off"),
            ("ChatCORE", f"every {cfg.chatcore_every} steps and at the end, on a sample (categorical: {'all' if cfg.chatcore_max_cat < 0 else cfg.chatcore_max_cat}, "
                         f"generative: {'all' if cfg.chatcore_max_sample < 0 else cfg.chatcore_max_sample} per task)" if cfg.chatcore_every > 0 else "off"),
            ("checkpoints", f"{run_dir}"),
        ]  # fmt: skip
        print0(table(f"nanochat sft: {cfg.data}", rows))
    if cfg.dry_run:
        print0("dry run: nothing trained")
        return {"iterations": n}

    packer = SFTPacker(train_set, tokenizer, dbs, seq, rank=rank, world_size=world, device=device, state=packer_state)
    token_bytes = torch.tensor(tokenizer.token_bytes(), dtype=torch.int64, device=device)
    train_model = torch.compile(model, dynamic=False) if compile_model else model
    user_config = asdict(cfg) | {"inherited": hp}
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if resume_step >= 0 else None, enabled=master,
                         wandb=wandb_run(cfg.run, rank, "nanochat-sft", user_config))
    cc_tasks = chatcore_tasks() if cfg.chatcore_every > 0 else ()
    cc_done_for = loop_state.get("chatcore_step", -1)  # a resumed run does not measure its checkpoint's step twice
    cc_series: list = []
    stop = StopSignal().install()
    clock = StepClock(warmup=10 if compile_model else 0, total=loop_state.get("total_training_time", 0.0))
    progress = Progress(n, start_step, enabled=master)
    val_bpb = loop_state.get("val_bpb")
    min_val = loop_state.get("min_val_bpb")
    min_val = float("inf") if min_val is None else min_val
    val_tokens = loop_state.get("val_tokens")  # assistant tokens the chat val bpb is measured on
    smooth, smooth_n = loop_state.get("smooth_loss", 0.0), loop_state.get("smooth_n", 0)
    done = loop_state.get("done", False)
    step = start_step
    bad_in_row = 0
    stop_synced = False
    train_series: list = []
    val_series: list = []
    top_done_for = -1
    t_run = time.time()

    def save(at_step: int) -> None:
        t0 = time.time()
        loop = {"smooth_loss": smooth, "smooth_n": smooth_n, "min_val_bpb": _finite(min_val), "val_bpb": _finite(val_bpb),
                "val_tokens": val_tokens, "total_training_time": clock.total, "done": done, "chatcore_step": cc_done_for}  # fmt: skip
        meta = {
            "model_config": gpt_config.to_dict(), "user_config": {**base_meta.get("user_config", {}), **{k: v for k, v in hp.items()}},
            "sft_config": user_config, "source": {"kind": cfg.source, "tag": base.tag, "step": base.step},
            "device_batch_size": dbs, "max_seq_len": seq, "total_batch_size": tbs, "val_bpb": _finite(val_bpb),
            "loop_state": loop, "tokenizer_vocab_size": tokenizer.vocab_size, "data": base_meta.get("data"), "sft_data": cfg.data,
        } if master else None  # fmt: skip
        rank_state = {"packer": packer.state_dict(), "rng": ck.capture_rng()}
        path = ck.save_checkpoint(run_dir, at_step, model_state=model.state_dict() if master else None, meta=meta,
                                  optimizer_state=optimizer.state_dict(), rank_state=rank_state, rank=rank, world_size=world,
                                  keep_last=cfg.keep_last)  # fmt: skip
        progress.note(f"saved step {at_step} to {path} ({time.time() - t0:.1f}s)")

    try:
        while True:
            last = done or (not epoch_mode and step >= n)
            top = top_done_for != step
            top_done_for = step
            if top and eval_every > 0 and (last or step % eval_every == 0) and not (resume_step >= 0 and step == start_step and val_bpb is not None):
                model.eval()
                res = bpb_stats(train_model, SFTPacker(val_set, tokenizer, dbs, seq, rank=rank, world_size=world, device=device), eval_steps, token_bytes)
                model.train()
                val_bpb, val_tokens = res.bpb, res.tokens
                min_val = min(min_val, val_bpb)
                val_series.append([step, val_bpb])
                progress.note(f"step {step:05d} | chat val bpb {val_bpb:.4f} on {val_tokens:,} assistant tokens (lowest {min_val:.4f})")
                metrics.write({"kind": "eval", "step": step, "val_bpb": val_bpb, "tokens": val_tokens})
            if cfg.chatcore_every > 0 and (last or (step > 0 and step % cfg.chatcore_every == 0)) and step != cc_done_for:
                model.eval()  # the uncompiled model: generation changes shapes every step
                cc = chatcore_sample(model, tokenizer, device, cfg, cc_tasks, dbs, min(512, seq))
                model.train()
                cc_done_for = step
                cc_series.append([step, cc["chatcore"]])
                progress.note(f"step {step:05d} | ChatCORE {cc['chatcore']:.4f}{' (partial)' if cc['partial'] else ''} | " + ", ".join(f"{t} {cc[t]:.3f}" for t in cc_tasks))
                metrics.write({"kind": "chatcore", "step": step, **cc})
            if last or stop_synced or (top and cfg.save_every > 0 and step % cfg.save_every == 0 and step != start_step):
                save(step)
            if last or stop_synced:
                break

            clock.start(device_type)
            loss_sum = forward_backward(train_model, packer, accum, device)
            loss_value, stop_synced = sync_step_stats(loss_sum, accum, stop.requested, world)
            if not math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)
                bad_in_row += 1
                clock.stop(device_type, 0)
                progress.note(f"step {step:05d} | loss {loss_value} is not finite: step skipped ({bad_in_row}/{cfg.max_bad_steps})")
                metrics.write({"kind": "skip", "step": step, "loss": str(loss_value)})
                if bad_in_row >= cfg.max_bad_steps:
                    raise NanochatError(f"{bad_in_row} steps in a row had a non-finite loss at step {step}; lower --init-lr-frac and resume from {run_dir}")
                continue
            bad_in_row = 0
            p = _sync_progress(packer.progress if epoch_mode else (step + 1) / n, world, device)
            lrm = schedules.sft_lr_multiplier(p, cfg.init_lr_frac, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac)
            optimizer.set_schedule(lrm, schedules.sft_muon_momentum(step), 0.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dt = clock.stop(device_type, step - start_step)
            step += 1
            if epoch_mode and p >= 1.0:
                done = True
                n = step
            smooth = 0.9 * smooth + 0.1 * loss_value
            smooth_n += 1
            debiased = smooth / (1 - 0.9**smooth_n)
            mfu = model.flops_per_token() * tbs / dt / (peak * world) if peak else None
            line = (f"step {step:05d}/{n:05d} ({100 * min(p, 1.0):.1f}%) | loss {debiased:.4f} | lrm {lrm:.3f} | dt {dt * 1000:.0f}ms | "
                    f"tok/s {tbs / dt:,.0f} | mfu {f'{100 * mfu:.2f}%' if mfu is not None else '-'} | eta {format_duration(clock.eta(max(n - step, 0), dt))}")  # fmt: skip
            progress.step(line, step)
            metrics.write({"kind": "train", "step": step - 1, "loss": loss_value, "smooth_loss": debiased, "lrm": lrm, "progress": p, "dt": dt,
                           "tok_per_s": tbs / dt, "mfu": mfu, "time": time.time()})  # fmt: skip
            train_series.append([step - 1, loss_value])
    finally:
        progress.close()
        stop.uninstall()
        metrics.close()

    # chat_val_bpb: bits per byte of the assistant's tokens in held-out conversations, named apart from
    # the base model's val bpb of plain text (the report's summary row) so the two are never compared
    summary = {
        "source": f"{cfg.source}/{base.tag} step {base.step}", "model_tag": tag, "data": cfg.data, "iterations": step,
        "tokens": step * tbs, "total_batch_size": tbs, "world_size": world, "device": device_type, "init_lr_frac": cfg.init_lr_frac,
        **{k: v for k, v in lrs.items()}, "optimizer_warm_start": cfg.load_optimizer and cfg.source == "base", "chat_val_bpb_min": _finite(min_val), "chat_val_bpb_final": _finite(val_bpb), "chat_val_tokens": val_tokens, "total_time_s": clock.total,
        "wall_time_s": time.time() - t_run, "stopped_by": stop.signame if stop_synced and not done and step < n else None,
        "chatcore_during_sft": _chatcore_line(cc_series, cc_tasks),
        "mixture": "\n".join(["| set | train | val | source |", "|---|---|---|---|"] + [f"| {p.name} | {p.train} | {p.val} | {p.source} |" for p in parts]),
    }  # fmt: skip
    if master:
        if summary["stopped_by"]:
            print0(f"{stop.signame}: saved step {step} and stopped; `nanochat sft ... --resume auto` continues")
        else:
            bpb_note = f"chat val bpb {val_bpb:.4f} on {val_tokens:,} assistant tokens" if _finite(val_bpb) is not None and val_tokens else "val bpb off"
            print0(f"done: {step} steps, {bpb_note}, training time {format_duration(clock.total)}"
                   + (f", first step {clock.first_step_s:.1f}s{' (compile)' if compile_model else ''}" if clock.first_step_s is not None else "")
                   + "; chat with `nanochat chat --source sft`")
            record_report("sft", _report_data(summary, step), {"train_loss": train_series, "val_bpb": val_series} | ({"chatcore": cc_series} if cc_series else {}))
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
