"""Serving throughput and latency: a real `nanochat serve` on 127.0.0.1 under N concurrent streaming clients.

    python benchmarks/bench_serve.py                                  # a tiny random model, 1, 8 and 32 clients
    python benchmarks/bench_serve.py --model-tag d20 --device cuda --clients 1,8,32 --max-tokens 256

With --model-tag the server loads that checkpoint from your NANOCHAT_HOME (--source, default the newest of
sft and rl). Without it a random model of --depth layers is saved as a throwaway sft checkpoint in a
temporary NANOCHAT_HOME (tokenizer trained on the packaged demo corpus); a random model never ends its
answer, so every request generates exactly --max-tokens tokens.

For each client count the clients start together, and each sends --rounds streaming requests to
`/v1/chat/completions` one after another (a different prompt per client, seeded sampling at temperature
0.8). Measured on the client side: aggregate tokens/s (completion tokens from each stream's usage, over the
wall time from the first request to the last answer), time to first token (request sent to the first
content chunk) and inter-token latency (gaps between a stream's content chunks), p50 and p99 over all
requests. The ratio column is the aggregate tokens/s over the single-client one (the 1-client row, run
first whether or not --clients lists it). The server runs with `--batch-slots` (its default unless given)
and a queue as long as the most clients, so nobody is refused. Prints one table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

TOPICS = ["the sea", "a small robot", "bread", "winter mornings", "the moon", "trains", "a garden", "numbers"]


def make_tiny_checkpoint(depth: int, vocab: int, seq_len: int) -> str:
    """A random model of `depth` saved as sft/d{depth} in a new NANOCHAT_HOME (set in os.environ); its tag."""
    os.environ["NANOCHAT_HOME"] = tempfile.mkdtemp(prefix="nanochat-bench-serve-")
    from nanochat.common import paths
    from nanochat.common.checkpoint import save_checkpoint
    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    docs = [t for t, _ in open_corpus("demo", "train").iter_docs(loop=False)]
    tok = Tokenizer.train(docs, vocab)
    tok.save(paths.tokenizer_dir())
    config = GPTConfig.from_depth(depth, vocab_size=tok.vocab_size, sequence_len=seq_len)
    model = build_model(config, "cpu", seed=0)
    tag = f"d{depth}"
    save_checkpoint(paths.checkpoints_dir("sft") / tag, 0, model_state=model.state_dict(), meta={"model_config": config.to_dict()})
    return tag


def start_server(args, tag: str, port: int, queue_size: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nanochat", "serve", "--port", str(port), "--model-tag", tag, "--device", args.device, "--queue-size", str(queue_size)]
    if args.source:
        cmd += ["--source", args.source]
    if args.batch_slots:
        cmd += ["--batch-slots", str(args.batch_slots)]
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nanochat serve exited with code {proc.returncode}:\n{proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("nanochat serve did not become ready within 10 minutes")


def stream_one(port: int, client: int, round_: int, max_tokens: int) -> dict:
    """One streaming chat completion: its token count, time to first token and gaps between content chunks."""
    body = {"model": "nanochat", "messages": [{"role": "user", "content": f"Tell me about {TOPICS[client % len(TOPICS)]}."}], "max_tokens": max_tokens,
            "temperature": 0.8, "seed": 1000 * client + round_, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"the server answered {resp.status}: {resp.read()[:300]!r}")
    stamps, tokens = [], 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        obj = json.loads(line[6:])
        if any(c["delta"].get("content") for c in obj["choices"]):
            stamps.append(time.perf_counter())
        if obj.get("usage"):
            tokens = obj["usage"]["completion_tokens"]
    conn.close()
    return {"tokens": tokens, "ttft": stamps[0] - t0 if stamps else float("nan"), "gaps": [b - a for a, b in zip(stamps, stamps[1:])], "end": time.perf_counter()}


def run_clients(port: int, clients: int, rounds: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `rounds` requests in turn; aggregate tokens/s and latency percentiles."""
    results: list = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(rounds):
            got = stream_one(port, i, r, max_tokens)
            with lock:
                results.append(got)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    ttft = sorted(r["ttft"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps"])
    return {"tok_s": sum(r["tokens"] for r in results) / wall, "ttft": ttft, "itl": gaps}


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--model-tag", default=None, help="a checkpoint in NANOCHAT_HOME (default: a tiny random model)")
    ap.add_argument("--source", default=None, help="with --model-tag: sft, rl or base")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-slots", type=int, default=None, help="passed to nanochat serve (default: its own)")
    ap.add_argument("--depth", type=int, default=4, help="the tiny model's depth (without --model-tag)")
    ap.add_argument("--vocab", type=int, default=2048, help="the tiny model's vocabulary")
    ap.add_argument("--seq-len", type=int, default=512, help="the tiny model's context")
    ap.add_argument("--port", type=int, default=0, help="default: a free one")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if not counts or min(counts) < 1 or args.max_tokens < 1 or args.rounds < 1:
        raise SystemExit("--clients wants counts of 1 or more (e.g. 1,8,32); --max-tokens and --rounds 1 or more")
    tag = args.model_tag or make_tiny_checkpoint(args.depth, args.vocab, args.seq_len)
    port = args.port or free_port()
    proc = start_server(args, tag, port, queue_size=max(counts))
    try:
        stream_one(port, 0, 0, 4)  # warm-up
        rows = {n: run_clients(port, n, args.rounds, args.max_tokens) for n in sorted(set(counts) | {1})}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print_table(args, tag, rows, counts)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_table(args, tag: str, rows: dict, counts: list[int]) -> None:
    from nanochat.common.logging import console, table

    single = rows[1]["tok_s"]
    what = f"--model-tag {tag}" if args.model_tag else f"tiny random d{args.depth} (vocab {args.vocab}, context {args.seq_len})"
    cells = []
    for n in counts:
        r = rows[n]
        ms = [f"{1000 * pct(r[k], q):.0f} ms" for k, q in (("ttft", 0.5), ("ttft", 0.99), ("itl", 0.5), ("itl", 0.99))]
        cells.append([str(n), f"{r['tok_s']:,.0f}", *ms, f"{single:,.0f}", f"{r['tok_s'] / single:.2f}x"])
    title = f"nanochat serve, {what}, device {args.device}, {args.max_tokens} tokens x {args.rounds} rounds per client"
    console().print(table(title, cells, ["clients", "tokens/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "1-client tok/s", "ratio"]))


if __name__ == "__main__":
    main()
