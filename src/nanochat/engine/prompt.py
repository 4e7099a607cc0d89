"""Chat messages -> prompt token ids, truncated from the oldest turns so it always fits the context.

The layout is the chat template of the tokenizer (REFERENCE §5.5): `<|bos|>`, then
`<|user_start|> text <|user_end|>` and `<|assistant_start|> ... <|assistant_end|>` per turn, and a
final `<|assistant_start|>` for the model to answer. A system (or developer) message is merged into
the first kept user message as `system + "\\n\\n" + user`; consecutive messages of the same role are
joined with a blank line, so any sequence of roles renders to a valid alternation. When the
conversation ends with an assistant message, that message is left open (no `<|assistant_end|>`) and
the model continues it.

`render_chat_prompt(tokenizer, messages, max_tokens)` drops whole turns, oldest first, until the
prompt fits; when even the last user turn does not fit, the system text goes, then the oldest tokens
of that turn's text. The result never exceeds `max_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nanochat.common.errors import NanochatError

ROLES = ("system", "developer", "user", "assistant")


def content_parts(content) -> list[tuple[str, str]]:
    """Normalise message content to [(kind, text)] with kind in text|python|python_output.

    Accepts a string, or a list of parts `{"type": "text"|"python"|"python_output", "text": str}`
    (the tokenizer's format; OpenAI's `{"type": "text", "text": ...}` parts are the same shape).
    """
    if isinstance(content, str):
        return [("text", content)]
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or not isinstance(p.get("text"), str):
                raise NanochatError("each content part must be an object with a string 'text'")
            kind = p.get("type", "text")
            if kind not in ("text", "python", "python_output"):
                raise NanochatError(f"content part type {kind!r} is not supported; use text, python or python_output")
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
            raise NanochatError(f"message role {role!r} is not supported; use system, user or assistant")
        parts = content_parts(m.get("content", ""))
        if role in ("system", "developer"):
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


class _Ids:
    """The special-token ids, looked up once."""

    def __init__(self, tok):
        s = tok.special_id
        self.bos = tok.bos_id
        self.user_start, self.user_end = s("<|user_start|>"), s("<|user_end|>")
        self.assistant_start, self.assistant_end = s("<|assistant_start|>"), s("<|assistant_end|>")
        self.python_start, self.python_end = s("<|python_start|>"), s("<|python_end|>")
        self.output_start, self.output_end = s("<|output_start|>"), s("<|output_end|>")


def _encode_parts(tok, ids: _Ids, parts: list[tuple[str, str]]) -> list[int]:
    out: list[int] = []
    for kind, text in parts:
        if kind == "text":
            out += tok.encode(text)
        elif kind == "python":
            out += [ids.python_start] + tok.encode(text) + [ids.python_end]
        else:
            out += [ids.output_start] + tok.encode(text) + [ids.output_end]
    return out


def render_chat_prompt(tokenizer, messages: list[dict], max_tokens: int) -> list[int]:
    """Prompt ids for `messages` (ending in `<|assistant_start|>` or an open assistant turn), <= max_tokens."""
    if max_tokens < 8:
        raise NanochatError(f"no room for a prompt: {max_tokens} tokens left in the context; ask for fewer new tokens")
    ids = _Ids(tokenizer)
    system, turns = _turns(messages)
    open_last = turns[-1].role == "assistant"

    def encode_turn(t: _Turn, sys_text: str, is_last: bool) -> list[int]:
        if t.role == "user":
            parts = ([("text", sys_text + "\n\n")] if sys_text else []) + t.parts
            return [ids.user_start] + _encode_parts(tokenizer, ids, parts) + [ids.user_end]
        body = [ids.assistant_start] + _encode_parts(tokenizer, ids, t.parts)
        return body if is_last else body + [ids.assistant_end]

    n = len(turns)
    encoded = [encode_turn(t, "", i == n - 1) for i, t in enumerate(turns)]
    tail = [] if open_last else [ids.assistant_start]
    # suffix sums: tokens of turns[k:] plus the bos and the tail
    for k in range(n):
        if turns[k].role != "user" and k != 0 and k < n - 1:
            continue  # a kept history starts with a user turn (unless it is all that is left)
        first = encode_turn(turns[k], system, k == n - 1) if system and turns[k].role == "user" else encoded[k]
        total = 1 + len(first) + sum(len(e) for e in encoded[k + 1 :]) + len(tail)
        if total <= max_tokens:
            return [ids.bos] + first + [x for e in encoded[k + 1 :] for x in e] + tail
        if not system:
            continue
        total_nosys = 1 + sum(len(e) for e in encoded[k:]) + len(tail)
        if total_nosys <= max_tokens:
            return [ids.bos] + [x for e in encoded[k:] for x in e] + tail
    # even the last turn alone is too long: keep the newest tokens of its text
    last = encoded[-1]
    head = last[:1]  # <|user_start|> or <|assistant_start|>
    end = last[-1:] if turns[-1].role == "user" else []
    room = max_tokens - 1 - len(tail) - len(head) - len(end)
    body = last[len(head) : len(last) - len(end)]
    return [ids.bos] + head + body[max(0, len(body) - room) :] + end + tail
