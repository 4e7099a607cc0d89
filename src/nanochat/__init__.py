"""nanochat: from raw text to a chat model you can talk to, in one package and one command."""

__version__ = "0.1.0"
