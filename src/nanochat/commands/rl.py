"""`nanochat rl`: policy-gradient training on GSM8K or the demo arithmetic task (its options are the fields of train.rl_config.RLConfig)."""

from __future__ import annotations



from nanochat.commands._common import Launch, launch_from_checkpoint
from nanochat.commands._options import config_command
from nanochat.train.rl_config import RLConfig


@config_command(RLConfig, launch=True)
def rl(cfg: RLConfig, launch: Launch) -> None:
    """Reinforcement learning on GSM8K (or --task demo-arith) with the calculator tool (REINFORCE with a group-mean baseline)."""
    from nanochat.train.rl import run_rl

    launch_from_checkpoint(cfg, launch)
    run_rl(cfg)
