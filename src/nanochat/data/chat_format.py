"""Conversations to token ids, and which of them the model is trained on.

Layout of a rendered conversation:

    <|bos|>
    <|user_start|> user text <|user_end|>
    <|assistant_start|> text | <|python_start|> code <|python_end|> | <|output_start|> out <|output_end|> ... <|assistant_end|>
    ...

The mask is 1 only on what the assistant writes itself: its text, its tool calls (including the
`<|python_start|>`/`<|python_end|>` delimiters) and `<|assistant_end|>`. Everything else is 0: the
`<|bos|>`, user turns, `<|assistant_start|>` (the prompt asks for it) and tool outputs with their
delimiters (the tool writes those, not the model).

Messages: `[{"role": "system"|"developer"|"user"|"assistant", "content": str | [{"type": "text"|"python"|"python_output", "text": str}]}]`,
or a dict with such a list under "messages". A leading system (or developer: OpenAI's newer name for
it) message is merged into the first user message as `system + "\\n\\n" + user`. After it, roles
strictly alternate user, assistant, ... Malformed conversations raise ConversationError (a
NanochatError) that names the message (counted from 1).

This is the one chat template: `render_turn` lays out one turn's tokens and mask, and both training
(`render_conversation`) and inference (`render_for_completion` here, and engine/prompt.py's lenient,
truncating `render_chat_prompt`) build on it, so a prompt is always the training rendering of the
conversation so far followed by `<|assistant_start|>`.
"""

from __future__ import annotations

from typing import Any

from nanochat.common.errors import NanochatError

ROLES = ("system", "developer", "user", "assistant")  # every role a chat message may have (the server checks against it too)
SYSTEM_ROLES = ("system", "developer")  # merged into the first user message
PART_TYPES = ("text", "python", "python_output")


class ConversationError(NanochatError):
    """A conversation that cannot be rendered; the message names the offending message."""


def _messages_of(conversation: Any) -> list:
    if isinstance(conversation, dict):
        if "messages" not in conversation:
            raise ConversationError("a conversation dict needs a `messages` list")
        conversation = conversation["messages"]
    if not isinstance(conversation, (list, tuple)):
        raise ConversationError(f"a conversation is a list of messages, got {type(conversation).__name__}")
    if not conversation:
        raise ConversationError("the conversation has no messages")
    return list(conversation)


def _parts(content: Any, i: int, role: str) -> list[tuple[str, str]]:
    """(type, text) parts of one message's content, validated."""
    if isinstance(content, str):
        if not content:
            raise ConversationError(f"message {i + 1} ({role}) has empty content")
        return [("text", content)]
    if not isinstance(content, (list, tuple)) or not content:
        raise ConversationError(f"message {i + 1} ({role}) content must be a non-empty string or a non-empty list of parts")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise ConversationError(f"message {i + 1} part {j + 1} must be {{'type': ..., 'text': str}}")
        kind = part.get("type", "text")
        if kind not in PART_TYPES:
            raise ConversationError(f"message {i + 1} part {j + 1} has unknown type {kind!r} (use one of {', '.join(PART_TYPES)})")
        if role != "assistant" and kind != "text":
            raise ConversationError(f"message {i + 1} ({role}) may only hold text parts; {kind!r} parts belong to the assistant")
        if not part["text"] and kind != "python_output":  # a tool may legitimately print nothing
            raise ConversationError(f"message {i + 1} part {j + 1} ({kind}) has empty text")
        parts.append((kind, part["text"]))
    return parts


def normalize(conversation: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """Validate a conversation; return [(role, [(type, text), ...])] with the system message merged."""
    messages = _messages_of(conversation)
    out: list[tuple[str, list[tuple[str, str]]]] = []
    system: str | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ConversationError(f"message {i + 1} must be a dict with `role` and `content`")
        role = msg.get("role")
        if role not in ROLES:
            raise ConversationError(f"message {i + 1} has unknown role {role!r} (use one of {', '.join(ROLES)})")
        if "content" not in msg:
            raise ConversationError(f"message {i + 1} ({role}) has no content")
        parts = _parts(msg["content"], i, role)
        if role in SYSTEM_ROLES:
            if i != 0:
                raise ConversationError(f"message {i + 1}: a {role} message may only come first")
            system = "".join(t for _, t in parts)
            continue
        expected = "user" if len(out) % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError(f"message {i + 1} is {role!r} but {expected!r} was expected: roles must alternate user, assistant, ...")
        if role == "user":
            text = "".join(t for _, t in parts)
            if system is not None and not out:
                text = system + "\n\n" + text
            parts = [("text", text)]
        out.append((role, parts))
    if not out:
        raise ConversationError("the conversation has only a system message; add a user message")
    return out


def render_turn(tok, role: str, parts: list[tuple[str, str]], close: bool = True) -> tuple[list[int], list[int]]:
    """(ids, mask) of one user or assistant turn; `close=False` leaves an assistant turn open (no
    `<|assistant_end|>`) for the model to continue. A user turn's text parts are encoded as one string."""
    sid = tok.special_id
    ids: list[int] = []
    mask: list[int] = []

    def add(new: list[int], m: int) -> None:
        ids.extend(new)
        mask.extend([m] * len(new))

    if role == "user":
        add([sid("<|user_start|>")], 0)
        add(tok.encode("".join(text for _, text in parts)), 0)
        add([sid("<|user_end|>")], 0)
        return ids, mask
    add([sid("<|assistant_start|>")], 0)
    for kind, text in parts:
        if kind == "text":
            add(tok.encode(text), 1)
        elif kind == "python":
            add([sid("<|python_start|>")], 1)
            add(tok.encode(text), 1)
            add([sid("<|python_end|>")], 1)
        else:  # python_output: written by the tool, so not trained on
            add([sid("<|output_start|>")], 0)
            add(tok.encode(text), 0)
            add([sid("<|output_end|>")], 0)
    if close:
        add([sid("<|assistant_end|>")], 1)
    return ids, mask


def _render(tok, turns, ids: list[int], mask: list[int]) -> None:
    for role, parts in turns:
        turn_ids, turn_mask = render_turn(tok, role, parts)
        ids.extend(turn_ids)
        mask.extend(turn_mask)


def render_conversation(tok, conversation: Any, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
    """(ids, mask) for training, both cut to `max_tokens`."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    turns = normalize(conversation)
    ids: list[int] = [tok.bos_id]
    mask: list[int] = [0]
    _render(tok, turns, ids, mask)
    return ids[:max_tokens], mask[:max_tokens]


def render_for_completion(tok, conversation: Any) -> list[int]:
    """Prompt ids for the next assistant turn: a final assistant message (the answer to be
    generated) is dropped, and the ids end with `<|assistant_start|>`."""
    turns = normalize(conversation)
    if turns[-1][0] == "assistant":
        turns = turns[:-1]
    if not turns:
        raise ConversationError("nothing to complete: the conversation needs a user message")
    ids: list[int] = [tok.bos_id]
    _render(tok, turns, ids, [])  # the mask is not needed here
    ids.append(tok.special_id("<|assistant_start|>"))
    return ids
