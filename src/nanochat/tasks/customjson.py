"""CustomJSON: your own conversations from a JSONL file, checked line by line.

Each line is either a JSON array of messages or an object with a `messages` array. A message is
`{"role": "user"|"assistant", "content": str}` (an optional `system` message may come first; the
content may also be a list of `{"type": "text"|"python"|"python_output", "text": str}` parts).
Roles alternate user, assistant, user, ...; there are at least two messages and the last is the
assistant's. Every problem is reported with its line number, e.g. `my.jsonl:17: ...`.

`PackagedChat("chatterbot")` / `PackagedChat("chitchat")` read the conversation sets packaged
with nanochat (the offline substitute for SmolTalk).
"""

from __future__ import annotations

import json
from pathlib import Path

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, Task

PART_TYPES = ("text", "python", "python_output")
PACKAGED_CHATS = {
    "chatterbot": "chat/chatterbot_english.jsonl",
    "chitchat": "chat/chitchat_subset.jsonl",
}
MAX_REPORTED = 5


def validate_messages(obj) -> list[dict]:
    """The message list of one line, or ValueError saying what is wrong with it."""
    messages = obj.get("messages") if isinstance(obj, dict) else obj
    if not isinstance(messages, list):
        raise ValueError("expected a JSON array of messages or an object with a 'messages' array")
    body = messages[1:] if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system" else messages
    if len(body) < 2:
        raise ValueError(f"a conversation needs at least a user and an assistant message, got {len(body)}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"message {i + 1} must be an object with exactly 'role' and 'content'")
        content = m["content"]
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in PART_TYPES or not isinstance(part.get("text"), str):
                    raise ValueError(f"message {i + 1}: each content part needs 'type' (text, python or python_output) and a string 'text'")
        elif not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {i + 1}: 'content' must be a non-empty string")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            where = i + 1 + (len(messages) - len(body))
            raise ValueError(f"message {where} has role {m['role']!r} but should be {want!r} (roles alternate user, assistant, ...; only the first may be system)")
    if body[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's")
    return messages


def parse_jsonl_conversations(lines, name: str) -> list[list[dict]]:
    """Validate every line; raise one NanochatError naming the first few bad lines."""
    conversations: list[list[dict]] = []
    errors: list[str] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{name}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        try:
            conversations.append(validate_messages(obj))
        except ValueError as e:
            errors.append(f"{name}:{lineno}: {e}")
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED} more bad lines)" if len(errors) > MAX_REPORTED else ""
        raise NanochatError("; ".join(errors[:MAX_REPORTED]) + more + "; fix these lines")
    if not conversations:
        raise NanochatError(f"{name} holds no conversations; add one JSON conversation per line")
    return conversations


class CustomJSON(Task):
    """Conversations from a JSONL file of your own."""

    def __init__(self, filepath: str | Path, **kwargs):
        super().__init__(**kwargs)
        path = Path(filepath).expanduser()
        if not path.is_file():
            raise NanochatError(f"{path} does not exist; give the path of a JSONL file of conversations")
        with open(path, encoding="utf-8") as f:
            self.conversations = parse_jsonl_conversations(f, str(path))
        self.name = path.stem
        self.data_source = f"file:{path}"

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> Conversation:
        return {"messages": self.conversations[index]}


class PackagedChat(CustomJSON):
    """One of the conversation sets packaged with nanochat: chatterbot (2,026) or chitchat (1,634)."""

    def __init__(self, name: str = "chatterbot", **kwargs):
        Task.__init__(self, **kwargs)
        if name not in PACKAGED_CHATS:
            raise NanochatError(f"no packaged chat set {name!r}; use one of {', '.join(PACKAGED_CHATS)}")
        from nanochat.data.resources import open_resource

        rel = PACKAGED_CHATS[name]
        with open_resource(rel) as f:
            self.conversations = parse_jsonl_conversations(f, rel)
        self.name = name
        self.data_source = f"packaged:{rel}"
