"""`nanochat rl`: policy-gradient training on GSM8K or the demo arithmetic task (its options are the fields of train.rl_config.RLConfig)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import LAUNCH_PARAMS, NPROC_HELP, NNodes, NodeRank, RdzvEndpoint, RdzvId, launch_from_checkpoint
from nanochat.commands._options import config_command
from nanochat.train.rl_config import RLConfig


@config_command(RLConfig, after={"device": LAUNCH_PARAMS})
def rl(
    cfg: RLConfig,
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    nnodes: NNodes = None,
    node_rank: NodeRank = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_id: RdzvId = None,
) -> None:
    """Reinforcement learning on GSM8K (or --task demo-arith) with the calculator tool (REINFORCE with a group-mean baseline)."""
    from nanochat.train.rl import run_rl

    launch_from_checkpoint(cfg, nproc, (nnodes, node_rank, rdzv_endpoint, rdzv_id))
    run_rl(cfg)
