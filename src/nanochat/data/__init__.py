"""Tokens and batches: packaged data, pretraining shards, the tokenizer, chat rendering, loaders."""
