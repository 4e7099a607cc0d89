"""`nanochat dist-check` (hidden): an all-reduce across processes through nanochat's own setup."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, NNodes, NodeRank, RdzvEndpoint, RdzvId, node_options


def dist_check(
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    nnodes: NNodes = None,
    node_rank: NodeRank = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_id: RdzvId = None,
) -> None:
    """Check that processes can talk: each adds rank+1 and rank 0 prints the sum."""
    from nanochat.common.launch import maybe_relaunch

    maybe_relaunch(nproc, device, nodes=node_options(nnodes, node_rank, rdzv_endpoint, rdzv_id))
    from nanochat.common.distcheck import run_all_reduce_check

    run_all_reduce_check(device)
