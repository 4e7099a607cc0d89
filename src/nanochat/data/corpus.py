"""Pretraining text as documents: the packaged demo corpus, downloaded web shards, imported sets.

Every corpus is a list of *shards*, each a list of *row groups* of documents, as in the parquet
files of the web data (one `text` column, row groups of ~1024 documents). Ranks split the work by
row group: numbering all row groups of the split in order (shard by shard), rank r of W reads row
groups r, r+W, r+2W, ... `iter_docs` yields `(text, position)` forever, epoch after epoch;
`position = {"epoch", "shard", "row_group", "row"}` locates the document just yielded, and
`iter_docs(start=position)` continues exactly with the document after it (for the same world size;
with another world size it continues with this rank's next row group after that position).

Data sets (`open_corpus(data, split)`):
* `demo`: Jane Austen's novels packaged with nanochat, one shard per novel. *Persuasion* is the
  validation split; the other five are training text. Each chapter is cut into passages of whole
  paragraphs (about 1,500 characters at most; a longer paragraph stays whole), with the hard line
  wraps of the Gutenberg text undone. Row groups of 16 passages, so that 8 ranks get work even on
  the small validation split.
* `web`: the ClimbMix shards that `nanochat data download` puts in `data_dir("climbmix")`; the
  last shard of the data set (shard_06542) is validation. `fineweb-edu` likewise.
* any other name (or a folder path): parquet shards from `nanochat data import`; the validation
  shard is the one `dataset.json` names, else the last file.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from nanochat.common import paths
from nanochat.common.errors import NanochatError
from nanochat.data.chat_jsonl import CHAT_FILE

SPLITS = ("train", "val")
TEXT_COLUMN = "text"


@dataclass(frozen=True)
class WebDataset:
    """A pretraining data set published as parquet shards on the Hugging Face hub."""

    name: str  # folder under data_dir() and the --dataset value
    repo: str  # HF dataset repo
    num_shards: int  # shard_00000 ... shard_{num_shards-1:05d}; the last is validation

    @property
    def val_index(self) -> int:
        return self.num_shards - 1

    def filename(self, index: int) -> str:
        return f"shard_{index:05d}.parquet"

    @property
    def val_filename(self) -> str:
        return self.filename(self.val_index)


WEB_DATASETS = {
    "climbmix": WebDataset("climbmix", "karpathy/climbmix-400b-shuffle", 6543),
    "fineweb-edu": WebDataset("fineweb-edu", "karpathy/fineweb-edu-100b-shuffle", 1823),
}
WEB_DEFAULT = "climbmix"
RESERVED_NAMES = {"demo", "web", *WEB_DATASETS}


# ---- shards ------------------------------------------------------------------------------------


class MemoryShard:
    """Documents held in memory, cut into row groups (the demo corpus)."""

    def __init__(self, name: str, docs: list[str], rows_per_group: int):
        self.name = name
        self._groups = [docs[i : i + rows_per_group] for i in range(0, len(docs), rows_per_group)]

    @property
    def num_row_groups(self) -> int:
        return len(self._groups)

    def row_group_sizes(self) -> list[int]:
        return [len(g) for g in self._groups]

    def read_row_group(self, i: int) -> list[str]:
        return self._groups[i]

    @property
    def nbytes(self) -> int:
        """The UTF-8 size of the documents (what `Corpus.fingerprint` compares)."""
        return sum(len(d.encode("utf-8")) for g in self._groups for d in g)

    def close(self) -> None:
        pass


class ParquetShard:
    """One parquet file with a `text` column; row groups are read one at a time.

    Several loader threads read the same shard objects (one per micro-step shard of a pretraining run), so the
    open file handle is per thread: one thread closing its handle never pulls the file from under another."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        self.name = path.name
        try:
            meta = pq.read_metadata(path)
        except Exception as e:  # pyarrow raises several types for a bad footer
            raise NanochatError(f"{path} is not a readable parquet file ({e}); delete it and download or import it again") from None
        if TEXT_COLUMN not in meta.schema.names:
            raise NanochatError(f"{path} has no `{TEXT_COLUMN}` column (columns: {', '.join(meta.schema.names)}); import it with `nanochat data import`")
        self._sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._text_bytes = sum(
            meta.row_group(i).column(meta.schema.names.index(TEXT_COLUMN)).total_uncompressed_size for i in range(meta.num_row_groups)
        )
        self._local = threading.local()

    @property
    def num_row_groups(self) -> int:
        return len(self._sizes)

    def row_group_sizes(self) -> list[int]:
        return list(self._sizes)

    @property
    def approx_text_bytes(self) -> int:
        return self._text_bytes

    @property
    def nbytes(self) -> int:
        """The file's size (what `Corpus.fingerprint` compares)."""
        return self.path.stat().st_size

    def read_row_group(self, i: int) -> list[str]:
        import pyarrow.parquet as pq

        f = getattr(self._local, "file", None)
        if f is None:
            f = self._local.file = pq.ParquetFile(self.path)
        return f.read_row_group(i, columns=[TEXT_COLUMN]).column(0).to_pylist()

    def close(self) -> None:
        """Close this thread's handle (the next read reopens it)."""
        f = getattr(self._local, "file", None)
        if f is not None:
            f.close()
            self._local.file = None


# ---- the corpus --------------------------------------------------------------------------------


def _check_position(start: dict, num_shards: int) -> tuple[int, int, int, int]:
    try:
        e, s, g, r = (int(start[k]) for k in ("epoch", "shard", "row_group", "row"))
    except (KeyError, TypeError, ValueError):
        raise NanochatError(f"bad data position {start!r}: expected {{'epoch', 'shard', 'row_group', 'row'}} integers") from None
    if not 0 <= s < num_shards or g < 0 or r < 0 or e < 1:
        raise NanochatError(f"data position {start!r} is outside this data set ({num_shards} shards); was the data set changed since the checkpoint?")
    return e, s, g, r


class Corpus:
    """Documents of one split of one data set, as shards of row groups."""

    def __init__(self, name: str, split: str, shards: list, location: str = ""):
        self.name = name
        self.split = split
        self.shards = shards
        self.location = location

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def row_groups(self) -> list[tuple[int, int]]:
        """All (shard, row_group) of the split, in reading order."""
        return [(s, g) for s, shard in enumerate(self.shards) for g in range(shard.num_row_groups)]

    def num_docs(self) -> int:
        return sum(sum(shard.row_group_sizes()) for shard in self.shards)

    def fingerprint(self) -> str:
        """Shard count, total size and a hash of the shards' names and sizes: equal on two machines when
        they hold the same shards (compared across ranks before training; reads no data)."""
        import hashlib

        h = hashlib.sha256()
        total = 0
        for shard in self.shards:
            size = shard.nbytes
            total += size
            h.update(f"{shard.name}\0{size}\n".encode())
        return f"{self.num_shards} shards, {total:,} bytes, names+sizes sha256 {h.hexdigest()[:12]}"

    def iter_docs(
        self, rank: int = 0, world_size: int = 1, start: dict | None = None, loop: bool = True
    ) -> Iterator[tuple[str, dict]]:
        """(text, position) of this rank's documents, epoch after epoch (one epoch if not `loop`).

        With `start`, continue with the document after that position. Empty or null texts are skipped."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        mine = [sg for i, sg in enumerate(self.row_groups()) if i % world_size == rank]
        if not mine:
            raise NanochatError(
                f"the {self.split} split of data set {self.name!r} has {len(self.row_groups())} row groups, too few for "
                f"{world_size} ranks; run on fewer processes or use a larger data set"
            )
        epoch, after = 1, None
        if start is not None:
            e, s, g, r = _check_position(start, self.num_shards)
            epoch, after = e, (s, g, r)
        while True:
            prev = None
            for s, g in mine:
                if prev is not None and prev != s:
                    self.shards[prev].close()  # one open file at a time, even over thousands of shards
                prev = s
                skip_through = -1
                if after is not None:
                    if (s, g) < after[:2]:
                        continue
                    if (s, g) == after[:2]:
                        skip_through = after[2]
                    after = None
                rows = self.shards[s].read_row_group(g)
                for row in range(skip_through + 1, len(rows)):
                    text = rows[row]
                    if text:
                        yield text, {"epoch": epoch, "shard": s, "row_group": g, "row": row}
            after = None
            if not loop:
                return
            epoch += 1

    def iter_texts(self, max_chars: int | float | None = None) -> Iterator[str]:
        """One pass over the split's texts (rank 0 of 1), stopping after `max_chars` characters."""
        seen = 0
        for text, _ in self.iter_docs(loop=False):
            if max_chars is not None and seen >= max_chars:
                return
            seen += len(text)
            yield text

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, {self.split!r}, shards={self.num_shards})"


# ---- the demo corpus ---------------------------------------------------------------------------

DEMO_TRAIN = ["sense_and_sensibility", "pride_and_prejudice", "mansfield_park", "emma", "northanger_abbey"]
DEMO_VAL = ["persuasion"]
DEMO_PASSAGE_CHARS = 1500
DEMO_ROWS_PER_GROUP = 16
_CHAPTER = re.compile(r"^(?:CHAPTER|Chapter) [0-9IVXLC]+\.?\s*$", re.MULTILINE)


def split_passages(text: str, max_chars: int = DEMO_PASSAGE_CHARS) -> list[str]:
    """A novel as passages: chapters cut into runs of whole paragraphs of at most `max_chars`
    (a longer paragraph is its own passage), each paragraph's line wraps joined with spaces."""
    # The title page goes with the first chapter: a passage of a title alone teaches nothing.
    cuts = [0] + [m.start() for m in _CHAPTER.finditer(text)][1:] + [len(text)]
    chapters = [text[a:b] for a, b in zip(cuts, cuts[1:])]
    passages: list[str] = []
    for chapter in chapters:
        paras = [" ".join(line.strip() for line in p.strip().splitlines()) for p in re.split(r"\n\s*\n", chapter)]
        passages += pack_paragraphs(paras, max_chars)
    return passages


def pack_paragraphs(paras: list[str], max_chars: int) -> list[str]:
    """Consecutive paragraphs joined by blank lines into pieces of at most `max_chars`
    (a longer paragraph is a piece of its own); empty paragraphs are dropped."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for para in paras:
        if not para.strip():
            continue
        if current and size + 2 + len(para) > max_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += len(para) + (2 if size else 0)
    if current:
        pieces.append("\n\n".join(current))
    return pieces


@lru_cache(maxsize=8)
def _demo_docs(novel: str) -> tuple[str, ...]:
    from nanochat.data.resources import read_text

    return tuple(split_passages(read_text(f"corpus/austen/{novel}.txt")))


def demo_corpus(split: str) -> Corpus:
    novels = DEMO_TRAIN if split == "train" else DEMO_VAL
    shards = [MemoryShard(n, list(_demo_docs(n)), DEMO_ROWS_PER_GROUP) for n in novels]
    return Corpus("demo", split, shards, location="packaged Austen novels")


# ---- parquet folders ---------------------------------------------------------------------------


def shard_files(directory: Path) -> list[Path]:
    """The finished parquet shards of a folder, sorted (partial downloads and hidden files excluded)."""
    return sorted(p for p in directory.glob("*.parquet") if p.is_file() and not p.name.startswith("."))


def _val_name(directory: Path, files: list[Path], web: WebDataset | None) -> str:
    if web is not None:
        return web.val_filename
    meta = directory / "dataset.json"
    if meta.is_file():
        try:
            name = json.loads(meta.read_text()).get("val_file")
        except ValueError:
            name = None
        if name:
            return name
    return files[-1].name


def parquet_corpus(directory: Path, split: str, name: str, web: WebDataset | None = None) -> Corpus:
    files = shard_files(directory)
    if web is not None:
        hint = f"download shards with `nanochat data download{'' if web.name == WEB_DEFAULT else ' --dataset ' + web.name}` (or use --data demo, which needs no network)"
    elif (directory / CHAT_FILE).is_file():  # a set of `data import --kind chat`
        hint = f"it holds conversations, for `nanochat sft --data {directory.name}`; pretraining reads text: import some with `nanochat data import SOURCE --name NAME`"
    else:
        hint = "import text with `nanochat data import SOURCE --name NAME`"
    if not files:
        raise NanochatError(f"no data shards in {directory}; {hint}")
    val_name = _val_name(directory, files, web)
    if split == "val":
        chosen = [p for p in files if p.name == val_name]
        if not chosen:
            raise NanochatError(f"the validation shard {val_name} is missing from {directory}; {hint}")
    else:
        chosen = [p for p in files if p.name != val_name]
        if not chosen:
            raise NanochatError(f"{directory} holds only the validation shard {val_name}, no training shards; {hint}")
    return Corpus(name, split, [ParquetShard(p) for p in chosen], location=str(directory))


def open_corpus(data: str, split: str = "train") -> Corpus:
    """The `split` ("train" or "val") of data set `data`: demo, web, fineweb-edu, an imported name or a folder."""
    if split not in SPLITS:
        raise NanochatError(f"unknown split {split!r}; use train or val")
    if data == "demo":
        return demo_corpus(split)
    if data == "web" or data in WEB_DATASETS:
        web = WEB_DATASETS[WEB_DEFAULT if data == "web" else data]
        return parquet_corpus(paths.data_dir(web.name), split, data, web=web)
    folder = _local_folder(data)
    if folder is not None:
        return parquet_corpus(folder, split, data)
    raise _unknown_data(data)


def check_data_name(data: str) -> None:
    """Fail (one line, naming the data sets there are) unless `data` is a name open_corpus knows: demo,
    web or a web data set (downloaded or not), an imported set or a folder. Reads no data."""
    if data == "demo" or data == "web" or data in WEB_DATASETS or _local_folder(data) is not None:
        return
    raise _unknown_data(data)


def _local_folder(data: str) -> Path | None:
    """The folder of an imported data set `data`, or `data` itself as a folder path, when it exists."""
    local = paths.data_dir(data) if re.fullmatch(r"[A-Za-z0-9_.-]+", data) else None
    if local is not None and local.is_dir():
        return local
    as_path = Path(data).expanduser()
    if ("/" in data or data.startswith(".")) and as_path.is_dir():
        return as_path.resolve()
    return None


def _unknown_data(data: str) -> NanochatError:
    known = ", ".join(sorted(p.name for p in paths.data_dir().glob("*") if p.is_dir() and shard_files(p))) if paths.data_dir().is_dir() else ""
    return NanochatError(
        f"unknown data set {data!r}: use demo, web, a folder of parquet shards, or an imported set"
        + (f" ({known})" if known else "")
        + "; import your own with `nanochat data import SOURCE --name NAME`"
    )
