"""Fits of scaling studies: IsoFLOP parabolas, compute-optimal sizes, power laws and their bootstrap.

An IsoFLOP sweep trains several model sizes N at each FLOP budget C. At one budget the loss is,
near its minimum, a parabola in x = log10 N (Chinchilla's approach 2); its vertex is the
compute-optimal size N_opt(C). The tokens D of that budget's runs are an exact function of N
(D = C / FLOPs-per-token(N)), nearly linear in log space, so D_opt is read off a straight line of
log10 D against log10 N through the budget's runs, at N_opt. Across budgets, straight lines in
log-log space give the exponents of N_opt ∝ C^a and D_opt ∝ C^b (a + b ≈ 1 when C ≈ 6 N D).

Uncertainty is a residual bootstrap: the parabola residuals of every budget with more than three
sizes (a parabola through three points fits exactly and says nothing about the noise) are pooled,
scaled by √(k/(k-3)) for the three fitted coefficients, resampled onto each budget's fitted curve,
and the whole fit is repeated. Replicates whose parabola opens downwards have no optimum and are
dropped (their share is reported). numpy only; no plotting here (see eval.scaling_plots).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Parabola:
    """y = a·x² + b·x + c."""

    a: float
    b: float
    c: float

    def __call__(self, x):
        return self.a * np.asarray(x, dtype=float) ** 2 + self.b * np.asarray(x, dtype=float) + self.c

    @property
    def vertex(self) -> tuple[float, float] | None:
        """(x, y) of the minimum, or None when the parabola has none (a ≤ 0)."""
        if not self.a > 0:
            return None
        x = -self.b / (2 * self.a)
        return x, float(self(x))


def fit_parabola(x: Sequence[float], y: Sequence[float]) -> Parabola:
    """Least-squares parabola through (x, y); needs at least three distinct x."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(np.unique(x)) < 3:
        raise ValueError(f"a parabola needs at least 3 distinct x values, got {len(np.unique(x))}")
    a, b, c = np.polyfit(x, y, 2)
    return Parabola(float(a), float(b), float(c))


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient · x^exponent (fitted as a straight line in log10-log10)."""

    exponent: float
    coefficient: float

    def __call__(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least-squares line of log10 y on log10 x; needs two distinct positive x."""
    lx = np.log10(np.asarray(x, dtype=float))
    ly = np.log10(np.asarray(y, dtype=float))
    if len(np.unique(lx)) < 2:
        raise ValueError("a power law needs at least 2 distinct x values")
    slope, intercept = np.polyfit(lx, ly, 1)
    return PowerLaw(float(slope), float(10**intercept))


@dataclass(frozen=True)
class Optimum:
    """The compute-optimal point of one budget."""

    budget: float
    n_opt: float
    d_opt: float
    loss: float
    in_range: bool  # the vertex lies within the sizes trained (else it is an extrapolation)
    parabola: Parabola  # loss against log10 N


def budget_optimum(budget: float, n: Sequence[float], d: Sequence[float], loss: Sequence[float]) -> Optimum:
    """The optimum of one budget's runs; ValueError (saying why) when it has none."""
    ln = np.log10(np.asarray(n, dtype=float))
    ld = np.log10(np.asarray(d, dtype=float))
    if len(np.unique(ln)) < 3:
        raise ValueError(f"{len(np.unique(ln))} size(s) trained; a parabola needs 3 or more (add depths)")
    p = fit_parabola(ln, loss)
    v = p.vertex
    if v is None:
        raise ValueError("the loss curve opens downwards (no minimum): add sizes on both sides of the best one")
    slope, intercept = np.polyfit(ln, ld, 1)
    x = v[0]
    return Optimum(float(budget), float(10**x), float(10 ** (slope * x + intercept)), v[1], bool(ln.min() <= x <= ln.max()), p)


@dataclass(frozen=True)
class Uncertainty:
    """Bootstrap spread of an exponent: standard deviation and a 95% percentile interval."""

    std: float
    low: float
    high: float
    replicates: int  # replicates that gave an exponent


@dataclass
class IsoflopFit:
    optima: list[Optimum]
    skipped: dict[float, str] = field(default_factory=dict)  # budget → why it has no optimum
    n_law: PowerLaw | None = None  # N_opt ∝ C^a
    d_law: PowerLaw | None = None  # D_opt ∝ C^b
    n_unc: Uncertainty | None = None
    d_unc: Uncertainty | None = None
    bootstrap_note: str = ""  # why there is no uncertainty, or how many replicates were dropped


def _group(points: Sequence[tuple[float, float, float, float]]) -> dict[float, np.ndarray]:
    groups: dict[float, list] = {}
    for c, n, d, loss in points:
        if all(v is not None and math.isfinite(v) for v in (c, n, d, loss)):
            groups.setdefault(float(c), []).append((float(n), float(d), float(loss)))
    return {c: np.array(sorted(v)) for c, v in sorted(groups.items())}


def _optima(groups: dict[float, np.ndarray], losses: dict[float, np.ndarray] | None = None) -> tuple[list[Optimum], dict[float, str]]:
    optima, skipped = [], {}
    for c, g in groups.items():
        try:
            optima.append(budget_optimum(c, g[:, 0], g[:, 1], g[:, 2] if losses is None else losses[c]))
        except ValueError as e:
            skipped[c] = str(e)
    return optima, skipped


def fit_isoflop(points: Sequence[tuple[float, float, float, float]], bootstrap: int = 1000, seed: int = 0) -> IsoflopFit:
    """Optima per budget and the exponents of N_opt and D_opt in C.

    points: (budget C, parameters N, tokens D, loss) of every run; runs with a missing loss are left out."""
    groups = _group(points)
    optima, skipped = _optima(groups)
    fit = IsoflopFit(optima, skipped)
    if len(optima) < 2:
        fit.bootstrap_note = "the exponents need optima at 2 or more budgets"
        return fit
    cs = [o.budget for o in optima]
    fit.n_law = fit_power_law(cs, [o.n_opt for o in optima])
    fit.d_law = fit_power_law(cs, [o.d_opt for o in optima])

    budgets = [o.budget for o in optima]
    pool = []
    for o in optima:
        g = groups[o.budget]
        k = len(g)
        if k > 3:
            r = g[:, 2] - o.parabola(np.log10(g[:, 0]))
            pool.extend(r * math.sqrt(k / (k - 3)))
    if bootstrap <= 0:
        fit.bootstrap_note = "bootstrap off"
        return fit
    if not pool:
        fit.bootstrap_note = "no uncertainty: every budget has exactly 3 sizes, which a parabola fits exactly (train 4 or more)"
        return fit
    pool_arr = np.asarray(pool)
    rng = np.random.default_rng(seed)
    a_samples, b_samples = [], []
    for _ in range(bootstrap):
        losses = {o.budget: o.parabola(np.log10(groups[o.budget][:, 0])) + rng.choice(pool_arr, size=len(groups[o.budget]))
                  for o in optima}
        rep, _ = _optima({c: groups[c] for c in budgets}, losses)
        if len(rep) < 2:
            continue
        rc = [o.budget for o in rep]
        a_samples.append(fit_power_law(rc, [o.n_opt for o in rep]).exponent)
        b_samples.append(fit_power_law(rc, [o.d_opt for o in rep]).exponent)
    if not a_samples:
        fit.bootstrap_note = f"no bootstrap replicate of {bootstrap} had a minimum at 2 budgets: the data are too noisy for a fit"
        return fit

    def unc(s: list[float]) -> Uncertainty:
        arr = np.asarray(s)
        return Uncertainty(float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5)), len(arr))

    fit.n_unc, fit.d_unc = unc(a_samples), unc(b_samples)
    dropped = bootstrap - len(a_samples)
    fit.bootstrap_note = f"{len(a_samples)} of {bootstrap} bootstrap replicates" + (f" ({dropped} without a minimum dropped)" if dropped else "")
    return fit


def describe(fit: IsoflopFit) -> list[str]:
    """Plain lines for the terminal and the report: each optimum, then the exponents."""
    lines = []
    for o in fit.optima:
        where = "" if o.in_range else " (outside the sizes trained: an extrapolation; widen --depths)"
        lines.append(f"C = {o.budget:.3g}: N_opt = {o.n_opt:.4g}, D_opt = {o.d_opt:.4g}, loss {o.loss:.4f}{where}")
    for c, why in fit.skipped.items():
        lines.append(f"C = {c:.3g}: no optimum ({why})")
    for sym, law, unc in (("a", fit.n_law, fit.n_unc), ("b", fit.d_law, fit.d_unc)):
        if law is None:
            continue
        what = "N_opt" if sym == "a" else "D_opt"
        spread = f" ± {unc.std:.3f} (95%: {unc.low:.3f} … {unc.high:.3f})" if unc else ""
        lines.append(f"{what} ∝ C^{sym}: {sym} = {law.exponent:.3f}{spread}")
    if fit.bootstrap_note:
        lines.append(fit.bootstrap_note)
    return lines
