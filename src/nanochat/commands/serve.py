"""`nanochat serve`: the chat web page and an OpenAI-compatible API over a trained model."""

from __future__ import annotations

import os
from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP
from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY, check_repetition_settings


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback needs --api-key (or --insecure)."),
    port: int = typer.Option(8000, callback=ranges.port, help="Port to bind."),
    source: Optional[str] = typer.Option(None, help="sft, rl or base. Default: the newest of sft and rl."),
    model_tag: Optional[str] = typer.Option(None, help="Model tag (e.g. d20). Default: the one written most recently."),
    step: Optional[int] = typer.Option(None, callback=ranges.count(low=0), help="Checkpoint step. Default: the newest complete one."),
    api_key: Optional[str] = typer.Option(None, envvar="NANOCHAT_API_KEY", help="Require this key (Bearer) on every route but /health. Env: NANOCHAT_API_KEY."),
    workers: Optional[int] = typer.Option(None, callback=ranges.count(), help="Engine workers, each a model replica (default: one per GPU, one on CPU)."),
    queue_size: int = typer.Option(16, callback=ranges.count(low=0), help="Requests that may wait for a batch slot; beyond that the answer is 503 with Retry-After."),
    batch_slots: Optional[int] = typer.Option(None, callback=ranges.count(), help="Requests each worker decodes together in one continuous batch (default: 32 on CUDA, 8 on CPU)."),
    max_tokens: int = typer.Option(512, callback=ranges.count(), help="Default max tokens of an answer when a request does not say."),
    repetition_penalty: float = typer.Option(CHAT_REPETITION_PENALTY, help="Default repetition penalty of chat completions (1: off); a request's repetition_penalty wins."),
    no_repeat_ngram: int = typer.Option(CHAT_NO_REPEAT_NGRAM, help="Default no-repeat n-gram size of chat completions (0: off); a request's no_repeat_ngram_size wins."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    allowed_hosts: Optional[str] = typer.Option(None, help="Comma-separated Host names to accept ('*': any). Default: loopback names when bound to loopback."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow binding a non-loopback address without an API key."),
    log_requests: bool = typer.Option(False, "--log-requests", help="Log every conversation and answer (off by default)."),
    served_model_name: Optional[str] = typer.Option(None, help="The model name clients must send (default: nanochat-SOURCE-TAG-stepN); `nanochat` is always accepted too."),
    allow_origin: Optional[str] = typer.Option(None, help="Comma-separated sites (https://app.example.com) whose pages may call the API; '*': any. Default: only the server's own page."),
) -> None:
    """Serve the chat page at / and an OpenAI-compatible API at /v1 (chat completions, completions, models)."""
    import contextlib

    from nanochat.common import checks
    from nanochat.common.checkpoint import SOURCES, require_checkpoint
    from nanochat.common.device import check_device_name
    from nanochat.common.errors import UsageError
    from nanochat.engine.loading import newest_chat_source
    from nanochat.serve.app import check_bind
    from nanochat.serve.bind import reserve
    from nanochat.serve.guard import parse_allow_origin

    checks.one_of("source", source, SOURCES)
    if served_model_name is not None and (not served_model_name.strip() or len(served_model_name) > 200):
        raise UsageError("--served-model-name must be 1 to 200 characters")
    try:
        check_repetition_settings(repetition_penalty, no_repeat_ngram)
    except ValueError as e:
        raise UsageError(f"{e}: fix --repetition-penalty / --no-repeat-ngram") from None
    check_device_name(device)
    check_bind(host, api_key, insecure)
    origins = parse_allow_origin(allow_origin)
    # a busy port fails here, before anything is loaded; uvicorn later serves on this very socket
    with contextlib.closing(reserve(host, port)) as sock:
        # fail now, with one line, if there is nothing to load; the weights load in the background
        src = source or newest_chat_source()
        require_checkpoint(src, model_tag, step)
        _serve(sock, src, model_tag, step, host, port, api_key, workers, queue_size, max_tokens, device, allowed_hosts, log_requests, served_model_name,
               repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram, allow_origins=origins, batch_slots=batch_slots)  # fmt: skip


def _serve(sock, src, model_tag, step, host, port, api_key, workers, queue_size, max_tokens, device, allowed_hosts, log_requests, served_model_name=None,
           repetition_penalty: float = CHAT_REPETITION_PENALTY, no_repeat_ngram: int = CHAT_NO_REPEAT_NGRAM, allow_origins=None,
           batch_slots: int | None = None) -> None:  # fmt: skip
    """Resolve the checkpoint, build the app (the weights load in its background) and run uvicorn on `sock`."""
    import logging

    import torch
    import uvicorn

    from nanochat.common.checkpoint import resolve_checkpoint
    from nanochat.common.device import detect_device
    from nanochat.common.errors import NanochatError
    from nanochat.common.logging import print0
    from nanochat.engine.engine import Engine
    from nanochat.engine.loading import load_chat_model
    from nanochat.serve.app import ServeConfig, create_app
    from nanochat.serve.bind import bind_error
    from nanochat.serve.guard import uvicorn_config
    from nanochat.serve.workers import default_batch_slots

    dev = detect_device(device)
    n = workers or (torch.cuda.device_count() if dev == "cuda" else 1)
    if dev == "cuda" and n > torch.cuda.device_count():
        raise NanochatError(f"--workers {n} but only {torch.cuda.device_count()} GPUs are visible; use at most that many")
    if dev != "cuda" and n > 1:
        raise NanochatError(f"--workers {n} on {dev}: several replicas only help with several GPUs; use --workers 1")
    info = resolve_checkpoint(src, model_tag, step)
    config = ServeConfig(
        host=host,
        port=port,
        api_key=api_key,
        allowed_hosts=[h for h in allowed_hosts.split(",")] if allowed_hosts else None,
        queue_size=queue_size,
        log_requests=log_requests,
        model_name=served_model_name or f"nanochat-{src}-{info.tag}-step{info.step}",
        default_max_tokens=max_tokens,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram=no_repeat_ngram,
        allow_origins=allow_origins,
        batch_slots=batch_slots,
    )
    if dev == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # a core stays free for the HTTP side

    def load():
        engines = []
        for i in range(n):
            target = f"cuda:{i}" if dev == "cuda" else dev
            model, tokenizer, _ = load_chat_model(src, info.tag, info.step, target)
            engine = Engine(model, tokenizer)
            for _ in engine.generate([tokenizer.bos_id], max_tokens=2, temperature=0.0):
                pass  # warm up the prefill before /health says ready (the batch captures its graphs as its worker starts)
            engines.append(engine)
        return engines

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app(config, load)
    shown = f"[{host}]" if ":" in host else host
    slots = batch_slots or default_batch_slots(dev)
    print0(f"serving {config.model_name} on http://{shown}:{port}/ ({n} worker{'s' if n > 1 else ''} on {dev}, {slots} batch slots each); API at /v1")
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level="info", access_log=True, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    except OSError as e:  # uvicorn could not serve on the socket after all
        raise NanochatError(bind_error(host, port, e)) from None
    except KeyboardInterrupt:  # Ctrl-C once uvicorn has shut down cleanly: a normal stop, as with uvicorn.run
        return
    except SystemExit as e:  # uvicorn exits 3 when its startup fails; say so in one line
        if server.started:
            raise
        raise NanochatError(f"the server on {shown}:{port} did not start (uvicorn exit code {e.code}; its log above says why); fix that and rerun") from None
    if not server.started:
        raise NanochatError(f"the server on {shown}:{port} did not start (its log above says why); fix that and rerun")
