"""SmolTalk (`HuggingFaceTB/smol-smoltalk`): general chat data for SFT (train ~460K, test ~24K).

It is only online: the conversations are not packaged with nanochat. Offline, construction fails
with a message naming the substitute, the packaged chat sets (`PackagedChat("chatterbot")` and
`PackagedChat("chitchat")` in `nanochat.tasks.customjson`).
"""

from __future__ import annotations

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, RowTask, load_rows
from nanochat.data.chat_jsonl import check_conversation as validate_messages

OFFLINE_SUBSTITUTE = "the packaged chat sets PackagedChat('chatterbot') and PackagedChat('chitchat') from nanochat.tasks.customjson"


class SmolTalk(RowTask):
    name = "SmolTalk"
    eval_type = None

    def __init__(self, split: str = "train", source: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise NanochatError(f"SmolTalk has no split {split!r}; use train or test")
        if source == "packaged":
            raise NanochatError(f"SmolTalk is not packaged with nanochat (online only); offline use {OFFLINE_SUBSTITUTE}")
        try:
            loaded = load_rows(("HuggingFaceTB/smol-smoltalk", "default", split), None, source=source, what=f"SmolTalk {split}")
        except NanochatError as e:
            raise NanochatError(f"SmolTalk is unavailable: it needs the Hugging Face Hub ({str(e).split(';')[0]}); offline use {OFFLINE_SUBSTITUTE}") from e
        self._use_rows(loaded, split)

    def get_example(self, index: int) -> Conversation:
        messages = [{"role": m["role"], "content": m["content"]} for m in self.rows[index]["messages"]]
        try:
            validate_messages(messages)
        except ValueError as e:
            raise NanochatError(f"SmolTalk row {index}: {e}; the downloaded data is damaged (delete <home>/task_data to fetch it again)") from e
        return {"messages": messages}
