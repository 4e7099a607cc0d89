"""What data sets exist locally, and how big they are (for `nanochat data list` and `nanochat env`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import paths
from nanochat.data.corpus import WEB_DATASETS, _val_name, demo_corpus, shard_files
from nanochat.data.download import PARTIAL_SUFFIX


@dataclass
class DatasetInfo:
    name: str
    kind: str  # packaged, web, imported, chat (conversations for sft --data/--add)
    train_shards: int
    has_val: bool
    docs: int | None
    size_bytes: int
    train_chars: int | None
    chars_exact: bool
    note: str = ""

    @property
    def size_text(self) -> str:
        return f"{self.size_bytes / 1e6:,.1f} MB"

    @property
    def chars_text(self) -> str:
        if self.train_chars is None:
            return "?"
        return ("" if self.chars_exact else "≈") + f"{self.train_chars / 1e6:,.1f}M"


def _demo_info() -> DatasetInfo:
    from nanochat.data import resources

    train, val = demo_corpus("train"), demo_corpus("val")
    chars = sum(len(t) for t in train.iter_texts())
    size = sum(resources.resource_path(f"corpus/austen/{s.name}.txt").stat().st_size for s in train.shards + val.shards)
    return DatasetInfo("demo", "packaged", train.num_shards, True, train.num_docs() + val.num_docs(), size, chars, True)


def _folder_info(d: Path) -> DatasetInfo | None:
    import pyarrow.parquet as pq

    files = shard_files(d)
    partial = list(d.glob("*" + PARTIAL_SUFFIX))
    if not files and not partial:
        return _chat_info(d)
    web = WEB_DATASETS.get(d.name)
    val_name = _val_name(d, files, web) if files else None
    docs, approx_chars, bad = 0, 0, 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except Exception:
            bad += 1
            continue
        docs += meta.num_rows
        if f.name != val_name and "text" in meta.schema.names:
            col = meta.schema.names.index("text")
            approx_chars += sum(meta.row_group(i).column(col).total_uncompressed_size for i in range(meta.num_row_groups))
    chars, exact = approx_chars, False
    meta_file = d / "dataset.json"
    if meta_file.is_file():
        try:
            chars, exact = int(json.loads(meta_file.read_text())["chars"]["train"]), True
        except (ValueError, KeyError, TypeError):
            pass
    has_val = val_name is not None and (d / val_name).is_file()
    notes = []
    if partial:
        notes.append(f"{len(partial)} partial download(s)")
    if bad:
        notes.append(f"{bad} unreadable")
    if web and not has_val:
        notes.append("validation shard missing")
    size = sum(f.stat().st_size for f in files + partial)
    train_shards = len(files) - (1 if has_val else 0)
    return DatasetInfo(d.name, "web" if web else "imported", train_shards, has_val, docs, size, chars if files else None, exact, "; ".join(notes))


def _chat_info(d: Path) -> DatasetInfo | None:
    """A conversation set of `nanochat data import --kind chat` (counted by lines: one conversation each)."""
    from nanochat.data.chat_jsonl import CHAT_FILE

    f = d / CHAT_FILE
    if not f.is_file():
        return None
    with open(f, "rb") as fh:
        n = sum(1 for line in fh if line.strip())
    return DatasetInfo(d.name, "chat", 0, False, n, f.stat().st_size, None, True, note=f"conversations: use it as sft --data {d.name} or --add {d.name}")


def dataset_info(data: str) -> DatasetInfo | None:
    """One data set's info: demo, an imported name or a folder of shards (None when there is none such)."""
    from nanochat.data.corpus import _local_folder

    if data == "demo":
        return _demo_info()
    folder = _local_folder(data)
    return _folder_info(folder) if folder is not None else None


def list_datasets() -> list[DatasetInfo]:
    """The packaged demo set first, then every folder of shards under `paths.data_dir()`."""
    out = [_demo_info()]
    root = paths.data_dir()
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            info = _folder_info(d)
            if info is not None:
                out.append(info)
    return out
