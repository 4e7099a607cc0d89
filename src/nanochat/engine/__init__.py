"""Inference: KV-cache generation, sampling, tools (calculator) and the code sandbox."""
