"""Side by side with the reference nanochat: same corpus, same tokenizer, same steps and batch, and a val bpb that
scores the same documents, tokens and positions for both implementations. Prints one table.

    python benchmarks/compare_reference.py --ref ~/src/nanochat-ref --data /data/code --work /tmp/cmp
    python benchmarks/compare_reference.py ... --tag nosmear --ours-args "--no-smear --no-backout" train-ours score table

`--ref` is a checkout of karpathy/nanochat (commit 92d63d4 is the one measured in benchmarks/README.md); `--data` a
folder of parquet shards with a `text` column whose last shard is the validation split (both implementations read it
so). Stages, each skipped when its output exists (so a cut call continues where it stopped):

    tokenizer   train ours (`nanochat tokenize-train`) and write it in the reference's layout too (its tokenizer.pkl and
                token_bytes.pt), so both models see the very same token ids
    valrows     pack the validation split once (BOS-aligned best fit, buffer 1000) into --eval-rows rows of T+1 tokens
    train-ref   the reference's scripts.base_train, checkpoint every --save-every steps, its own val eval off
    train-ours  `nanochat pretrain` with the same depth, steps, batch and sequence length, checkpoints likewise
    score       every checkpoint of both on the fixed rows: per-token cross-entropy from each implementation's own model
                code (bf16 on CUDA), summed by this file's one bpb function; the reference runs in a subprocess with
                its checkout first on sys.path (both packages are called `nanochat`)
    table       step / ours / reference / ratio; mean train loss over windows (each log's own debiased EMA); time per
                step; training time to the reference's final bpb (sum of step times, step 0 excluded for both: it
                holds the compile), linearly interpolated between scored checkpoints

The reference needs `wandb` importable; a stand-in module is written under --work when it is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent


# ---------------------------------------------------------------------------------------------- scoring (plain torch)


def bpb_of_rows(loss_fn, rows, token_bytes, batch: int, device: str) -> float:
    """Bits per byte of `loss_fn(x, y) -> per-token nats` over int rows (N, T+1): targets with 0 bytes (special
    tokens) are left out of both sums, as in both implementations' own evaluations."""
    import torch

    tb = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch):
            chunk = torch.as_tensor(rows[i : i + batch], dtype=torch.long).to(device)
            x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            loss = loss_fn(x, y).reshape(-1).double()
            b = tb[y.reshape(-1)]
            nats += (loss * (b > 0)).sum()
            nbytes += b.sum()
    return float(nats) / (math.log(2) * float(nbytes))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def score_ours(work: Path, tag: str, rows_path: Path, batch: int) -> dict[int, float]:
    import numpy as np
    import torch

    os.environ["NANOCHAT_HOME"] = str(work / "ours")
    from nanochat.common import checkpoint as ck
    from nanochat.common.device import choose_dtype
    from nanochat.data.tokenizer import get_tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    device = _device()
    rows = np.load(rows_path)
    token_bytes = get_tokenizer().token_bytes()
    out = {}
    for step in ck.list_steps("base", tag):
        path = ck.checkpoint_dir("base", tag) / ck.step_name(step)
        meta = ck.load_meta(path)
        model = build_model(GPTConfig.from_dict(meta["model_config"]), device, init=False, dtype=choose_dtype(device).dtype)
        model.load_state_dict(ck.load_weights(path, device), strict=True)
        model.eval()
        out[step] = bpb_of_rows(lambda x, y: model(x, y, loss_reduction="none"), rows, token_bytes, batch, device)
        print(f"ours {tag} step {step}: {out[step]:.6f}", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def score_ref_here(ckpt_dir: Path, rows_path: Path, token_bytes_path: Path, batch: int) -> dict[int, float]:
    """Runs inside the reference's environment (its `nanochat` package first on sys.path)."""
    import numpy as np
    import torch
    from nanochat.gpt import GPT, GPTConfig  # the reference's

    device = _device()
    rows = np.load(rows_path)
    token_bytes = torch.load(token_bytes_path, weights_only=True).tolist()
    out = {}
    for model_file in sorted(ckpt_dir.glob("model_*.pt")):
        step = int(model_file.stem.split("_")[1])
        meta = json.loads((ckpt_dir / f"meta_{step:06d}.json").read_text())
        with torch.device("meta"):
            model = GPT(GPTConfig(**meta["model_config"]))
        model.to_empty(device=device)
        model.init_weights()
        state = torch.load(model_file, map_location=device, weights_only=True)
        state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()

        def loss_fn(x, y):
            return model(x, y, loss_reduction="none").view(x.shape[0], -1)

        out[step] = bpb_of_rows(loss_fn, rows, token_bytes, batch, device)
        print(f"reference step {step}: {out[step]:.6f}", flush=True)
        del model
    return out


# ---------------------------------------------------------------------------------------------- stages


def _ours_env(work: Path) -> dict:
    env = dict(os.environ, NANOCHAT_HOME=str(work / "ours"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _ref_env(args) -> dict:
    stubs = args.work / "stubs"
    if subprocess.run([sys.executable, "-c", "import wandb"], capture_output=True).returncode != 0:
        (stubs / "wandb").mkdir(parents=True, exist_ok=True)
        (stubs / "wandb" / "__init__.py").write_text('def init(*a, **k):\n    raise RuntimeError("wandb stand-in: use --run dummy")\n')
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != (REPO / "src").resolve()]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.ref), str(stubs)] + extra), NANOCHAT_BASE_DIR=str(args.work / "ref"), PYTHONUNBUFFERED="1")


def _run(cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    print(f"  {time.time() - t0:.0f}s, log {log}", flush=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {shlex.join(cmd)}; see {log}:\n" + "".join(log.read_text().splitlines(True)[-15:]))


def stage_tokenizer(args) -> None:
    import pickle

    tok_dir = args.work / "ours" / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        cmd = [sys.executable, "-m", "nanochat", "tokenize-train", "--data", str(args.data), "--vocab-size", str(args.vocab_size), "--max-chars", str(args.tok_chars)]
        _run(cmd, _ours_env(args.work), args.work / "ours_tok.log")
    ref_dir = args.work / "ref" / "tokenizer"
    if (ref_dir / "token_bytes.pt").exists():
        return
    import torch

    sys.path.insert(0, str(REPO / "src"))
    os.environ["NANOCHAT_HOME"] = str(args.work / "ours")
    from nanochat.data.tokenizer import get_tokenizer

    tok = get_tokenizer()
    ref_dir.mkdir(parents=True, exist_ok=True)
    # the reference loads a pickled tiktoken Encoding; ours has the same special tokens in the same order
    with open(ref_dir / "tokenizer.pkl", "wb") as f:
        pickle.dump(tok._enc, f)
    torch.save(torch.tensor(tok.token_bytes(), dtype=torch.int32), ref_dir / "token_bytes.pt")
    print(f"tokenizer: {tok.vocab_size} tokens, written for the reference in {ref_dir}")


def stage_valrows(args) -> None:
    import numpy as np

    out = args.work / "valrows.npy"
    if out.exists():
        return
    sys.path.insert(0, str(REPO / "src"))
    os.environ["NANOCHAT_HOME"] = str(args.work / "ours")
    from nanochat.data.corpus import open_corpus
    from nanochat.data.loader import PackingLoader
    from nanochat.data.tokenizer import get_tokenizer

    loader = PackingLoader(open_corpus(str(args.data), "val"), get_tokenizer(), args.eval_rows, args.seq_len, threads=4, buffer_size=1000)
    rows = loader.next_rows()
    loader.close()
    tmp = out.with_suffix(".tmp.npy")
    np.save(tmp, rows)
    os.replace(tmp, out)
    print(f"valrows: {rows.shape[0]} rows of {rows.shape[1]} tokens -> {out}")


def _shape_args(args) -> list[str]:
    """The flags both trainers take under the same names and meanings."""
    return ["--depth", str(args.depth), "--num-iterations", str(args.steps), "--max-seq-len", str(args.seq_len),
            "--device-batch-size", str(args.device_batch_size), "--total-batch-size", str(args.total_batch_size),
            "--aspect-ratio", str(args.aspect_ratio), "--head-dim", str(args.head_dim), "--window-pattern", args.window_pattern,
            "--warmup-steps", str(args.warmup_steps),
            "--core-metric-every", "-1", "--sample-every", "-1", "--save-every", str(args.save_every),
            *shlex.split(args.both_args)]  # fmt: skip


def stage_train_ref(args) -> None:
    done = args.work / "ref" / "base_checkpoints" / "d_cmp" / f"model_{args.steps:06d}.pt"
    if done.exists():
        return
    link = args.work / "ref" / "base_data_climbmix"  # where the reference reads its shards
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(args.data, target_is_directory=True)
    cmd = [sys.executable, "-m", "scripts.base_train", *_shape_args(args), "--eval-every", "-1", "--run", "dummy", "--model-tag", "d_cmp"]
    cmd += ["--device-type", args.device] if args.device != "auto" else []
    _run(cmd, _ref_env(args), args.work / "ref_train.log", cwd=args.ref)


def stage_train_ours(args) -> None:
    done = args.work / "ours" / "checkpoints" / "base" / args.tag / f"step_{args.steps:06d}"
    if done.exists():
        return
    cmd = [sys.executable, "-m", "nanochat", "pretrain", *_shape_args(args), "--data", str(args.data), "--eval-every", "-1",
           "--resume", "never", "--model-tag", args.tag, "--device", args.device, *shlex.split(args.ours_args)]  # fmt: skip
    _run(cmd, _ours_env(args.work), args.work / f"ours_train_{args.tag}.log")


def stage_score_ref_only(args) -> None:
    """Scores the reference's checkpoints (in a subprocess running its code) unless its scores exist."""
    if not (args.work / "scores_ref.json").exists() and (args.work / "ref" / "base_checkpoints" / "d_cmp").exists():
        cmd = [sys.executable, str(HERE), "--ref", str(args.ref), "--data", str(args.data), "--work", str(args.work), "_score-ref"]
        _run(cmd, _ref_env(args), args.work / "ref_score.log")


def stage_score(args) -> None:
    rows = args.work / "valrows.npy"
    stage_score_ref_only(args)
    ours_scores = args.work / f"scores_ours_{args.tag}.json"
    if not ours_scores.exists():
        scores = score_ours(args.work, args.tag, rows, args.score_batch)
        ours_scores.write_text(json.dumps(scores))
    if not args.keep_checkpoints:
        free_scored_checkpoints(args.work, args.tag, args.steps)


def free_scored_checkpoints(work: Path, tag: str, final_step: int) -> None:
    """Scored checkpoints are not needed again: a d12 run with optimizer state every 20 steps fills ~27 GB, so three runs
    overflow a 64 GB disk. Keeps our final step and the reference's weights (its optimizer shards go)."""
    import shutil

    ours = work / "ours" / "checkpoints" / "base" / tag
    if (work / f"scores_ours_{tag}.json").exists() and ours.is_dir():
        for d in ours.glob("step_*"):
            if d.is_dir() and d.name != f"step_{final_step:06d}":
                shutil.rmtree(d)
    if (work / "scores_ref.json").exists():
        for f in (work / "ref" / "base_checkpoints" / "d_cmp").glob("optim_*.pt"):
            f.unlink()


def stage_score_ref(args) -> None:
    ckpt = args.work / "ref" / "base_checkpoints" / "d_cmp"
    scores = score_ref_here(ckpt, args.work / "valrows.npy", args.work / "ref" / "tokenizer" / "token_bytes.pt", args.score_batch)
    (args.work / "scores_ref.json").write_text(json.dumps(scores))


# ---------------------------------------------------------------------------------------------- logs and the table

_REF_STEP = re.compile(r"^step (\d+)/\d+ .*?\| loss: ([0-9.]+) .*?\| dt: ([0-9.]+)ms")


def ref_steps(log: Path) -> dict[int, tuple[float, float]]:
    """step -> (debiased EMA train loss, seconds) from the reference's training log."""
    out = {}
    for line in log.read_text().splitlines():
        m = _REF_STEP.match(line.strip())
        if m:
            out[int(m.group(1))] = (float(m.group(2)), float(m.group(3)) / 1000)
    return out


def ours_steps(metrics: Path) -> dict[int, tuple[float, float]]:
    out = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train":
            out[int(rec["step"])] = (float(rec["smooth_loss"]), float(rec["dt"]))
    return out


def time_to(target: float, scores: dict[int, float], steps: dict[int, tuple[float, float]]) -> float | None:
    """Training seconds (steps 1.. summed; step 0 holds the compile) until the scored bpb first reaches `target`."""
    def seconds_at(s: float) -> float:
        whole = int(s)
        t = sum(dt for i, (_, dt) in steps.items() if 1 <= i < whole)
        return t + (s - whole) * steps.get(whole, (0.0, 0.0))[1]

    prev = None
    for step in sorted(scores):
        bpb = scores[step]
        if bpb <= target:
            if prev is None or prev[1] == bpb:
                return seconds_at(step)
            s0, b0 = prev
            frac = (b0 - target) / (b0 - bpb)
            return seconds_at(s0 + frac * (step - s0))
        prev = (step, bpb)
    return None


def stage_table(args) -> None:
    ref = {int(k): v for k, v in json.loads((args.work / "scores_ref.json").read_text()).items()}
    ours = {int(k): v for k, v in json.loads((args.work / f"scores_ours_{args.tag}.json").read_text()).items()}
    rs = ref_steps(args.work / "ref_train.log")
    os_ = ours_steps(args.work / "ours" / "checkpoints" / "base" / args.tag / "metrics.jsonl")
    print(f"\nd{args.depth}, {args.steps} steps x {args.total_batch_size:,} tokens; val bpb on the same {args.eval_rows} rows "
          f"x {args.seq_len} tokens for both (ours: {args.tag} {args.ours_args})")  # fmt: skip
    print("| step | ours bpb | reference bpb | ours/ref |")
    print("|---|---|---|---|")
    for step in sorted(set(ref) | set(ours)):
        o, r = ours.get(step), ref.get(step)
        ratio = f"{o / r:.4f}" if o is not None and r is not None else "-"
        print(f"| {step} | {o:.4f} | {r:.4f} | {ratio} |" if o is not None and r is not None else f"| {step} | {o} | {r} | - |")
    w = args.window
    print(f"\n| train steps | ours loss (EMA) | reference loss (EMA) | ours s/step | reference s/step |")
    print("|---|---|---|---|---|")
    for lo in range(0, args.steps, w):
        hi = min(lo + w, args.steps) - 1
        o = [os_[i] for i in range(max(lo, 1), hi + 1) if i in os_]
        r = [rs[i] for i in range(max(lo, 1), hi + 1) if i in rs]
        if not o or not r:
            continue
        print(f"| {lo}-{hi} | {os_[hi][0] if hi in os_ else float('nan'):.4f} | {rs[hi][0] if hi in rs else float('nan'):.4f} | "
              f"{sum(d for _, d in o) / len(o):.3f} | {sum(d for _, d in r) / len(r):.3f} |")  # fmt: skip
    final = ref[max(ref)]
    t_ref, t_ours = time_to(final, ref, rs), time_to(final, ours, os_)
    first = 10 if args.steps > 20 else 1  # steady state: past the compile and the allocator's warm-up
    steady_o = [d for i, (_, d) in os_.items() if i >= first]
    steady_r = [d for i, (_, d) in rs.items() if i >= first]
    tok = args.total_batch_size
    print(f"\ntokens/s (steps >= {first}): ours {tok * len(steady_o) / sum(steady_o):,.0f}, reference {tok * len(steady_r) / sum(steady_r):,.0f}, "
          f"ratio {sum(steady_r) / len(steady_r) / (sum(steady_o) / len(steady_o)):.3f}")  # fmt: skip
    print(f"first step (compile): ours {os_.get(0, (0, float('nan')))[1]:.0f}s, reference {rs.get(0, (0, float('nan')))[1]:.0f}s")
    fmt = lambda t: f"{t:.1f}s" if t is not None else "not reached"  # noqa: E731
    ratio = f"{t_ours / t_ref:.3f}" if t_ours is not None and t_ref else "-"
    print(f"training time to the reference's final bpb {final:.4f}: ours {fmt(t_ours)}, reference {fmt(t_ref)}, ratio {ratio}")


STAGES = {"tokenizer": stage_tokenizer, "valrows": stage_valrows, "train-ref": stage_train_ref, "train-ours": stage_train_ours,
          "score": stage_score, "score-ref": stage_score_ref_only, "table": stage_table, "_score-ref": stage_score_ref}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stages", nargs="*", default=["tokenizer", "valrows", "train-ref", "train-ours", "score", "table"])
    ap.add_argument("--ref", type=Path, required=True, help="reference nanochat checkout")
    ap.add_argument("--data", type=Path, required=True, help="folder of parquet shards (last = validation)")
    ap.add_argument("--work", type=Path, required=True, help="working folder (tokenizers, checkpoints, logs, scores)")
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--device-batch-size", type=int, default=32)
    ap.add_argument("--total-batch-size", type=int, default=524288)
    ap.add_argument("--aspect-ratio", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--window-pattern", default="SSSL", help="use L below T=512: the two differ in the short window there")
    ap.add_argument("--warmup-steps", type=int, default=40)
    ap.add_argument("--save-every", type=int, default=20, help="checkpoint (and so score) every N steps")
    ap.add_argument("--eval-rows", type=int, default=2560, help="validation rows scored (x seq-len tokens)")
    ap.add_argument("--score-batch", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--tok-chars", default="2e8", help="characters the tokenizer trains on")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu (passed to both trainers)")
    ap.add_argument("--tag", default="d_cmp", help="our run's model tag (one per ablation)")
    ap.add_argument("--both-args", default="", help="extra flags both trainers take, e.g. '--matrix-lr 0.04'")
    ap.add_argument("--ours-args", default="", help="extra flags for our pretrain, e.g. '--no-smear'")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint after scoring (default: free the disk)")
    ap.add_argument("--window", type=int, default=20, help="train-loss window in steps")
    args = ap.parse_args()
    args.work = args.work.resolve()
    args.ref = args.ref.resolve()
    args.data = args.data.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.stages:
        if name not in STAGES:
            sys.exit(f"unknown stage {name!r}; stages: {', '.join(s for s in STAGES if not s.startswith('_'))}")
        t0 = time.time()
        STAGES[name](args)
        print(f"--- {name} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
