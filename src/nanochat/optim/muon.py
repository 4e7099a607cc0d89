"""Muon for a stack of same-shape matrices: Nesterov momentum, orthogonalisation, NorMuon, cautious decay.

One step on a stack P, G of K matrices (K, rows, cols), as in the reference nanochat (docs/reference.md, "Optimizer"):
1. Nesterov momentum: buf <- lerp(buf, G, 1-mu); U = lerp(G, buf, mu).
2. MuonEq: scale every row of U to the mean row norm ||U||_F / sqrt(rows) (evens out rows before step 3).
3. U / (1.01 ||U||_F + 1e-6), then five Polar Express iterations U <- aU + (bA + cA^2)U with A = U U^T (on the
   short side: tall matrices are transposed first). Each singular value goes to ~1 (see `polar_express`).
4. Muon+: rescale so ||U||_F = sqrt(min(rows, cols)) exactly.
5. NorMuon: a second moment per row (rows >= cols) or per column, EMA beta2 = 0.9; U is divided by its square root
   and rescaled to keep its Frobenius norm.
6. Cautious weight decay and the update: P -= lr_eff * (U + wd * P * [U*P >= 0]), lr_eff = lr * max(1, rows/cols)^0.5
   (the tall-matrix boost, e.g. x2 for the MLP's c_fc of shape (4d, d)).
We keep MuonEq and Muon+ on, as the reference's HEAD does; both are cheap and `muon_eq`/`muon_plus` turn them off.
"""

from __future__ import annotations

import torch

# Polar Express (arXiv 2505.16932) coefficients (a, b, c) for five iterations, with the 1.01 safety factor.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def row_equilibrate(x: torch.Tensor) -> torch.Tensor:
    """MuonEq: every row of each (…, rows, cols) matrix scaled to the mean row norm."""
    row_norm = x.norm(dim=-1, keepdim=True)
    target = x.norm(dim=(-2, -1), keepdim=True) / x.shape[-2] ** 0.5
    return x * (target / row_norm.clamp_min(1e-7))


def polar_express(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of each (…, rows, cols) matrix in g.

    After the Frobenius normalisation every singular value lies in (0, 1/1.01]; the five odd polynomials map
    every one of them in [1.2e-3, 1] into [0.85, 1.15] (measured: 0.859 .. 1.141), keeping the singular vectors.
    Random Gaussian wide or tall matrices land wholly in that band; tests/test_optim.py checks it."""
    x = g
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = x @ x.mT
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x.mT if tall else x


def muon_step(
    p: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor,
    second_moment: torch.Tensor,
    lr: torch.Tensor,
    momentum: torch.Tensor,
    weight_decay: torch.Tensor,
    beta2: torch.Tensor,
    ortho_dtype: torch.dtype = torch.float32,
    muon_eq: bool = True,
    muon_plus: bool = True,
) -> None:
    """Update the stack p (K, rows, cols) in place; buffers are (K, rows, cols) and (K, rows, 1) or (K, 1, cols)."""
    rows, cols = p.shape[-2], p.shape[-1]
    g = grad.to(momentum_buffer.dtype)
    momentum_buffer.lerp_(g, 1 - momentum)
    u = g.lerp(momentum_buffer, momentum).to(ortho_dtype)
    if muon_eq:
        u = row_equilibrate(u)
    u = polar_express(u).to(p.dtype)
    if muon_plus:
        u = u * (min(rows, cols) ** 0.5 / u.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-7))
    reduce_dim = -1 if rows >= cols else -2
    second_moment.lerp_(u.square().mean(dim=reduce_dim, keepdim=True), 1 - beta2)
    scaled = u * second_moment.clamp_min(1e-10).rsqrt()
    u = scaled * (u.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    lr_eff = lr * max(1.0, rows / cols) ** 0.5
    mask = (u * p) >= 0
    p.sub_(lr_eff * (u + weight_decay * p * mask))
