"""PNG plots of a scaling sweep (matplotlib, drawn off-screen and written atomically).

`plot_scaling`: val bpb (and CORE, when evaluated) against training FLOPs and against parameters,
one marker per run, runs of one FLOP budget (or the whole miniseries) joined in order of size.
`plot_isoflop`: per budget, val bpb against parameters with its fitted parabola and optimum; beside
it, the optima against the budget with the fitted power laws N_opt ∝ C^a and D_opt ∝ C^b.
Both return the path written, or None when matplotlib is not installed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nanochat.common.atomic import atomic_write_bytes
from nanochat.eval.scaling_fit import IsoflopFit


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _write(plt, fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _groups(rows: list[dict]) -> dict:
    """Runs by budget (None for a miniseries), each sorted by size."""
    out: dict = {}
    for r in rows:
        out.setdefault(r.get("budget"), []).append(r)
    return {k: sorted(v, key=lambda r: r["scaling_params"]) for k, v in sorted(out.items(), key=lambda kv: kv[0] or 0.0)}


def _label(budget) -> str:
    return "miniseries" if budget is None else f"C = {budget:.2g}"


def plot_scaling(rows: list[dict], path: Path, title: str) -> Path | None:
    """bpb (and CORE) against FLOPs and parameters; rows need flops, scaling_params, val_bpb, core, depth."""
    plt = _plt()
    if plt is None or not rows:
        return None
    metrics = [("val_bpb", "val bits per byte")]
    if any(r.get("core") is not None for r in rows):
        metrics.append(("core", "CORE"))
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.6 * len(metrics)), squeeze=False)
    for i, (key, ylabel) in enumerate(metrics):
        for j, (xkey, xlabel) in enumerate((("flops", "training FLOPs"), ("scaling_params", "parameters N (scaling)"))):
            ax = axes[i][j]
            for budget, group in _groups(rows).items():
                pts = [(r[xkey], r[key], r["depth"]) for r in group if r.get(key) is not None]
                if not pts:
                    continue
                # a budget's runs share one FLOP count: joined only against parameters (its IsoFLOP curve)
                style = "o" if (budget is not None and xkey == "flops") else "o-"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=_label(budget))
                if budget is None:  # a miniseries: name each point's depth
                    for x, y, d in pts:
                        ax.annotate(f"d{d}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
            if len(_groups(rows)) > 1:
                ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _write(plt, fig, path)


def plot_isoflop(rows: list[dict], fit: IsoflopFit, path: Path, title: str) -> Path | None:
    """The IsoFLOP curves with parabolas and optima, and the optima's power laws."""
    plt = _plt()
    if plt is None or not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    optima = {o.budget: o for o in fit.optima}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (budget, group) in enumerate(_groups(rows).items()):
        color = colors[k % len(colors)]
        pts = [(r["scaling_params"], r["val_bpb"]) for r in group if r.get("val_bpb") is not None]
        left.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=color, label=_label(budget))
        o = optima.get(budget)
        if o is not None:
            lx = np.log10([p[0] for p in pts] + [o.n_opt])
            xs = np.linspace(lx.min() - 0.05, lx.max() + 0.05, 100)
            left.plot(10**xs, o.parabola(xs), "-", color=color, alpha=0.7)
            left.plot([o.n_opt], [o.loss], "*", color=color, markersize=14, markeredgecolor="black")
    left.set_xscale("log")
    left.set_xlabel("parameters N (scaling)")
    left.set_ylabel("val bits per byte")
    left.set_title("IsoFLOP curves (★ optimum of the parabola)")
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    if fit.optima:
        cs = np.array([o.budget for o in fit.optima])
        right.plot(cs, [o.n_opt for o in fit.optima], "o", color=colors[0], label="N_opt")
        right.plot(cs, [o.d_opt for o in fit.optima], "s", color=colors[1], label="D_opt")
        grid = np.logspace(np.log10(cs.min()) - 0.1, np.log10(cs.max()) + 0.1, 50)
        for law, unc, sym, color in ((fit.n_law, fit.n_unc, "a", colors[0]), (fit.d_law, fit.d_unc, "b", colors[1])):
            if law is not None:
                spread = f" ± {unc.std:.3f}" if unc else ""
                right.plot(grid, law(grid), "-", color=color, alpha=0.7, label=f"{sym} = {law.exponent:.3f}{spread}")
        right.set_xscale("log")
        right.set_yscale("log")
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no optimum yet: a budget needs 3 or more sizes\nand a loss curve that bends upwards", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("FLOP budget C")
    right.set_ylabel("compute-optimal N and D")
    right.set_title("Optima against the budget")
    right.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    return _write(plt, fig, path)
