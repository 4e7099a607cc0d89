"""`nanochat pretrain` end to end on the demo data: val bpb falls, a valid checkpoint loads, the dry run,
the non-finite-loss guard, and SIGTERM → checkpoint → exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import run_cli
from tests.train_helpers import TINY, install_tokenizer, train_losses, val_bpbs


def test_demo_run_val_bpb_falls_and_checkpoint_loads(nanochat_home):
    # the demo command (depth 4), cut down to fit the test budget: width 128, 128-token rows of 4, 24 steps
    install_tokenizer(nanochat_home)
    args = ["pretrain", "--data", "demo", "--depth", "4", "--aspect-ratio", "32", "--head-dim", "32", "--max-seq-len", "128", "--device-batch-size", "4", "--num-iterations", "24",
            "--device", "cpu", "--eval-every", "12", "--eval-tokens", "2048", "--sample-every", "24", "--warmup-steps", "4",
            "--core-metric-every", "24", "--core-metric-max-per-task", "1",
            "--matrix-lr", "0.1", "--embedding-lr", "1.5", "--unembedding-lr", "0.04", "--tokenizer-threads", "1"]  # fmt: skip
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for derived in ("total batch (tokens)", "gradient accumulation", "iterations", "effective LR Muon", "weight decay", "FLOPs per token"):
        assert derived in r.stdout
    assert "step 00024/00024" in r.stdout and "tok/s" in r.stdout and "eta" in r.stdout and "sample:" in r.stdout
    run_dir = nanochat_home / "checkpoints" / "base" / "d4"
    bpb = val_bpbs(run_dir)
    assert sorted(bpb) == [0, 12, 24]
    assert bpb[24] < bpb[12] < bpb[0], bpb
    assert len(train_losses(run_dir)) == 24
    assert "CORE" in r.stdout  # the eval stage's CORE (offline bundle) ran at the last step
    # the done line reports the run's peak memory; the kernel's own account of the largest child we waited for
    # (getrusage RUSAGE_CHILDREN, this run or an earlier test's bigger one) bounds it from above
    import re
    import resource

    peak = float(re.search(r"^done: .*, peak RSS ([0-9.]+) GiB$", r.stdout, re.M).group(1))
    assert 0.1 < peak <= resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20 + 0.05

    from nanochat.common.checkpoint import find_latest
    from nanochat.engine.loading import load_model

    assert find_latest("base", "d4").step == 24
    model, tokenizer, meta = load_model("base", device="cpu")
    assert meta["step"] == 24 and meta["model_config"]["n_layer"] == 4 and tokenizer.vocab_size == 512
    assert meta["val_bpb"] == pytest.approx(bpb[24])
    # the loaded weights give the final val bpb again from a naive reference of its token set: the val
    # documents in order as one BOS-separated stream, the first 2048 targets in rows of 128, one row at a time
    from nanochat.data.corpus import open_corpus
    from nanochat.eval.bpb import evaluate_bpb, token_stream_batches

    assert meta["val_bpb_tokens"] == 2048
    docs = (text for text, _ in open_corpus("demo", "val").iter_docs(loop=False))
    again = evaluate_bpb(model, token_stream_batches(tokenizer, docs, 1, 128, "cpu"), 2048 // 128, tokenizer.token_bytes())
    assert again == pytest.approx(bpb[24], rel=1e-5)
    assert not list(nanochat_home.rglob("*.pt")) and not list(nanochat_home.rglob("*.pkl"))


def test_dry_run_builds_on_meta_and_trains_nothing(nanochat_home):
    r = run_cli("pretrain", "--depth", "12", "--dry-run", "--data", "web", "--device", "cuda")
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "dry run: nothing trained" in out
    assert "768" in out and "524,288" in out  # width and the power-law batch at depth 12
    assert "tokenizer" in out and "absent" in out and "nanochat data download" in out
    assert not (nanochat_home / "checkpoints").exists()


def test_dry_run_prints_the_effective_learning_rates(nanochat_home):
    """Depth 20 (width 1280) plans a 2^20-token batch: every LR x sqrt(2); AdamW head/embedding LRs also x sqrt(768/1280)."""
    r = run_cli("pretrain", "--depth", "20", "--dry-run", "--data", "web", "--device", "cuda")
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃|").split("│")]
        if len(cells) == 2 and cells[0].startswith("effective LR"):
            rows[cells[0]] = cells[1]
    b, w = 2**0.5, (768 / 1280) ** 0.5
    want = {"lm_head": 0.008 * b * w, "wte": 0.3 * b * w, "value_embeds": 0.15 * b * w, "resid_lambdas": 0.005 * b,
            "x0_lambdas": 0.5 * b, "smear": 0.2}  # fmt: skip
    for name, lr in want.items():
        assert float(rows[f"effective LR {name} (AdamW)"]) == pytest.approx(lr, rel=1e-5), (name, rows)
    assert float(rows["effective LR Muon"]) == pytest.approx(0.02 * b, rel=1e-5)
    assert rows["effective LR Muon c_fc (5120×1280)"].startswith(f"{0.04 * b:.6g} ")


def test_bad_options_fail_in_one_line(nanochat_home):
    r = run_cli("pretrain", *TINY, "--num-iterations", "2")
    assert r.returncode == 1 and "tokenize-train" in r.stderr and "Traceback" not in r.stderr
    install_tokenizer(nanochat_home)
    web = [a if a != "demo" else "web" for a in TINY]
    r = run_cli("pretrain", *web, "--num-iterations", "2")
    assert r.returncode == 1 and "nanochat data download" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("pretrain", *TINY, "--num-iterations", "2", "--total-batch-size", "1000")
    assert r.returncode == 2 and "not a multiple" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("pretrain", *TINY, "--num-iterations", "2", "--resume", "sometimes")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = run_cli("pretrain", *TINY, "--num-iterations", "2", "--resume", "7")
    assert r.returncode == 1 and "no checkpoint" in r.stderr
    (nanochat_home / "checkpoints" / "base" / "d2" / "step_000003").mkdir(parents=True)  # no manifest: damaged
    r = run_cli("pretrain", *TINY, "--num-iterations", "2", "--resume", "never")
    # only a damaged folder there: starting over is what --resume auto's refusal asks for, with a warning
    assert r.returncode == 0 and "starting over beside damaged step folders" in r.stderr, r.stderr
    r = run_cli("pretrain", *TINY, "--num-iterations", "2", "--resume", "never")  # step 2 of that run is valid
    assert r.returncode == 1 and "--model-tag" in r.stderr


def _in_process_run(monkeypatch, home, nan_calls, max_bad_steps=3, iterations=6):
    """Pretraining in this process, the training loss made NaN on the given forward calls; returns
    (config, pretrain module, snapshots) where snapshots[k] = (params, optimizer state) after real step k."""
    install_tokenizer(home)
    import nanochat.optim
    from nanochat.model import gpt
    from nanochat.train import pretrain

    real_forward, real_build_opt = gpt.GPT.forward, nanochat.optim.build_optimizer
    calls = {"n": 0}
    snapshots = []

    def forward(self, idx, targets=None, *a, **k):
        out = real_forward(self, idx, targets, *a, **k)
        if targets is not None and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in nan_calls:
                out = out * float("nan")
        return out

    def build_opt(model, **kw):
        opt = real_build_opt(model, **kw)
        real_step = opt.step

        def step(*a, **k):
            real_step(*a, **k)
            state = {(i, key): v.clone() for i, (p, st) in enumerate(opt.state.items()) for key, v in st.items() if torch.is_tensor(v)}
            snapshots.append(([p.detach().clone() for p in model.parameters()], state, model, opt))

        opt.step = step
        return opt

    monkeypatch.setattr(gpt.GPT, "forward", forward)
    monkeypatch.setattr(nanochat.optim, "build_optimizer", build_opt)
    cfg = pretrain.PretrainConfig(depth=2, data="demo", aspect_ratio=32, head_dim=32, max_seq_len=64, device_batch_size=4,
                                  num_iterations=iterations, device="cpu", eval_every=-1, sample_every=-1, warmup_steps=2,
                                  tokenizer_threads=1, max_bad_steps=max_bad_steps, model_tag="guard")  # fmt: skip
    return cfg, pretrain, snapshots


def test_nonfinite_loss_skips_the_step(monkeypatch, nanochat_home):
    cfg, pretrain, snapshots = _in_process_run(monkeypatch, nanochat_home, nan_calls={3})
    summary = pretrain.run_pretrain(cfg)
    assert summary["final_step"] == 6 and len(snapshots) == 6
    from nanochat.train.loop import read_metrics

    recs = read_metrics(nanochat_home / "checkpoints" / "base" / "guard" / "metrics.jsonl")
    kinds = [(r["kind"], r["step"]) for r in recs]
    # the third forward is step 2's: skipped, then step 2 is done again on the next batch
    assert kinds == [("train", 0), ("train", 1), ("skip", 2)] + [("train", s) for s in range(2, 6)]
    assert all(torch.isfinite(p).all() for p in snapshots[-1][0])


def test_repeated_nonfinite_losses_stop_without_touching_the_model(monkeypatch, nanochat_home):
    from nanochat.common.errors import NanochatError

    cfg, pretrain, snapshots = _in_process_run(monkeypatch, nanochat_home, nan_calls=set(range(3, 100)), max_bad_steps=3)
    with pytest.raises(NanochatError, match="3 steps in a row"):
        pretrain.run_pretrain(cfg)
    assert len(snapshots) == 2  # steps 0 and 1 ran; three NaN attempts at step 2 were skipped
    params, opt_state, model, opt = snapshots[-1]
    for before, now in zip(params, model.parameters()):
        assert torch.equal(before, now)  # bit for bit: NaN gradients never reached the weights
    now_state = {(i, key): v for i, (p, st) in enumerate(opt.state.items()) for key, v in st.items() if torch.is_tensor(v)}
    assert now_state.keys() == opt_state.keys() and len(now_state) > 0
    for key, v in opt_state.items():
        assert torch.equal(v, now_state[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_sigterm_saves_and_exits_zero(nanochat_home):
    install_tokenizer(nanochat_home)
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-m", "nanochat", "pretrain", *TINY, "--num-iterations", "100000", "--eval-every", "-1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    seen = 0
    for line in p.stdout:
        if line.startswith("step 0"):
            seen += 1
            if seen == 3:
                p.send_signal(signal.SIGTERM)
                break
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert "SIGTERM: saved step" in out
    from nanochat.common.checkpoint import find_latest

    info = find_latest("base", "d2")
    assert info is not None and info.step >= 3
    assert f"saved step {info.step}" in out


@pytest.mark.gpu
def test_cuda_run_compiles_trains_and_resumes(nanochat_home):
    # bf16 + torch.compile on the GPU: trains, saves, resumes (close, not bit-exact: GPU kernels may reorder sums)
    install_tokenizer(nanochat_home)
    args = ["pretrain", "--data", "demo", "--depth", "4", "--max-seq-len", "256", "--device-batch-size", "8", "--device", "cuda",
            "--nproc", "1", "--num-iterations", "20", "--save-every", "10", "--eval-every", "10", "--eval-tokens", "16384"]  # fmt: skip
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "compiled" in r.stdout and "bfloat16" in r.stdout and "mfu" in r.stdout
    run_dir = nanochat_home / "checkpoints" / "base" / "d4"
    first = train_losses(run_dir)
    bpb = val_bpbs(run_dir)
    assert bpb[20] < bpb[0]
    import shutil

    shutil.rmtree(run_dir / "step_000020")
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0 and "resuming d4 from step 10" in r.stdout
    again = train_losses(run_dir)
    assert max(abs(again[s] - first[s]) for s in range(10, 20)) < 1e-2


def test_val_bpb_matches_a_hand_computation_from_logits():
    # two code paths: the model's per-token losses (loss_reduction="none") and cross-entropy of its logits here
    import math

    import torch.nn.functional as F

    from nanochat.data.tokenizer import Tokenizer
    from nanochat.eval.bpb import evaluate_bpb
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model
    from tests.train_helpers import session_tokenizer_dir

    tok = Tokenizer.load(session_tokenizer_dir())
    model = build_model(GPTConfig.from_depth(2, tok.vocab_size, 32, aspect_ratio=32, head_dim=32), "cpu", seed=3)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, tok.vocab_size, (3, 2, 33), generator=g)
    rows[0, 0, 5] = tok.bos_id  # a special token as a target: 0 bytes, not counted
    batches = [(r[:, :-1], r[:, 1:]) for r in rows]
    ours = evaluate_bpb(model, iter(batches), 3, tok.token_bytes())
    table = torch.tensor(tok.token_bytes())
    nats = nbytes = 0.0
    with torch.no_grad():
        for x, y in batches:
            ce = F.cross_entropy(model(x).reshape(-1, tok.vocab_size).double(), y.reshape(-1), reduction="none")
            b = table[y.reshape(-1)]
            nats += float((ce * (b > 0)).sum())
            nbytes += float(b.sum())
    assert ours == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-6)
