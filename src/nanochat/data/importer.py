"""`nanochat data import`: your own text as parquet shards that `--data NAME` can train on.

Sources are files or folders (searched recursively; hidden files and unknown extensions skipped):
* `.txt`, `.md`, `.markdown`, `.text`: one document per file; a file longer than `max_doc_chars` is
  cut at blank lines into documents of whole paragraphs (a longer paragraph stays whole).
* `.jsonl`: one JSON object per line, the document under `text_field` ("text").
* `.parquet`: the `text_field` column.
* any of those compressed as `.gz`, or `.zst` (read with `zstandard` if installed, else with
  pyarrow's zstd codec; a clear error if neither can).

Documents are shuffled (seeded; a 16,384-document shuffle buffer, so small sets are fully shuffled
and large ones locally) and every `1/val_fraction`-th one goes to the validation shard. Output, in
`data_dir(NAME)`, written to a temporary folder and renamed when complete:
    shard_00000.parquet ...   training shards (zstd, `text` column, row groups of up to 1024 docs)
    shard_val.parquet         the validation shard (sorts last)
    dataset.json              sources, counts, characters, and which file is validation
Small sets get smaller row groups, so that several ranks still each get some.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from nanochat.common import paths
from nanochat.common.atomic import fresh_temp_dir, naming, publish_dir
from nanochat.common.errors import NanochatError
from nanochat.data.corpus import RESERVED_NAMES, pack_paragraphs

TEXT_EXTS = {".txt", ".md", ".markdown", ".text"}
JSONL_EXTS = {".jsonl"}
PARQUET_EXTS = {".parquet"}
COMPRESSED_EXTS = {".gz", ".zst", ".zstd"}
VAL_FILE = "shard_val.parquet"
SHUFFLE_BUFFER = 16_384
MAX_ROW_GROUP = 1024
DEFAULT_SHARD_CHARS = 250_000_000


@dataclass
class ImportResult:
    directory: Path
    files: int
    skipped_files: int
    train_docs: int
    val_docs: int
    train_chars: int
    val_chars: int
    train_shards: int
    seconds: float


def _kind(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from the file name; format None when unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSED_EXTS else None
    inner = suffixes[-2] if comp and len(suffixes) >= 2 else (suffixes[-1] if suffixes and not comp else None)
    if inner in TEXT_EXTS:
        return "text", comp
    if inner in JSONL_EXTS:
        return "jsonl", comp
    if inner in PARQUET_EXTS:
        return "parquet", comp
    return None, comp


def expand_sources(sources: list[str]) -> tuple[list[Path], int]:
    """The files to read (in order) and how many files in folders were skipped."""
    files: list[Path] = []
    skipped = 0
    for src in sources:
        p = Path(src).expanduser()
        if p.is_file():
            if _kind(p)[0] is None:
                raise NanochatError(f"{p}: unknown file type; import .txt, .md, .jsonl or .parquet files (optionally .gz or .zst)")
            files.append(p)
        elif p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if any(part.startswith(".") for part in f.relative_to(p).parts) or _kind(f)[0] is None:
                    skipped += 1
                    continue
                files.append(f)
        elif p.exists():  # a FIFO, a device, a socket: reading it would block or never end
            raise NanochatError(f"{p}: not a regular file ({_file_kind(p)}); import regular files or folders of them")
        else:
            raise NanochatError(f"{src}: no such file or folder")
    if not files:
        raise NanochatError(f"no importable files in {', '.join(sources)}; import .txt, .md, .jsonl or .parquet files (optionally .gz or .zst)")
    return files, skipped


def _file_kind(path: Path) -> str:
    import stat

    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file or folder"


def _open_binary(path: Path, comp: str | None) -> IO[bytes]:
    if comp is None:
        return open(path, "rb")
    if comp == ".gz":
        return gzip.open(path, "rb")
    try:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    except ImportError:
        pass
    import pyarrow as pa

    if not pa.Codec.is_available("zstd"):
        raise NanochatError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)")
    return pa.CompressedInputStream(pa.OSFile(str(path), "rb"), "zstd")


def split_long(text: str, max_chars: int) -> list[str]:
    """Cut text at blank lines into pieces of whole paragraphs of at most max_chars."""
    if max_chars <= 0 or len(text) <= max_chars:
        return [text]
    return pack_paragraphs([para.strip("\n") for para in re.split(r"\n\s*\n", text)], max_chars)


def iter_file_docs(path: Path, text_field: str = "text", max_doc_chars: int = 20_000) -> Iterator[str]:
    fmt, comp = _kind(path)
    if fmt == "parquet":
        if comp:
            raise NanochatError(f"{path}: compressed parquet files are not supported; decompress it first (parquet compresses itself)")
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise NanochatError(f"{path}: not a readable parquet file ({e})") from None
        if text_field not in pf.schema_arrow.names:
            raise NanochatError(f"{path}: no `{text_field}` column (columns: {', '.join(pf.schema_arrow.names)}); pick one with --text-field")
        for i in range(pf.num_row_groups):
            for text in pf.read_row_group(i, columns=[text_field]).column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text
        return
    with _open_binary(path, comp) as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", newline=None)
        try:
            if fmt == "text":
                text = stream.read()
                if text.strip():
                    yield from (t for t in split_long(text.strip("\n"), max_doc_chars) if t.strip())
                return
            for lineno, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise NanochatError(f"{path}:{lineno}: not valid JSON ({e})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    raise NanochatError(f"{path}:{lineno}: expected an object with a string `{text_field}` field; pick the field with --text-field")
                if obj[text_field].strip():
                    yield obj[text_field]
        except UnicodeDecodeError as e:
            raise NanochatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8 first") from None
        except (OSError, EOFError) as e:
            raise NanochatError(f"{path}: cannot be read ({e}); is the file truncated or mislabelled?") from None


def _shuffled(docs: Iterator[str], seed: int, buffer: int) -> Iterator[str]:
    rng = random.Random(seed)
    buf: list[str] = []
    for d in docs:
        buf.append(d)
        if len(buf) >= buffer:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class _ShardWriter:
    """Parquet shards written row group by row group; a new file after `shard_chars` characters."""

    def __init__(self, directory: Path, names: Iterator[str], rows_per_group: int, shard_chars: int):
        self.directory, self.names, self.rows, self.shard_chars = directory, names, rows_per_group, shard_chars
        self.writer = None
        self.pending: list[str] = []
        self.chars_in_shard = 0
        self.files: list[str] = []
        self.docs = 0
        self.chars = 0

    def add(self, text: str) -> None:
        self.pending.append(text)
        self.docs += 1
        self.chars += len(text)
        self.chars_in_shard += len(text)
        if len(self.pending) >= self.rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        if self.writer is None:
            name = next(self.names)
            self.files.append(name)
            schema = pa.schema([("text", pa.string())])
            self.writer = pq.ParquetWriter(self.directory / name, schema, compression="zstd")
        self.writer.write_table(pa.table({"text": self.pending}), row_group_size=len(self.pending))
        self.pending = []
        if self.chars_in_shard >= self.shard_chars:
            self.writer.close()
            self.writer, self.chars_in_shard = None, 0

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abandon(self) -> None:
        """Drop the open file after a failed write (its folder is removed): a second failure closing it is not
        reported, and pyarrow must not retry the close when the writer is collected (a traceback at exit)."""
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                self.writer.is_open = False
            self.writer = None


def _write_shards(tmp: Path, docs: Iterator[str], every: int, rg_train: int, rg_val: int, shard_chars: int) -> tuple["_ShardWriter", "_ShardWriter"]:
    """Every `every`-th document into the validation file, the others into training shards; both closed."""
    train = _ShardWriter(tmp, (f"shard_{i:05d}.parquet" for i in range(100_000)), rg_train, shard_chars)
    val = _ShardWriter(tmp, iter([VAL_FILE]), rg_val, 1 << 62)
    try:
        for k, doc in enumerate(docs):
            (val if k % every == 0 else train).add(doc)
        train.close()
        val.close()
    except BaseException:
        train.abandon()
        val.abandon()
        raise
    return train, val


def validate_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise NanochatError(f"data set name {name!r} must be letters, digits, '_', '-' or '.', starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise NanochatError(f"{name!r} is a built-in data set name; choose another --name")


def import_dataset(
    sources: list[str],
    name: str,
    *,
    text_field: str = "text",
    max_doc_chars: int = 20_000,
    val_fraction: float = 0.01,
    seed: int = 42,
    row_group_size: int | None = None,
    shard_chars: int = DEFAULT_SHARD_CHARS,
    force: bool = False,
) -> ImportResult:
    validate_name(name)
    if not 0 < val_fraction <= 0.5:
        raise NanochatError(f"--val-fraction must be in (0, 0.5], got {val_fraction}")
    if row_group_size is not None and row_group_size < 1:
        raise NanochatError(f"--row-group-size must be at least 1, got {row_group_size}")
    final = paths.data_dir(name)
    if final.exists() and not force:
        raise NanochatError(f"data set {name!r} already exists at {final}; choose another --name or pass --force to replace it")
    files, skipped = expand_sources(sources)
    t0 = time.perf_counter()
    every = max(2, round(1 / val_fraction))

    def all_docs() -> Iterator[str]:
        for f in files:
            yield from iter_file_docs(f, text_field, max_doc_chars)

    # Peek: if everything fits in the shuffle buffer the counts are known and row groups can be sized
    # so that up to 32 (train) / 8 (val) ranks each get one.
    stream = all_docs()
    head: list[str] = []
    for d in stream:
        head.append(d)
        if len(head) > SHUFFLE_BUFFER:
            break
    small = len(head) <= SHUFFLE_BUFFER
    if len(head) < 2:
        raise NanochatError(f"found {len(head)} non-empty document(s) in {', '.join(sources)}; a data set needs at least 2 (one for validation)")
    if row_group_size:
        rg_train = rg_val = row_group_size
    elif small:
        n_val = math.ceil(len(head) / every)
        rg_train = max(1, min(MAX_ROW_GROUP, math.ceil((len(head) - n_val) / 32)))
        rg_val = max(1, min(MAX_ROW_GROUP, math.ceil(n_val / 8)))
    else:
        rg_train = rg_val = MAX_ROW_GROUP

    def chained() -> Iterator[str]:
        yield from head
        yield from stream

    tmp = fresh_temp_dir(final)
    try:
        with naming(final):  # a full disk while writing a shard names the data set, not "a file"
            train, val = _write_shards(tmp, _shuffled(chained(), seed, SHUFFLE_BUFFER), every, rg_train, rg_val, shard_chars)
            meta = {
                "name": name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "sources": [str(Path(s).expanduser().resolve()) for s in sources],
                "files": len(files),
                "train_files": train.files,
                "val_file": VAL_FILE,
                "docs": {"train": train.docs, "val": val.docs},
                "chars": {"train": train.chars, "val": val.chars},
                "text_field": text_field,
                "max_doc_chars": max_doc_chars,
                "val_fraction": val_fraction,
                "seed": seed,
            }
            (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
            publish_dir(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportResult(final, len(files), skipped, train.docs, val.docs, train.chars, val.chars, len(train.files), time.perf_counter() - t0)
