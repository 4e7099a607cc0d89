"""Which request fields the API accepts: those OpenAI documents for chat completions and completions, typed.

`check_fields(obj, endpoint)` refuses (400, naming it) a field that is not in OpenAI's list for the endpoint
(or one of nanochat's own: `top_k`, and the repetition guards `repetition_penalty` and `no_repeat_ngram_size`), so a typo such as `max_token` or `temprature` is an error instead of silently having
no effect. The fields the server handles are checked where they are parsed (validation.py, completions.py);
the ones that change nothing here (`user`, `metadata`, `store`, ...) must still have OpenAI's type;
`modalities` is accepted only at its no-op value (text), anything else would change the answer.
"""

from __future__ import annotations

import math

from nanochat.serve.validation import ApiError

# fields parsed and honoured, or refused when set, by validation.py and completions.py
CHAT_HANDLED = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "seed",
                "stream", "stream_options", "stop", "logprobs", "top_logprobs", "tools", "tool_choice", "functions",
                "function_call", "response_format", "logit_bias", "audio", "prediction", "frequency_penalty", "presence_penalty",
                "repetition_penalty", "no_repeat_ngram_size")  # fmt: skip
COMPLETION_HANDLED = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "best_of", "seed", "stream",
                      "stream_options", "echo", "logprobs", "stop", "suffix", "logit_bias", "tools", "response_format",
                      "frequency_penalty", "presence_penalty", "repetition_penalty", "no_repeat_ngram_size")  # fmt: skip
# OpenAI fields that are refused whenever set: they would change the answer, and nothing here can honour them
CHAT_UNSUPPORTED = ("reasoning_effort", "verbosity", "web_search_options")


def _string(obj: dict, key: str) -> None:
    if not isinstance(obj[key], str):
        raise ApiError(422, f"'{key}' must be a string", param=key, code="invalid_type")


def _bool(obj: dict, key: str) -> None:
    if not isinstance(obj[key], bool):
        raise ApiError(422, f"'{key}' must be true or false", param=key, code="invalid_type")


def _metadata(obj: dict, key: str) -> None:
    v = obj[key]
    if not isinstance(v, dict) or len(v) > 16 or not all(isinstance(k, str) and isinstance(x, str) and len(k) <= 64 and len(x) <= 512 for k, x in v.items()):
        raise ApiError(422, f"'{key}' must be an object of at most 16 string keys (64 characters) and string values (512)", param=key, code="invalid_type")


def _modalities(obj: dict, key: str) -> None:
    v = obj[key]
    if not isinstance(v, list) or not all(isinstance(m, str) for m in v):
        raise ApiError(422, f"'{key}' must be a list of strings", param=key, code="invalid_type")
    if set(v) - {"text"}:
        raise ApiError(400, f"'{key}' may only ask for text here; leave it out or send [\"text\"]", param=key, code="unsupported_parameter")


# accepted, checked for type, otherwise without effect on the answer
_NO_OP_CHECKS = {
    "user": _string, "metadata": _metadata, "store": _bool, "service_tier": _string, "parallel_tool_calls": _bool,
    "prompt_cache_key": _string, "safety_identifier": _string, "modalities": _modalities,
}  # fmt: skip
_CHAT_NO_OP = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier", "modalities")
_COMPLETION_NO_OP = ("user",)

KNOWN = {
    "chat completions": frozenset(CHAT_HANDLED + CHAT_UNSUPPORTED + _CHAT_NO_OP),
    "completions": frozenset(COMPLETION_HANDLED + _COMPLETION_NO_OP),
}
_NO_OP = {"chat completions": _CHAT_NO_OP, "completions": _COMPLETION_NO_OP}


def check_fields(obj: dict, endpoint: str) -> None:
    """400 for a field `endpoint` ("chat completions" or "completions") does not know; types of the no-op fields."""
    known = KNOWN[endpoint]
    for key in obj:
        if key not in known:
            shown = key if len(key) <= 60 else key[:60] + "..."
            raise ApiError(400, f"unknown field '{shown}' for {endpoint}; see the OpenAI API reference for the fields this endpoint takes", param=shown, code="unknown_parameter")
    for key in _NO_OP[endpoint]:
        if obj.get(key) is not None:
            _NO_OP_CHECKS[key](obj, key)
    if endpoint == "chat completions":
        for key in CHAT_UNSUPPORTED:
            if obj.get(key) is not None:
                raise ApiError(400, f"'{key}' is not supported by this server and would change the answer; leave it out", param=key, code="unsupported_parameter")
