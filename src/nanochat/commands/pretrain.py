"""`nanochat pretrain`: train the base model (its options are the fields of train.pretrain_config.PretrainConfig)."""

from __future__ import annotations


import typer

from nanochat.commands._common import Launch
from nanochat.commands._options import config_command
from nanochat.train.pretrain_config import PretrainConfig


@config_command(PretrainConfig, launch=True)
def pretrain(
    cfg: PretrainConfig,
    launch: Launch,
    skip_restore: str = typer.Option("", hidden=True, help="Tests only: comma list of loader,rng not to restore on resume."),
) -> None:
    """Pretrain the base GPT on web or demo text; resumable exactly from its checkpoints."""
    from nanochat.common import checks
    from nanochat.common.launch import maybe_relaunch
    from nanochat.data.corpus import check_data_name, open_corpus
    from nanochat.train.pretrain import run_pretrain

    checks.nproc(launch.nproc)
    nodes = launch.nodes()
    skip = {s.strip() for s in skip_restore.split(",") if s.strip()}
    cfg.restore_loader, cfg.restore_rng = "loader" not in skip, "rng" not in skip
    # every check that needs no model, before any process is started or anything loaded
    cfg.validate()
    if not cfg.dry_run:  # before any data is looked for or process started
        check_fp8(cfg.fp8, cfg.device)
    if cfg.dry_run:
        check_data_name(cfg.data)  # a plan may name data still to download, never data that cannot exist
        cfg.dry_run_world_size = _planned_world_size(cfg.device, launch.nproc, nodes)
    else:
        open_corpus(cfg.data, "train")
        open_corpus(cfg.data, "val")
        maybe_relaunch(launch.nproc, cfg.device, nodes=nodes)
    run_pretrain(cfg)


def check_fp8(fp8: bool, device: str) -> None:
    """--fp8 on a device without FP8 tensor cores: one line saying so (exit 2)."""
    if not fp8:
        return
    from nanochat.common.device import detect_device
    from nanochat.common.errors import UsageError
    from nanochat.model.fp8 import fp8_supported

    why_not = fp8_supported(detect_device(device))
    if why_not:
        raise UsageError(why_not)


def _planned_world_size(device: str, nproc: int | None, nodes) -> int:
    """The processes a real run would start (see common.launch), on every machine: what a dry run plans for."""
    import os

    from nanochat.common.launch import resolve_nodes, visible_gpu_count

    gpus = visible_gpu_count() if device in ("auto", "cuda") else 0
    return (nproc if nproc else (gpus if gpus > 1 else 1)) * resolve_nodes(nodes, os.environ).nnodes
