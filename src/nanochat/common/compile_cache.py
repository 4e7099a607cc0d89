"""torch.compile's caches under the nanochat home, so a second run reuses the first run's compiled kernels.

Inductor keeps compiled FX graphs (and the autograd graphs around them) and Triton keeps built kernels, each in a
folder read from the environment when they are first used; by default both live under /tmp, which a reboot or a
fresh machine empties. `use_compile_cache()` points them at `<home>/cache/compile/{inductor,triton}` unless the
user has set TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR already, and turns on Inductor's FX-graph and autograd
caches (on by default in recent torch; set here so torch 2.9 behaves the same). Call it before the first compile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nanochat.common.paths import compile_cache_dir


@dataclass(frozen=True)
class CompileCache:
    inductor: Path
    triton: Path
    warm: bool  # the Inductor folder held compiled graphs before this run

    def describe(self) -> str:
        return f"{self.inductor.parent} ({'warm: reused' if self.warm else 'cold: filled by this run'})"


def use_compile_cache(env: dict | None = None) -> CompileCache:
    """Point Inductor and Triton at the home folder's cache (an explicit user setting wins); returns where they are."""
    env = os.environ if env is None else env
    root = compile_cache_dir()
    inductor = Path(env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor")))
    triton = Path(env.setdefault("TRITON_CACHE_DIR", str(root / "triton")))
    env.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    env.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    warm = inductor.is_dir() and any(inductor.iterdir())
    for d in (inductor, triton):
        d.mkdir(parents=True, exist_ok=True)
    return CompileCache(inductor, triton, warm)
