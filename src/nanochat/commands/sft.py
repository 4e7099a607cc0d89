"""`nanochat sft`: chat fine-tuning of a base checkpoint (its options are the fields of train.sft_config.SFTConfig)."""

from __future__ import annotations



from nanochat.commands._common import Launch, launch_from_checkpoint
from nanochat.commands._options import config_command
from nanochat.train.sft_config import SFTConfig


@config_command(SFTConfig, launch=True)
def sft(cfg: SFTConfig, launch: Launch) -> None:
    """Fine-tune a base model into a chat model on a conversation mixture (assistant tokens only)."""
    from nanochat.common.logging import warn0
    from nanochat.train.sft import run_sft

    def check_data() -> None:  # your conversation files, before the checkpoint is looked for
        for f in cfg.check_data():
            if f.skipped:
                warn0(f"{f.path}: {len(f.skipped):,} bad line(s) skipped (--skip-bad), {len(f.conversations):,} conversations kept; the first: {f.skipped[0]}")

    launch_from_checkpoint(cfg, launch, check=check_data, relaunch=not cfg.dry_run)
    run_sft(cfg)
