"""Your own conversations: reading, checking and storing sets of them (JSON Lines or parquet).

A conversation is one JSON Lines line in the OpenAI messages format,
`{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}` (a bare array of messages
is accepted too), or one row of a parquet file's `messages` column. What a line may hold is what the
renderer (`data.chat_format.normalize`) accepts: an optional system message first, then user and
assistant strictly alternating; `content` is a string or a list of parts `{"type": "text"|"python"|
"python_output", "text": str}` (the assistant's calculator calls and their outputs, nanochat's
tool form). On top of that a training conversation ends with the assistant's turn (otherwise its last
turn teaches nothing) and its messages carry no other keys (OpenAI's `tool_calls`, `name`, `weight`
... would silently be dropped; saying so is kinder).

Every bad line is reported as `FILE:LINE: reason` (line numbers count from 1, blank lines included;
parquet rows likewise). `read_chat_file(path)` raises one NanochatError naming the first few, or with
`skip_bad=True` leaves them out and lists them in `ChatFile.skipped`.

Imported sets (`nanochat data import --kind chat`) live in `data_dir(NAME)/conversations.jsonl`,
one checked conversation per line, with `dataset.json` saying `"kind": "chat"`. `resolve_chat_source`
turns what the user typed after `--data`/`--add` (a file, an imported name, either with `:EPOCHS`) into
a `ChatSource`.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from nanochat.common import paths
from nanochat.common.atomic import fresh_temp_dir, publish_dir
from nanochat.common.errors import NanochatError, UsageError
from nanochat.data.chat_format import ConversationError, normalize

MAX_REPORTED = 5
CHAT_FILE = "conversations.jsonl"
MESSAGE_KEYS = {"role", "content"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
MESSAGES_COLUMN = "messages"


@dataclass
class ChatFile:
    """The good conversations of one file, and the `FILE:LINE: reason` of each bad line passed over."""

    path: str
    conversations: list[list[dict]]
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChatSource:
    """A conversation set named on the command line: its file, how it is shown, and its epochs."""

    path: Path
    name: str
    epochs: int = 1


def check_conversation(obj) -> list[dict]:
    """The messages of one conversation, or ValueError saying what is wrong with it."""
    if isinstance(obj, dict):
        if "messages" not in obj:
            raise ValueError(f"expected an object with a 'messages' array (keys here: {', '.join(map(str, obj)) or 'none'})")
        obj = obj["messages"]
    if not isinstance(obj, list):
        raise ValueError("expected an object with a 'messages' array of {role, content} messages")
    for i, m in enumerate(obj):
        extra = sorted(set(m) - MESSAGE_KEYS) if isinstance(m, dict) else []
        if "tool_calls" in extra:
            raise ValueError(f"message {i + 1} has 'tool_calls': write calculator calls as content parts "
                             "[{'type': 'python', 'text': CODE}, {'type': 'python_output', 'text': RESULT}]")  # fmt: skip
        if extra:
            raise ValueError(f"message {i + 1} has key(s) {', '.join(map(repr, extra))}; a message holds only 'role' and 'content'")
    try:
        turns = normalize(obj)
    except ConversationError as e:
        raise ValueError(str(e)) from None
    if turns[-1][0] != "assistant":
        raise ValueError("the last message must be the assistant's (it is what SFT trains on)")
    return [{"role": m["role"], "content": m["content"]} for m in obj]


def parse_conversations(rows: Iterable[tuple[int, object]], name: str, skip_bad: bool = False) -> ChatFile:
    """Check `(line number, decoded JSON or a JSONDecodeError)` rows; bad ones raise (or, with skip_bad, are listed)."""
    good: list[list[dict]] = []
    bad: list[str] = []
    for lineno, obj in rows:
        try:
            if isinstance(obj, json.JSONDecodeError):
                raise ValueError(f"not valid JSON ({obj.msg} at column {obj.colno})")
            good.append(check_conversation(obj))
        except ValueError as e:
            bad.append(f"{name}:{lineno}: {e}")
    if bad and not skip_bad:
        more = f" (and {len(bad) - MAX_REPORTED} more bad lines)" if len(bad) > MAX_REPORTED else ""
        raise NanochatError("; ".join(bad[:MAX_REPORTED]) + more + "; fix these lines, or pass --skip-bad to leave them out")
    if not good:
        raise NanochatError(f"{name} holds no usable conversations; write one {{\"messages\": [...]}} object per line")
    return ChatFile(name, good, bad)


def jsonl_rows(lines: Iterable[str]) -> Iterator[tuple[int, object]]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, e


def _parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged footer
        raise NanochatError(f"{path}: not a readable parquet file ({e})") from None
    if MESSAGES_COLUMN not in pf.schema_arrow.names:
        raise NanochatError(f"{path}: no `{MESSAGES_COLUMN}` column (columns: {', '.join(pf.schema_arrow.names)}); "
                            "a conversation set needs a list of {role, content} messages per row")  # fmt: skip
    row = 0
    for i in range(pf.num_row_groups):
        for value in pf.read_row_group(i, columns=[MESSAGES_COLUMN]).column(0).to_pylist():
            row += 1
            yield row, json.loads(value) if isinstance(value, str) else value


def chat_file_kind(path: Path) -> str | None:
    """"jsonl", "parquet", or None for a file name that is neither."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def read_chat_file(path: str | Path, skip_bad: bool = False, name: str | None = None) -> ChatFile:
    """Every conversation of a .jsonl(.gz) or .parquet file, checked; see the module docstring."""
    p = Path(path).expanduser()
    label = name or str(path)
    if not p.is_file():
        raise NanochatError(f"{label} does not exist; give the path of a .jsonl file of conversations (one {{\"messages\": [...]}} per line)")
    kind = chat_file_kind(p)
    if kind == "parquet":
        return parse_conversations(_parquet_rows(p), label, skip_bad)
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            return parse_conversations(jsonl_rows(f), label, skip_bad)
    except UnicodeDecodeError as e:
        raise NanochatError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8 first") from None
    except (OSError, EOFError) as e:
        raise NanochatError(f"{label}: cannot be read ({e})") from None


# ---- imported sets -----------------------------------------------------------------------------


def chat_set_file(name: str) -> Path | None:
    """The conversations file of the imported chat set `name`, when there is one."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        return None
    f = paths.data_dir(name) / CHAT_FILE
    return f if f.is_file() else None


def resolve_chat_source(spec: str, option: str = "--add") -> ChatSource:
    """`FILE.jsonl`, `FILE.parquet` or an imported set's NAME, optionally followed by `:EPOCHS` (a whole number)."""
    target, epochs = spec, 1
    m = re.fullmatch(r"(.+):(-?\d+)", spec)
    if m and not Path(spec).expanduser().is_file():
        target, epochs = m.group(1), int(m.group(2))
        if epochs < 1:
            raise NanochatError(f"{option} {spec}: the epochs after ':' must be at least 1 (FILE.jsonl:3 = three passes)")
    p = Path(target).expanduser()
    if p.is_file():
        if chat_file_kind(p) is None:
            raise NanochatError(f"{option} {spec}: {target} is neither .jsonl nor .parquet; give a JSON Lines file of conversations")
        return ChatSource(p, p.name.split(".")[0], epochs)
    imported = chat_set_file(target)
    if imported is not None:
        return ChatSource(imported, target, epochs)
    if chat_file_kind(p) is not None:
        raise NanochatError(f"{option} {spec}: {target} does not exist; give the path of a .jsonl file of conversations")
    what, mixtures = ("an SFT mixture", "web (SmolTalk, MMLU, GSM8K; online) or demo (packaged, offline), ") if option == "--data" else ("a conversation set", "")
    raise UsageError(f"{option} {spec!r} is not {what}; use {mixtures}a .jsonl/.parquet file of conversations, or the name of "
                     "a set imported with `nanochat data import FILE --kind chat --name NAME`")  # fmt: skip


@dataclass
class ChatImport:
    directory: Path
    files: int
    conversations: int
    skipped: list[str]
    seconds: float


def import_chat(sources: list[str], name: str, skip_bad: bool = False, force: bool = False) -> ChatImport:
    """Check every conversation of `sources` (.jsonl/.parquet files, or folders of them) and store them as set `name`."""
    from nanochat.data.importer import validate_name

    validate_name(name)
    final = paths.data_dir(name)
    if final.exists() and not force:
        raise NanochatError(f"data set {name!r} already exists at {final}; choose another --name or pass --force to replace it")
    t0 = time.perf_counter()
    files = _chat_files(sources)
    convs: list[list[dict]] = []
    skipped: list[str] = []
    for f in files:
        got = read_chat_file(f, skip_bad)
        convs += got.conversations
        skipped += got.skipped
    meta = {"name": name, "kind": "chat", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sources": [str(Path(s).expanduser().resolve()) for s in sources], "files": len(files),
            "conversations": len(convs), "skipped_lines": len(skipped)}  # fmt: skip
    tmp = fresh_temp_dir(final)  # filled, then renamed over any older set of that name (--force)
    try:
        (tmp / CHAT_FILE).write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ChatImport(final, len(files), len(convs), skipped, time.perf_counter() - t0)


def _chat_files(sources: list[str]) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_file():
            if chat_file_kind(p) is None:
                raise NanochatError(f"{p}: a conversation set is read from .jsonl (or .jsonl.gz) or .parquet files")
            files.append(p)
        elif p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and chat_file_kind(q) and not q.name.startswith("."))
        else:
            raise NanochatError(f"{src}: no such file or folder")
    if not files:
        raise NanochatError(f"no .jsonl or .parquet files in {', '.join(sources)}")
    return files
