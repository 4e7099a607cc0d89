"""The data packaged with nanochat (`src/nanochat/resources/`) and how to read it.

The offline data pack is vendored with the same relative layout as `shared/data/`, every data file
gzip-compressed with `.gz` appended (deterministic: mtime 0, no file name). Callers name the
*uncompressed* path (`"corpus/austen/emma.txt"`, `"core/eval_data/world_knowledge/arc_easy.jsonl"`)
and `open_resource` finds either the plain file or its `.gz`. `SHA256SUMS` holds the sha256 of
every file's uncompressed bytes; `verify_resource` checks one file against it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from functools import lru_cache
from pathlib import Path
from typing import IO

from nanochat.common import paths
from nanochat.common.errors import NanochatError


def resources_root() -> Path:
    return paths.resources_dir()


def resource_path(relpath: str) -> Path:
    """The packaged file for `relpath`: the plain file if present, else its `.gz`.

    Raises NanochatError if neither exists (a broken install)."""
    root = resources_root()
    rel = relpath.strip("/")
    for candidate in (root / rel, root / (rel + ".gz")):
        if candidate.is_file():
            return candidate
    raise NanochatError(
        f"packaged data file {rel!r} is missing under {root}; reinstall nanochat (pip install --force-reinstall nanochat)"
    )


def exists(relpath: str) -> bool:
    root = resources_root()
    rel = relpath.strip("/")
    return (root / rel).is_file() or (root / (rel + ".gz")).is_file()


def read_bytes(relpath: str) -> bytes:
    """The uncompressed bytes of a packaged file."""
    p = resource_path(relpath)
    data = p.read_bytes()
    return gzip.decompress(data) if p.suffix == ".gz" and not relpath.endswith(".gz") else data


def open_resource(relpath: str, mode: str = "r", encoding: str = "utf-8") -> IO:
    """Open a packaged file for reading, decompressing `.gz` transparently.

    mode "r" gives a text stream (UTF-8, universal newlines off: the pack uses `\\n`), "rb" bytes."""
    if mode not in ("r", "rt", "rb"):
        raise ValueError(f"open_resource is read-only; got mode {mode!r}")
    p = resource_path(relpath)
    compressed = p.suffix == ".gz" and not relpath.endswith(".gz")
    if mode == "rb":
        return gzip.open(p, "rb") if compressed else open(p, "rb")
    if compressed:
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding=encoding, newline="")
    return open(p, "r", encoding=encoding, newline="")


def read_text(relpath: str) -> str:
    with open_resource(relpath) as f:
        return f.read()


def list_resources(prefix: str = "") -> list[str]:
    """The uncompressed relative names of packaged files under `prefix` (sorted, `.gz` stripped)."""
    root = resources_root()
    base = root / prefix.strip("/") if prefix else root
    if not base.is_dir():
        return []
    out = []
    for p in base.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            out.append(rel[:-3] if rel.endswith(".gz") else rel)
    return sorted(out)


@lru_cache(maxsize=1)
def _sums() -> dict[str, str]:
    sums = {}
    text = (resources_root() / "SHA256SUMS").read_text()
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def expected_sha256(relpath: str) -> str | None:
    return _sums().get(relpath.strip("/"))


def verify_resource(relpath: str, expected: str | None = None) -> bytes:
    """Read a packaged file and check the sha256 of its uncompressed bytes; returns the bytes."""
    data = read_bytes(relpath)
    want = expected or expected_sha256(relpath)
    if want is None:
        raise NanochatError(f"no checksum recorded for packaged file {relpath!r}; reinstall nanochat")
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise NanochatError(
            f"packaged file {relpath!r} is corrupt (sha256 {got[:12]}…, expected {want[:12]}…); reinstall nanochat"
        )
    return data
