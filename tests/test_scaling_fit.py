"""The IsoFLOP fits (eval.scaling_fit) on synthetic data with known answers: a parabola's minimum,
exponents of exact power laws, of a Chinchilla-form loss (tolerance 0.03), and a bootstrap whose
spread matches the spread of the fit over repeated noise draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanochat.eval.scaling_fit import budget_optimum, describe, fit_isoflop, fit_parabola, fit_power_law


def test_parabola_minimum_is_found():
    x = [0.0, 0.5, 1.0, 2.0, 3.0]
    y = [2 * (v - 1.3) ** 2 + 0.7 for v in x]
    vx, vy = fit_parabola(x, y).vertex
    assert vx == pytest.approx(1.3, abs=1e-9) and vy == pytest.approx(0.7, abs=1e-9)
    assert fit_parabola(x, [-v for v in y]).vertex is None  # opens downwards: no minimum
    with pytest.raises(ValueError):
        fit_parabola([1.0, 2.0, 2.0], [1.0, 2.0, 3.0])


def test_budget_optimum_reads_n_and_d_at_the_vertex():
    # loss = 0.5 (log10 N - 7)^2 + 3 at a budget of C = 6e15 FLOPs with D = C / (6 N): N_opt = 1e7, D_opt = 1e8
    c = 6e15
    n = [10**e for e in (6.0, 6.5, 7.5, 8.0)]
    d = [c / (6 * v) for v in n]
    loss = [0.5 * (math.log10(v) - 7) ** 2 + 3 for v in n]
    o = budget_optimum(c, n, d, loss)
    assert o.n_opt == pytest.approx(1e7, rel=1e-8) and o.d_opt == pytest.approx(1e8, rel=1e-8)
    assert o.loss == pytest.approx(3.0, abs=1e-10) and o.in_range
    far = budget_optimum(c, n[:3], d[:3], [0.5 * (math.log10(v) - 9) ** 2 for v in n[:3]])
    assert not far.in_range and "extrapolation" in describe_one(far)
    with pytest.raises(ValueError, match="3 or more"):
        budget_optimum(c, n[:2], d[:2], loss[:2])
    with pytest.raises(ValueError, match="downwards"):
        budget_optimum(c, n, d, [-v for v in loss])


def describe_one(o) -> str:
    from nanochat.eval.scaling_fit import IsoflopFit

    return describe(IsoflopFit([o]))[0]


def test_power_law_fit():
    law = fit_power_law([1e1, 1e2, 1e3], [3 * 10**0.4, 3 * 10**0.8, 3 * 10**1.2])
    assert law.exponent == pytest.approx(0.4, abs=1e-12) and law.coefficient == pytest.approx(3.0, rel=1e-10)


def exact_points(budgets, a=0.45, k=0.1, offsets=(-0.6, -0.3, 0.0, 0.2, 0.5), noise=0.0, seed=0):
    """Losses that are exact parabolas in log10 N around N_opt = k C^a, with D = C / (6 N): so a and b = 1 - a."""
    rng = np.random.default_rng(seed)
    pts = []
    for c in budgets:
        n_opt = k * c**a
        for u in offsets:
            n = n_opt * 10**u
            pts.append((c, n, c / (6 * n), 3.0 - 0.1 * math.log10(c) + 0.8 * u**2 + noise * rng.standard_normal()))
    return pts


def test_exponents_of_exact_power_laws_are_recovered():
    budgets = [1e15, 1e16, 1e17, 1e18, 1e19]
    fit = fit_isoflop(exact_points(budgets), bootstrap=50)
    assert len(fit.optima) == 5 and not fit.skipped
    assert fit.n_law.exponent == pytest.approx(0.45, abs=1e-6)
    assert fit.d_law.exponent == pytest.approx(0.55, abs=1e-6)
    assert fit.n_law.coefficient == pytest.approx(0.1, rel=1e-5)
    assert fit.d_law.coefficient == pytest.approx(1 / 0.6, rel=1e-5)  # D_opt = C / (6 · 0.1 · C^0.45)
    assert fit.n_unc.std < 1e-6  # no noise, no spread
    lines = describe(fit)
    assert any("a = 0.450" in line for line in lines) and any("b = 0.550" in line for line in lines)


def test_exponents_of_a_chinchilla_loss_within_tolerance():
    # L = E + A/N^α + B/D^β with C = 6ND has N_opt ∝ C^(β/(α+β)) and D_opt ∝ C^(α/(α+β)); the sizes are one
    # fixed grid for all budgets (as a sweep's depths are), 13 sizes over 3 decades. Stated tolerance: 0.03
    # (the parabola only approximates this curve; over this range it is off by about 0.02).
    E, A, B, alpha, beta = 1.7, 400.0, 410.0, 0.34, 0.28
    pts = []
    for c in (1e17, 1e18, 1e19, 1e20):
        for n in np.logspace(7, 10, 13):
            d = c / (6 * n)
            pts.append((c, n, d, E + A / n**alpha + B / d**beta))
    fit = fit_isoflop(pts, bootstrap=0)
    assert fit.n_law.exponent == pytest.approx(beta / (alpha + beta), abs=0.03)
    assert fit.d_law.exponent == pytest.approx(alpha / (alpha + beta), abs=0.03)
    assert all(o.in_range for o in fit.optima)


def test_bootstrap_spread_matches_the_spread_over_noise_draws():
    budgets = [1e15, 1e16, 1e17, 1e18]
    offsets = (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)
    sigma = 0.02
    # the reference: the fitted exponent over many independent noise draws
    draws = [fit_isoflop(exact_points(budgets, offsets=offsets, noise=sigma, seed=s), bootstrap=0).n_law.exponent for s in range(200)]
    true_std = float(np.std(draws, ddof=1))
    fit = fit_isoflop(exact_points(budgets, offsets=offsets, noise=sigma, seed=1000), bootstrap=400, seed=3)
    assert fit.n_unc.replicates > 350
    assert 0.5 * true_std < fit.n_unc.std < 2.0 * true_std, (fit.n_unc.std, true_std)
    assert fit.n_unc.low < fit.n_law.exponent < fit.n_unc.high
    assert abs(fit.n_law.exponent - 0.45) < 4 * fit.n_unc.std
    assert abs(fit.d_law.exponent - 0.55) < 4 * fit.d_unc.std


def test_too_few_sizes_or_budgets_say_why():
    fit = fit_isoflop(exact_points([1e15, 1e16], offsets=(-0.3, 0.3)), bootstrap=10)
    assert not fit.optima and set(fit.skipped) == {1e15, 1e16} and fit.n_law is None
    assert "3 or more" in fit.skipped[1e15] and "2 or more budgets" in fit.bootstrap_note
    three = fit_isoflop(exact_points([1e15, 1e16], offsets=(-0.3, 0.0, 0.3)), bootstrap=10)
    assert three.n_law is not None and three.n_unc is None and "exactly 3 sizes" in three.bootstrap_note
