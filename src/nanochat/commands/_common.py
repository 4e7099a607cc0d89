"""Pieces every command module shares: the command classes, examples epilogs, help texts, the not-built-yet exit."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from nanochat.common.device import DEVICE_HELP  # noqa: F401  (the commands import it from here)
from nanochat.common.errors import NanochatError

if TYPE_CHECKING:
    from nanochat.common.launch import NodeOptions


def _hide_flag_types(command, ctx) -> None:
    # typer shows every option's type, `<bool>` for flags too; a flag takes no value, so it shows none
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class NanochatCommand(TyperCommand):
    """A subcommand whose help shows no value type for flags (`--dry-run`, not `--dry-run <bool>`)."""

    def format_help(self, ctx, formatter) -> None:
        _hide_flag_types(self, ctx)
        return super().format_help(ctx, formatter)


class NanochatGroup(TyperGroup):
    """A command group (`nanochat`, `nanochat data`) whose help shows no value type for flags."""

    def format_help(self, ctx, formatter) -> None:
        _hide_flag_types(self, ctx)
        return super().format_help(ctx, formatter)


def examples(*lines: str) -> str:
    """An `Examples:` epilog; each line is shown as its own paragraph."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def not_built(command: str, stage: str) -> None:
    """The one-line exit for a command whose stage is not built yet (no fake output)."""
    raise NanochatError(f"`nanochat {command}` is not built yet: the {stage} stage has not landed in this version")


NPROC_HELP = "Processes to run (one per GPU). Default: every visible GPU via torchrun; 1 runs here."

# The several-machines options, declared once for every command that can run on several processes
# (common.launch.DISTRIBUTED_COMMANDS): `nnodes: NNodes = None` and so on in the command's signature.
NODES_PANEL = "Several machines (torchrun's rendezvous; see the README)"
NNodes = Annotated[Optional[int], typer.Option("--nnodes", help="Machines taking part; every one runs this command. Default 1 (under srun: SLURM's node count).", rich_help_panel=NODES_PANEL)]
NodeRank = Annotated[Optional[int], typer.Option("--node-rank", help="This machine's number, 0 to nnodes-1; node 0 hosts the rendezvous (under srun: SLURM_NODEID).", rich_help_panel=NODES_PANEL)]
RdzvEndpoint = Annotated[Optional[str], typer.Option("--rdzv-endpoint", metavar="HOST:PORT", help="Node 0's address and a free port, the same on every machine (default: $MASTER_ADDR:$MASTER_PORT).", rich_help_panel=NODES_PANEL)]
RdzvId = Annotated[Optional[str], typer.Option("--rdzv-id", help="A name for this run, the same on every machine (default: nanochat; under srun: the job id).", rich_help_panel=NODES_PANEL)]
# with --nproc, a stage's Launch options, placed after --device in its --help (commands._options.config_command)
NProc = Annotated[Optional[int], typer.Option("--nproc", help=NPROC_HELP)]
_LAUNCH_OPTIONS = {"nproc": NProc, "nnodes": NNodes, "node_rank": NodeRank, "rdzv_endpoint": RdzvEndpoint, "rdzv_id": RdzvId}


@dataclass(frozen=True)
class Launch:
    """--nproc and the several-machines options of a stage command, as parsed (`config_command(..., launch=True)`)."""

    nproc: int | None = None
    nnodes: int | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    def nodes(self) -> "NodeOptions":
        """The several-machines options, checked (a bad one is a one-line usage error)."""
        return node_options(self.nnodes, self.node_rank, self.rdzv_endpoint, self.rdzv_id)


def launch_parameters() -> list[inspect.Parameter]:
    """The Launch options as command parameters, in the order --help shows them."""
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=hint) for name, hint in _LAUNCH_OPTIONS.items()]


def node_options(nnodes: int | None, node_rank: int | None, rdzv_endpoint: str | None, rdzv_id: str | None) -> "NodeOptions":
    """The several-machines options as common.launch takes them, checked (a bad one is a one-line usage error)."""
    import os

    from nanochat.common.dist import slurm_worker_env, under_torchrun
    from nanochat.common.launch import NodeOptions, resolve_nodes

    opts = NodeOptions(nnodes, node_rank, rdzv_endpoint, rdzv_id)
    if under_torchrun(os.environ) or slurm_worker_env(os.environ) is not None:
        return opts  # a worker: the environment says where it runs
    resolve_nodes(opts, os.environ)  # every check that needs nothing loaded, before any process starts
    return opts


def launch_from_checkpoint(cfg, launch: Launch, check=None, relaunch: bool = True) -> None:
    """What a stage that starts from a checkpoint checks before any process starts or anything loads: the process and
    machine options, the config (`cfg.validate()`), `check()` (e.g. the user's data files), the starting checkpoint's
    folder; then it restarts itself under torchrun when several processes are asked for (`relaunch`)."""
    from nanochat.common import checks
    from nanochat.common.checkpoint import require_checkpoint
    from nanochat.common.launch import maybe_relaunch

    checks.nproc(launch.nproc)
    node_opts = launch.nodes()
    cfg.validate()
    if check is not None:
        check()
    require_checkpoint(cfg.source, cfg.model_tag, cfg.step)
    if relaunch:
        maybe_relaunch(launch.nproc, cfg.device, nodes=node_opts)
