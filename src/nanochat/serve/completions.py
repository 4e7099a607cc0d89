"""`POST /v1/completions`: OpenAI's (legacy) text completions over the served model.

A request is one prompt: a string, a list of token ids, or a one-element list of either. A string is
encoded as plain text after `<|bos|>` (the way every training document starts; special-token names in it
stay text); token ids are used exactly as sent. Supported: `max_tokens` (default 16; 0 with `echo` scores
the prompt only), `temperature`, `top_p`, `top_k`, `seed`, `n`, `stop`, `echo`, `logprobs` (0-20 most
likely alternatives per token, from the model's raw distribution), `stream` with `stream_options`,
OpenAI's `frequency_penalty` / `presence_penalty`, and nanochat's `repetition_penalty` /
`no_repeat_ngram_size` (off unless set here: a raw completion is the model's own).
With `echo` and `logprobs` the prompt's tokens come first in `logprobs` (a leading `<|bos|>` that the
server added is not shown; a token-id prompt's first token has no log-probability). `suffix` and
`best_of` > 1 are refused (400), as is a `model` other than the one served (404).

`parse_completion_request` validates a body; `completion_body` and `sse_chunks` turn a worker job's events
(collected by serve/responses.py) into the response body or its server-sent events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nanochat.serve.fields import check_fields
from nanochat.serve.outputs import completion_logprobs
from nanochat.serve.responses import Collected, sse_data, sse_stream
from nanochat.serve.validation import (
    MAX_N,
    MAX_TOP_LOGPROBS,
    MAX_TOTAL_CHARS,
    ApiError,
    _int,
    _is_int,
    _number,
    parse_json_body,
    parse_include_usage,
    parse_openai_penalties,
    parse_repetition,
    parse_stop,
    refuse_output_changing,
)

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
COMPLETION_REFUSED = ("suffix", "logit_bias", "tools", "response_format")


@dataclass
class CompletionRequest:
    prompt_ids: list[int]
    prompt_text: str  # what `echo` shows
    bos_added: bool
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None
    model: str | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0
    no_repeat_ngram: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


def _one_prompt(prompt):
    """The single prompt of `prompt`: a str or a list of ints."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise ApiError(422, "'prompt' holds several prompts; send one prompt per request", param="prompt", code="too_many_prompts")
    raise ApiError(422, "'prompt' must be a string or a non-empty list of token ids", param="prompt", code="invalid_type")


def parse_completion_request(body: bytes, *, tokenizer, context_len: int, vocab_size: int) -> CompletionRequest:
    """Validate a completions request body; raises ApiError with the first problem found."""
    obj = parse_json_body(body)
    if not isinstance(obj, dict):
        raise ApiError(422, "request body must be a JSON object", code="invalid_type")
    check_fields(obj, "completions")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "'model' must be a string", param="model", code="invalid_type")
    if "prompt" not in obj:
        raise ApiError(422, "'prompt' is required: a string or a list of token ids", param="prompt", code="invalid_type")
    prompt = _one_prompt(obj["prompt"])
    if isinstance(prompt, str):
        if len(prompt) > MAX_TOTAL_CHARS:
            raise ApiError(413, f"the prompt has {len(prompt)} characters; the limit is {MAX_TOTAL_CHARS}", param="prompt", code="prompt_too_long")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, "'prompt' contains an unpaired UTF-16 surrogate", param="prompt", code="invalid_text") from None
        ids, text, bos_added = [tokenizer.bos_id] + tokenizer.encode(prompt), prompt, True
    else:
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ApiError(422, f"token id {bad} is not in the vocabulary (0 to {vocab_size - 1})", param="prompt", code="invalid_token")
        if len(prompt) >= context_len:
            raise ApiError(400, f"the prompt has {len(prompt)} tokens; the model's context is {context_len}", param="prompt", code="context_length_exceeded")
        ids, text, bos_added = list(prompt), tokenizer.decode(prompt), False
    if len(ids) >= context_len:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; the model's context is {context_len}", param="prompt", code="context_length_exceeded")
    max_tokens = _int(obj, "max_tokens", 0, context_len, DEFAULT_MAX_TOKENS)
    if len(ids) + max_tokens > context_len:
        raise ApiError(
            400,
            f"the prompt ({len(ids)} tokens) and max_tokens ({max_tokens}) exceed the model's context of {context_len} tokens; lower max_tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    temperature = _number(obj, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(obj, "top_p", 0.0, 1.0, None)
    if top_p is not None and top_p <= 0.0:
        raise ApiError(422, "'top_p' must be greater than 0 and at most 1", param="top_p", code="out_of_range")
    top_k = _int(obj, "top_k", 0, vocab_size, None)
    n = _int(obj, "n", 1, MAX_N, 1)
    best_of = _int(obj, "best_of", 1, MAX_N, None)
    if best_of is not None and best_of not in (1, n):
        raise ApiError(400, "'best_of' is not supported by this server (it would change the answer); leave it out", param="best_of", code="unsupported_parameter")
    seed = _int(obj, "seed", -(2**63), 2**63 - 1, None)
    stream, echo = obj.get("stream"), obj.get("echo")
    for name, value in (("stream", stream), ("echo", echo)):
        if value is not None and not isinstance(value, bool):
            raise ApiError(422, f"'{name}' must be true or false", param=name, code="invalid_type")
    include_usage = parse_include_usage(obj)
    logprobs = _int(obj, "logprobs", 0, MAX_TOP_LOGPROBS, None)
    refuse_output_changing(obj, COMPLETION_REFUSED)
    stop = parse_stop(obj)
    repetition_penalty, no_repeat_ngram = parse_repetition(obj, 1.0, 0)
    frequency_penalty, presence_penalty = parse_openai_penalties(obj)
    return CompletionRequest(ids, text, bos_added, max_tokens, temperature, top_k or None, top_p, seed, n, bool(stream), include_usage, bool(echo), logprobs,
                             model, stop, repetition_penalty, no_repeat_ngram, frequency_penalty, presence_penalty)  # fmt: skip


def _echo_entries(req: CompletionRequest, prompt_entries: list[dict]) -> list[dict]:
    """The prompt's entries as the client sees its prompt: without a <|bos|> the server put first."""
    if not req.bos_added:
        return prompt_entries
    shown = prompt_entries[1:]
    start = shown[0]["offset"] if shown else 0
    return [{**e, "offset": e["offset"] - start} for e in shown]


def completion_body(rid: str, created: int, model: str, req: CompletionRequest, got: Collected) -> dict:
    echo_text = req.prompt_text if req.echo else ""
    choices = []
    for i in range(req.n):
        logprobs = None
        if req.logprobs is not None:
            shown = _echo_entries(req, got.prompt_entries) if req.echo else []
            logprobs = completion_logprobs(shown)
            gen = completion_logprobs(got.entries[i], shift=len(echo_text))
            for key in logprobs:
                logprobs[key] += gen[key]
        choices.append({"index": i, "text": echo_text + "".join(got.texts[i]), "logprobs": logprobs, "finish_reason": got.finish[i] or "length"})
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": got.usage}


def _chunk(rid: str, created: int, model: str, choices: list, usage=None) -> bytes:
    obj = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        obj["usage"] = usage
    return sse_data(obj)


async def sse_chunks(job, rid: str, created: int, model: str, req: CompletionRequest):
    """Server-sent events: the echoed prompt first (when asked), then text as it becomes final, a finish
    chunk per choice, the usage (with include_usage) and `data: [DONE]`."""
    shift = len(req.prompt_text) if req.echo else 0
    echo_pending = req.echo

    def render(ev: tuple) -> list[bytes]:
        nonlocal echo_pending
        out = []
        if echo_pending:  # the worker sends the prompt's log-probabilities first, when they were asked for
            echo_pending = False
            prompt_entries = ev[1] if ev[0] == "prompt_logprobs" else []
            lp = completion_logprobs(_echo_entries(req, prompt_entries)) if req.logprobs is not None else None
            out += [_chunk(rid, created, model, [{"index": i, "text": req.prompt_text, "logprobs": lp, "finish_reason": None}]) for i in range(req.n)]
        if ev[0] == "delta":
            lp = completion_logprobs(ev[3], shift=shift) if req.logprobs is not None else None
            out.append(_chunk(rid, created, model, [{"index": ev[1], "text": ev[2], "logprobs": lp, "finish_reason": None}]))
        elif ev[0] == "finish":
            out.append(_chunk(rid, created, model, [{"index": ev[1], "text": "", "logprobs": None, "finish_reason": ev[2]}]))
        elif ev[0] == "done" and req.include_usage:
            out.append(_chunk(rid, created, model, [], usage=ev[1]))
        return out

    async for chunk in sse_stream(job, render):
        yield chunk
