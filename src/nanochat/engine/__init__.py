"""Inference: KV-cache generation, sampling, the calculator tool, and loading models from checkpoints."""
