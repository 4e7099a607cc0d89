"""A nanochat GPT for Hugging Face transformers: copied as `modeling_nanochat_gpt.py` into every folder
that `nanochat export --format hf` writes, and loaded from there with `trust_remote_code=True`.

This file imports only torch and transformers (never nanochat), so an exported model runs wherever
transformers does. It computes what nanochat's `model/gpt.py` computes, term for term:

    x = rms_norm(wte(ids))
    smear (when on):  x[t] += smear_lambda * sigmoid(smear_gate(x[t, :24])) * x[t-1]   for t >= 1
    x0 = x; per layer i:  x = resid_lambdas[i] * x + x0_lambdas[i] * x0
                          x += attn(rms_norm(x)); x += mlp(rms_norm(x))
    backout (when on): x -= backout_lambda * (x after layer n_layer // 2)
    logits = softcap * tanh(lm_head(rms_norm(x)) / softcap)

attention: q, k, v projections; value embeddings on some layers (v += 3 * sigmoid(ve_gate(x[:, :12])) * ve);
when attn_gate is on, each head's output is scaled by 2 * sigmoid(attn_gate(x[:, :12])) before the projection;
rotary embeddings (half-split pairs, rotated by -theta, base 100,000) on q and k, then RMS norm of q and k
and a 1.2 scale; grouped-query heads; a causal sliding window per layer (a query at position p sees keys
p - window .. p). MLP: relu(x)^2. No biases; parameter-free RMS norms.

Generation keeps keys and values in transformers' DynamicCache. The smear gate needs the token before
the first new one: `prepare_inputs_for_generation` passes it as `prev_token_ids`; a hand-made forward
over a non-empty cache must pass it too. Batches may be padded (`attention_mask`); windows then count
cache slots, padding included.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # transformers >= 5 spells it PreTrainedConfig; 4.x has PretrainedConfig (5.x keeps it as an alias)
    from transformers import PreTrainedConfig as _ConfigBase
except ImportError:  # pragma: no cover - depends on the installed transformers
    from transformers import PretrainedConfig as _ConfigBase


class NanochatGPTConfig(_ConfigBase):
    model_type = "nanochat_gpt"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 65536,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 6,
        num_key_value_heads: int | None = None,
        max_position_embeddings: int = 2048,
        rotary_positions: int | None = None,
        attention_windows: list[int] | None = None,
        value_embedding_layers: list[int] | None = None,
        smear: bool = False,
        backout: bool = False,
        attn_gate: bool = False,
        backout_layer: int | None = None,
        logit_softcap: float = 15.0,
        qk_scale: float = 1.2,
        rotary_base: float = 100_000.0,
        ve_gate_channels: int = 12,
        ve_gate_range: float = 3.0,
        smear_gate_channels: int = 24,
        attn_gate_channels: int = 12,
        attn_gate_range: float = 2.0,
        mlp_ratio: int = 4,
        use_cache: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rotary_positions = rotary_positions or 10 * max_position_embeddings
        self.attention_windows = list(attention_windows) if attention_windows is not None else [max_position_embeddings] * num_hidden_layers
        if value_embedding_layers is None:
            value_embedding_layers = [i for i in range(num_hidden_layers) if i % 2 == (num_hidden_layers - 1) % 2]
        self.value_embedding_layers = list(value_embedding_layers)
        self.smear = bool(smear)
        self.backout = bool(backout)
        self.attn_gate = bool(attn_gate)
        self.backout_layer = num_hidden_layers // 2 if backout_layer is None else backout_layer
        self.logit_softcap = logit_softcap
        self.qk_scale = qk_scale
        self.rotary_base = rotary_base
        self.ve_gate_channels = ve_gate_channels
        self.ve_gate_range = ve_gate_range
        self.smear_gate_channels = smear_gate_channels
        self.attn_gate_channels = attn_gate_channels
        self.attn_gate_range = attn_gate_range
        self.mlp_ratio = mlp_ratio
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def _rotary(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, T, 1, head_dim / 2) of integer positions (B, T); angles in float64 like nanochat's tables."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq
    return angles.cos().float().unsqueeze(2), angles.sin().float().unsqueeze(2)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class NanochatGPTAttention(nn.Module):
    def __init__(self, config: NanochatGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.window = config.attention_windows[layer_idx]
        self.qk_scale = config.qk_scale
        self.ve_gate_range = config.ve_gate_range
        d = config.hidden_size
        self.c_q = nn.Linear(d, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, d, bias=False)
        has_ve = layer_idx in config.value_embedding_layers
        self.ve_gate = nn.Linear(min(config.ve_gate_channels, d), self.n_kv_head, bias=False) if has_ve else None
        self.attn_gate_range = config.attn_gate_range
        self.attn_gate = nn.Linear(min(config.attn_gate_channels, d), self.n_head, bias=False) if config.attn_gate else None

    def forward(self, x, ve, cos, sin, slots_q, slots_k, key_ok, cache):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = self.ve_gate_range * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate.in_features]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        q, k = _norm(q) * self.qk_scale, _norm(k) * self.qk_scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # a query sees the keys of its own row at slots s - window .. s (and never padding)
        delta = slots_q.unsqueeze(-1) - slots_k.view(1, 1, -1)  # (1, T, S)
        allowed = (delta >= 0) & (delta <= self.window)
        allowed = allowed & key_ok[:, None, :] if key_ok is not None else allowed
        allowed = allowed | (delta == 0)  # a padding query still sees itself: no row without keys (NaN)
        rep = self.n_head // self.n_kv_head
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=allowed.unsqueeze(1))
        y = y.transpose(1, 2)  # (B, T, heads, D)
        if self.attn_gate is not None:
            y = y * (self.attn_gate_range * torch.sigmoid(self.attn_gate(x[..., : self.attn_gate.in_features]))).unsqueeze(-1)
        return self.c_proj(y.reshape(B, T, -1))


class NanochatGPTMLP(nn.Module):
    def __init__(self, config: NanochatGPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.mlp_ratio * config.hidden_size, bias=False)
        self.c_proj = nn.Linear(config.mlp_ratio * config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class NanochatGPTBlock(nn.Module):
    def __init__(self, config: NanochatGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = NanochatGPTAttention(config, layer_idx)
        self.mlp = NanochatGPTMLP(config)

    def forward(self, x, ve, cos, sin, slots_q, slots_k, key_ok, cache):
        x = x + self.attn(_norm(x), ve, cos, sin, slots_q, slots_k, key_ok, cache)
        return x + self.mlp(_norm(x))


class NanochatGPTPreTrainedModel(PreTrainedModel):
    config_class = NanochatGPTConfig
    base_model_prefix = "model"
    _no_split_modules = ["NanochatGPTBlock"]
    _supports_sdpa = True
    _supports_cache_class = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # only for a model built from a config alone: exported weights replace all of this
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, 0.02)
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, 1.0)
        elif isinstance(module, NanochatGPTModel):
            module.resid_lambdas.fill_(1.0)
            module.x0_lambdas.zero_()
            if module.smear_lambda is not None:
                module.smear_lambda.zero_()
            if module.backout_lambda is not None:
                module.backout_lambda.zero_()


class NanochatGPTModel(NanochatGPTPreTrainedModel):
    """The transformer without its head; `forward` returns the residual stream after backout, before the final norm."""

    def __init__(self, config: NanochatGPTConfig) -> None:
        super().__init__(config)
        d, V = config.hidden_size, config.vocab_size
        kv_dim = config.num_key_value_heads * config.head_dim
        self.wte = nn.Embedding(V, d)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in config.value_embedding_layers})
        self.h = nn.ModuleList([NanochatGPTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.resid_lambdas = nn.Parameter(torch.ones(config.num_hidden_layers))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.num_hidden_layers))
        self.smear_gate = nn.Linear(min(config.smear_gate_channels, d), 1, bias=False) if config.smear else None
        self.smear_lambda = nn.Parameter(torch.zeros(1)) if config.smear else None
        self.backout_lambda = nn.Parameter(torch.zeros(1)) if config.backout else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.wte

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.wte = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, prev_token_ids=None) -> torch.Tensor:
        B, T = input_ids.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        slots = torch.arange(past, past + T, device=input_ids.device)
        if position_ids is None:
            position_ids = slots.unsqueeze(0).expand(B, T)
        if int(position_ids.max()) >= self.config.rotary_positions:
            raise ValueError(f"position {int(position_ids.max())} is past the model's {self.config.rotary_positions} rotary positions")
        cos, sin = _rotary(position_ids, self.config.head_dim, self.config.rotary_base)
        key_ok = None
        if attention_mask is not None:
            key_ok = attention_mask[:, -(past + T) :].to(torch.bool)
        slots_k = torch.arange(past + T, device=input_ids.device)

        x = _norm(self.wte(input_ids))
        if self.smear_gate is not None:
            x = self._smear(x, past, prev_token_ids)
        x0, mid = x, None
        for i, block in enumerate(self.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](input_ids) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, slots.unsqueeze(0), slots_k, key_ok, past_key_values)
            if i == self.config.backout_layer:
                mid = x
        if self.backout_lambda is not None:
            x = x - self.backout_lambda * mid
        return x

    def _smear(self, x: torch.Tensor, past: int, prev_token_ids) -> torch.Tensor:
        gate = self.smear_lambda * torch.sigmoid(self.smear_gate(x[..., : self.smear_gate.in_features]))
        if past == 0:
            return torch.cat([x[:, :1], x[:, 1:] + gate[:, 1:] * x[:, :-1]], dim=1)
        if prev_token_ids is None:
            raise ValueError("this model mixes in the previous token (smear): pass prev_token_ids, the token before input_ids, with a non-empty cache")
        prev = _norm(self.wte(prev_token_ids.view(-1, 1).to(x.device)))
        before = torch.cat([prev, x[:, :-1]], dim=1)
        return x + gate * before


class NanochatGPTForCausalLM(NanochatGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys: list[str] = []

    def __init__(self, config: NanochatGPTConfig) -> None:
        super().__init__(config)
        self.model = NanochatGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.wte

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.wte = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        prev_token_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("this model needs input_ids (its value embeddings are looked up by token id); inputs_embeds is not supported")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if past_key_values is None:  # transformers >= 5.2x hands the cache over as `cache`
            past_key_values = kwargs.pop("cache", None)
        if use_cache and past_key_values is None:
            from transformers.cache_utils import DynamicCache

            past_key_values = DynamicCache()
        x = self.model(input_ids, attention_mask, position_ids, past_key_values if use_cache else None, prev_token_ids)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(_norm(x)).float()
        cap = self.config.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None)
        return out if return_dict is not False else out.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, **kwargs):
        cache = kwargs.pop("cache", None) if past_key_values is None else past_key_values
        # the keyword was renamed from past_key_values to cache in transformers 5.2x
        name = "cache" if "cache" in inspect.signature(super().prepare_inputs_for_generation).parameters else "past_key_values"
        inputs = super().prepare_inputs_for_generation(input_ids, **{name: cache}, **kwargs)
        new = inputs.get("input_ids")
        if new is not None and new.shape[1] < input_ids.shape[1]:
            # the smear gate reads the token just before the ones this step feeds
            inputs["prev_token_ids"] = input_ids[:, input_ids.shape[1] - new.shape[1] - 1]
        return inputs


def _register() -> None:
    # lets `save_pretrained` of a loaded model write the auto_map again
    NanochatGPTConfig.register_for_auto_class()
    NanochatGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")


_register()
