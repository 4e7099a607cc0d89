"""Re-sharding the optimizer state: a run saved by 2 processes continued by 1, and one saved by 1 continued by 2,
end where a single process that never stopped ends (float64, so only summation order differs)."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from tests.test_optim_dist import BATCH, STEPS, _setup, _train

CUT = 3  # steps before the save


def _make(model):
    from nanochat.optim import build_optimizer

    return build_optimizer(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5, weight_decay=0.28)


def _steps(model, opt, data, steps, rank: int, world: int) -> None:
    """The schedule and batches of tests.test_optim_dist._train, for the given steps."""
    rows = BATCH // world
    for step in steps:
        batch = data[step, rank * rows : (rank + 1) * rows]
        model(batch[:, :-1], batch[:, 1:]).backward()
        opt.set_schedule(1.0 - 0.1 * step, muon_momentum=0.9 + 0.01 * step, weight_decay=0.2 - 0.02 * step)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _save(out_dir: str, rank: int, model, opt) -> None:
    from safetensors.torch import save_file

    from nanochat.common import checkpoint as ck

    tensors: dict = {}
    tree = ck.encode_tree(opt.state_dict(), tensors)
    save_file(tensors, os.path.join(out_dir, f"optim{rank}.safetensors"))
    with open(os.path.join(out_dir, f"optim{rank}.json"), "w") as f:
        import json

        json.dump(tree, f)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out_dir, "model.safetensors"))


def _load_shards(out_dir: str, world: int) -> list[dict]:
    import json

    from safetensors.torch import load_file

    from nanochat.common import checkpoint as ck

    shards = []
    for r in range(world):
        with open(os.path.join(out_dir, f"optim{r}.json")) as f:
            shards.append(ck.decode_tree(json.load(f), load_file(os.path.join(out_dir, f"optim{r}.safetensors"))))
    return shards


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Two jobs on `world` processes: continue the 1-process save in out_dir/one, and train steps 0..CUT-1 then
    save every rank's shard in out_dir/two."""
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        one, two = os.path.join(out_dir, "one"), os.path.join(out_dir, "two")
        model, data = _setup()
        model.load_state_dict(load_file(os.path.join(one, "model.safetensors")))
        opt = _make(model)
        opt.load_state_dict(opt.reshard_state(_load_shards(one, 1)))
        _steps(model, opt, data, range(CUT, STEPS), rank, world)
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(one, "end.safetensors"))
        model, data = _setup()
        opt = _make(model)
        _steps(model, opt, data, range(CUT), rank, world)
        _save(two, rank, model, opt)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


def test_state_moves_between_one_and_two_processes(tmp_path):
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    model, data = _setup()
    opt = _make(model)
    _steps(model, opt, data, range(CUT), 0, 1)
    _save(str(one), 0, model, opt)

    # re-sharded for rank 1 of 2: the second half of the rows of a sharded AdamW moment (wte), and of a Muon stack
    # of one matrix only padding (rank 0 owns it: ceil(1/2) = 1 slot each), zeros
    full = opt.state_dict()
    half = opt.reshard_state(_load_shards(str(one), 1), rank=1, world=2)
    ids = {g["name"]: s["params"] for g, s in zip(opt.param_groups, full["param_groups"])}
    wte = ids["wte"][0]
    assert torch.equal(half["state"][wte]["exp_avg"], full["state"][wte]["exp_avg"].chunk(2)[1])
    assert half["state"][wte]["step"] == CUT
    single = next(name for name, g in zip(ids, opt.param_groups) if g["kind"] == "muon" and len(g["params"]) == 1)
    buf = half["state"][ids[single][0]]["momentum_buffer"]
    assert buf.shape == full["state"][ids[single][0]]["momentum_buffer"].shape and not buf.any()
    assert full["state"][ids[single][0]]["momentum_buffer"].any()

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    reference = _train(0, 1)  # one process, all STEPS steps, never stopped
    # 1 -> 2: the two processes that continued the 1-process state end where the single process does
    assert _max_diff(load_file(str(one / "end.safetensors")), reference) < 1e-6

    # 2 -> 1: one process continuing the two processes' shards, gathered, ends there too
    shards = _load_shards(str(two), 2)

    def resume(with_state: bool) -> dict:
        model, data = _setup()
        model.load_state_dict(load_file(str(two / "model.safetensors")))
        opt = _make(model)
        if with_state:
            state = opt.reshard_state(shards)
            assert {g["world_size"] for g in state["param_groups"]} == {1}
            opt.load_state_dict(state)
        _steps(model, opt, data, range(CUT, STEPS), 0, 1)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    assert _max_diff(resume(True), reference) < 1e-6
    # a fresh optimizer instead (moments lost) ends elsewhere: the state carried is what made them equal
    assert _max_diff(resume(False), reference) > 1e-4
