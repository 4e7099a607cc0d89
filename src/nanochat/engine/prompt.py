"""Chat messages -> prompt token ids, truncated from the oldest turns so it always fits the context.

The layout is the one chat template, data/chat_format.py (`render_turn`): a prompt is the training
rendering of the conversation so far, then `<|assistant_start|>` for the model to answer. What this
module adds is leniency and truncation, for what people and API clients send: a system (or developer)
message anywhere is merged into the first kept user message as `system + "\\n\\n" + user`;
consecutive messages of the same role are joined with a blank line, so any sequence of roles renders
to a valid alternation; empty content is allowed. When the conversation ends with an assistant
message, that message is left open (no `<|assistant_end|>`) and the model continues it.

`render_chat_prompt(tokenizer, messages, max_tokens)` drops whole turns, oldest first, until the
prompt fits; when even the last user turn does not fit, the system text goes, then the oldest tokens
of that turn's text. The result never exceeds `max_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nanochat.common.errors import NanochatError
from nanochat.data.chat_format import PART_TYPES, ROLES, SYSTEM_ROLES, render_turn


def content_parts(content, role: str = "assistant") -> list[tuple[str, str]]:
    """Normalise message content to [(kind, text)] with kind in text|python|python_output.

    Accepts a string, or a list of parts `{"type": "text"|"python"|"python_output", "text": str}`
    (the tokenizer's format; OpenAI's `{"type": "text", "text": ...}` parts are the same shape); only
    an assistant message may hold tool parts.
    """
    if isinstance(content, str):
        return [("text", content)]
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or not isinstance(p.get("text"), str):
                raise NanochatError("each content part must be an object with a string 'text'")
            kind = p.get("type", "text")
            if kind not in PART_TYPES:
                raise NanochatError(f"content part type {kind!r} is not supported; use text, python or python_output")
            if kind != "text" and role != "assistant":
                raise NanochatError(f"a {role} message may only hold text parts; {kind!r} parts belong to the assistant")
            parts.append((kind, p["text"]))
        return parts
    raise NanochatError("message content must be a string or a list of text parts")


@dataclass
class _Turn:
    role: str  # user | assistant
    parts: list[tuple[str, str]] = field(default_factory=list)


def _turns(messages: list[dict]) -> tuple[str, list[_Turn]]:
    system: list[str] = []
    turns: list[_Turn] = []
    for m in messages:
        role = m.get("role")
        if role not in ROLES:
            raise NanochatError(f"message role {role!r} is not supported; use one of {', '.join(ROLES)}")
        parts = content_parts(m.get("content", ""), role)
        if role in SYSTEM_ROLES:
            system.append("".join(t for _, t in parts))
            continue
        if turns and turns[-1].role == role:
            turns[-1].parts.append(("text", "\n\n"))
            turns[-1].parts.extend(parts)
        else:
            turns.append(_Turn(role, list(parts)))
    if not turns:
        raise NanochatError("the conversation has no user message; send at least one message with role 'user'")
    return "\n\n".join(s for s in system if s), turns


def render_chat_prompt(tokenizer, messages: list[dict], max_tokens: int) -> list[int]:
    """Prompt ids for `messages` (ending in `<|assistant_start|>` or an open assistant turn), <= max_tokens."""
    if max_tokens < 8:
        raise NanochatError(f"no room for a prompt: {max_tokens} tokens left in the context; ask for fewer new tokens")
    bos = tokenizer.bos_id
    system, turns = _turns(messages)
    open_last = turns[-1].role == "assistant"

    def encode_turn(t: _Turn, sys_text: str, is_last: bool) -> list[int]:
        parts = ([("text", sys_text + "\n\n")] if sys_text and t.role == "user" else []) + t.parts
        return render_turn(tokenizer, t.role, parts, close=not (is_last and t.role == "assistant"))[0]

    n = len(turns)
    encoded = [encode_turn(t, "", i == n - 1) for i, t in enumerate(turns)]
    tail = [] if open_last else [tokenizer.special_id("<|assistant_start|>")]
    for k in range(n):
        if turns[k].role != "user" and k != 0 and k < n - 1:
            continue  # a kept history starts with a user turn (unless it is all that is left)
        first = encode_turn(turns[k], system, k == n - 1) if system and turns[k].role == "user" else encoded[k]
        total = 1 + len(first) + sum(len(e) for e in encoded[k + 1 :]) + len(tail)
        if total <= max_tokens:
            return [bos] + first + [x for e in encoded[k + 1 :] for x in e] + tail
        if not system:
            continue
        total_nosys = 1 + sum(len(e) for e in encoded[k:]) + len(tail)
        if total_nosys <= max_tokens:
            return [bos] + [x for e in encoded[k:] for x in e] + tail
    # even the last turn alone is too long: keep the newest tokens of its text
    last = encoded[-1]
    head = last[:1]  # <|user_start|> or <|assistant_start|>
    end = last[-1:] if turns[-1].role == "user" else []
    room = max_tokens - 1 - len(tail) - len(head) - len(end)
    body = last[len(head) : len(last) - len(end)]
    return [bos] + head + body[max(0, len(body) - room) :] + end + tail
