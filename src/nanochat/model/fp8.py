"""FP8 matmuls for the block linears (`pretrain --fp8`): tensorwise dynamic scaling through torch._scaled_mm.

Forward: the activations x (M, K) and the weight w (N, K) are each scaled so that their largest magnitude
lands on the top of float8_e4m3fn (448) and cast; y = x w^T comes out of `_scaled_mm` in the activations'
dtype with the two inverse scales applied. Backward: the output gradient is scaled the same way into
float8_e5m2 (wider range, fewer mantissa bits: gradients span more decades than activations) and
  grad_x = g w      (M, N) @ (N, K)
  grad_w = g^T x    (N, M) @ (M, K)
are two more FP8 matmuls against the FP8 copies saved by the forward (so the saved activations take one
byte per element instead of two). `_scaled_mm` wants its first operand row-major and its second
column-major, hence the transposes below. Shapes whose dimensions are not multiples of 16 (what the
FP8 tensor-core kernels need) fall back to the plain matmul.

The scales are per tensor and computed from the current values ("dynamic"), not from a history of
amaxes ("delayed"): one extra reduction per operand, no state to checkpoint, and no stale scale after a
loss spike. Weights keep their float32 masters; the optimizer never sees FP8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
_MAX = {E4M3: 448.0, E5M2: 57344.0}


def quantize(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(t scaled into `dtype`'s range and cast, the inverse scale as a float32 scalar tensor)."""
    top = _MAX[dtype]
    amax = t.detach().abs().amax().float().clamp(min=1e-12)
    scale = top / amax
    q = (t.float() * scale).clamp(-top, top).to(dtype)
    return q, scale.reciprocal()


def _col_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix, laid out column-major (what `_scaled_mm` wants of its second operand)."""
    return t.t().contiguous().t()


class _FP8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xq, xs = quantize(x, E4M3)
        wq, ws = quantize(w, E4M3)
        ctx.save_for_backward(xq, xs, wq, ws)
        ctx.out_dtype, ctx.w_dtype = x.dtype, w.dtype
        return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xq, xs, wq, ws = ctx.saved_tensors
        gq, gs = quantize(g.contiguous(), E5M2)
        grad_x = torch._scaled_mm(gq, _col_major(wq), scale_a=gs, scale_b=ws, out_dtype=ctx.out_dtype)
        grad_w = torch._scaled_mm(gq.t().contiguous(), _col_major(xq), scale_a=gs, scale_b=xs, out_dtype=torch.float32)
        return grad_x, grad_w.to(ctx.w_dtype)


def fp8_shapes_ok(m: int, k: int, n: int) -> bool:
    """Whether an (m, k) x (k, n) product can run on the FP8 kernels (every dimension a multiple of 16)."""
    return m % 16 == 0 and k % 16 == 0 and n % 16 == 0


def fp8_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T (x (..., K), w (N, K)) with FP8 operands; the plain matmul where the shapes do not fit."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if not fp8_shapes_ok(x2.shape[0], x2.shape[1], w.shape[0]):
        return F.linear(x, w)
    return _FP8Linear.apply(x2.contiguous(), w.contiguous()).reshape(*lead, w.shape[0])


def fp8_supported(device: torch.device | str) -> str | None:
    """None when `device` runs FP8 matmuls fast (an NVIDIA GPU of compute capability 8.9 or newer), else why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"--fp8 needs an NVIDIA GPU with FP8 tensor cores (H100, H200, L4, RTX 4090 or newer) and this run is on {device.type}; drop --fp8"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"--fp8 needs compute capability 8.9 or newer (Hopper, Ada) and {name} has {major}.{minor}; drop --fp8"
    return None
