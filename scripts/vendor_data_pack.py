"""Copy the offline data pack into `src/nanochat/resources/` as package data.

Every data file is stored gzip-compressed (level 9, mtime 0, no file name, so rebuilding gives the
same bytes) under its pack path plus `.gz`; files the pack already gzips are re-encoded the same
way. The verbatim license texts stay plain so that they can be read as shipped. `SHA256SUMS` in
the resources folder lists the sha256 of every file's *uncompressed* bytes under its pack name
(without `.gz`), which `nanochat.data.resources.verify_resources` checks.

Usage: python scripts/vendor_data_pack.py [PACK_DIR]   (default /work/shared/data)
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEST = REPO / "src" / "nanochat" / "resources"
DATA_DIRS = ["corpus", "chat", "tasks", "core", "tokenizers"]


def main(pack: Path) -> None:
    for d in DATA_DIRS + ["licenses"]:
        shutil.rmtree(DEST / d, ignore_errors=True)
    sums: list[str] = []
    total = 0
    for d in DATA_DIRS:
        for src in sorted((pack / d).rglob("*")):
            if not src.is_file():
                continue
            rel = src.relative_to(pack).as_posix()
            raw = src.read_bytes()
            if rel.endswith(".gz"):
                raw = gzip.decompress(raw)
                rel = rel[: -len(".gz")]
            out = DEST / (rel + ".gz")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
            total += out.stat().st_size
            sums.append(f"{hashlib.sha256(raw).hexdigest()}  {rel}")
    for src in sorted((pack / "licenses").glob("*")):
        out = DEST / "licenses" / src.name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
        total += out.stat().st_size
    (DEST / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    print(f"vendored {len(sums)} data files into {DEST} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data"))
