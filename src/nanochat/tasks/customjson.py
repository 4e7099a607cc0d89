"""CustomJSON: a conversation set of your own (a .jsonl or .parquet file) as a Task; PackagedChat: the packaged ones.

The reading and line-by-line checking live in `nanochat.data.chat_jsonl` (the format is described
there); a bad line is reported as `FILE:LINE: reason`, or left out with `skip_bad=True`.

`PackagedChat("chatterbot")` / `PackagedChat("chitchat")` read the conversation sets packaged
with nanochat (the offline substitute for SmolTalk).
"""

from __future__ import annotations

from pathlib import Path

from nanochat.common.errors import NanochatError
from nanochat.data.chat_jsonl import check_conversation as validate_messages  # the name other tasks import
from nanochat.data.chat_jsonl import parse_conversations, read_chat_file
from nanochat.tasks.base import Conversation, Task

__all__ = ["CustomJSON", "PackagedChat", "validate_messages"]

PACKAGED_CHATS = {
    "chatterbot": "chat/chatterbot_english.jsonl",
    "chitchat": "chat/chitchat_subset.jsonl",
}


class CustomJSON(Task):
    """Conversations from a .jsonl (or parquet) file of your own; `skipped` lists the bad lines left out."""

    def __init__(self, filepath: str | Path, skip_bad: bool = False, name: str | None = None, **kwargs):
        super().__init__(**kwargs)
        path = Path(filepath).expanduser()
        got = read_chat_file(path, skip_bad)
        self.conversations, self.skipped = got.conversations, got.skipped
        self.name = name or path.name.split(".")[0]
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
        from nanochat.data.chat_jsonl import jsonl_rows
        from nanochat.data.resources import open_resource

        rel = PACKAGED_CHATS[name]
        with open_resource(rel) as f:
            self.conversations = parse_conversations(jsonl_rows(f), rel).conversations
        self.skipped = []
        self.name = name
        self.data_source = f"packaged:{rel}"
