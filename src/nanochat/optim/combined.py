"""MuonAdamW: one optimizer over the whole GPT (Muon for the block matrices, AdamW for the rest), which also
synchronises gradients across processes, so no DDP wrapper is needed.

    opt = build_optimizer(model, **optimizer_settings(cfg))   # train.pretrain_config: the stage's LRs and weight decay
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    opt.set_schedule(lr_multiplier, muon_momentum, weight_decay)   # every step

Groups (docs/reference.md, "Optimizer"; AdamW LRs of the embeddings and the head scaled by (n_embd/768)^-0.5):
    lm_head        AdamW  unembedding_lr*s       betas (0.8, 0.96)   wd 0.01
    wte            AdamW  embedding_lr*s         betas (0.8, 0.995)  wd 0.001
    value_embeds   AdamW  embedding_lr*s*0.5     betas (0.8, 0.995)  wd 0.01
    resid_lambdas  AdamW  scalar_lr*0.01         betas (0.8, 0.95)   wd 0.05
    x0_lambdas     AdamW  scalar_lr              betas (0.96, 0.95)  wd 0
    smear          AdamW  0.2 (fixed)            betas (0.8, 0.95)   wd 0     (smear gate, smear and backout lambdas)
    muon_RxC       Muon   matrix_lr              momentum 0.95 (scheduled), beta2 0.9, cautious wd = weight_decay (scheduled)
All AdamW eps 1e-10. One Muon group per distinct matrix shape among the transformer blocks.

Distributed (torch.distributed initialised, world size W), ZeRO-2 style, in three phases so communication overlaps:
1. launch every gradient reduction: AdamW tensors under 1024 elements (or whose first dim W does not divide)
   are all-reduced and updated whole on every rank; larger ones are reduce-scattered along dim 0. Muon stacks
   its K matrices, pads to a multiple of W and reduce-scatters, so each rank owns ceil(K/W) matrices.
2. per group: wait, update the rank's shard (its optimizer state holds only that shard), launch an all-gather.
3. wait the gathers; copy the gathered Muon matrices back into the parameters.
gloo has no reduce_scatter_tensor: there we all-reduce and keep our slice, which sums the same numbers.
The state is per rank: save `state_dict()` on every rank and load it into the same world size, or build a rank's
state for another world size from all the saved ones with `reshard_state` (a gather and a split).

On CUDA the two update kernels are compiled with torch.compile (NANOCHAT_COMPILE_OPTIM=0 turns that off);
on CPU they run as plain PyTorch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from nanochat.common.errors import NanochatError
from nanochat.optim.adamw import adamw_step
from nanochat.optim.muon import muon_step

SMALL_NUMEL = 1024  # AdamW tensors below this are all-reduced instead of sharded


def _dist_info() -> tuple[int, int, str | None]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.get_backend()
    return 0, 1, None


class _Reduce:
    """A pending average over ranks, whole (`shard=False`) or scattered along dim 0 (`shard=True`)."""

    def __init__(self, full: torch.Tensor, shard: bool, rank: int, world: int, backend: str | None) -> None:
        self.full, self.shard, self.rank, self.world = full, shard, rank, world
        self.scale = None
        self.handle = None
        if world == 1:
            self.out = full
            return
        avg = backend is not None and "nccl" in backend
        op = dist.ReduceOp.AVG if avg else dist.ReduceOp.SUM
        self.scale = None if avg else 1.0 / world
        if shard and avg:
            self.out = torch.empty_like(full[: full.shape[0] // world])
            self.handle = dist.reduce_scatter_tensor(self.out, full, op=op, async_op=True)
        else:  # whole all-reduce; for gloo's shards, keep our slice of it afterwards
            self.out = None
            self.handle = dist.all_reduce(full, op=op, async_op=True)

    def wait(self) -> torch.Tensor:
        if self.handle is not None:
            self.handle.wait()
        out = self.out
        if out is None:
            out = self.full.chunk(self.world)[self.rank] if self.shard else self.full
        if self.scale is not None:
            out.mul_(self.scale)
        return out


def _all_gather(full: torch.Tensor, shard: torch.Tensor, world: int, backend: str | None):
    """Launch the gather of every rank's `shard` into `full` (along dim 0); returns a handle or None."""
    if world == 1:
        return None
    if backend is not None and "nccl" in backend:
        return dist.all_gather_into_tensor(full, shard, async_op=True)
    return dist.all_gather(list(full.chunk(world)), shard.contiguous(), async_op=True)


class MuonAdamW(torch.optim.Optimizer):
    """param groups carry kind="adamw" (lr, betas, eps, weight_decay) or kind="muon" (lr, momentum,
    weight_decay, beta2; every parameter of the group has the same 2-D shape)."""

    def __init__(self, param_groups: list[dict], compile_steps: bool | None = None, ortho_dtype: torch.dtype | None = None) -> None:
        super().__init__(param_groups, {})
        self.rank, self.world_size, self.backend = _dist_info()
        on_cuda = any(p.is_cuda for g in self.param_groups for p in g["params"])
        if compile_steps is None:
            compile_steps = on_cuda and os.environ.get("NANOCHAT_COMPILE_OPTIM", "1") != "0"
        self.ortho_dtype = ortho_dtype  # None: the parameters' dtype
        self.compiled = bool(compile_steps)
        if compile_steps:
            self._adamw = torch.compile(adamw_step, dynamic=False, fullgraph=True)
            self._muon = torch.compile(muon_step, dynamic=False, fullgraph=True)
        else:
            self._adamw, self._muon = adamw_step, muon_step
        for group in self.param_groups:
            kind = group.get("kind")
            if kind not in ("adamw", "muon"):
                raise NanochatError(f"optimizer group {group.get('name')!r} has kind {kind!r}; use 'adamw' or 'muon'")
            group.setdefault("initial_lr", group["lr"])
            group["world_size"] = self.world_size
            if kind == "muon":
                shapes = {tuple(p.shape) for p in group["params"]}
                if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                    raise NanochatError(f"Muon group {group.get('name')!r} needs 2-D parameters of one shape, got {sorted(shapes)}")
        self._scalars: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------ helpers

    def _t(self, name: str, value: float):
        """A hyperparameter: a reusable 0-d CPU tensor for the compiled steps (new values without recompiling),
        a plain float for eager ones (a CPU tensor as lerp's weight on CUDA tensors is not supported everywhere)."""
        if not self.compiled:
            return float(value)
        t = self._scalars.get(name)
        if t is None:
            t = self._scalars[name] = torch.tensor(0.0, dtype=torch.float64)
        t.fill_(value)
        return t

    def _sharded(self, p: torch.Tensor) -> bool:
        return self.world_size > 1 and p.numel() >= SMALL_NUMEL and p.shape[0] % self.world_size == 0

    @staticmethod
    def _grad(p: torch.Tensor) -> torch.Tensor:
        # a parameter without a gradient counts as a zero gradient, so every rank runs the same collectives
        return p.grad if p.grad is not None else torch.zeros_like(p)

    def set_schedule(self, lr_multiplier: float, muon_momentum: float | None = None, weight_decay: float | None = None) -> None:
        """lr = initial_lr * lr_multiplier in every group; Muon momentum and (cautious) weight decay when given."""
        for group in self.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier
            if group["kind"] == "muon":
                if muon_momentum is not None:
                    group["momentum"] = muon_momentum
                if weight_decay is not None:
                    group["weight_decay"] = weight_decay

    # ------------------------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NanochatError("MuonAdamW.step takes no closure")
        W, R, backend = self.world_size, self.rank, self.backend
        tasks = []  # phase 1: launch every reduction
        for gi, group in enumerate(self.param_groups):
            if group["kind"] == "adamw":
                for p in group["params"]:
                    # reduced in place, as DDP does: afterwards .grad holds the average over ranks
                    tasks.append(("adamw", gi, p, _Reduce(self._grad(p), self._sharded(p), R, W, backend)))
            else:
                params = group["params"]
                K = len(params)
                chunk = math.ceil(K / W)
                stacked = torch.zeros((chunk * W, *params[0].shape), dtype=params[0].dtype, device=params[0].device)
                for i, p in enumerate(params):
                    stacked[i].copy_(self._grad(p))
                tasks.append(("muon", gi, None, _Reduce(stacked, True, R, W, backend)))
        gathers = []  # phase 2: update shards, launch gathers
        for kind, gi, p, red in tasks:
            group = self.param_groups[gi]
            g = red.wait()
            if kind == "adamw":
                gathers.append(self._adamw_update(group, p, g))
            else:
                gathers.append(self._muon_update(group, g, red.full))
        for handle, finish in gathers:  # phase 3
            if handle is not None:
                handle.wait()
            if finish is not None:
                finish()

    def _adamw_update(self, group: dict, p: torch.Tensor, g: torch.Tensor):
        W, R = self.world_size, self.rank
        shard = self._sharded(p)
        target = p.chunk(W)[R] if shard else p
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(target)
            state["exp_avg_sq"] = torch.zeros_like(target)
        state["step"] += 1
        b1, b2 = group["betas"]
        self._adamw(
            target, g, state["exp_avg"], state["exp_avg_sq"],
            self._t("adam_step", state["step"]), self._t("adam_lr", group["lr"]), self._t("adam_b1", b1),
            self._t("adam_b2", b2), self._t("adam_eps", group["eps"]), self._t("adam_wd", group["weight_decay"]),
        )  # fmt: skip
        if not shard:
            return None, None
        return _all_gather(p, target.clone(), W, self.backend), None

    def _muon_update(self, group: dict, g: torch.Tensor, stacked: torch.Tensor):
        W, R = self.world_size, self.rank
        params = group["params"]
        K = len(params)
        chunk = g.shape[0]
        rows, cols = params[0].shape
        mine = range(R * chunk, min((R + 1) * chunk, K))
        p_shard = torch.zeros_like(g)
        for j, i in enumerate(mine):
            p_shard[j].copy_(params[i])
        state = self.state[params[0]]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(g)
            shape = (chunk, rows, 1) if rows >= cols else (chunk, 1, cols)
            state["second_momentum_buffer"] = torch.zeros(shape, dtype=g.dtype, device=g.device)
        self._muon(
            p_shard, g, state["momentum_buffer"], state["second_momentum_buffer"],
            self._t("muon_lr", group["lr"]), self._t("muon_momentum", group["momentum"]),
            self._t("muon_wd", group["weight_decay"]), self._t("muon_beta2", group["beta2"]),
            self.ortho_dtype or g.dtype, group.get("muon_eq", True), group.get("muon_plus", True),
        )  # fmt: skip
        if W == 1:
            torch._foreach_copy_(list(params), list(p_shard[:K].unbind(0)))
            return None, None
        full = stacked  # the stacked gradients are consumed by now: gather the new matrices into their buffer
        handle = _all_gather(full, p_shard, W, self.backend)
        return handle, lambda: torch._foreach_copy_(list(params), list(full[:K].unbind(0)))

    # ------------------------------------------------------------------------------------ state

    def load_state_dict(self, state_dict: dict) -> None:
        saved = {g.get("world_size") for g in state_dict.get("param_groups", [])}
        if saved != {self.world_size}:
            raise NanochatError(
                f"optimizer state was saved by {sorted(saved)} process(es) but this run has {self.world_size}; resume with the same number of processes"
            )
        super().load_state_dict(state_dict)

    def reshard_state(self, shards: Sequence[dict], rank: int | None = None, world: int | None = None) -> dict:
        """The state dict of rank `rank` of `world` processes (default: this run's), built from the state
        dicts `len(shards)` processes saved (`shards[r]`: rank r's `state_dict()`): gather and split.

        AdamW moments of a sharded tensor are rows of it (rank r: chunk r of dim 0), of a small one whole
        copies; Muon buffers are slots of the group's stack of K matrices padded to a multiple of the world
        size (rank r: slots r*ceil(K/W) on). The rows this rank needs are read from the saved shards that
        hold them (tensors there may be lazy: anything that slices along dim 0 to a tensor), padding slots
        are zeros (what a padding slot's buffers hold, since its gradient is always zero)."""
        rank = self.rank if rank is None else rank
        world = self.world_size if world is None else world
        old_world = len(shards)
        saved_groups = shards[0]["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
            raise NanochatError("the saved optimizer state has other parameter groups than this model's; start afresh with --resume never")
        state: dict[int, dict] = {}
        for saved, group in zip(saved_groups, self.param_groups):
            params = group["params"]
            if group["kind"] == "adamw":
                for idx, p in zip(saved["params"], params):
                    entries = [s["state"].get(idx) for s in shards]
                    if entries[0] is None:
                        continue  # never stepped
                    n = p.shape[0]
                    old = [(r * n // old_world, e) for r, e in enumerate(entries)] if _sharded_in(p, old_world) else [(0, entries[0])]
                    lo, hi = (rank * n // world, (rank + 1) * n // world) if _sharded_in(p, world) else (0, n)
                    state[idx] = _reshard_entry(old, lo, hi, hi - lo, n, group.get("name"))
            else:
                idx, K = saved["params"][0], len(params)
                entries = [s["state"].get(idx) for s in shards]
                if entries[0] is None:
                    continue
                old_chunk, chunk = math.ceil(K / old_world), math.ceil(K / world)
                state[idx] = _reshard_entry([(r * old_chunk, e) for r, e in enumerate(entries)], rank * chunk, (rank + 1) * chunk, chunk, K, group.get("name"))
        groups = [{**s, "world_size": world} for s in saved_groups]
        return {"state": state, "param_groups": groups}


def _sharded_in(p: torch.Tensor, world: int) -> bool:
    """MuonAdamW._sharded for a given world size: is p's AdamW state split along dim 0 over `world` ranks?"""
    return world > 1 and p.numel() >= SMALL_NUMEL and p.shape[0] % world == 0


def _reshard_entry(old: list[tuple[int, dict]], lo: int, hi: int, rows: int, real: int, group: str | None) -> dict:
    """One parameter's (or Muon group's) state for rows lo..hi: tensors assembled along dim 0 from the saved
    pieces (start row, state entry), rows at or beyond `real` (padding) as zeros, `rows` rows in all;
    non-tensor values (AdamW's step) from the first piece."""
    out: dict = {}
    for key, value in old[0][1].items():
        if not hasattr(value, "shape"):
            out[key] = value
            continue
        parts = []
        want_hi = min(hi, real)
        for start, entry in old:
            if entry is None or key not in entry:
                raise NanochatError(f"the saved optimizer state of {group} is missing {key!r} on some rank; the checkpoint is incomplete")
            t = entry[key]
            a, b = max(lo, start), min(want_hi, start + t.shape[0])
            if a < b:
                parts.append(t[a - start : b - start])
        have = sum(x.shape[0] for x in parts)
        if have != max(0, want_hi - lo):
            raise NanochatError(f"the saved optimizer state of {group} covers {have} of rows {lo}..{want_hi}; the checkpoint is incomplete")
        empty = old[0][1][key][0:0]  # the dtype and trailing shape, read from no rows
        pad = rows - have
        if pad:
            parts.append(torch.zeros((pad, *empty.shape[1:]), dtype=empty.dtype))
        out[key] = torch.cat([x.cpu() for x in parts]) if parts else empty
    return out


SMEAR_LR = 0.2  # the smear gate, smear lambda and backout lambda: a fixed AdamW LR, neither width- nor batch-scaled


def adamw_groups(
    n_embd: int, *, embedding_lr: float, unembedding_lr: float, scalar_lr: float, smear_lr: float = SMEAR_LR
) -> list[tuple[str, float, tuple[float, float], float]]:
    """(group, effective LR, betas, weight decay) of every AdamW group: the LRs after the width factor
    (n_embd/768)^-0.5 and the per-group multipliers, exactly as the optimizer uses them."""
    s = (n_embd / 768) ** -0.5
    return [
        ("lm_head", unembedding_lr * s, (0.8, 0.96), 0.01),
        ("wte", embedding_lr * s, (0.8, 0.995), 0.001),
        ("value_embeds", embedding_lr * s * 0.5, (0.8, 0.995), 0.01),
        ("resid_lambdas", scalar_lr * 0.01, (0.8, 0.95), 0.05),
        ("x0_lambdas", scalar_lr, (0.96, 0.95), 0.0),
        ("smear", smear_lr, (0.8, 0.95), 0.0),
    ]


def muon_lr(matrix_lr: float, rows: int, cols: int) -> float:
    """The LR a Muon matrix of shape (rows, cols) really steps with: tall matrices get x sqrt(rows/cols)."""
    return matrix_lr * max(1.0, rows / cols) ** 0.5


def build_optimizer(
    model,
    *,
    matrix_lr: float,
    embedding_lr: float,
    unembedding_lr: float,
    scalar_lr: float,
    weight_decay: float,
    smear_lr: float = SMEAR_LR,
    muon_momentum: float = 0.95,
    muon_beta2: float = 0.9,
    muon_eq: bool = True,
    muon_plus: bool = True,
    compile_steps: bool | None = None,
) -> MuonAdamW:
    """The optimizer for a GPT, grouped as in the module docstring. The LRs and weight decay have no defaults
    here: they are the stage's options (`nanochat pretrain`'s defaults: train.pretrain_config.optimizer_settings()).

    Polar Express runs in bf16 when the model computes in bf16 on a GPU, as the reference does; otherwise in the
    parameters' float32."""
    groups = model.param_groups()
    specs = adamw_groups(model.config.n_embd, embedding_lr=embedding_lr, unembedding_lr=unembedding_lr, scalar_lr=scalar_lr, smear_lr=smear_lr)
    param_groups = [
        {"kind": "adamw", "name": name, "params": groups[name], "lr": lr, "betas": betas, "eps": 1e-10, "weight_decay": wd}
        for name, lr, betas, wd in specs
        if groups.get(name)
    ]
    by_shape: dict[tuple, list] = {}
    for p in groups["matrices"]:
        by_shape.setdefault(tuple(p.shape), []).append(p)
    for shape, ps in by_shape.items():
        param_groups.append({
            "kind": "muon", "name": f"muon_{shape[0]}x{shape[1]}", "params": ps, "lr": matrix_lr,
            "momentum": muon_momentum, "weight_decay": weight_decay, "beta2": muon_beta2,
            "muon_eq": muon_eq, "muon_plus": muon_plus,
        })  # fmt: skip
    on_gpu = model.lm_head.weight.device.type != "cpu"
    ortho = torch.bfloat16 if on_gpu and model.compute_dtype == torch.bfloat16 else None
    return MuonAdamW(param_groups, compile_steps=compile_steps, ortho_dtype=ortho)


def flatten_state_dict(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    tensors, meta_state = {}, {}
    for idx, entry in state_dict["state"].items():
        meta_state[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.contiguous()
            else:
                meta_state[str(idx)][key] = value
    return tensors, {"state": meta_state, "param_groups": state_dict["param_groups"]}


def unflatten_state_dict(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of flatten_state_dict."""
    state = {int(idx): dict(values) for idx, values in meta["state"].items()}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
