"""`nanochat data prepare-evals`: the CORE eval bundle and the chat eval sets."""

from __future__ import annotations

import typer


def prepare_evals(
    offline: bool = typer.Option(False, "--offline", help="Build the sets from the data packaged with nanochat (CORE-offline)."),
) -> None:
    """Download the CORE eval bundle and chat eval sets (or build them offline)."""
    import os

    from nanochat.common.logging import console, print0, table
    from nanochat.eval.core import bundle_url, download_bundle, find_bundle, prepare_offline_bundle
    from nanochat.tasks import registry

    from nanochat.common.errors import NanochatError
    from nanochat.tasks.hub import HubUnavailable

    if offline:
        os.environ["NANOCHAT_OFFLINE"] = "1"
        path = prepare_offline_bundle()
    else:
        print0(f"downloading the CORE eval bundle from {bundle_url()}")
        try:
            path = download_bundle()
        except HubUnavailable as e:
            raise NanochatError(f"{str(e).split(';')[0]}; without the internet, use `nanochat data prepare-evals --offline` (CORE-offline)") from e
    bundle = find_bundle()
    specs = bundle.task_specs()
    print0(f"[bold]{bundle.label}[/bold]: {len(specs)} tasks in {path}")
    if bundle.missing_tasks():
        print0(f"[yellow]missing from CORE's 22 tasks:[/yellow] {', '.join(bundle.missing_tasks())} (scores are not comparable with reference CORE)")
    rows = []
    for name in registry.task_names():
        try:
            task = registry.build(name, source="packaged" if offline else "hub")
        except HubUnavailable as e:
            raise NanochatError(f"{name}: {str(e).split(';')[0]}; without the internet, use `nanochat data prepare-evals --offline`") from e
        rows.append([name, len(task), task.data_source])
    console().print(table("chat eval sets", rows, ["task", "examples", "data"]))
