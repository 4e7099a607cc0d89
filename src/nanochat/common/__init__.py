"""Shared foundations: paths, errors, atomic writes, logging, device and distributed setup, checkpoints, the code sandbox."""
