"""Log-probability entries (engine/choice_output.py) in the shapes of OpenAI's APIs: `chat_logprobs` for chat
(`logprobs.content`), `completion_logprobs` for legacy completions (`tokens`, `token_logprobs`,
`top_logprobs`, `text_offset`).
"""

from __future__ import annotations


def chat_logprobs(entries: list[dict]) -> list[dict]:
    """OpenAI chat `logprobs.content` items."""
    return [
        {"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"], "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e["top"]]}
        for e in entries
    ]


def _top_dict(top: list[tuple[str, float, list[int]]]) -> dict[str, float]:
    """Most likely first; of two alternatives with the same text (two halves of characters) the likelier stays."""
    out: dict[str, float] = {}
    for t, lp, _ in top:
        out.setdefault(t, lp)
    return out


def completion_logprobs(entries: list[dict], shift: int = 0) -> dict:
    """OpenAI completions `logprobs`; `shift` moves the offsets (completion tokens after an echoed prompt)."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e["token"])
        out["token_logprobs"].append(e["logprob"])
        out["top_logprobs"].append(None if e["top"] is None else _top_dict(e["top"]))
        out["text_offset"].append(e["offset"] + shift)
    return out
