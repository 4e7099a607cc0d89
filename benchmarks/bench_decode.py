"""Decode speed of the inference engine: tokens/s at batch 1 and 32 for a random-weight model (d20 by default).

    python benchmarks/bench_decode.py                    # d20, batches 1 and 32, every decode mode
    python benchmarks/bench_decode.py --depth 12 --batch-sizes 1,8,32 --steps 512

Modes (rows of the table):
  eager        the model's forward with the KV cache, one Python-launched step per token (float32 master
               weights cast to bf16 inside every Linear, as a training run leaves them)
  graph        the same step captured once as a CUDA graph and replayed (engine/graphs.py)
  graph-bf16   CUDA graph with the weights stored in bf16 (what `nanochat chat` / `serve` do on a GPU)
  graph-bf16-compiled   experiment, not used by the engine: the model wrapped in torch.compile before the
               graph is captured, so the captured step runs fused Triton kernels

Each run goes through `Engine.generate` end to end (sampling at temperature 1 with top-k 50, the row state
machine, the host sync per token), from a 128-token prompt, and times the decode steps only (prefill is
excluded). The ceiling column is the steps/s at which reading the weights once per step saturates 3.0 TB/s
(the device-to-device copy bandwidth measured on the H100). Prints one table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from nanochat.common.logging import console, table  # noqa: E402
from nanochat.engine.engine import Engine  # noqa: E402
from nanochat.model import GPTConfig, build_model  # noqa: E402

SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>", "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]


class BenchTokenizer:
    """Special tokens outside the model's vocabulary, so that no row ever stops early and every run
    decodes exactly --steps tokens; text is never needed."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.bos_id = vocab_size

    def special_id(self, name: str) -> int:
        return self.vocab_size + SPECIALS.index(name)

    def encode(self, text: str) -> list[int]:
        return []

    def decode(self, ids) -> str:
        return ""


def run(engine: Engine, batch: int, steps: int, prompt: list[int]) -> float:
    """Seconds per decode step, prefill excluded."""
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    for _ in engine.generate(prompt, num_samples=batch, max_tokens=8, temperature=1.0, top_k=50, seed=0):
        pass  # warm-up (and graph capture)
    sync()
    n, t0 = -1, 0.0
    for _ in engine.generate(prompt, num_samples=batch, max_tokens=steps + 1, temperature=1.0, top_k=50, seed=1):
        n += 1
        if n == 0:
            sync()
            t0 = time.perf_counter()
    sync()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--sequence-len", type=int, default=2048)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--modes", default="eager,graph,graph-bf16,graph-bf16-compiled")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = GPTConfig.from_depth(args.depth, vocab_size=args.vocab_size, sequence_len=args.sequence_len)
    tok = BenchTokenizer(args.vocab_size)
    prompt = torch.randint(0, args.vocab_size, (args.prompt_len,)).tolist()
    rows = []
    for mode in args.modes.split(","):
        if mode.startswith("graph") and args.device != "cuda":
            continue
        model = build_model(cfg, args.device, seed=0).eval()
        if "bf16" in mode:
            model.to(model.compute_dtype)
        weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "wte" not in n and "value_embeds" not in n)
        ceiling = 3.0e12 / weight_bytes
        runner = torch.compile(model, dynamic=False) if mode.endswith("compiled") else model
        engine = Engine(runner, tok, calculator=lambda e: None, decode="eager" if mode == "eager" else "graph")
        for b in (int(x) for x in args.batch_sizes.split(",")):
            try:
                dt = run(engine, b, args.steps, prompt)
            except Exception as e:  # an experimental mode may fail on some stacks: say so in its row
                rows.append([mode, b, f"failed: {type(e).__name__}: {str(e)[:60]}", "", "", "", ""])
                continue
            rows.append([mode, b, f"{dt * 1000:.2f}", f"{b / dt:,.0f}", f"{1 / dt:,.0f}", f"{ceiling:,.0f}", f"{100 / dt / ceiling:.0f}%"])
        del engine, model, runner
        if args.device == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    title = f"decode, d{args.depth} random weights, prompt {args.prompt_len}, {args.steps} steps, {name}, torch {torch.__version__}"
    console().print(table(title, rows, ["mode", "batch", "ms/step", "tokens/s", "steps/s", "weights-read ceiling steps/s", "of ceiling"]))


if __name__ == "__main__":
    main()
