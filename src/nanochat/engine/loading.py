"""Loading models from checkpoints: `load_model` for every consumer (sft, rl, eval, chat, serve), and
`load_chat_model` for `nanochat chat` and `nanochat serve` (the newest sft/rl checkpoint by default).

`load_chat_model(source=None)` picks whichever of `rl` and `sft` was written most recently (or the
source named), and returns `(model, tokenizer, label)` where label says what was loaded
(e.g. "sft/d20 step 700"), used as the model name in the API.
"""

from __future__ import annotations

from nanochat.common.errors import NanochatError

SOURCES = ("base", "sft", "rl")


def newest_chat_source() -> str:
    """'rl' or 'sft', whichever has the newest valid checkpoint; an error naming `nanochat sft` when neither has one."""
    from nanochat.common import checkpoint

    best, best_time = None, -1.0
    for source in ("rl", "sft"):
        info = checkpoint.find_latest(source)
        if info is None:
            continue
        written = max((p.stat().st_mtime for p in info.path.iterdir()), default=0.0)
        if written > best_time:
            best, best_time = source, written
    if best is None:
        raise NanochatError("no sft or rl checkpoint found; train one with `nanochat sft` (or pass --source base to chat with a base model)")
    return best


def load_chat_model(source: str | None = None, model_tag: str | None = None, step: int | None = None, device: str = "cpu", quiet: bool = False):
    """(model, tokenizer, label) of the chosen checkpoint, on `device`, in eval mode (`quiet`: the
    caller prints what was loaded, e.g. to stderr so that one-shot answers on stdout stay clean)."""
    import torch

    from nanochat.common.checkpoint import resolve_checkpoint

    if source is not None and source not in SOURCES:
        raise NanochatError(f"--source {source!r} is not a checkpoint kind; use sft, rl or base")
    source = source or newest_chat_source()
    info = resolve_checkpoint(source, model_tag, step)
    model, tokenizer, _meta = load_model(source, model_tag=info.tag, step=info.step, device=device, quiet=quiet)
    if model.compute_dtype != torch.float32:
        # inference only: weights stored in the compute dtype take half the memory and half the reads
        # of float32 masters (the Linear layers then have nothing to cast)
        model.to(model.compute_dtype)
    return model, tokenizer, f"{source}/{info.tag} step {info.step}"


def load_model(source: str, model_tag: str | None = None, step: int | None = None, device: str = "cpu", quiet: bool = False):
    """Build the model of a checkpoint with its weights: returns (model, tokenizer, meta).

    Prints which checkpoint it chose. The tokenizer is the one in NANOCHAT_HOME; its vocabulary
    must match the model's.
    """
    from nanochat.common.checkpoint import load_meta, load_weights, resolve_checkpoint
    from nanochat.common.logging import print0
    from nanochat.data.tokenizer import get_tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    info = resolve_checkpoint(source, model_tag, step)
    meta = load_meta(info.path)
    config = GPTConfig(**meta["model_config"])
    model = build_model(config, device, init=False)
    state = load_weights(info.path, device)
    model.load_state_dict(state, strict=True)
    model.eval()
    tokenizer = get_tokenizer()
    if tokenizer.vocab_size != config.vocab_size:
        raise NanochatError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but {info.path} was trained with {config.vocab_size}; "
            "retrain the tokenizer that model used or point NANOCHAT_HOME at the home it was trained in"
        )
    if not quiet:
        print0(f"loaded {source}/{info.tag} step {info.step} from {info.path}")
    return model, tokenizer, meta
