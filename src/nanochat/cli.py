"""The `nanochat` command: a typer app that registers one thin module per subcommand.

Imports here stay light (typer, rich): torch and the library load only inside a command, so
`nanochat --help` and tab completion are instant. `main()` applies the error convention: every
failure is one line on stderr, exit code 2 for bad usage (click's own parsing errors included:
unknown option, bad value type, missing argument) and 1 for a user error (`NanochatError`, or a
file-system error that escaped a command: read-only folder, full disk, permissions, a file where a
folder belongs; the line names the path and where to write instead).
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from nanochat import __version__
from nanochat.commands import chat, data, dist_check, env, eval, export, pretrain, report, rl, serve, sft, speedrun, sweep, tokenize
from nanochat.commands._common import NanochatCommand, NanochatGroup, examples

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="nanochat",
    cls=NanochatGroup,
    help="From raw text to a chat model you can talk to. Run the stages one by one, or `nanochat speedrun`.",
    context_settings=CONTEXT,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    epilog=examples("nanochat speedrun --demo", "nanochat speedrun --depth 26", "nanochat chat", "nanochat serve --port 8000"),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nanochat {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (same as NANOCHAT_DEBUG=1)."),
) -> None:
    if debug:
        import os

        os.environ["NANOCHAT_DEBUG"] = "1"
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _register(name: str, func, *example_lines: str, hidden: bool = False) -> None:
    app.command(name, cls=NanochatCommand, epilog=examples(*example_lines), hidden=hidden, context_settings=CONTEXT)(func)


_register("env", env.env, "nanochat env", "NANOCHAT_HOME=/data/nanochat nanochat env")
app.add_typer(data.app, name="data")
_register("tokenize-train", tokenize.tokenize_train, "nanochat tokenize-train --data demo --vocab-size 4096", "nanochat tokenize-train --vocab-size 32768 --max-chars 2e9")
_register("tokenize-eval", tokenize.tokenize_eval, "nanochat tokenize-eval")
_register("pretrain", pretrain.pretrain, "nanochat pretrain --data demo --depth 4 --device cpu --num-iterations 200", "nanochat pretrain --depth 20", "nanochat pretrain --depth 12 --dry-run")
_register("sft", sft.sft, "nanochat sft", "nanochat sft --data demo --num-iterations 100", "nanochat sft --model-tag d20 --resume auto")
_register("rl", rl.rl, "nanochat rl", "nanochat rl --train-split train-from-test --num-iterations 50", "nanochat rl --num-samples 16")
_register("eval", eval.eval_, "nanochat eval --source base --tasks core,bpb", "nanochat eval --source sft --tasks arc-easy,mmlu,gsm8k --max-per-task 100 --json results.json")
_register("chat", chat.chat, "nanochat chat", "nanochat chat -p 'Why is the sky blue?'", "echo 'Hi!' | nanochat chat")
_register("serve", serve.serve, "nanochat serve --port 8000", "nanochat serve --host 0.0.0.0 --api-key $KEY")
_register("speedrun", speedrun.speedrun, "nanochat speedrun --demo", "nanochat speedrun --depth 26", "nanochat speedrun --depth 26 --from-stage sft")
_register("report", report.report, "nanochat report")
_register("export", export.export, "nanochat export --format hf --out ./my-model", "nanochat export --source base --step 2000 --out ./base-hf")
app.add_typer(sweep.app, name="sweep")
_register("dist-check", dist_check.dist_check, "nanochat dist-check --device cpu --nproc 2", hidden=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every error into one line on stderr and an exit code."""
    from nanochat.common.errors import EXIT_USAGE, NanochatError
    from nanochat.common.logging import error_line

    try:
        from typer._click.exceptions import ClickException  # newer typer carries its own copy of click
    except ImportError:  # older typer runs on click itself
        from click.exceptions import ClickException

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # standalone_mode=False: click hands its errors to us instead of printing a usage box
        code = app(args=args, prog_name="nanochat", standalone_mode=False)
    except NanochatError as e:
        _traceback_if_debug(args)
        error_line(" ".join(str(e).split()))
        sys.exit(e.exit_code)
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare group (`nanochat data`): its help is printed already
            sys.exit(e.exit_code)
        error_line(_click_error_line(e, args))
        sys.exit(e.exit_code if e.exit_code else EXIT_USAGE)
    except typer.Abort:
        error_line("aborted")
        sys.exit(1)
    except OSError as e:  # the one boundary for file-system errors no command caught: a full disk, a read-only folder ...
        line = _os_error_line(e, args)
        if line is None:  # not about a path the user can fix: a bug, shown with its traceback
            raise
        _traceback_if_debug(args)
        error_line(line)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _traceback_if_debug(args: list[str]) -> None:
    from nanochat.common.errors import debug_enabled

    if debug_enabled() or "--debug" in args:
        import traceback

        traceback.print_exc()


def _os_error_line(e: OSError, args: list[str]) -> str | None:
    """`os_error_line` with this run's NANOCHAT_HOME and --out (the places the fix points at)."""
    import os

    from nanochat.common.errors import os_error_line

    out = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--out"), None)
    out = out or next((a.split("=", 1)[1] for a in args if a.startswith("--out=")), None)
    home = os.environ.get("NANOCHAT_HOME")
    if not home:
        import platformdirs

        home = platformdirs.user_cache_dir("nanochat", appauthor=False)
    return os_error_line(e, home, out)


def _click_error_line(e, args: list[str]) -> str:
    """click's message on one line, saying where the options are: "No such option: --x (see `nanochat env -h`)"."""
    message = " ".join(e.format_message().split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else _command_path(args)
    return f"{message} (see `{path} -h`)"


def _command_path(args: list[str]) -> str:
    """`nanochat data import` from the words of argv that name (sub)commands, for errors raised without a context."""
    command, path = typer.main.get_command(app), ["nanochat"]
    for word in args:
        if word.startswith("-"):
            continue
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command = sub
        path.append(word)
    return " ".join(path)
