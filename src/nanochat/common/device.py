"""Device and precision choice: cuda > mps > cpu, bf16 where the hardware does it natively.

Nothing here imports torch at module import time; `nanochat --help` stays instant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nanochat.common.errors import NanochatError, UsageError

DEVICES = ("auto", "cuda", "mps", "cpu")
DEVICE_HELP = "auto (cuda > mps > cpu), cuda, mps or cpu."  # every --device option's help

# Dense bf16 peak of common cards in FLOP/s, for MFU. H100 figures are the datasheet's, so MFU
# compares with the reference nanochat's numbers (989 TFLOPS for the SXM H100).
PEAK_BF16_FLOPS = {
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "L40S": 362e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


@dataclass(frozen=True)
class DeviceChoice:
    type: str  # "cuda" | "mps" | "cpu"
    dtype_name: str  # "bfloat16" | "float32" | "float16"
    reason: str

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)


def check_device_name(preference: str | None) -> str:
    """--device, lower-cased, when it names a device kind (no torch needed); bad usage otherwise."""
    preference = (preference or "auto").lower()
    if preference not in DEVICES:
        raise UsageError(f"unknown device {preference!r}; use --device auto, cuda, mps or cpu")
    return preference


def detect_device(preference: str = "auto") -> str:
    """Resolve --device auto|cuda|mps|cpu to an available device type, or explain what is missing."""
    import torch

    preference = check_device_name(preference)
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if has_mps else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise NanochatError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu (or install a CUDA build of torch)")
    if preference == "mps" and not has_mps:
        raise NanochatError("--device mps asked for, but MPS is not available here; use --device cpu")
    return preference


def choose_dtype(device_type: str) -> DeviceChoice:
    """bf16 on CUDA with compute capability >= 8.0, fp32 elsewhere; NANOCHAT_DTYPE overrides."""
    import torch

    forced = os.environ.get("NANOCHAT_DTYPE", "").strip().lower()
    if forced:
        names = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16"}
        if forced not in names:
            raise NanochatError(f"NANOCHAT_DTYPE={forced!r} is not a dtype; use bf16, fp32 or fp16")
        return DeviceChoice(device_type, names[forced], "NANOCHAT_DTYPE is set")
    if device_type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        if major >= 8:
            return DeviceChoice("cuda", "bfloat16", f"CUDA compute capability {major}.{minor} has native bf16")
        return DeviceChoice("cuda", "float32", f"CUDA compute capability {major}.{minor} < 8.0 has no fast bf16")
    if device_type == "mps":
        return DeviceChoice("mps", "float32", "MPS: float32 (set NANOCHAT_DTYPE=bf16 to try bf16)")
    return DeviceChoice("cpu", "float32", "CPU: float32 is exact and bf16 matmuls are slow here")


def peak_flops(device_type: str) -> float | None:
    """Peak bf16 FLOP/s of GPU 0 for MFU, or None when unknown (MFU is then not shown)."""
    if device_type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_BF16_FLOPS.items():  # the dict is ordered: specific names first
        if key in name:
            return value
    return None
