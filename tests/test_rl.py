"""`nanochat rl`: the policy-gradient loss against hand-computed values, the masks of prompt and tool
tokens, a toy environment in which reward must go up, pass@k against brute force, and a tiny offline
end-to-end run that checkpoints, resumes and never evaluates on the problems it trained on."""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import asdict

import pytest
import torch

from tests.conftest import run_cli

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200", "NANOCHAT_OFFLINE": "1"}
# the short demo-arith run: problems, fine-tuning steps before RL, RL steps, LR fraction
RL_TEST_PROBLEMS, RL_TEST_SFT_STEPS, RL_TEST_STEPS, RL_TEST_LR_FRAC = 8, 40, 12, 0.2


# ------------------------------------------------------------------------------------------------
# (a) the loss, by hand


def test_policy_gradient_loss_matches_a_hand_computation():
    from nanochat.train.rl import policy_gradient_loss

    # two rollouts of one question, rewards 1 and 0 -> advantages +0.5, -0.5
    nll = torch.tensor([[0.5, 1.0, 2.0, 9.0], [0.25, 3.0, 7.0, 1.5]], requires_grad=True)
    targets = torch.tensor([[-1, 11, 12, -1], [-1, 21, -1, 22]])  # 4 valid targets
    adv = torch.tensor([0.5, -0.5])
    loss = policy_gradient_loss(nll, targets, adv, num_passes=2, examples_per_rank=3)
    # Σ logp·A over valid = (-1.0)(0.5) + (-2.0)(0.5) + (-3.0)(-0.5) + (-1.5)(-0.5) = 0.75
    # loss = -0.75 / (4 valid × 2 passes × 3 examples) = -0.03125
    assert loss.item() == pytest.approx(-0.03125, abs=1e-9)
    loss.backward()
    # d loss / d nll = A / 24 at valid targets (nll = -logp), 0 elsewhere
    expected = torch.tensor([[0, 0.5, 0.5, 0], [0, -0.5, 0, -0.5]]) / 24
    assert torch.allclose(nll.grad, expected, atol=1e-9)


def test_loss_of_a_batch_without_valid_targets_is_zero_not_nan():
    from nanochat.train.rl import policy_gradient_loss

    loss = policy_gradient_loss(torch.ones(2, 3), torch.full((2, 3), -1), torch.tensor([1.0, -1.0]), 1, 1)
    assert loss.item() == 0.0


# ------------------------------------------------------------------------------------------------
# (d) prompt, forced tool output and padding get no gradient


class ScriptedEngine:
    """Stands in for the Engine: replays fixed (token, mask) columns, like a calculator call would make."""

    def __init__(self, rows, ids):
        self.rows, self.ids = rows, ids
        self.terminal = {ids["bos"], ids["assistant_end"]}

    def generate(self, prompt, num_samples, max_tokens, temperature, top_k, seed):
        assert num_samples == len(self.rows)
        width = max(len(r) for r in self.rows)
        for t in range(width):
            yield [r[t][0] if t < len(r) else self.ids["bos"] for r in self.rows], [r[t][1] if t < len(r) else 0 for r in self.rows]


def test_prompt_forced_tool_tokens_and_padding_are_masked_and_get_zero_gradient():
    from nanochat.train.rl import RLConfig, backward_rollouts, collect_rollouts

    from tests.inference_helpers import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    s = tok.special_id
    ids = {"bos": tok.bos_id, "assistant_end": s("<|assistant_end|>")}
    py, pe, os_, oe, end = s("<|python_start|>"), s("<|python_end|>"), s("<|output_start|>"), s("<|output_end|>"), s("<|assistant_end|>")
    a, b, c, d = 40, 41, 42, 43
    rows = [
        # sampled: python call; forced (mask 0): the tool's output; sampled again, then the stop token
        [(py, 1), (a, 1), (pe, 1), (os_, 0), (b, 0), (oe, 0), (c, 1), (end, 1)],
        [(d, 1), (end, 1)],  # short: padded afterwards
    ]
    task = [{"messages": [{"role": "user", "content": "hi"}]}]

    class Task(list):
        def reward(self, conversation, text):
            return 1.0 if "hi" not in text and len(text) > 2 else 0.0

    cfg = RLConfig(num_samples=2, device_batch_size=2, max_new_tokens=8)
    ro = collect_rollouts(ScriptedEngine(rows, ids), tok, Task(task), 0, 0, cfg, "cpu")
    prompt = tok.render_for_completion(task[0]["messages"])
    P = len(prompt)
    # targets[t] is the token at t+1; only sampled completion tokens are targets
    row0 = [-1] * (P - 1) + [py, a, pe, -1, -1, -1, c, end]
    row1 = [-1] * (P - 1) + [d, end] + [-1] * 6
    assert ro.targets.tolist() == [row0, row1]
    assert ro.inputs[0, : P].tolist() == prompt and ro.inputs[1, : P].tolist() == prompt
    assert ro.rewards.tolist() == [1.0, 0.0] and ro.advantages.tolist() == [0.5, -0.5]
    assert ro.lengths == [8, 2]

    # through a real model: the gradient w.r.t. the logits is zero exactly where targets are -1
    model = tiny_model(tok, n_layer=1, sequence_len=64)
    grads = []
    head = model.lm_head
    handle = head.register_full_backward_hook(lambda m, gin, gout: grads.append(gout[0].detach().clone()))
    backward_rollouts(model, ro, batch=2, examples_per_rank=1)
    handle.remove()
    g = grads[0].abs().sum(-1)  # (2, T) gradient reaching each position's logits
    assert torch.equal(g == 0, ro.targets == -1)


# ------------------------------------------------------------------------------------------------
# (c) reward goes up in a toy environment (would catch a sign error)


def test_reward_goes_up_when_one_token_is_rewarded():
    from nanochat.engine.engine import Engine
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model
    from nanochat.optim import build_optimizer
    from nanochat.train.rl import RLConfig, backward_rollouts, collect_rollouts

    from tests.inference_helpers import tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = build_model(GPTConfig(sequence_len=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=64, window_pattern="L"), "cpu", seed=0)
    conv = {"messages": [{"role": "user", "content": "Say the word."}]}
    prompt = torch.tensor([tok.render_for_completion(conv["messages"])])

    def probs():
        with torch.no_grad():
            return torch.softmax(model(prompt)[0, -1], -1)

    # the target: an ordinary token the fresh model ranks 4th (top-k 8 gives it a fair first chance)
    order = [t for t in probs().argsort(descending=True).tolist() if not tok.is_special(t)]
    target = order[3]
    text = tok.decode([target])

    class Toy(list):
        def reward(self, conversation, completion):
            return float(completion == text)

    task = Toy([conv])
    engine = Engine(model, tok, calculator=lambda e: None)
    cfg = RLConfig(num_samples=16, device_batch_size=16, max_new_tokens=1, temperature=1.0, top_k=8)
    opt = build_optimizer(model, matrix_lr=0.01, embedding_lr=0.01, unembedding_lr=0.01, scalar_lr=0.0, weight_decay=0.0)
    p0 = probs()[target].item()
    rewards = []
    for step in range(6):
        ro = collect_rollouts(engine, tok, task, 0, step, cfg, "cpu")
        backward_rollouts(model, ro, cfg.sampling_batch, 1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rewards.append(ro.rewards.mean().item())
    p1 = probs()[target].item()
    # with the sign of the advantage flipped, p(target) falls to ~1e-5 and the reward to 0 instead
    assert p0 < 0.05 and p1 > 0.5, (p0, p1, rewards)
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.3, rewards


# ------------------------------------------------------------------------------------------------
# one step moves log-probabilities the right way; groups without signal give no gradient


def _sequence_logps(model, ro):
    """Σ log p of each row's valid targets, computed here from the logits (not by the code under test)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(ro.inputs).float(), -1)
    valid = ro.targets >= 0
    picked = logp.gather(-1, ro.targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, picked, torch.zeros_like(picked)).sum(-1)


def _group(tok, prompt_text, completions, rewards):
    from nanochat.train.rl import build_batch

    prompt = tok.render_for_completion([{"role": "user", "content": prompt_text}])
    end = tok.special_id("<|assistant_end|>")
    seqs = [tok.encode(c) + [end] for c in completions]
    return build_batch(prompt, seqs, [[1] * len(x) for x in seqs], rewards, end)


def test_one_step_raises_rewarded_and_lowers_unrewarded_log_probabilities():
    from nanochat.train.rl import backward_rollouts

    from tests.inference_helpers import tiny_model, tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_model(tok, n_layer=1, sequence_len=64)
    ro = _group(tok, "Pick one.", ["red", "blue", "green", "tea"], [1.0, 0.0, 1.0, 0.0])
    before = _sequence_logps(model, ro)
    backward_rollouts(model, ro, batch=4, examples_per_rank=1)
    with torch.no_grad():  # one plain gradient step: the direction is the loss's, no optimizer heuristics
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    after = _sequence_logps(model, ro)
    change = (after - before).tolist()
    assert change[0] > 0 and change[2] > 0, change  # rewarded: more likely
    assert change[1] < 0 and change[3] < 0, change  # unrewarded: less likely


def test_groups_without_reward_variance_add_exactly_zero_gradient():
    from nanochat.train.rl import backward_rollouts

    from tests.inference_helpers import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(tok, n_layer=1, sequence_len=64)
    mixed = _group(tok, "Pick one.", ["red", "blue"], [1.0, 0.0])
    solved = _group(tok, "Say hi.", ["hi", "hello"], [1.0, 1.0])  # all right: advantages 0
    failed = _group(tok, "Count.", ["one", "two"], [0.0, 0.0])  # all wrong: advantages 0
    assert mixed.has_signal and not solved.has_signal and not failed.has_signal

    assert backward_rollouts(model, solved, 2, 3) == 0.0 and backward_rollouts(model, failed, 2, 3) == 0.0
    assert all(p.grad is None for p in model.parameters())  # not even a forward pass
    backward_rollouts(model, mixed, 2, 3)
    alone = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for ro in (solved, mixed, failed):
        backward_rollouts(model, ro, 2, 3)
    together = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert alone and set(alone) == set(together) and all(torch.equal(alone[n], together[n]) for n in alone)


def test_bucket_lengths_are_few_powers_of_two_within_the_context():
    from nanochat.train.rl import bucket_length

    assert [bucket_length(t, 2048) for t in (1, 63, 64, 65, 200, 513, 2047, 2048)] == [64, 64, 64, 128, 256, 1024, 2048, 2048]
    assert bucket_length(300, 320) == 320  # never past the model's context
    assert len({bucket_length(t, 2048) for t in range(1, 2049)}) == 6  # 64 ... 2048: six shapes for every rollout length


def test_padding_rollouts_to_a_bucket_changes_neither_loss_nor_gradient():
    from nanochat.train.rl import backward_rollouts, build_batch

    from tests.inference_helpers import tiny_model, tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_model(tok, n_layer=1, sequence_len=256)
    prompt = tok.render_for_completion([{"role": "user", "content": "Pick one."}])
    end = tok.special_id("<|assistant_end|>")
    seqs = [tok.encode(c) + [end] for c in ("red", "a longer blue answer", "green")]
    args = (prompt, seqs, [[1] * len(x) for x in seqs], [1.0, 0.0, 1.0], end)
    plain, padded = build_batch(*args), build_batch(*args, bucket_cap=256)
    assert plain.inputs.size(1) < 64 and padded.inputs.size(1) == 64
    assert torch.equal(padded.inputs[:, : plain.inputs.size(1)], plain.inputs)
    assert (padded.targets[:, plain.inputs.size(1):] == -1).all()
    grads = []
    for ro in (plain, padded):
        model.zero_grad(set_to_none=True)
        loss = backward_rollouts(model, ro, batch=3, examples_per_rank=1)
        grads.append((loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5, abs=1e-7)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads[0][1], grads[1][1]))


def _fit_demo_arith(problems, steps: int, seed: int = 0):
    """A depth-2 model fine-tuned on `problems` (DemoArith conversations) by plain AdamW steps, saved
    as sft/d1 with its tokenizer: a model that knows the answer format and gets some problems right."""
    from nanochat.common import paths
    from nanochat.common.checkpoint import save_checkpoint
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model
    from nanochat.tasks.arithmetic import DemoArith

    tok = Tokenizer.train([c["messages"][0]["content"] for c in DemoArith("train")], vocab_size=400)
    tok.save(paths.tokenizer_dir())
    config = GPTConfig(sequence_len=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_kv_head=2, n_embd=64, window_pattern="L")
    model = build_model(config, "cpu", seed=seed)
    rows = [tok.render_conversation(c["messages"], max_tokens=65) for c in problems]
    width = max(len(ids) for ids, _ in rows)
    inputs = torch.full((len(rows), width - 1), tok.bos_id)
    targets = torch.full((len(rows), width - 1), -1)
    for i, (ids, mask) in enumerate(rows):
        inputs[i, : len(ids) - 1] = torch.tensor(ids[:-1])
        targets[i, : len(ids) - 1] = torch.where(torch.tensor(mask[1:]) == 1, torch.tensor(ids[1:]), -1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(rows), (16,), generator=g)
        model(inputs[pick], targets[pick]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    save_checkpoint(paths.checkpoints_dir("sft") / "d1", steps, model_state=model.state_dict(), meta={"model_config": asdict(config)})


def test_a_short_demo_arith_run_raises_the_mean_reward(nanochat_home, monkeypatch):
    """The demo's RL in small: a model that solves some DemoArith problems, then `run_rl` (real rollouts
    with the calculator, real rewards, the optimizer and its LR schedule; like the demo, only the block
    matrices learn) on those problems. With the advantage's sign flipped, or no update, the reward of the
    last steps does not beat the first ones."""
    from nanochat.tasks.arithmetic import DemoArith
    from nanochat.train import rl
    from nanochat.train.loop import read_metrics

    from tests._rl_dist_worker import toy_config

    torch.manual_seed(0)
    problems = DemoArith("train", size=RL_TEST_PROBLEMS)
    _fit_demo_arith(problems, steps=RL_TEST_SFT_STEPS)
    monkeypatch.setattr(rl, "load_rl_tasks", lambda task, split, rank: (problems, problems, "toy", "toy"))
    rl.run_rl(toy_config(task="demo-arith", num_iterations=RL_TEST_STEPS, examples_per_step=RL_TEST_PROBLEMS, num_samples=8, device_batch_size=8,
                         max_new_tokens=24, save_every=-1, init_lr_frac=RL_TEST_LR_FRAC, matrix_lr=0.02, embedding_lr=0.0, unembedding_lr=0.0))  # fmt: skip
    rewards = [m["reward"] for m in read_metrics(nanochat_home / "checkpoints" / "rl" / "d1" / "metrics.jsonl") if m["kind"] == "train"]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    # every step samples every problem, so the rewards of two steps differ by the policy and the sampling only
    assert len(rewards) == RL_TEST_STEPS and 0.05 < first < 0.8, rewards  # a task with room to learn
    assert last > first + 0.05, rewards


class Unsolvable(list):
    """Every answer is wrong: no group ever has a signal."""

    def __init__(self):
        super().__init__({"messages": [{"role": "user", "content": f"Question {i}?"}]} for i in range(6))

    def reward(self, conversation, completion):
        return 0.0

    def evaluate(self, conversation, completion):
        return False


def test_groups_without_signal_are_counted_and_warned_about_once(sft_checkpoint, monkeypatch, capsys):
    from nanochat.common import paths
    from nanochat.common.checkpoint import load_weights
    from nanochat.train import rl
    from nanochat.train.loop import read_metrics

    from tests._rl_dist_worker import toy_config

    monkeypatch.setattr(rl, "load_tasks", lambda split, rank: (Unsolvable(), Unsolvable(), "toy", "toy"))
    summary = rl.run_rl(toy_config(num_iterations=4, save_every=-1))
    err = capsys.readouterr().err
    assert err.count("problems so far got rewards that differ") == 1, err
    assert "--num-samples" in err and "easier task" in err and "better SFT model" in err
    assert summary["signal"] == 0.0 and summary["groups without signal"] == 4 * 2
    run_dir = paths.checkpoints_dir("rl") / "d1"
    train = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["kind"] == "train"]
    assert [m["signal"] for m in train] == [0.0] * 4 and all(m["loss"] == 0.0 for m in train)
    start, end = load_weights(paths.checkpoints_dir("sft") / "d1" / "step_000005"), load_weights(run_dir / "step_000004")
    assert all(torch.equal(start[k], end[k]) for k in start)  # no signal, no change


def test_no_signal_warning_only_when_most_groups_have_none():
    from nanochat.train.rl import no_signal_warning

    assert no_signal_warning(5, 10) is None and no_signal_warning(0, 0) is None
    assert "4 of 10" in no_signal_warning(4, 10)


# ------------------------------------------------------------------------------------------------
# pass@k and the deterministic schedule


def test_reward_table_averages_equal_spans_of_steps():
    from nanochat.train.rl import reward_table

    train = [{"step": s, "reward": s / 10, "signal": 0.5 if s < 6 else 1.0} for s in range(7)]
    rows = reward_table(train, rows=3).splitlines()
    # 7 steps in 3 spans: steps 1-2, 3-4, 5-7 (0-based 0-1, 2-3, 4-6)
    assert rows[2:] == ["| 1-2 | 0.050 | 0.50 |", "| 3-4 | 0.250 | 0.50 |", "| 5-7 | 0.500 | 0.67 |"]


def test_pass_at_k_is_the_mean_over_all_k_subsets():
    from nanochat.train.rl import pass_at_k

    for n, c in [(8, 0), (8, 1), (8, 3), (8, 8), (5, 2)]:
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_each_rank_cycles_through_its_own_share_of_problems():
    from nanochat.train.rl import example_index, rollout_seed

    seen = [[example_index(s, e, 2, r, 2, 7) for s in range(4) for e in range(2)] for r in range(2)]
    assert seen[0] == [0, 2, 4, 6, 0, 2, 4, 6] and seen[1] == [1, 3, 5, 1, 3, 5, 1, 3]
    assert rollout_seed(3, 5, 1) == hash((3, 5, 1)) & 0x7FFFFFFF != rollout_seed(3, 5, 0)


# ------------------------------------------------------------------------------------------------
# (b) end to end, offline


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer

    text = open_resource("corpus/austen/emma.txt").read()[:60_000]
    return Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)


@pytest.fixture
def sft_checkpoint(nanochat_home):
    """A depth-1 random model saved as sft/d1 step 5, with a 512-token tokenizer."""
    from nanochat.common import paths
    from nanochat.common.checkpoint import save_checkpoint
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    tok = _tokenizer()
    tok.save(paths.tokenizer_dir())
    config = GPTConfig(sequence_len=300, vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=32, window_pattern="L")
    save_checkpoint(paths.checkpoints_dir("sft") / "d1", 5, model_state=build_model(config, "cpu", seed=0).state_dict(), meta={"model_config": asdict(config)})
    return nanochat_home


TINY = ["--device", "cpu", "--examples-per-step", "2", "--num-samples", "4", "--device-batch-size", "2", "--max-new-tokens", "4",
        "--eval-every", "2", "--eval-examples", "2", "--save-every", "1", "--num-iterations", "3", "--top-k", "20"]  # fmt: skip


def test_offline_run_checkpoints_records_metrics_and_resumes(sft_checkpoint):
    from nanochat.common import paths
    from nanochat.common.checkpoint import find_latest, load_meta
    from nanochat.train.loop import read_metrics

    r = run_cli("rl", *TINY, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "loaded sft/d1 step 5" in out
    assert "train partition carved from the test split" in out and "held-out 319" in out
    # a few GSM8K prompts are longer than this model's 300-token context: left out, and said so
    assert "of 1000 training problems leave no room to answer in the 300-token context" in r.stdout + r.stderr
    run_dir = paths.checkpoints_dir("rl") / "d1"
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_000001", "step_000002", "step_000003"]
    meta = load_meta(run_dir / "step_000003")
    assert meta["started_from"] == {"source": "sft", "model_tag": "d1", "step": 5}
    assert "carved from the test split" in meta["train_data"] and set(meta["passk"]) == {"pass@1", "pass@2"}
    first = read_metrics(run_dir / "metrics.jsonl")
    train = {m["step"]: m for m in first if m["kind"] == "train"}
    assert sorted(train) == [0, 1, 2] and sorted(m["step"] for m in first if m["kind"] == "eval") == [0, 2, 3]
    for m in train.values():
        assert 0.0 <= m["reward"] <= 1.0 and 1 <= m["sequence_length"] <= 4 and math.isfinite(m["loss"])
    assert [train[s]["lrm"] for s in range(3)] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert json.loads((paths.report_dir() / "sections" / "rl.json").read_text())["data"]["final_step"] == 3

    # lose the last checkpoint: `--resume auto` continues from step 2 (exactness: the in-process test below)
    import shutil

    shutil.rmtree(run_dir / "step_000003")
    r = run_cli("rl", *TINY, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming rl/d1 from step 2" in r.stdout
    assert find_latest("rl", "d1").step == 3
    again = read_metrics(run_dir / "metrics.jsonl")
    redo = {m["step"]: m for m in again if m["kind"] == "train"}
    assert sorted(redo) == [0, 1, 2] and redo[2]["lrm"] == train[2]["lrm"]  # the file reads like one uninterrupted run

    # the report card: pass@1 before and after RL in the summary table, and the reward of every step since
    # step 0 (the resumed run ran only the last step) as a curve and as a table
    from nanochat.eval.report import generate_report, load_sections, summary_table

    section = json.loads((paths.report_dir() / "sections" / "rl.json").read_text())
    evals = [m for m in again if m["kind"] == "eval"]
    res = section["data"]["results"]
    assert res["rl_pass@1_before"]["value"] == evals[0]["pass@1"] and res["rl_pass@1_before"]["step"] == 0
    assert res["rl_pass@1_final"]["value"] == evals[-1]["pass@1"] and res["rl_pass@1_final"]["step"] == 3
    assert section["series"]["reward"] == [[s, redo[s]["reward"]] for s in range(3)]
    rows = section["data"]["reward per step"].splitlines()[2:]
    assert rows == [f"| {s + 1}-{s + 1} | {redo[s]['reward']:.3f} | {redo[s]['signal']:.2f} |" for s in range(3)]
    _, table = summary_table(load_sections())
    labels = [r[0] for r in table]
    assert any(lab.startswith("GSM8K held-out pass@1") and "before RL on 2 problems" in lab for lab in labels), labels
    assert any("after RL on 2 problems" in lab for lab in labels), labels
    card = generate_report()[0].read_text()
    assert "**reward per step**" in card and "| steps | mean reward |" in card


def test_bad_options_fail_with_one_line(sft_checkpoint):
    r = run_cli("rl", "--device", "cpu", "--num-samples", "6", "--device-batch-size", "4", env=ENV)
    assert r.returncode == 2 and "multiple of --device-batch-size" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("rl", "--device", "cpu", "--source", "rl", env=ENV)
    assert r.returncode == 1 and "no valid rl checkpoint" in r.stderr and "Traceback" not in r.stderr



def test_resume_repeats_the_uninterrupted_run_exactly(sft_checkpoint, monkeypatch):
    """With rewards that vary, a run resumed from step 2 computes step 2's loss and step 3's weights
    bit for bit as the uninterrupted run (weights, optimizer state and sampling seeds all restored)."""
    import shutil

    from nanochat.common import paths
    from nanochat.common.checkpoint import load_weights
    from nanochat.train import rl
    from nanochat.train.loop import read_metrics

    from tests._rl_dist_worker import EvenLength, toy_config

    monkeypatch.setattr(rl, "load_tasks", lambda split, rank: (EvenLength(), EvenLength(), "toy", "toy"))
    cfg = toy_config()
    rl.run_rl(cfg)
    run_dir = paths.checkpoints_dir("rl") / "d1"
    first = {m["step"]: m for m in read_metrics(run_dir / "metrics.jsonl") if m["kind"] == "train"}
    w3 = load_weights(run_dir / "step_000003")
    w2 = load_weights(run_dir / "step_000002")
    assert any(not torch.equal(w3[k], w2[k]) for k in w3), "the toy run should change the weights"
    assert any(m["loss"] != 0.0 for m in first.values())

    shutil.rmtree(run_dir / "step_000003")
    rl.run_rl(cfg)
    again = {m["step"]: m for m in read_metrics(run_dir / "metrics.jsonl") if m["kind"] == "train"}
    assert sorted(again) == [0, 1, 2] and again[2]["loss"] == first[2]["loss"] and again[2]["reward"] == first[2]["reward"]
    w3b = load_weights(run_dir / "step_000003")
    assert all(torch.equal(w3[k], w3b[k]) for k in w3)


def test_two_processes_train_the_same_weights_as_one(sft_checkpoint, tmp_path):
    """examples-per-step 2 over 2 gloo ranks: the same problems and seeds, per-rank advantages, gradients
    averaged by the optimizer, so the weights match a one-process run (up to summation order), and the
    pass@k all-reduce counts every problem once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from nanochat.common import paths
    from nanochat.common.checkpoint import load_meta, load_weights
    from nanochat.train.loop import read_metrics

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))
    worker = str(root / "tests" / "_rl_dist_worker.py")
    run_dir = paths.checkpoints_dir("rl") / "d1"
    start = load_weights(paths.checkpoints_dir("sft") / "d1" / "step_000005")
    results = []
    for launcher in ([], ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]):
        r = subprocess.run([sys.executable, *launcher, worker], capture_output=True, text=True, env=env, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        evals = {m["step"]: m for m in read_metrics(run_dir / "metrics.jsonl") if m["kind"] == "eval"}
        results.append((load_weights(run_dir / "step_000002"), load_meta(run_dir / "step_000002")["world_size"], evals))
    (one, w1, e1), (two, w2, e2) = results
    assert (w1, w2) == (1, 2)
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-2  # training moved the weights
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4
    assert e1[0] == e2[0] and set(e1[0]) == {"kind", "step", "pass@1", "pass@2"}


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(sft_checkpoint):
    import os
    import signal
    import subprocess
    import sys

    from nanochat.common import paths
    from nanochat.common.checkpoint import find_latest

    args = [a for a in TINY if a not in ("--num-iterations", "3", "--save-every", "1")]
    proc = subprocess.Popen([sys.executable, "-m", "nanochat", "rl", *args, "--num-iterations", "500", "--eval-every", "-1", "--save-every", "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("step 00001/00500"):
                proc.send_signal(signal.SIGTERM)
                break
        out = line + proc.stdout.read()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        proc.kill()
    saved = find_latest("rl", "d1")
    assert saved is not None and 1 <= saved.step < 500
    assert f"SIGTERM: saved step {saved.step} and stopped" in out
    assert (paths.checkpoints_dir("rl") / "d1" / "metrics.jsonl").is_file()


@pytest.mark.gpu
def test_rl_steps_on_cuda_with_graph_decoding(sft_checkpoint, monkeypatch):
    """On CUDA (bf16, CUDA-graph decoding between in-place optimizer updates) a short run finishes with
    finite losses, evaluates at the start and the end, and moves the weights."""
    from nanochat.common import paths
    from nanochat.common.checkpoint import load_weights
    from nanochat.train import rl
    from nanochat.train.loop import read_metrics

    from tests._rl_dist_worker import EvenLength, toy_config

    monkeypatch.setattr(rl, "load_tasks", lambda split, rank: (EvenLength(), EvenLength(), "toy", "toy"))
    rl.run_rl(toy_config(device="cuda", num_iterations=4, eval_every=4, eval_examples=6, save_every=-1))
    run_dir = paths.checkpoints_dir("rl") / "d1"
    records = read_metrics(run_dir / "metrics.jsonl")
    assert all(math.isfinite(m["loss"]) for m in records if m["kind"] == "train")
    assert {m["step"] for m in records if m["kind"] == "eval"} == {0, 4}
    start = load_weights(paths.checkpoints_dir("sft") / "d1" / "step_000005")
    end = load_weights(run_dir / "step_000004")
    assert max((end[k] - start[k]).abs().max().item() for k in end) > 1e-3


def test_offline_training_never_sees_an_evaluation_problem(monkeypatch):
    from nanochat.train.rl import load_tasks

    monkeypatch.setenv("NANOCHAT_OFFLINE", "1")
    train, test, train_label, eval_label = load_tasks("auto", 0)
    assert "carved from the test split" in train_label and "held-out" in eval_label
    question = lambda conv: conv["messages"][0]["content"]  # noqa: E731
    seen = {question(c) for c in train}
    held = {question(c) for c in test}
    assert len(train) == 1000 and len(test) == 319 and not seen & held


def test_passk_eval_by_hand_with_a_too_long_prompt_counted_as_failed():
    from nanochat.train.rl import RLConfig, evaluate_passk

    from tests.inference_helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    yes, no = tok.encode("yes"), tok.encode("no")
    answers = iter([[yes, yes, no, no], [no, no, no, no]])  # problem 0: 2 of 4 pass; problem 1: none

    class Engine:
        sequence_len = 64

        def generate_batch(self, prompt, num_samples, max_tokens, temperature, top_k, seed):
            return next(answers), None

    class Task(list):
        def evaluate(self, conversation, completion):
            return completion == "yes"

    task = Task({"messages": [{"role": "user", "content": q}]} for q in ["one", "two", "three " * 100])
    passk, too_long = evaluate_passk(Engine(), tok, task, 10, 4, RLConfig(), 0, 1, "cpu")
    assert too_long == 1
    # pass@k of problem 0 = 1 - C(2,k)/C(4,k): 1/2, 5/6, 1, 1; the other two fail
    assert passk == pytest.approx({"pass@1": 0.5 / 3, "pass@2": (5 / 6) / 3, "pass@3": 1 / 3, "pass@4": 1 / 3})
