"""Reinforcement learning on GSM8K or the demo's arithmetic: `run_rl(RLConfig(...))` is what `nanochat rl` runs.

The algorithm is the reference's "GRPO", which is really REINFORCE with a group baseline:

- no KL term and no reference model; on-policy, so no PPO ratio or clipping;
- per question, `num_samples` rollouts from the Engine (prompt prefilled once per sampling batch,
  temperature, top-k, calculator calls executed and their output forced into the sequence);
- reward = exact match of the final answer (0/1); advantage = reward − mean reward of the question's
  rollouts (no std). A question whose rollouts all got the same reward (a group with zero variance) has
  zero advantages and teaches nothing: it is skipped (no forward/backward, exactly zero gradient) and
  counted; the progress line's `signal` is the share of groups with a non-zero advantage, and the run
  warns once when most groups have none (the model never, or always, solves its problems);
- loss = −Σ logp(token)·advantage / (valid tokens of the micro-batch × micro-batches per question ×
  questions per rank): DAPO-style token-level normalisation. Only sampled tokens count: the prompt,
  the calculator output the Engine forced (mask 0) and the padding have target −1. The terminal token
  a rollout sampled (`<|assistant_end|>`) is trained on too: stopping is one of the policy's actions
  (the reference drops it, so its RL never teaches when to stop);
- one optimizer step per `examples_per_step` questions (split across ranks; the optimizer averages the
  gradients), LR multiplier 1 − step/num_steps on LRs scaled by `init_lr_frac`, no weight decay.

Which question a rank trains on at a step, and the sampling seed of every rollout batch
(`hash((step, example_idx, sampling_step)) & 0x7FFFFFFF`, as the reference), are functions of the step
alone, so a resumed run repeats exactly what an uninterrupted one would have done — on the number of
processes that saved the checkpoint (the problems are split by rank; another count is refused).

Tasks (`task`): `gsm8k` (the default) and `demo-arith`, small-number arithmetic word problems with the
calculator (tasks.arithmetic; disjoint train and test splits), which a CPU-sized model can learn.

Data of `gsm8k`: GSM8K train (7,473 problems, from the Hugging Face Hub), evaluated on GSM8K test. Offline there is
only the packaged test split: the run then trains on a partition carved out of it (`train-from-test`,
1,000 problems) and evaluates only on the other 319 (`test-heldout`), and says so everywhere it reports.
Problems whose prompt leaves no room to answer in the model's context are left out of training (and
counted as failures in the evaluation); the run says how many.

Evaluation: pass@1..pass@k (k = device batch size) at the sampling temperature on held-out problems,
every `eval_every` steps and at the end, with the unbiased estimator 1 − C(n−c, k)/C(n, k) over the
n = k samples drawn per problem (the same expectation as the reference's "any of the first k").
The summary records pass@1 before RL (the evaluation at step 0) and after (the last one); the report
card's RL section (`report_rl`) shows both, in the summary table too, with the reward per step as a table
and, like pass@1, as a curve.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from nanochat.common import checkpoint as ck
from nanochat.engine.loading import load_model
from nanochat.common.errors import NanochatError, UsageError
from nanochat.common.logging import print0, table, warn0
from nanochat.optim import schedules
from nanochat.train.loop import Stage, StepResult, TrainingRun, format_duration, read_metrics, record_report, run_distributed, sync_step_stats, wandb_run

OFFLINE_TRAIN_LABEL = "GSM8K train partition carved from the test split (1,000 problems)"
OFFLINE_EVAL_LABEL = "GSM8K test, held-out 319 problems (disjoint from the train partition)"
NO_SIGNAL_SHARE = 0.5  # warn once when fewer groups than this share carry a signal
REWARD_TABLE_ROWS = 6  # the report's reward table: mean reward over this many spans of steps
TASK_TITLES = {"gsm8k": "GSM8K", "demo-arith": "DemoArith"}
from nanochat.train.rl_config import RLConfig  # declared there, torch-free, for the CLI


# ------------------------------------------------------------------------------------------------
# rollouts and the policy-gradient loss


def rollout_seed(step: int, example_idx: int, sampling_step: int) -> int:
    """The reference's per-batch sampling seed (tuples of ints hash the same in every process)."""
    return hash((step, example_idx, sampling_step)) & 0x7FFFFFFF


def example_index(step: int, example_step: int, examples_per_rank: int, rank: int, world: int, num_examples: int) -> int:
    """The problem rank `rank` trains on at (step, example_step): its strided share of the data, cycled."""
    mine = range(rank, num_examples, world)
    return mine[(step * examples_per_rank + example_step) % len(mine)]


def sample_completions(engine, prompt: list[int], n: int, max_tokens: int, temperature: float, top_k: int | None, seed: int):
    """n completions of `prompt` with their Engine masks, each ending with the terminal token it sampled
    (if it ended before `max_tokens`): choosing to stop is an action the policy is trained on."""
    seqs: list[list[int]] = [[] for _ in range(n)]
    masks: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for column, mcol in engine.generate(prompt, num_samples=n, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed):
        for i, (t, m) in enumerate(zip(column, mcol)):
            if not done[i]:
                seqs[i].append(t)
                masks[i].append(m)
                done[i] = t in engine.terminal
    return seqs, masks


@dataclass
class Rollouts:
    """One question's rollouts as a training batch."""

    inputs: Any  # (N, T) long
    targets: Any  # (N, T) long, -1 where no gradient goes (prompt, forced tool output, padding)
    rewards: Any  # (N,) float
    advantages: Any  # (N,) float
    lengths: list[int]  # completion lengths in tokens (terminal included)

    @property
    def has_signal(self) -> bool:
        """Whether any rollout's advantage is non-zero (rewards that differ within the group)."""
        return bool((self.advantages != 0).any())


def bucket_length(t: int, cap: int) -> int:
    """The training forward's sequence length for rollouts of `t` tokens: the next power of two (at least 64), at most
    `cap`. On CUDA every new length compiles attention anew; with buckets a run sees a handful of shapes."""
    return min(max(64, 1 << max(0, t - 1).bit_length()), max(cap, t))


def build_batch(prompt: list[int], completions: list[list[int]], masks: list[list[int]], rewards: list[float], pad_id: int, device="cpu",
                bucket_cap: int | None = None) -> Rollouts:
    """Rows `prompt + completion`, right-padded (to a `bucket_length` when `bucket_cap` is given); a target counts only
    where the Engine sampled it (mask 1)."""
    import torch

    width = len(prompt) + max(len(c) for c in completions)
    if bucket_cap is not None:
        width = bucket_length(width - 1, bucket_cap) + 1
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(completions), width), dtype=torch.bool)
    for i, (c, m) in enumerate(zip(completions, masks)):
        if len(c) != len(m):
            raise NanochatError(f"rollout {i} has {len(c)} tokens but {len(m)} mask entries")
        ids[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        if c:
            ids[i, len(prompt) : len(prompt) + len(c)] = torch.tensor(c, dtype=torch.long)
            keep[i, len(prompt) : len(prompt) + len(c)] = torch.tensor(m, dtype=torch.long) == 1
    targets = ids[:, 1:].clone()
    targets[~keep[:, 1:]] = -1
    r = torch.tensor(rewards, dtype=torch.float32)
    return Rollouts(ids[:, :-1].to(device), targets.to(device), r.to(device), (r - r.mean()).to(device), [len(c) for c in completions])


def policy_gradient_loss(nll, targets, advantages, num_passes: int, examples_per_rank: int):
    """−Σ logp·A over valid targets / (valid targets × num_passes × examples_per_rank).

    `nll` (B, T) is −log p of each target (anything where targets == −1 is ignored); `advantages` (B,)."""
    import torch

    valid = targets >= 0
    logp = torch.where(valid, -nll, torch.zeros_like(nll))
    objective = (logp * advantages.unsqueeze(-1)).sum()
    count = valid.sum().clamp(min=1)
    return -objective / (count * num_passes * examples_per_rank)


def collect_rollouts(engine, tokenizer, task, example_idx: int, step: int, cfg: RLConfig, device) -> Rollouts:
    """Sample `num_samples` answers to one problem (in batches of `sampling_batch`), score and batch them."""
    conversation = task[example_idx]
    prompt = tokenizer.render_for_completion(conversation["messages"])
    batch = cfg.sampling_batch
    seqs: list[list[int]] = []
    masks: list[list[int]] = []
    for sampling_step in range(cfg.num_samples // batch):
        s, m = sample_completions(engine, prompt, batch, cfg.max_new_tokens, cfg.temperature, cfg.top_k or None, rollout_seed(step, example_idx, sampling_step))
        seqs += s
        masks += m
    rewards = [task.reward(conversation, tokenizer.decode([t for t in s if t not in engine.terminal])) for s in seqs]
    on_gpu = str(device).startswith("cuda")  # eager attention on CPU has no shapes to compile: no padding there
    return build_batch(prompt, seqs, masks, rewards, engine.ids["assistant_end"], device, bucket_cap=engine.sequence_len if on_gpu else None)


def backward_rollouts(model, ro: Rollouts, batch: int, examples_per_rank: int) -> float:
    """Forward/backward the rollouts in micro-batches of `batch` rows; returns the summed loss.

    A group without signal (all advantages zero) is skipped: its loss and gradient would be exactly 0."""
    if not ro.has_signal:
        return 0.0
    num_passes = -(-ro.inputs.size(0) // batch)
    total = 0.0
    for p in range(num_passes):
        sl = slice(p * batch, (p + 1) * batch)
        nll = model(ro.inputs[sl], ro.targets[sl], loss_reduction="none")
        loss = policy_gradient_loss(nll, ro.targets[sl], ro.advantages[sl], num_passes, examples_per_rank)
        loss.backward()
        total += float(loss.detach())
    return total


# ------------------------------------------------------------------------------------------------
# evaluation


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_passk(engine, tokenizer, task, num_examples: int, k: int, cfg: RLConfig, rank: int, world: int, device) -> tuple[dict[str, float], int]:
    """(pass@1..pass@k, prompts too long for the context) over the first `num_examples` problems of
    `task` (strided over ranks, summed); a prompt that leaves no room to answer counts as a failure.

    Every problem gets the same seed at every evaluation, so successive evaluations differ only by the model."""
    import torch

    n = min(num_examples, len(task))
    sums = torch.zeros(k + 2, dtype=torch.float64, device=device)  # Σ pass@1..k, the problem count, too long
    for idx in range(rank, n, world):
        conversation = task[idx]
        prompt = tokenizer.render_for_completion(conversation["messages"])
        sums[k] += 1
        if len(prompt) >= engine.sequence_len:
            sums[k + 1] += 1
            continue
        seqs, _ = engine.generate_batch(prompt, num_samples=k, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                        top_k=cfg.top_k or None, seed=rollout_seed(-1, idx, 0))  # fmt: skip
        c = sum(bool(task.evaluate(conversation, tokenizer.decode(s))) for s in seqs)
        for j in range(1, k + 1):
            sums[j - 1] += pass_at_k(k, c, j)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    total = max(1.0, float(sums[k]))
    return {f"pass@{j}": float(sums[j - 1]) / total for j in range(1, k + 1)}, int(sums[k + 1])


# ------------------------------------------------------------------------------------------------
# data


def load_tasks(train_split: str, rank: int):
    """(train task, eval task, train label, eval label). `auto`: GSM8K train from the Hub, else (offline)
    the partition carved from the test split, evaluated on the rest of the test split only."""
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.hub import offline

    split = train_split
    if split == "auto":
        split = "train-from-test" if offline() else "train"
    if split == "train":
        try:
            train, test = GSM8K(split="train"), GSM8K(split="test")
            return train, test, f"GSM8K train ({len(train):,} problems, {train.data_source})", f"GSM8K test ({test.data_source})"
        except NanochatError as e:
            if train_split == "train":
                raise
            if rank == 0:
                warn0(f"GSM8K train is not available ({str(e).split(';')[0]}); training on a partition carved from the test split instead")
    train, test = GSM8K(split="train-from-test"), GSM8K(split="test-heldout")
    return train, test, OFFLINE_TRAIN_LABEL, OFFLINE_EVAL_LABEL


def load_rl_tasks(task: str, train_split: str, rank: int):
    """(train task, eval task, train label, eval label) of an RL task by its `--task` name."""
    if task == "demo-arith":
        from nanochat.tasks.arithmetic import DemoArith

        train, test = DemoArith("train"), DemoArith("test")
        return train, test, f"DemoArith train ({train.data_source})", f"DemoArith test ({len(test)} held-out problems)"
    return load_tasks(train_split, rank)


def no_signal_warning(signal_groups: int, groups: int, task: str = "gsm8k") -> str | None:
    """The one-time warning when most groups so far had rewards that did not differ, else None."""
    if groups == 0 or signal_groups / groups >= NO_SIGNAL_SHARE:
        return None
    return (f"only {signal_groups} of {groups} problems so far got rewards that differ between their rollouts (signal "
            f"{signal_groups / groups:.2f}); the others teach nothing. Sample more answers per problem (--num-samples), "
            + ("use an easier task (--task demo-arith), " if task != "demo-arith" else "use an easier task, ") + "or start from a better SFT model")


# ------------------------------------------------------------------------------------------------
# the report


def reward_table(train: list[dict], rows: int = REWARD_TABLE_ROWS) -> str:
    """The reward curve as a markdown table: mean reward and signal over `rows` equal spans of steps."""
    lines = ["| steps | mean reward | signal (groups with a reward spread) |", "|---|---|---|"]
    n = len(train)
    for i in range(min(rows, n)):
        span = train[i * n // rows : (i + 1) * n // rows] if n >= rows else train[i : i + 1]
        reward = sum(m["reward"] for m in span) / len(span)
        signal = sum(m.get("signal", 0.0) for m in span) / len(span)
        lines.append(f"| {span[0]['step'] + 1}-{span[-1]['step'] + 1} | {reward:.3f} | {signal:.2f} |")
    return "\n".join(lines)


def report_rl(summary: dict, metrics_path, task_label: str, eval_count: int, k: int) -> None:
    """The report card's RL section: the summary, held-out pass@1 before and after RL (in the summary
    table too), the reward per step as a table and, with the pass@1 evaluations, as curves. Read from
    the run's metrics file, so a resumed run reports every step since step 0."""
    from nanochat.eval.report import metric

    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    train = [m for m in records if m.get("kind") == "train"]
    evals = [m for m in records if m.get("kind") == "eval"]
    title = TASK_TITLES[task_label]
    how = f"pass@1 (T={summary['temperature']:g}, {k} samples each)"
    results = {}
    if evals:
        first, last = evals[0], evals[-1]
        results["rl_pass@1_before"] = metric(f"{title} held-out {how} before RL", first["pass@1"], eval_count, "problems", step=first["step"], source=summary["eval_data"])
        results["rl_pass@1_final"] = metric(f"{title} held-out {how} after RL", last["pass@1"], eval_count, "problems", step=last["step"], source=summary["eval_data"])
    data = {**summary, "results": results}
    if train:
        data["reward per step"] = reward_table(train)
    series = {"reward": [[m["step"], m["reward"]] for m in train], f"{task_label}_pass@1": [[m["step"], m["pass@1"]] for m in evals]}
    record_report("rl", data, series=series, title="Reinforcement learning")


# ------------------------------------------------------------------------------------------------
# the run


def _resume_step(cfg: RLConfig, tag: str) -> int | None:
    """The rl checkpoint step to resume from (every rank reads the same folder), or None."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        info = ck.find_latest("rl", tag)
        return info.step if info else None
    return ck.resolve_checkpoint("rl", tag, int(cfg.resume)).step


def run_rl(cfg: RLConfig) -> dict:
    """Train (or resume) a policy on `cfg.task`; returns a summary dict (rank 0's view)."""
    cfg.validate()
    return run_distributed(cfg.device, lambda device_type, info: _train(cfg, info))


def _start(cfg: RLConfig, rank: int, world: int, device: str):
    """The policy to train: the rl checkpoint to resume, or the starting checkpoint. Returns
    (model, tokenizer, model_config, tag, resume_at, started_from, meta)."""
    from nanochat.common.dist import SameOnEveryRank, check_shared_dir

    src = ck.resolve_checkpoint(cfg.source, cfg.model_tag, cfg.step)
    tag = src.tag
    check_shared_dir(ck.checkpoint_dir("rl", tag))  # every rank writes into the checkpoint folder rank 0 creates
    resume_at = _resume_step(cfg, tag)
    if resume_at is not None:
        model, tokenizer, meta = load_model("rl", tag, resume_at, device=device)
        started_from = meta.get("started_from", {})
        if meta.get("world_size", 1) != world:  # each rank's share of the problems follows from the process count
            raise SameOnEveryRank(
                f"rl/{tag} step {resume_at} was saved by {meta.get('world_size', 1)} processes and this run has {world}: an RL run resumes "
                f"on as many processes as saved it (the problems are split per process); run {meta.get('world_size', 1)} processes in all "
                "(--nproc x --nnodes), or start afresh with --resume never"
            )
    else:
        model, tokenizer, meta = load_model(cfg.source, src.tag, src.step, device=device)
        started_from = {"source": cfg.source, "model_tag": src.tag, "step": src.step}
        if rank == 0 and cfg.resume == "never" and ck.list_steps("rl", tag):
            warn0(f"--resume never: starting afresh; checkpoints saved by this run replace those in {ck.checkpoint_dir('rl', tag)}")
    return model, tokenizer, meta["model_config"], tag, resume_at, started_from, meta


def _problems(cfg: RLConfig, tokenizer, sequence_len: int, rank: int, world: int):
    """(train task, eval task, train label, eval label, usable train indices, steps), the same on every machine."""
    from nanochat.common.dist import agree

    def tasks():
        loaded = load_rl_tasks(cfg.task, cfg.train_split, rank)
        return loaded, {"task sets": f"{len(loaded[0]):,} training problems ({loaded[2]}), {len(loaded[1]):,} held out ({loaded[3]})"}

    # the same problems on every machine: one that fell back to other data stops all before step 0
    train_task, eval_task, train_label, eval_label = agree("the RL problems", tasks, fix="give every machine the same task data (or one shared NANOCHAT_HOME) and network access alike")
    # problems whose prompt leaves no room to answer in the context cannot be trained on: leave them out
    usable = [i for i in range(len(train_task)) if len(tokenizer.render_for_completion(train_task[i]["messages"])) < sequence_len]
    if len(usable) < len(train_task):
        warn0(f"{len(train_task) - len(usable)} of {len(train_task)} training problems leave no room to answer in the {sequence_len}-token context; skipping them")
    if len(usable) < world:
        raise NanochatError(f"only {len(usable)} training problems fit the model's {sequence_len}-token context; use a model with a longer context")
    n = cfg.num_iterations if cfg.num_iterations > 0 else (len(usable) // cfg.examples_per_step) * cfg.num_epochs
    if n < 1:
        raise UsageError(f"{len(usable)} training problems make no step of {cfg.examples_per_step}; lower --examples-per-step")
    return train_task, eval_task, train_label, eval_label, usable, n


def _plan_rows(cfg: RLConfig, model, model_config: dict, started_from: dict, s: "_Setting") -> list[tuple[str, str]]:
    f = cfg.init_lr_frac
    return [
        ("start from", f"{started_from.get('source')}/{started_from.get('model_tag')} step {started_from.get('step')}"),
        ("model", f"depth {model_config['n_layer']}, width {model_config['n_embd']}, context {model_config['sequence_len']}, {model.param_counts()['total']:,} parameters"),
        ("train data", s.train_label + (f"; {len(s.usable)} fit the context" if len(s.usable) < len(s.train_task) else "")),
        ("eval data", f"{s.eval_label}: pass@1..{cfg.sampling_batch} on {min(cfg.eval_examples, len(s.eval_task))} problems every {cfg.eval_every} steps and at the end"),
        ("steps", f"{s.n} ({cfg.examples_per_step} problems per step, {s.examples_per_rank} per process × {s.world})"),
        ("rollouts", f"{cfg.num_samples} per problem in batches of {cfg.sampling_batch}, ≤ {cfg.max_new_tokens} new tokens, T={cfg.temperature:g}, top-k {cfg.top_k or 'off'}"),
        ("sequences per step", f"{cfg.examples_per_step * cfg.num_samples}"),
        ("learning rates", f"matrix {cfg.matrix_lr * f:.4g}, embedding {cfg.embedding_lr * f:.4g}, unembedding {cfg.unembedding_lr * f:.4g}, scalar {cfg.scalar_lr * f:.4g} (× init-lr-frac {f:g}; before width scaling)"),
        ("schedule", "LR × (1 − step/steps); no weight decay; no warmup"),
        ("device", f"{s.device} × {s.world}"),
        ("checkpoints", f"{ck.checkpoint_dir('rl', s.tag)} (every {cfg.save_every if cfg.save_every > 0 else '-'} steps and at the end; keep {cfg.keep_last or 'all'})"),
    ]


@dataclass
class _Setting:
    """What one RL run works on: its problems, steps and place among the processes."""

    tag: str
    train_task: Any
    eval_task: Any
    train_label: str
    eval_label: str
    usable: list[int]
    n: int
    rank: int
    world: int
    device: str
    examples_per_rank: int  # problems per step on this process


class RLStage(Stage):
    """REINFORCE steps: rollouts per problem, the policy-gradient backward, an update; pass@k at the top of a step."""

    def __init__(self, cfg: RLConfig, run: TrainingRun, model, tokenizer, engine, optimizer, s: _Setting, model_config: dict,
                 started_from: dict, loop_state: dict, resumed: bool) -> None:
        self.cfg, self.run, self.model, self.tokenizer, self.engine, self.optimizer, self.s = cfg, run, model, tokenizer, engine, optimizer, s
        self.examples_per_rank, self.model_config, self.started_from, self.resumed = s.examples_per_rank, model_config, started_from, resumed
        self.passk: dict | None = loop_state.get("passk")
        self.passk_start: dict | None = loop_state.get("passk_start")  # the evaluation before any RL step
        self.signal_total, self.groups_total = loop_state.get("signal_groups", 0), loop_state.get("groups", 0)
        self.warned = False
        self.stats: dict = {}

    def is_last(self, step: int) -> bool:
        return step == self.s.n

    def evaluate(self, step: int, last: bool) -> None:
        cfg = self.cfg
        if cfg.eval_every <= 0 or not (last or step % cfg.eval_every == 0) or (self.resumed and step == self.run.start_step and self.passk):
            return
        self.model.eval()
        t0 = time.time()
        self.passk, too_long = evaluate_passk(self.engine, self.tokenizer, self.s.eval_task, cfg.eval_examples, cfg.sampling_batch, cfg,
                                              self.s.rank, self.s.world, self.s.device)  # fmt: skip
        if step == 0:
            self.passk_start = self.passk
        note = f"; {too_long} prompts too long for the context counted as failed" if too_long else ""
        self.run.note(f"step {step:05d} | " + ", ".join(f"{k} {v:.4f}" for k, v in self.passk.items()) + f" ({time.time() - t0:.0f}s{note})")
        self.run.metrics.write({"kind": "eval", "step": step, **self.passk})

    def save(self, step: int) -> None:
        meta = {
            "model_config": self.model_config, "user_config": asdict(self.cfg), "started_from": self.started_from, "num_steps": self.s.n,
            "train_data": self.s.train_label, "eval_data": self.s.eval_label, "passk": self.passk,
            "loop_state": {"passk": self.passk, "passk_start": self.passk_start, "total_training_time": self.run.clock.total,
                           "signal_groups": self.signal_total, "groups": self.groups_total},
        } if self.s.rank == 0 else None  # fmt: skip
        self.run.checkpoint(step, self.model, self.optimizer, meta, {"rank": self.s.rank})

    def forward_backward(self, step: int, stop_requested: bool) -> StepResult:
        import torch

        cfg, s = self.cfg, self.s
        loss_sum = torch.zeros((), device=s.device)
        rewards, lengths = [], []
        with_signal = 0  # questions of this rank whose rollouts' rewards differ
        rollout_s = 0.0  # time spent sampling (the rest is forward/backward and the update)
        for e in range(self.examples_per_rank):
            idx = s.usable[example_index(step, e, self.examples_per_rank, s.rank, s.world, len(s.usable))]
            self.model.eval()
            t0 = time.perf_counter()
            ro = collect_rollouts(self.engine, self.tokenizer, s.train_task, idx, step, cfg, s.device)
            rollout_s += time.perf_counter() - t0
            self.model.train()
            loss_sum += backward_rollouts(self.model, ro, cfg.sampling_batch, self.examples_per_rank)
            with_signal += ro.has_signal
            rewards.append(float(ro.rewards.mean()))
            lengths += ro.lengths
        # the loss is already divided by examples_per_rank: its sum over questions is this rank's loss
        loss_value, stop_synced = sync_step_stats(loss_sum, 1, stop_requested, s.world)
        stats = torch.tensor([sum(rewards) / len(rewards), sum(lengths) / len(lengths), sum(lengths), with_signal], dtype=torch.float64, device=s.device)
        if s.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        self.stats = {"reward": stats[0].item() / s.world, "length": stats[1].item() / s.world, "tokens": stats[2].item(),
                      "signal": int(stats[3].item()), "rollout_s": rollout_s}  # fmt: skip
        self.signal_total += self.stats["signal"]
        self.groups_total += cfg.examples_per_step
        return StepResult(loss_value, stop_synced)

    def update(self, step: int, loss: float) -> None:
        self.lrm = schedules.rl_lr_multiplier(step, self.s.n)
        self.optimizer.set_schedule(self.lrm)
        if math.isfinite(loss):
            self.optimizer.step()
        else:  # parameters and optimizer state untouched
            self.run.note(f"step {step:05d} | loss {loss} is not finite: update skipped")
        self.optimizer.zero_grad(set_to_none=True)

    def record(self, step: int, dt: float, loss: float) -> tuple[str, dict]:
        st, n, groups = self.stats, self.s.n, self.cfg.examples_per_step
        line = (f"step {step:05d}/{n:05d} ({100 * step / n:.1f}%) | reward {st['reward']:.4f} | signal {st['signal'] / groups:.2f} | "
                f"seq len {st['length']:.1f} | "
                f"loss {loss:+.5f} | lrm {self.lrm:.3f} | dt {dt * 1000:.0f}ms ({100 * st['rollout_s'] / dt:.0f}% sampling) | sampled tok/s {st['tokens'] / dt:,.0f} | "
                f"eta {format_duration(self.run.clock.eta(n - step, dt))}")  # fmt: skip
        record = {"kind": "train", "step": step - 1, "reward": st["reward"], "sequence_length": st["length"], "loss": loss,
                  "signal": st["signal"] / groups, "lrm": self.lrm, "dt": dt, "sampled_tokens": st["tokens"], "rollout_s": st["rollout_s"],
                  "time": time.time()}  # fmt: skip
        # judged over a few steps (one step's handful of groups is noise), once per run
        if self.s.rank == 0 and not self.warned and (step - self.run.start_step >= 3 or step == n):
            message = no_signal_warning(self.signal_total, self.groups_total, self.cfg.task)
            if message:
                warn0(message)
                self.warned = True
        return line, record


def _train(cfg: RLConfig, info) -> dict:
    from nanochat.engine.engine import Engine
    from nanochat.optim import build_optimizer

    rank, world, device = info.rank, info.world_size, info.device
    if cfg.examples_per_step % world:
        raise UsageError(f"--examples-per-step {cfg.examples_per_step} must be a multiple of the {world} processes")
    model, tokenizer, model_config, tag, resume_at, started_from, meta = _start(cfg, rank, world, device)
    engine = Engine(model, tokenizer)
    s = _Setting(tag, *_problems(cfg, tokenizer, engine.sequence_len, rank, world), rank=rank, world=world, device=device,
                 examples_per_rank=cfg.examples_per_step // world)
    f = cfg.init_lr_frac
    optimizer = build_optimizer(model, matrix_lr=cfg.matrix_lr * f, embedding_lr=cfg.embedding_lr * f, unembedding_lr=cfg.unembedding_lr * f,
                                scalar_lr=cfg.scalar_lr * f, weight_decay=0.0)  # fmt: skip
    for group in optimizer.param_groups:  # RL uses no weight decay in any group (AdamW ones included)
        group["weight_decay"] = 0.0
    loop_state: dict = {}
    start_step = 0
    if resume_at is not None:
        path = ck.checkpoint_dir("rl", tag) / ck.step_name(resume_at)
        opt_state, _ = ck.load_rank_state(path, rank, device)
        optimizer.load_state_dict(opt_state)
        loop_state = meta.get("loop_state", {})
        start_step = resume_at
        if meta.get("num_steps") not in (None, s.n):
            warn0(f"the checkpoint was planned for {meta['num_steps']} steps, this run for {s.n}; the LR schedule follows this run")
        print0(f"resuming rl/{tag} from step {start_step} ({path})")

    task_label = "demo-arith" if cfg.task == "demo-arith" else "gsm8k"
    rows = _plan_rows(cfg, model, model_config, started_from, s) + [("start", f"step {start_step}" + (" (resumed)" if resume_at is not None else ""))]
    print0(table(f"nanochat rl: REINFORCE on {task_label}", rows))
    run = TrainingRun("rl", ck.checkpoint_dir("rl", tag), s.n, start_step, resume_at is not None, rank=rank, world=world,
                      device_type=device.split(":")[0], save_every=cfg.save_every, keep_last=cfg.keep_last, loop_state=loop_state,
                      clock_warmup=1, wandb=wandb_run(cfg.run, rank, "nanochat-rl", asdict(cfg)))  # fmt: skip
    stage = RLStage(cfg, run, model, tokenizer, engine, optimizer, s, model_config, started_from, loop_state, resume_at is not None)
    run.run(stage)
    return _finish(cfg, run, stage, task_label)


def _finish(cfg: RLConfig, run: TrainingRun, stage: RLStage, task_label: str) -> dict:
    """The summary, the done line and the report section (rank 0)."""
    s, passk, passk_start, started_from = stage.s, stage.passk, stage.passk_start, stage.started_from
    eval_count = min(cfg.eval_examples, len(s.eval_task))
    summary = {
        "model_tag": s.tag, "started_from": f"{started_from.get('source')}/{started_from.get('model_tag')} step {started_from.get('step')}",
        "train_data": s.train_label, "eval_data": s.eval_label, "steps": s.n, "final_step": run.step, "examples_per_step": cfg.examples_per_step,
        "num_samples": cfg.num_samples, "temperature": cfg.temperature, "world_size": s.world, "device": run.device_type, "total_time_s": run.clock.total,
        "wall_time_s": time.time() - run.t_start, "stopped_by": run.stop.signame if run.stopped_by_signal else None,
        "signal": stage.signal_total / stage.groups_total if stage.groups_total else None,
        "groups without signal": stage.groups_total - stage.signal_total,
        **({f"{task_label} pass@1 before RL (held out)": passk_start["pass@1"]} if passk_start else {}),
        **({f"{task_label} {k} (held out)": v for k, v in passk.items()} if passk else {}),
    }  # fmt: skip
    mem_note = run.peak_note(summary)
    if s.rank == 0:
        if run.stopped_by_signal:
            print0(run.stopped_line())
        else:
            before = f"{passk_start['pass@1']:.4f} before RL, " if passk_start else ""
            print0(f"done: {run.step} steps, {run.clock.describe()}{mem_note}" + (f", pass@1 {before}{passk['pass@1']:.4f} after on {eval_count} problems of {s.eval_label}" if passk else ""))
            report_rl(summary, run.run_dir / "metrics.jsonl", task_label, eval_count, cfg.sampling_batch)
    return summary
