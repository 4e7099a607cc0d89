"""`nanochat env`: what this machine has and what nanochat would do on it."""

from __future__ import annotations


def env() -> None:
    """Show python, torch, CUDA, GPUs, dtype, attention backend, home folder, and local files."""
    from nanochat.sysinfo import collect, render

    render(collect())
