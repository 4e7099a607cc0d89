"""Exporting checkpoints for other tools: `hf` writes a Hugging Face transformers folder."""
