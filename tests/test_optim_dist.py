"""The distributed optimizer on two gloo processes (CPU) against one process with the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

STEPS = 5
BATCH, T, VOCAB = 8, 32, 200


def _setup(device: str = "cpu"):
    from nanochat.model import GPTConfig, build_model

    # GQA (1 kv head), a value embedding on one layer: Muon stacks of 8, 2 and 1 matrices (padding on rank 1),
    # sharded AdamW tensors (wte, lm_head, value embeds) and all-reduced small ones (the lambdas)
    config = GPTConfig.from_depth(2, VOCAB, T, aspect_ratio=32, head_dim=32, n_kv_head=1)
    # float64 so that the only differences left are summation order (~1e-16), not fp32 rounding that Adam's
    # eps of 1e-10 can amplify on near-zero gradients
    model = build_model(config, "cpu", seed=1234, dtype=torch.float64).double()
    gen = torch.Generator().manual_seed(7)
    # zero-initialised output projections make the first gradients of the lambdas pure rounding noise,
    # which Adam (eps 1e-10) would blow up to +-lr in a summation-order-dependent direction
    with torch.no_grad():
        for block in model.h:
            for lin in (block.attn.c_proj, block.mlp.c_proj):
                lin.weight.normal_(0.0, 0.02, generator=gen)
    data = torch.randint(0, VOCAB, (STEPS, BATCH, T + 1), generator=gen)
    return model.to(device), data.to(device)


def _train(rank: int, world: int, reload_dir: str | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    from nanochat.optim import build_optimizer, flatten_state_dict, unflatten_state_dict

    model, data = _setup(device)

    def make():
        return build_optimizer(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5, weight_decay=0.28)

    opt = make()
    rows = BATCH // world
    for step in range(STEPS):
        batch = data[step, rank * rows : (rank + 1) * rows]
        loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.set_schedule(1.0 - 0.1 * step, muon_momentum=0.9 + 0.01 * step, weight_decay=0.2 - 0.02 * step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if reload_dir is not None and step == 2:  # per-rank save, then resume in a fresh optimizer
            from safetensors.torch import load_file, save_file
            import json

            tensors, meta = flatten_state_dict(opt.state_dict())
            save_file(tensors, os.path.join(reload_dir, f"optim_rank{rank}.safetensors"))
            with open(os.path.join(reload_dir, f"optim_rank{rank}.json"), "w") as f:
                json.dump(meta, f)
            opt = make()
            with open(os.path.join(reload_dir, f"optim_rank{rank}.json")) as f:
                meta = json.load(f)
            tensors = load_file(os.path.join(reload_dir, f"optim_rank{rank}.safetensors"), device=device)
            opt.load_state_dict(unflatten_state_dict(tensors, meta))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, init_file: str, out_dir: str, device: str = "cpu") -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    kwargs = {}
    if device == "cuda":  # NCCL, one GPU per process (the GPU variant in tests/test_gpu_model.py)
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group("nccl" if device != "cpu" else "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, **kwargs)
    try:
        params = _train(rank, world, reload_dir=out_dir, device=device)
        save_file(params, os.path.join(out_dir, f"params_rank{rank}.safetensors"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = _train(0, 1)
    start, _ = _setup()
    for rank in range(2):
        got = load_file(str(tmp_path / f"params_rank{rank}.safetensors"))
        for name, ref in single.items():
            assert torch.allclose(got[name], ref, atol=1e-6, rtol=0), f"rank {rank} {name}: max diff {(got[name] - ref).abs().max()}"
    # and training did move every parameter group (so the equality is not trivial)
    moved = {name: (single[name] - p).abs().max().item() for name, p in start.state_dict().items()}
    assert all(v > 1e-4 for v in moved.values()), moved


def test_world_size_mismatch_on_load_is_a_clear_error():
    from nanochat.common.errors import NanochatError
    from nanochat.optim import build_optimizer
    from nanochat.train.pretrain_config import optimizer_settings

    model, _ = _setup()
    opt = build_optimizer(model, **optimizer_settings())
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        g["world_size"] = 2
    with pytest.raises(NanochatError, match="same number of processes"):
        build_optimizer(model, **optimizer_settings()).load_state_dict(sd)
