"""`nanochat sweep miniseries|isoflop`: scaling studies (see train.sweep); any pretrain option passes through."""

from __future__ import annotations

import inspect
import typing
from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, examples

HELP = {"help_option_names": ["-h", "--help"]}
# options the sweep does not know are pretrain options, passed to every run (parsed by pretrain's own parser)
PASS = {**HELP, "allow_extra_args": True, "ignore_unknown_options": True}
E = "Evaluation and fits"

app = typer.Typer(
    help="Scaling studies: many pretraining runs, evaluated alike, into sweep.csv, fitted laws and plots.",
    no_args_is_help=True,
    context_settings=HELP,
    epilog=examples("nanochat sweep miniseries --depths 10,12,14,16,18,20 --dry-run", "nanochat sweep isoflop --budgets 1e18,3e18,1e19 --depths 8,10,12,14,16"),
)

DATA = typer.Option("web", help="web, demo, or an imported data set (for every run and the validation tokens).")
NAME = typer.Option(None, help="Sweep folder <home>/sweeps/NAME and model-tag prefix; default: the kind.")
MAX_PER_TASK = typer.Option(500, help="CORE examples per task (-1: all; 0: no CORE).", rich_help_panel=E)
BPB_TOKENS = typer.Option(10 * 524288, help="Validation tokens, packed once, on which every run's bpb is measured.", rich_help_panel=E)
BOOTSTRAP = typer.Option(1000, help="Bootstrap replicates for the exponents' uncertainty (0: off).", rich_help_panel=E)
MEASURE = typer.Option(2, help="Training steps timed per depth for the time estimate (0: no estimate).")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan (runs, FLOPs, tokens, estimated time, commands) and exit.")
DEVICE = typer.Option("auto", help=DEVICE_HELP)
NPROC = typer.Option(None, callback=ranges.count(), help=NPROC_HELP)


def _pretrain_options(kind: str, extra: list[str], data: str, device: str) -> tuple[dict, frozenset[str]]:
    """Parse the passed-through flags with pretrain's own parser: (every PretrainConfig option's value, the options given)."""
    try:
        from typer._click.exceptions import ClickException  # newer typer carries its own copy of click
    except ImportError:  # older typer runs on click itself
        from click.exceptions import ClickException

    from nanochat.commands._options import config_values
    from nanochat.commands.pretrain import check_fp8, pretrain
    from nanochat.common.errors import UsageError
    from nanochat.train.pretrain_config import PretrainConfig

    one = typer.Typer(context_settings=HELP)
    one.command()(pretrain)
    cmd = typer.main.get_command(one)
    try:
        ctx = cmd.make_context("nanochat pretrain", [*extra, "--data", data, "--device", device])
    except ClickException as e:
        raise UsageError(f"{e.format_message()} (an option that is neither the sweep's nor pretrain's; see `nanochat sweep {kind} -h` and `nanochat pretrain -h`)") from None
    given = frozenset(k for k in ctx.params if ctx.get_parameter_source(k).name == "COMMANDLINE") - {"data", "device"}
    options = config_values(PretrainConfig, ctx.params)
    check_fp8(options["fp8"], device)
    if options["device_batch_size"] < 0:  # every run of a sweep must read the same rows per step, whatever fits
        raise UsageError("--device-batch-size auto is not available in a sweep; give a number of rows (default 32)")
    return options, given


# the options every sweep takes, after the kind's own (an own option in a panel, --bootstrap, follows them in it)
_SHARED = (("name", Optional[str], NAME), ("data", str, DATA), ("max_per_task", int, MAX_PER_TASK), ("bpb_tokens", int, BPB_TOKENS),
           ("measure_steps", int, MEASURE), ("dry_run", bool, DRY_RUN), ("device", str, DEVICE), ("nproc", Optional[int], NPROC))  # fmt: skip


def _sweep_command(func):
    """Make `func(ctx, <its own options>) -> SweepSpec fields` a command that also takes the shared options and runs the sweep."""
    hints = typing.get_type_hints(func)  # real types, not this module's postponed strings (older typer reads no strings)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(func).parameters.values()]
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, t, d in _SHARED]
    paneled = [p for p in own[1:] if getattr(p.default, "rich_help_panel", None)]
    params = [own[0]] + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[1:] if p not in paneled] + shared
    params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in paneled]

    def command(ctx: typer.Context, **values):
        common = {n: values.pop(n) for n, _, _ in _SHARED}
        _run(ctx, **func(ctx, **values), **common)

    command.__name__, command.__doc__, command.__module__ = func.__name__, func.__doc__, func.__module__
    command.__signature__ = inspect.Signature(params)
    return command


def _run(ctx: typer.Context, kind: str, depths: str, budgets: str = "", ratio: float = 12.0, bootstrap: int = 0, *, name, data,
         max_per_task, bpb_tokens, measure_steps, dry_run, device, nproc) -> None:  # fmt: skip
    from nanochat.train.sweep import SweepSpec, parse_list, run_sweep

    if not dry_run:  # before anything is planned or trained (a dry run may plan for data not here yet)
        from nanochat.data.corpus import check_data_name

        check_data_name(data)
    options, given = _pretrain_options(kind, list(ctx.args), data, device)
    spec = SweepSpec(
        kind=kind, depths=parse_list(depths, "depths", int), budgets=parse_list(budgets, "budgets", float) if budgets else (),
        ratio=ratio, name=name, data=data, device=device, nproc=nproc, pretrain_args=tuple(ctx.args), options=options, explicit=given,
        max_per_task=max_per_task, bpb_tokens=bpb_tokens, bootstrap=bootstrap, measure_steps=measure_steps, dry_run=dry_run,
    )  # fmt: skip
    run_sweep(spec)


@app.command(
    context_settings=PASS,
    epilog=examples(
        "nanochat sweep miniseries --depths 10,12,14,16,18,20 --dry-run",
        "nanochat sweep miniseries --depths 4,6,8,10,12 --ratio 8 --max-per-task 100",
        "nanochat sweep miniseries --data demo --depths 2,3,4 --device cpu --max-seq-len 256 --device-batch-size 8",
    ),
)
@_sweep_command
def miniseries(
    ctx: typer.Context,
    depths: str = typer.Option("10,12,14,16,18,20", help="Comma-separated depths, one run each."),
    ratio: float = typer.Option(12.0, callback=ranges.rate(), help="Training tokens per scaling parameter (pretrain's --target-param-data-ratio)."),
) -> dict:
    """Train one model per depth at a fixed tokens:parameters ratio; evaluate each; CSV and plots.

    Any option not listed here is a `nanochat pretrain` option, passed to every run (e.g. --max-seq-len 1024)."""
    return {"kind": "miniseries", "depths": depths, "ratio": ratio}


@app.command(
    context_settings=PASS,
    epilog=examples(
        "nanochat sweep isoflop --budgets 1e18,3e18,1e19 --depths 8,10,12,14,16 --dry-run",
        "nanochat sweep isoflop --budgets 1e18,3e18 --depths 6,8,10,12 --max-per-task 100",
        "nanochat sweep isoflop --data demo --budgets 1e13,3e13 --depths 2,3,4 --device cpu --max-seq-len 256",
    ),
)
@_sweep_command
def isoflop(
    ctx: typer.Context,
    budgets: str = typer.Option(..., help="Comma-separated FLOP budgets, e.g. 1e18,3e18,1e19."),
    depths: str = typer.Option("8,10,12,14,16", help="Comma-separated depths trained at every budget (3+ for a parabola)."),
    bootstrap: int = BOOTSTRAP,
) -> dict:
    """Train every depth at every FLOP budget; a parabola per budget gives the optimum; fit N_opt ∝ C^a, D_opt ∝ C^b.

    Any option not listed here is a `nanochat pretrain` option, passed to every run (e.g. --max-seq-len 1024)."""
    return {"kind": "isoflop", "depths": depths, "budgets": budgets, "bootstrap": bootstrap}
