"""Tool speed: the calculator per call, and the code sandbox per run (start-up cost and a HumanEval-sized job),
sequential and from several threads at once. Also says whether the sandbox works on this machine at all.

Run: PYTHONPATH=src python benchmarks/bench_tools.py [--runs 50] [--threads 8]
Prints one table. CPU only; no network, no data.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

HUMANEVAL_LIKE = """
def add_elements(arr, k):
    return sum(x for x in arr[:k] if len(str(abs(x))) <= 2)

def check(candidate):
    assert candidate([111, 21, 3, 4000, 5, 6, 7, 8, 9], 4) == 24
    assert candidate([1, -2, -3, 41, 57, 76, 87, 88, 99], 3) == -4
check(add_elements)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=50, help="sandbox runs per row")
    ap.add_argument("--threads", type=int, default=8, help="threads for the concurrent row")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from nanochat.common import sandbox
    from nanochat.engine.tools import use_calculator

    rows = []
    exprs = ["123,456 * 789", "(100 - 20) / 4", "'strawberry'.count('r')", "2**10", "__import__('os')"]
    n = 20_000
    t0 = time.perf_counter()
    for i in range(n):
        use_calculator(exprs[i % len(exprs)])
    dt = time.perf_counter() - t0
    rows.append(("calculator, mixed expressions", f"{n:,} calls", f"{dt * 1e6 / n:.1f} µs/call", ""))

    problem = sandbox.bwrap_problem()
    seccomp = "seccomp on" if sandbox.seccomp_program() is not None else "no seccomp table for this CPU"
    rows.append(("sandbox available", "bubblewrap", "yes" if problem is None else f"NO: {problem}", seccomp))
    modes = [("bubblewrap", False)] if problem is None else []
    modes.append(("insecure (rlimits only)", True))
    for label, insecure in modes:
        if insecure:
            sandbox._probe_result[:] = ["benchmark: insecure row"]
            sandbox._warned[:] = [True]
        for job, code in (("print(1)", "print(1)"), ("HumanEval-sized check", HUMANEVAL_LIKE)):
            try:
                t0 = time.perf_counter()
                results = [sandbox.run_python(code, allow_insecure=insecure) for _ in range(args.runs)]
                dt = time.perf_counter() - t0
            except Exception as e:  # e.g. insecure mode refused as root with a private interpreter
                rows.append((f"sandbox {label}, {job}", "", f"refused: {e}", ""))
                break
            ok = sum(r.success for r in results)
            rows.append((f"sandbox {label}, {job}", f"{args.runs} runs", f"{dt * 1e3 / args.runs:.1f} ms/run", f"{ok}/{args.runs} passed"))
        else:
            with ThreadPoolExecutor(args.threads) as pool:
                t0 = time.perf_counter()
                results = list(pool.map(lambda _: sandbox.run_python(HUMANEVAL_LIKE, allow_insecure=insecure), range(args.runs)))
                dt = time.perf_counter() - t0
            ok = sum(r.success for r in results)
            rows.append((f"sandbox {label}, HumanEval-sized, {args.threads} threads", f"{args.runs} runs", f"{args.runs / dt:.1f} runs/s", f"{ok}/{args.runs} passed"))

    table = Table(title="nanochat tools")
    for header in ("what", "work", "speed", "notes"):
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
