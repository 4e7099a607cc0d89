"""The GPT model: config and the depth dial, attention back ends, KV cache, accounting."""
