"""SFT: the packing (hand-computed rows), the masked loss (by hand), the mixture (no eval sets),
and a real fine-tune of a tiny pretrained checkpoint that lowers the loss and resumes exactly."""

from __future__ import annotations

import math

import pytest

from tests.conftest import run_cli
from tests.train_helpers import install_tokenizer, train_losses

BOS = 0


class FakeTok:
    """Conversation {"k": k, "n": n} renders as BOS then n-1 copies of token 100+k, all trained."""

    bos_id = BOS

    def render_conversation(self, conv, max_tokens=2048):
        ids = [BOS] + [100 + conv["k"]] * (conv["n"] - 1)
        mask = [0] + [0 if conv.get("prompt_only") else 1] * (conv["n"] - 1)
        return ids[:max_tokens], mask[:max_tokens]


def _convs(lengths):
    return [{"k": k, "n": n} for k, n in enumerate(lengths)]


def test_best_fit_packing_by_hand():
    from nanochat.train.sft_data import SFTPacker

    # rows of 10 tokens (seq_len 9), buffer of 3
    p = SFTPacker(_convs([4, 7, 3, 12, 2, 9, 5]), FakeTok(), batch_size=3, seq_len=9, buffer_size=3)
    x, y = next(p)
    # row 1: buffer (4, 7, 3) → the 7 fits best, then (4, 3, 12→10) → the 3 fills the row exactly
    assert x[0].tolist() == [BOS] + [101] * 6 + [BOS] + [102]
    assert y[0].tolist() == [101] * 6 + [-1] + [102] * 2
    # row 2: buffer (4, 10, 2): conversation 3 was cut to one row (10) and fills it alone — never split over rows
    assert x[1].tolist() == [BOS] + [103] * 8 and y[1].tolist() == [103] * 9
    # row 3: buffer (4, 2, 9) → the 9; then (4, 2, 5) and 1 slot left: nothing fits → padded with BOS, no target
    assert x[2].tolist() == [BOS] + [105] * 8 and y[2].tolist() == [105] * 8 + [-1]
    # resume: a packer rebuilt from the state gives the same next batch as the original
    from nanochat.train.sft_data import SFTPacker as P2

    state = p.state_dict()
    a = next(p)
    b = next(P2(_convs([4, 7, 3, 12, 2, 9, 5]), FakeTok(), batch_size=3, seq_len=9, buffer_size=3, state=state))
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_conversations_with_nothing_to_train_are_passed_over():
    from nanochat.common.errors import NanochatError
    from nanochat.train.sft_data import SFTPacker

    convs = [{"k": 0, "n": 6, "prompt_only": True}, {"k": 1, "n": 3}, {"k": 2, "n": 4, "prompt_only": True}]
    x, y = next(SFTPacker(convs, FakeTok(), batch_size=1, seq_len=5, buffer_size=1))
    assert x[0].tolist() == [BOS, 101, 101, BOS, 101]  # conversation 1, twice (epochs wrap); 0 and 2 never appear
    assert y[0].tolist() == [101, 101, -1, 101, 101]
    with pytest.raises(NanochatError, match="no conversation has an assistant token"):
        next(SFTPacker([convs[0]], FakeTok(), batch_size=1, seq_len=5))


def test_packing_pads_with_bos_and_never_splits():
    """On the real demo mixture: a row is whole conversations, then BOS padding (mask 0); a conversation
    longer than a row is cut to the row and sits alone in it."""
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.train.sft_data import SFTPacker, sft_mixture
    from tests.train_helpers import session_tokenizer_dir

    tok = Tokenizer.load(session_tokenizer_dir())
    train, _, _ = sft_mixture("demo")
    seq = 64
    p = SFTPacker(train, tok, batch_size=8, seq_len=seq, buffer_size=4)  # a small buffer: padding is common
    rendered = [tuple(tok.render_conversation(train[i], max_tokens=100_000)[0]) for i in range(300)]
    whole = {r for r in rendered if len(r) <= seq + 1}
    cut = {r[: seq + 1] for r in rendered if len(r) > seq + 1}
    padded_rows = alone = 0
    for _ in range(24):
        ids, mask = p.next_row()
        assert len(ids) == len(mask) == seq + 1 and ids[0] == tok.bos_id
        starts = [i for i, t in enumerate(ids) if t == tok.bos_id] + [len(ids)]
        pieces = [tuple(ids[a:b]) for a, b in zip(starts, starts[1:])]
        real = [pc for pc in pieces if pc != (tok.bos_id,)]
        n_pad = len(pieces) - len(real)
        assert pieces[: len(real)] == real, "padding only after the conversations"
        if n_pad:
            padded_rows += 1
            assert mask[-n_pad:] == [0] * n_pad
        if len(real) == 1 and real[0] in cut:
            alone += 1
            continue
        assert all(pc in whole for pc in real), "every conversation in a row is whole"
    assert padded_rows > 0 and alone > 0, (padded_rows, alone)  # both cases occurred


def test_masked_loss_by_hand():
    """model(x, y) with the packer's targets equals the mean NLL over the assistant's tokens computed
    from the logits and the render mask; the trained tokens decode to exactly the assistant's text."""
    import torch

    from nanochat.data.tokenizer import Tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model
    from nanochat.train.sft_data import SFTPacker
    from tests.train_helpers import session_tokenizer_dir

    tok = Tokenizer.load(session_tokenizer_dir())
    convs = [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]},
        {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}]},
    ]
    n0, n1 = (len(tok.render_conversation(c)[0]) for c in convs)
    assert n0 > n1
    p = SFTPacker(convs, tok, batch_size=1, seq_len=n0 + n1 - 1, buffer_size=2)  # exactly the two fill the row
    x, y = next(p)
    trained = [t for t in y[0].tolist() if t >= 0]
    end = tok.special_id("<|assistant_end|>")
    text = tok.decode(trained)
    # best fit puts the longer conversation first; the user's words, BOS and <|assistant_start|> have no target
    assert text == "Paris." + tok.decode([end]) + "Hi there!" + tok.decode([end])
    cfg = GPTConfig(sequence_len=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    model = build_model(cfg, "cpu", init=True, seed=0)
    with torch.no_grad():
        loss = model(x, y).item()
        logp = torch.log_softmax(model(x).float(), dim=-1)[0]
    ids = []
    mask = []
    for c in convs:
        i, m = tok.render_conversation(c)
        ids += i
        mask += m
    nll = [-logp[t, ids[t + 1]].item() for t in range(len(ids) - 1) if mask[t + 1] == 1]
    assert loss == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    with torch.no_grad():
        y3 = y.clone()
        y3[y3 < 0] = 5  # a negative control: training on the user's positions too gives another loss
        assert abs(model(x, y3).item() - loss) > 1e-3


def test_demo_mixture_uses_no_eval_sets():
    from nanochat.tasks.arc import ARC
    from nanochat.tasks.base import TaskMixture
    from nanochat.tasks.mmlu import MMLU
    from nanochat.train.sft_data import sft_mixture

    train, val, parts = sft_mixture("demo")
    names = " ".join(p.name for p in parts)
    for want in ("chatterbot", "chitchat (first exchange)", "identity", "small talk", "austen", "arithmetic"):
        assert want in names
    # short conversations only: a ChitChat conversation is cut to its first user and assistant turns
    from nanochat.tasks.customjson import PackagedChat
    from nanochat.train.sft_data import FirstExchange

    chit = PackagedChat("chitchat")
    cut = FirstExchange(chit)
    assert len(cut) == len(chit) and all(cut[i]["messages"] == chit[i]["messages"][:2] for i in range(50))
    assert max(len(chit[i]["messages"]) for i in range(50)) > 2
    assert sum(p.train for p in parts) == len(train) and sum(p.val for p in parts) == len(val)

    def first_user(c):
        return c["messages"][0]["content"] if c["messages"][0]["role"] == "user" else c["messages"][1]["content"]

    train_q = {first_user(c) for c in train}
    test = TaskMixture([MMLU("all", "test", source="packaged"), ARC("ARC-Easy", "test", source="packaged"), ARC("ARC-Challenge", "test", source="packaged")])
    overlap = sum(first_user(c) in train_q for c in test)
    assert overlap <= len(test) // 200  # the few questions the source data repeats across splits; never the test split itself
    from nanochat.tasks.arithmetic import DemoArith

    assert "DemoArith" in names and not {first_user(c) for c in DemoArith("test")} & train_q  # RL's held-out problems stay out
    import json

    train_c = {json.dumps(c["messages"]) for c in train}
    # held out by content: no validation conversation is also a training one, though the sets repeat some
    assert len(val) > 300 and not any(json.dumps(c["messages"]) in train_c for c in val)


def _tiny_base(home):
    """A depth-2 base checkpoint through the real pretrain code path (in process)."""
    from nanochat.train.pretrain import PretrainConfig, run_pretrain

    install_tokenizer(home)
    run_pretrain(PretrainConfig(depth=2, data="demo", aspect_ratio=32, head_dim=32, max_seq_len=64, device_batch_size=4,
                                num_iterations=6, eval_every=-1, sample_every=-1, warmup_steps=2, device="cpu", tokenizer_threads=1,
                                matrix_lr=0.2, embedding_lr=3.0, unembedding_lr=0.08, model_tag="t"))  # fmt: skip


def _masked_loss(model, tok, convs, seq=64):
    import torch

    from nanochat.train.sft_data import SFTPacker

    p = SFTPacker(convs, tok, batch_size=len(convs), seq_len=seq, buffer_size=1)
    x, y = next(p)
    with torch.no_grad():
        return model(x, y).item()


def test_sft_lowers_loss_and_resumes_exactly(nanochat_home, monkeypatch):
    from nanochat.common import checkpoint as ck
    from nanochat.engine.loading import load_model
    from nanochat.train.sft import SFTConfig, run_sft
    from nanochat.train.sft_data import sft_mixture

    _tiny_base(nanochat_home)
    base, tok, _ = load_model("base", "t", quiet=True)
    train, _, _ = sft_mixture("demo")
    fixed = [train[i] for i in range(8)]
    before = _masked_loss(base, tok, fixed)

    common = dict(data="demo", num_iterations=6, init_lr_frac=4.0, eval_every=3, eval_tokens=256, device="cpu", model_tag="t")
    run_sft(SFTConfig(**common, out_tag="a"))
    a, _, meta = load_model("sft", "a", quiet=True)
    assert meta["step"] == 6 and meta["source"] == {"kind": "base", "tag": "t", "step": 6}
    after = _masked_loss(a, tok, fixed)
    assert after < before - 0.05, (before, after)

    # the same run cut at step 3 (checkpoint at 3, the final one deleted) and resumed: identical weights and losses
    run_sft(SFTConfig(**common, out_tag="b", save_every=3))
    import shutil

    shutil.rmtree(ck.checkpoint_dir("sft", "b") / ck.step_name(6))
    run_sft(SFTConfig(**common, out_tag="b", save_every=3))
    wa = ck.load_weights(ck.checkpoint_dir("sft", "a") / ck.step_name(6))
    wb = ck.load_weights(ck.checkpoint_dir("sft", "b") / ck.step_name(6))
    assert all((wa[k] == wb[k]).all() for k in wa)
    la, lb = train_losses(ck.checkpoint_dir("sft", "a")), train_losses(ck.checkpoint_dir("sft", "b"))
    assert la == lb and sorted(la) == list(range(6))
    assert all(math.isfinite(v) for v in la.values())

    # --num-iterations -1: one epoch of the mixture; the LR reaches its final value as the epoch ends
    from nanochat.train import sft_data
    from nanochat.train.loop import read_metrics

    small = [train[i] for i in range(200)]
    monkeypatch.setattr(sft_data, "sft_mixture", lambda data, **kw: (small, small[:10], []))
    run_sft(SFTConfig(**{**common, "num_iterations": -1, "eval_every": -1}, out_tag="e"))
    recs = [r for r in read_metrics(ck.checkpoint_dir("sft", "e") / "metrics.jsonl") if r["kind"] == "train"]
    assert 3 <= len(recs) <= 60 and recs[-1]["progress"] >= 1.0 > recs[-2]["progress"] and recs[-1]["lrm"] == 0.0
    assert ck.load_meta(ck.checkpoint_dir("sft", "e") / ck.step_name(len(recs)))["loop_state"]["done"] is True


def test_sft_cli_errors(nanochat_home):
    r = run_cli("sft", "--data", "demo", "--device", "cpu", "--nproc", "1")
    assert r.returncode == 1
    assert "no valid base checkpoint" in r.stderr and "nanochat pretrain" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_saves_and_resume_auto_continues(nanochat_home):
    import os
    import signal
    import subprocess
    import sys

    from nanochat.common import checkpoint as ck
    from nanochat.train.loop import read_metrics

    _tiny_base(nanochat_home)
    args = [sys.executable, "-m", "nanochat", "sft", "--data", "demo", "--device", "cpu", "--nproc", "1", "--eval-every", "-1", "--model-tag", "t"]
    proc = subprocess.Popen([*args, "--num-iterations", "2000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 00002/"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 0, out
    assert "SIGTERM: saved step" in out
    saved = ck.find_latest("sft", "t")
    assert saved is not None and 2 <= saved.step < 2000
    # the stopped run continues from its checkpoint (here to a shorter horizon, so it ends quickly)
    from nanochat.train.sft import SFTConfig, run_sft

    run_sft(SFTConfig(data="demo", device="cpu", eval_every=-1, model_tag="t", num_iterations=saved.step + 2))
    steps = [r["step"] for r in read_metrics(ck.checkpoint_dir("sft", "t") / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(saved.step + 2))


def test_web_mixture_offline_names_the_demo_data(monkeypatch):
    from nanochat.common.errors import NanochatError
    from nanochat.train.sft_data import sft_mixture

    monkeypatch.setenv("NANOCHAT_OFFLINE", "1")
    with pytest.raises(NanochatError, match="--data demo"):
        sft_mixture("web")
    with pytest.raises(NanochatError, match="use web .* or demo"):
        sft_mixture("mine")


def test_subset_is_a_view_of_the_chosen_conversations():
    from nanochat.tasks.identity import SmallTalk
    from nanochat.train.sft_data import Subset

    task = SmallTalk(45)
    sub = Subset(task, [40, 0, 7])
    assert len(sub) == 3 and [sub[i] for i in range(3)] == [task[40], task[0], task[7]]
