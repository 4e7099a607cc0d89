"""The GPT: a decoder-only transformer with the reference nanochat's features, and its accounting.

    model = build_model(GPTConfig.from_depth(12, vocab_size=32768, sequence_len=2048), "cuda")
    loss = model(idx, targets)               # mean cross-entropy, targets == -1 ignored
    logits = model(idx)                      # float32 (B, T, vocab_size)
    cache = KVCache.for_model(model, batch_size=B, max_len=1024)
    logits = model(prompt, kv_cache=cache, last_only=True)   # prefill; then one token at a time the same way

Embedding: x = norm(wte(idx)); then the smear gate mixes in the previous token's normed embedding,
x[t] += smear_lambda * sigmoid(smear_gate(x[t, :24])) * x[t-1] (t >= 1; smear_lambda starts at 0, so the path
opens as it learns). It hands every position a cheap bigram feature. With a KV cache the previous token of a row
is read from the cache's token slots, so decode and prefill give what the full forward gives.
Per block (pre-norm): x = resid_lambdas[i]*x + x0_lambdas[i]*x0, then x += attn(norm(x)), x += mlp(norm(x)).
Backout (config.backout, off by default): the residual after block n_layer // 2 is kept and backout_lambda (0.2 at
init) times it is subtracted before the final norm. The reference has it on; on an H200 at d12 (160 steps) it
raised our val bpb from 0.6454 to 0.6911, so it is off here (benchmarks/README.md).
- norm is a parameter-free RMSNorm; no biases anywhere; token embedding and lm_head are untied.
- attention: separate q/k/v/proj matrices, RoPE (base 100,000) then QK RMSNorm then q, k scaled by 1.2,
  grouped-query heads, a per-layer sliding window (config.window_sizes()).
- value embeddings (ResFormer) on alternating layers including the last: v += 3*sigmoid(ve_gate(x[:, :, :12])) * ve.
- attention output gate (config.attn_gate, off by default): y_h *= 2*sigmoid(attn_gate(x[:, :, :12]))_h per head
  before c_proj (a query-dependent, head-wise gate after attention, Qiu et al. 2025, "Gated Attention for Large
  Language Models"); its weight starts at zero, so every gate starts at exactly 1.
- MLP: relu(x)^2 with a 4x hidden width; both output projections start at zero.
- lm_head output in float32, softcapped at 15*tanh(logits/15); vocab padded to a multiple of 64 and sliced back.

Weights are float32 masters; the forward runs in `model.compute_dtype` (bf16 on Ampere+ GPUs, fp32 on CPU) by
casting the embeddings and, in each Linear, the weight to the activation dtype (no autocast).
Construction happens on the meta device; `build_model` then allocates on the target device and initialises.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanochat.common.errors import NanochatError
from nanochat.model import attention as attn_lib
from nanochat.model.config import GPTConfig
from nanochat.model.fp8 import fp8_linear
from nanochat.model.rotary import apply_rotary, rotary_tables

SOFTCAP = 15.0
QK_SCALE = 1.2  # q and k are multiplied by this after QK-norm: sharper attention (1.44 on the logits)
VE_GATE_CHANNELS = 12  # the value-embedding gate reads the first 12 channels of the block input
VE_GATE_RANGE = 3.0
ATTN_GATE_CHANNELS = 12  # the attention output gate reads the first 12 channels of the block input
ATTN_GATE_RANGE = 2.0  # gate in (0, 2): 1 at init (zero weight), so the gated model starts as the ungated one
SMEAR_GATE_CHANNELS = 24  # the smear gate reads the first 24 channels of the normed embedding
BACKOUT_INIT = 0.2
ROTARY_POSITIONS_FACTOR = 10  # rotary tables cover 10 x sequence_len positions (for long generations)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Linear):
    """A bias-free Linear whose float32 master weight is cast to the activation dtype."""

    fp8 = False  # FP8 matmuls in training (model.fp8.fp8_linear); set by GPT.use_fp8

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8 and torch.is_grad_enabled():  # training steps only: evaluation and sampling stay exact
            return fp8_linear(x, self.weight.to(x.dtype))
        return F.linear(x, self.weight.to(x.dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        d = config.n_embd
        self.c_q = Linear(d, self.n_head * self.head_dim)
        self.c_k = Linear(d, self.n_kv_head * self.head_dim)
        self.c_v = Linear(d, self.n_kv_head * self.head_dim)
        self.c_proj = Linear(self.n_head * self.head_dim, d)
        self.ve_gate_channels = min(VE_GATE_CHANNELS, d)
        self.ve_gate = Linear(self.ve_gate_channels, self.n_kv_head) if config.has_value_embedding(layer_idx) else None
        self.attn_gate = Linear(min(ATTN_GATE_CHANNELS, d), self.n_head) if config.attn_gate else None

    def forward(self, x, ve, cos, sin, window: int, backend: str, kv_cache=None, positions=None, masks=None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = VE_GATE_RANGE * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = norm(q) * QK_SCALE, norm(k) * QK_SCALE
        if kv_cache is None:
            y = attn_lib.attention(q, k, v, window, backend)
        else:
            y = attn_lib.attention_with_cache(q, k, v, kv_cache, self.layer_idx, positions, window, backend, masks)
        if self.attn_gate is not None:
            gate = ATTN_GATE_RANGE * torch.sigmoid(self.attn_gate(x[..., : self.attn_gate.in_features]))  # (B, T, H)
            y = y * gate.unsqueeze(-1)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, window, backend, kv_cache=None, positions=None, masks=None):
        x = x + self.attn(norm(x), ve, cos, sin, window, backend, kv_cache, positions, masks)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        V, d = config.padded_vocab_size, config.n_embd
        kv_dim = config.n_kv_head * config.head_dim
        self.wte = nn.Embedding(V, d)
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(V, kv_dim) for i in range(config.n_layer) if config.has_value_embedding(i)}
        )
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.lm_head = Linear(d, V)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        self.smear_gate = Linear(min(SMEAR_GATE_CHANNELS, d), 1) if config.smear else None
        self.smear_lambda = nn.Parameter(torch.zeros(1)) if config.smear else None
        self.backout_lambda = nn.Parameter(torch.zeros(1)) if config.backout else None
        self.backout_layer = config.n_layer // 2
        self.windows = config.window_sizes()
        self.compute_dtype = torch.float32
        self.attn_backend = "sdpa"
        # recompute each block in the backward pass instead of keeping its activations (training only): about a
        # third more compute for activation memory of one block plus one d-wide tensor per layer
        self.activation_checkpointing = False
        n_pos = ROTARY_POSITIONS_FACTOR * config.sequence_len
        self.register_buffer("cos", torch.empty(n_pos, config.head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(n_pos, config.head_dim // 2), persistent=False)

    # ------------------------------------------------------------------------------------ setup

    @torch.no_grad()
    def init_rotary(self) -> None:
        cos, sin = rotary_tables(self.cos.shape[0], self.config.head_dim, self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """The reference's initialisation (docs/reference.md, "Model"); `seed` makes it reproducible."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.lm_head.weight.device)
            gen.manual_seed(seed)
        d = self.config.n_embd
        s = math.sqrt(3.0) * d**-0.5  # uniform(-s, s) has the std of N(0, 1/sqrt(d))
        self.wte.weight.normal_(0.0, 0.8, generator=gen)
        self.lm_head.weight.normal_(0.0, 0.001, generator=gen)
        for block in self.h:
            a = block.attn
            for lin in (a.c_q, a.c_k, a.c_v):
                lin.weight.uniform_(-s, s, generator=gen)
            a.c_proj.weight.zero_()
            block.mlp.c_fc.weight.uniform_(-0.4 * s, 0.4 * s, generator=gen)
            block.mlp.c_proj.weight.zero_()
            if a.ve_gate is not None:
                a.ve_gate.weight.uniform_(0.0, 0.02, generator=gen)
            if a.attn_gate is not None:
                a.attn_gate.weight.zero_()
        for emb in self.value_embeds.values():
            emb.weight.uniform_(-s, s, generator=gen)
        L = self.config.n_layer
        frac = torch.arange(L, dtype=torch.float32, device=self.resid_lambdas.device) / max(L - 1, 1)
        self.resid_lambdas.copy_(1.15 - 0.10 * frac)
        self.x0_lambdas.copy_(0.20 - 0.15 * frac)
        if self.smear_gate is not None:
            self.smear_gate.weight.uniform_(0.0, 0.02, generator=gen)
            self.smear_lambda.zero_()
        if self.backout_lambda is not None:
            self.backout_lambda.fill_(BACKOUT_INIT)
        self.init_rotary()

    # ------------------------------------------------------------------------------------ forward

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache=None,
        loss_reduction: str = "mean",
        last_only: bool = False,
    ):
        """Logits (B, T, vocab_size) float32 without targets; else the cross-entropy (ignore index -1):
        a scalar for loss_reduction="mean", (B, T) for "none" (0 at ignored positions).
        `last_only` computes the logits of the last position only, (B, 1, vocab_size): what sampling needs."""
        B, T = idx.shape
        if kv_cache is None:
            if T > self.cos.shape[0]:
                raise NanochatError(f"sequence of {T} tokens is longer than the model's {self.cos.shape[0]} rotary positions")
            positions = None
            cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]
        else:
            if kv_cache.batch_size != B:
                raise NanochatError(f"KV cache has {kv_cache.batch_size} rows but the batch has {B}")
            positions = kv_cache.positions(T)  # checks capacity
            if kv_cache.max_filled + T > self.cos.shape[0]:
                raise NanochatError(f"position {kv_cache.max_filled + T} is past the model's {self.cos.shape[0]} rotary positions")
            cos, sin = self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)
        if last_only and targets is not None:
            raise NanochatError("last_only gives logits for sampling; it cannot be combined with targets")
        dt = self.compute_dtype
        x = norm(self.wte(idx).to(dt))
        if self.smear_gate is not None:
            x = self._smear(x, idx, kv_cache, positions)
        x0 = x
        mid = None
        masks: dict = {}  # with a KV cache, each window's mask is built once and shared by the layers
        for i, block in enumerate(self.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx).to(dt) if str(i) in self.value_embeds else None
            if self.activation_checkpointing and kv_cache is None and torch.is_grad_enabled():
                x = checkpoint(block, x, ve, cos, sin, self.windows[i], self.attn_backend, use_reentrant=False)
            else:
                x = block(x, ve, cos, sin, self.windows[i], self.attn_backend, kv_cache, positions, masks)
            if i == self.backout_layer:
                mid = x
        if kv_cache is not None:
            kv_cache.advance(T)
        if self.backout_lambda is not None:
            x = x - self.backout_lambda.to(x.dtype) * mid
        if last_only:
            x = x[:, -1:]
        x = norm(x)
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        if loss_reduction not in ("mean", "none"):
            raise NanochatError(f"loss_reduction {loss_reduction!r} must be 'mean' or 'none'")
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=loss_reduction)
        return loss.view(B, T) if loss_reduction == "none" else loss

    def _smear(self, x: torch.Tensor, idx: torch.Tensor, kv_cache, positions) -> torch.Tensor:
        """x[t] + smear_lambda * sigmoid(smear_gate(x[t, :24])) * x[t-1]; position 0 of a sequence has no predecessor."""
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[..., : self.smear_gate.in_features]))
        if kv_cache is None:
            return torch.cat([x[:, :1], x[:, 1:] + gate[:, 1:] * x[:, :-1]], dim=1)
        # the previous token of every new token: earlier ones come from the cache's token slots
        kv_cache.write_tokens(idx, positions)
        prev = kv_cache.tokens.gather(1, (positions - 1).clamp(min=0))
        has_prev = (positions > 0).unsqueeze(-1).to(x.dtype)
        return x + has_prev * gate * norm(self.wte(prev).to(x.dtype))

    # ------------------------------------------------------------------------------------ accounting

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role; the optimizer and the counts below both use this."""
        return {
            "wte": [self.wte.weight],
            "value_embeds": [e.weight for e in self.value_embeds.values()],
            "lm_head": [self.lm_head.weight],
            "matrices": [p for p in self.h.parameters()],
            "resid_lambdas": [self.resid_lambdas],
            "x0_lambdas": [self.x0_lambdas],
            "smear": [p for p in (self.smear_gate.weight if self.smear_gate is not None else None, self.smear_lambda, self.backout_lambda) if p is not None],
        }

    def param_counts(self) -> dict[str, int]:
        """Parameter counts: wte, value_embeds, lm_head, matrices, scalars, total, and scaling (matrices + lm_head)."""
        g = {k: sum(p.numel() for p in ps) for k, ps in self.param_groups().items()}
        counts = {
            "wte": g["wte"],
            "value_embeds": g["value_embeds"],
            "lm_head": g["lm_head"],
            "matrices": g["matrices"],
            "scalars": g["resid_lambdas"] + g["x0_lambdas"] + g["smear"],
        }
        counts["total"] = sum(counts.values())
        counts["scaling"] = counts["matrices"] + counts["lm_head"]
        assert counts["total"] == sum(p.numel() for p in self.parameters()), "a parameter is missing from param_groups"
        return counts

    def fp8_linears(self) -> list[nn.Module]:
        """The linears FP8 pays for: the attention and MLP projections of every block (the head, the embeddings'
        gates and the smear gate are small or precision-sensitive and stay in the compute dtype)."""
        return [m for blk in self.h for m in (blk.attn.c_q, blk.attn.c_k, blk.attn.c_v, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)]

    def use_fp8(self, enabled: bool = True) -> None:
        for m in self.fp8_linears():
            m.fp8 = enabled

    def scaling_params(self) -> int:
        """N of the scaling laws: transformer matrices + lm_head (no embeddings, value embeddings, scalars)."""
        return self.param_counts()["scaling"]

    def _matmul_params(self) -> int:
        """Weights multiplied with the token stream: every Linear but the smear gate (a 24-wide gate, counted as a scalar)."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear) and m is not self.smear_gate)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 x matmul params + 12*heads*head_dim*min(window, T) per layer."""
        c = self.config
        T = seq_len or c.sequence_len
        matmul = self._matmul_params()
        attn = sum(12 * c.n_head * c.head_dim * min(w, T) for w in self.windows)
        return float(6 * matmul + attn)

    def inference_flops_per_token(self, context_len: int) -> float:
        """Forward FLOPs of one token that attends to `context_len` tokens: 2 x matmul params + 4*heads*head_dim*min(window, context) per layer."""
        c = self.config
        matmul = self._matmul_params()
        return float(2 * matmul + sum(4 * c.n_head * c.head_dim * min(w, context_len) for w in self.windows))

    def kv_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of KV cache one token takes over all layers (keys + values)."""
        c = self.config
        itemsize = torch.empty(0, dtype=dtype or self.compute_dtype).element_size()
        return 2 * c.n_layer * c.n_kv_head * c.head_dim * itemsize


def build_model(
    config: GPTConfig,
    device: torch.device | str = "cpu",
    init: bool = True,
    dtype: torch.dtype | None = None,
    attn_backend: str | None = None,
    seed: int | None = None,
) -> GPT:
    """Construct on the meta device, allocate on `device`, then initialise (weights only when `init`).

    `dtype` is the compute dtype (default: nanochat.common.device.choose_dtype for the device: bf16 on Ampere+
    GPUs, fp32 elsewhere); parameters stay float32. `attn_backend` defaults to attention.default_backend().
    With init=False the weights are uninitialised memory for a checkpoint loader to fill.
    """
    from nanochat.common.device import choose_dtype

    device = torch.device(device)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.compute_dtype = dtype or choose_dtype(device.type).dtype
    backend = attn_backend or attn_lib.default_backend(device.type)
    if backend not in attn_lib.available_backends(device.type) and not (backend == "flex" and device.type == "cpu"):
        raise NanochatError(f"attention back end {backend!r} is not available on {device.type}; use one of {attn_lib.available_backends(device.type)}")
    model.attn_backend = backend
    if init:
        model.init_weights(seed)
    else:
        model.init_rotary()
    return model
