"""End to end on CPU: a depth-2 model on the packaged Austen text (raw UTF-8 bytes as tokens) learns in 50 steps."""

from __future__ import annotations

import gzip

import torch

from nanochat.common.paths import resources_dir
from nanochat.model import GPTConfig, build_model
from nanochat.optim import build_optimizer, schedules
from nanochat.train.pretrain_config import optimizer_settings


def austen_bytes(n: int = 200_000) -> torch.Tensor:
    with gzip.open(resources_dir() / "corpus" / "austen" / "persuasion.txt.gz", "rb") as f:
        return torch.tensor(list(f.read(n)), dtype=torch.long)


def test_depth2_loss_falls_clearly_within_50_steps():
    torch.manual_seed(0)
    data = austen_bytes()
    train, val = data[:150_000], data[150_000:]
    T, B, steps = 64, 8, 50
    model = build_model(GPTConfig.from_depth(2, 256, T, aspect_ratio=32, head_dim=32), "cpu", seed=0)
    opt = build_optimizer(model, **optimizer_settings())
    gen = torch.Generator().manual_seed(0)

    def batch(split):
        ix = torch.randint(0, len(split) - T - 1, (B,), generator=gen)
        rows = torch.stack([split[i : i + T + 1] for i in ix])
        return rows[:, :-1], rows[:, 1:]

    vx, vy = batch(val)
    with torch.no_grad():
        val_before = model(vx, vy).item()
    losses = []
    for step in range(steps):
        x, y = batch(train)
        loss = model(x, y)
        loss.backward()
        opt.set_schedule(schedules.lr_multiplier(step, steps, warmup_steps=5), schedules.muon_momentum(step, steps, warmup_steps=10), schedules.weight_decay(step, steps, 0.28))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    with torch.no_grad():
        val_after = model(vx, vy).item()
    assert abs(losses[0] - torch.log(torch.tensor(256.0)).item()) < 0.1  # starts at chance over 256 bytes
    assert sum(losses[-5:]) / 5 < 0.55 * losses[0], losses
    assert val_after < 0.6 * val_before, (val_before, val_after)  # learned the language, not the batches
