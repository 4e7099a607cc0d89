"""Checking a `/v1/chat/completions` request body before it reaches the model.

Every way a body can be wrong maps to one `ApiError` with an HTTP status and an OpenAI-style error:
400 when the body is not JSON (or not UTF-8, or nested absurdly deep) or asks for something that would change
the answer and is not supported (`tools`, `response_format`, ...: refused, never silently ignored) or is not a
field OpenAI documents for the endpoint (serve/fields.py), 404 for a
`model` other than the one served (`check_model`), 413 when it is too big
(bytes, messages, characters), 422 when it is JSON of the wrong shape or a value is out of range.
Nothing here can raise anything else, whatever the bytes: the malformed-request suite checks that.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from nanochat.data.chat_format import ROLES
from nanochat.engine.repetition import MAX_NO_REPEAT_NGRAM, MAX_OPENAI_PENALTY, MAX_REPETITION_PENALTY

MAX_BODY_BYTES = 1_000_000
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000
MAX_N = 8
MAX_NESTING = 32
MAX_STOP = 4
MAX_STOP_CHARS = 200
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error the client caused: status, message, and the OpenAI `type`/`param`/`code` fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    n: int
    stream: bool
    include_usage: bool
    model: str | None = None
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no log-probabilities; k: each token's and its k best alternatives
    repetition_penalty: float = 1.0
    no_repeat_ngram: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _depth_ok(raw: str) -> bool:
    """True when brackets nest at most MAX_NESTING deep (checked before json.loads can recurse)."""
    depth = 0
    in_str = esc = False
    for ch in raw:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json_body(body: bytes):
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}", code="body_too_large")
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8", code="invalid_json") from None
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object", code="invalid_json")
    if not _depth_ok(raw):
        raise ApiError(400, f"JSON nested deeper than {MAX_NESTING} levels", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {str(e)[:200]}", code="invalid_json") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(obj: dict, key: str, lo: float, hi: float, default):
    v = obj.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(422, f"'{key}' must be a number", param=key, code="invalid_type")
    try:
        f = float(v)
    except OverflowError:
        raise ApiError(422, f"'{key}' must be between {lo} and {hi}", param=key, code="out_of_range") from None
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ApiError(422, f"'{key}' must be between {lo} and {hi}", param=key, code="out_of_range")
    return f


def _int(obj: dict, key: str, lo: int, hi: int, default):
    v = obj.get(key)
    if v is None:
        return default
    if not _is_int(v):
        raise ApiError(422, f"'{key}' must be an integer", param=key, code="invalid_type")
    if not lo <= v <= hi:
        raise ApiError(422, f"'{key}' must be between {lo} and {hi}", param=key, code="out_of_range")
    return v


def _content_text(content, where: str) -> str:
    """The text of a message's content (string, or a list of text parts); raises ApiError otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(422, f"{where}.content[{j}] must be {{\"type\": \"text\", \"text\": string}}", param=f"{where}.content", code="invalid_type")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(422, f"{where}.content must be a string or a list of text parts", param=f"{where}.content", code="invalid_type")


def parse_chat_request(body: bytes, *, context_len: int, vocab_size: int, default_max_tokens: int,
                       default_repetition_penalty: float = 1.0, default_no_repeat_ngram: int = 0) -> ChatRequest:  # fmt: skip
    """Validate a chat completion request body; raises ApiError with the first problem found.

    Beyond OpenAI's fields, `repetition_penalty` (1 = off, to 10) and `no_repeat_ngram_size` (0 = off,
    or 2 to 64) set the repetition guards for this request; absent, the server's defaults apply.
    OpenAI's own `frequency_penalty` and `presence_penalty` (-2 to 2, default 0) are honoured as OpenAI
    defines them (additive), independently of those two."""
    from nanochat.serve.fields import check_fields  # fields.py builds on this module's ApiError

    obj = parse_json_body(body)
    if not isinstance(obj, dict):
        raise ApiError(422, "request body must be a JSON object", code="invalid_type")
    check_fields(obj, "chat completions")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "'model' must be a string", param="model", code="invalid_type")
    msgs = obj.get("messages")
    if not isinstance(msgs, list):
        raise ApiError(422, "'messages' must be a list of {role, content} objects", param="messages", code="invalid_type")
    if not msgs:
        raise ApiError(422, "'messages' must not be empty", param="messages", code="out_of_range")
    if len(msgs) > MAX_MESSAGES:
        raise ApiError(413, f"{len(msgs)} messages; the limit is {MAX_MESSAGES}", param="messages", code="too_many_messages")
    messages, total, has_user = [], 0, False
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(422, f"{where} must be an object with 'role' and 'content'", param=where, code="invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(422, f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role", code="invalid_role")
        if "content" not in m:
            raise ApiError(422, f"{where} has no 'content'", param=f"{where}.content", code="invalid_type")
        text = _content_text(m["content"], where)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON can spell lone surrogates ("\ud800"); they are not text
            raise ApiError(422, f"{where}.content contains an unpaired UTF-16 surrogate", param=f"{where}.content", code="invalid_text") from None
        if len(text) > MAX_MESSAGE_CHARS:
            raise ApiError(413, f"{where} has {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}", param=where, code="message_too_long")
        total += len(text)
        if total > MAX_TOTAL_CHARS:
            raise ApiError(413, f"the messages have more than {MAX_TOTAL_CHARS} characters in all", param="messages", code="conversation_too_long")
        has_user = has_user or role == "user"
        messages.append({"role": role, "content": text})
    if not has_user:
        raise ApiError(422, "the conversation needs at least one message with role 'user'", param="messages", code="no_user_message")
    max_new = context_len - 16  # room for at least a short prompt
    max_tokens = _int(obj, "max_completion_tokens", 1, max_new, None)
    if max_tokens is None:
        max_tokens = _int(obj, "max_tokens", 1, max_new, min(default_max_tokens, max_new))
    temperature = _number(obj, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(obj, "top_p", 0.0, 1.0, None)
    if top_p is not None and top_p <= 0.0:
        raise ApiError(422, "'top_p' must be greater than 0 and at most 1", param="top_p", code="out_of_range")
    top_k = _int(obj, "top_k", 0, vocab_size, None)
    n = _int(obj, "n", 1, MAX_N, 1)
    seed = _int(obj, "seed", -(2**63), 2**63 - 1, None)
    stream = obj.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(422, "'stream' must be true or false", param="stream", code="invalid_type")
    include_usage = parse_include_usage(obj)
    refuse_output_changing(obj, CHAT_REFUSED)
    stop = parse_stop(obj)
    logprobs = obj.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ApiError(422, "'logprobs' must be true or false", param="logprobs", code="invalid_type")
    top_logprobs = _int(obj, "top_logprobs", 0, MAX_TOP_LOGPROBS, None)
    if top_logprobs is not None and not logprobs:
        raise ApiError(422, "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value")
    top = (top_logprobs or 0) if logprobs else None
    repetition_penalty, no_repeat_ngram = parse_repetition(obj, default_repetition_penalty, default_no_repeat_ngram)
    frequency_penalty, presence_penalty = parse_openai_penalties(obj)
    return ChatRequest(messages, max_tokens, temperature, top_k or None, top_p, seed, n, bool(stream), include_usage, model, stop, top,
                       repetition_penalty, no_repeat_ngram, frequency_penalty, presence_penalty)  # fmt: skip


def parse_repetition(obj: dict, default_penalty: float, default_ngram: int) -> tuple[float, int]:
    """nanochat's repetition guards (not OpenAI fields): `repetition_penalty` (1 = off, to 10) and
    `no_repeat_ngram_size` (0 = off, or 2 to 64); absent, the given defaults apply."""
    penalty = _number(obj, "repetition_penalty", 1.0, MAX_REPETITION_PENALTY, default_penalty)
    ngram = _int(obj, "no_repeat_ngram_size", 0, MAX_NO_REPEAT_NGRAM, default_ngram)
    if ngram == 1:
        raise ApiError(422, f"'no_repeat_ngram_size' must be 0 (off) or 2 to {MAX_NO_REPEAT_NGRAM}", param="no_repeat_ngram_size", code="out_of_range")
    return penalty, ngram


def parse_openai_penalties(obj: dict) -> tuple[float, float]:
    """OpenAI's `frequency_penalty` and `presence_penalty`: additive, -2 to 2, 0 (off) when absent."""
    m = MAX_OPENAI_PENALTY
    return _number(obj, "frequency_penalty", -m, m, 0.0), _number(obj, "presence_penalty", -m, m, 0.0)


# OpenAI fields that would change the answer in ways this server cannot honour: refused, never ignored
CHAT_REFUSED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias", "audio", "prediction")
HARMLESS = {"tool_choice": ("none",), "response_format": ({"type": "text"},), "function_call": ("none",)}


def refuse_output_changing(obj: dict, names: tuple[str, ...]) -> None:
    """400 for any of `names` set to something other than empty or its default."""
    for name in names:
        value = obj.get(name)
        if value in (None, False, [], {}, "") or value in HARMLESS.get(name, ()):
            continue
        raise ApiError(400, f"'{name}' is not supported by this server and would change the answer; leave it out", param=name, code="unsupported_parameter")


def parse_include_usage(obj: dict) -> bool:
    """`stream_options.include_usage` (OpenAI's streaming usage chunk), checked; False when absent."""
    opts = obj.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise ApiError(422, "'stream_options' must be an object", param="stream_options", code="invalid_type")
    iu = opts.get("include_usage")
    if iu is not None and not isinstance(iu, bool):
        raise ApiError(422, "'stream_options.include_usage' must be true or false", param="stream_options.include_usage", code="invalid_type")
    return bool(iu)


def parse_stop(obj: dict) -> list[str]:
    """`stop`: a string or a list of up to 4 non-empty strings."""
    stop = obj.get("stop")
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(422, "'stop' must be a string or a list of strings", param="stop", code="invalid_type")
    if len(items) > MAX_STOP:
        raise ApiError(422, f"'stop' has {len(items)} sequences; the limit is {MAX_STOP}", param="stop", code="out_of_range")
    for s in items:
        if not s or len(s) > MAX_STOP_CHARS:
            raise ApiError(422, f"each 'stop' sequence must have 1 to {MAX_STOP_CHARS} characters", param="stop", code="out_of_range")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, "'stop' contains an unpaired UTF-16 surrogate", param="stop", code="invalid_text") from None
    return list(items)


GENERIC_MODEL_NAME = "nanochat"  # always names the model being served (what the chat page sends)


def check_model(requested: str | None, served: str) -> None:
    """404 in OpenAI's shape when a request names a model other than the one served (or `nanochat`)."""
    if requested is None or requested in (served, GENERIC_MODEL_NAME):
        return
    shown = requested if len(requested) <= 100 else requested[:100] + "..."
    raise ApiError(404, f"The model '{shown}' does not exist; this server serves '{served}' (see GET /v1/models)", param="model", code="model_not_found")
