"""The GPT model: config and the depth dial, attention back ends, KV cache, accounting.

    from nanochat.model import GPTConfig, build_model, KVCache
"""

from nanochat.model.config import GPTConfig
from nanochat.model.gpt import GPT, build_model
from nanochat.model.kv_cache import KVCache

__all__ = ["GPTConfig", "GPT", "build_model", "KVCache"]
