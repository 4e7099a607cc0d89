"""The `nanochat` command: a typer app that registers one thin module per subcommand.

Imports here stay light (typer, rich): torch and the library load only inside a command, so
`nanochat --help` and tab completion are instant. `main()` applies the error convention.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from nanochat import __version__
from nanochat.commands import chat, data, dist_check, env, eval, pretrain, report, rl, serve, sft, speedrun, sweep, tokenize
from nanochat.commands._common import examples

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="nanochat",
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
    app.command(name, epilog=examples(*example_lines), hidden=hidden, context_settings=CONTEXT)(func)


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
app.add_typer(sweep.app, name="sweep")
_register("dist-check", dist_check.dist_check, "nanochat dist-check --device cpu --nproc 2", hidden=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning library errors into one line and an exit code."""
    from nanochat.common.errors import NanochatError, debug_enabled

    try:
        app(args=argv, prog_name="nanochat")
    except NanochatError as e:
        if debug_enabled() or "--debug" in (argv if argv is not None else sys.argv):
            import traceback

            traceback.print_exc()
        from nanochat.common.logging import error_line

        error_line(str(e))
        sys.exit(e.exit_code)
