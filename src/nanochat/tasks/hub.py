"""Hugging Face parquet exports: list, download once (with retries), read rows.

The Hub converts every public data set to parquet and lists the files of one (subset, split) at
`{base}/api/datasets/{repo_id}/parquet/{subset}/{split}` as a JSON array of URLs. We download those
files once to `<home>/task_data/{repo--id}/{subset}/{split}/NNNNN.parquet`, write `manifest.json`
last (so a folder without a manifest is an unfinished download), and read them with pyarrow.

`NANOCHAT_HF_BASE` replaces `https://huggingface.co` (tests point it at a loopback server);
`NANOCHAT_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) forbids any network access (tasks then read the
packaged data).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from urllib.parse import urljoin

from nanochat.common import paths
from nanochat.common.atomic import atomic_write_json
from nanochat.common.errors import NanochatError

DEFAULT_HF_BASE = "https://huggingface.co"
CHUNK = 1 << 20


class HubUnavailable(NanochatError):
    """The Hub could not be reached (no network, DNS failure, refused connection, offline mode)."""


def hf_base() -> str:
    return os.environ.get("NANOCHAT_HF_BASE", DEFAULT_HF_BASE).rstrip("/")


def offline() -> bool:
    """NANOCHAT_OFFLINE=1 (or Hugging Face's own HF_HUB_OFFLINE=1) forbids downloads."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("NANOCHAT_OFFLINE", "HF_HUB_OFFLINE"))


def split_dir(repo_id: str, subset: str, split: str) -> Path:
    return paths.home() / "task_data" / repo_id.replace("/", "--") / subset / split


def cached_files(repo_id: str, subset: str, split: str) -> list[Path] | None:
    """The parquet files of a finished earlier download, or None."""
    d = split_dir(repo_id, subset, split)
    manifest = d / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        files = [d / f["name"] for f in json.loads(manifest.read_text())["files"]]
    except (ValueError, KeyError, TypeError):
        return None
    return files if all(p.is_file() for p in files) else None


def _get(url: str, *, timeout: float, attempts: int, backoff: float, stream: bool = False):
    """GET with retries on timeouts, 429 and 5xx. A refused connection or unknown host fails at once
    (that is what "offline" looks like; retrying would only delay the packaged fallback)."""
    import requests

    last = ""
    for attempt in range(attempts):
        try:
            r = requests.get(url, timeout=timeout, stream=stream)
        except requests.exceptions.ConnectionError as e:
            if "timed out" not in str(e).lower():
                raise HubUnavailable(f"cannot reach {url} ({type(e).__name__}); check the network, or set NANOCHAT_OFFLINE=1 to use the packaged data") from e
            last = "connection timed out"
        except requests.exceptions.Timeout:
            last = "timed out"
        else:
            if r.status_code == 200:
                return r
            if r.status_code == 404:
                raise NanochatError(f"{url} answered 404 (no such data set, subset or split); check the name")
            if r.status_code not in (429,) and r.status_code < 500:
                raise NanochatError(f"{url} answered HTTP {r.status_code}; check the URL or NANOCHAT_HF_BASE")
            last = f"HTTP {r.status_code}"
        if attempt + 1 < attempts:
            time.sleep(backoff * (2**attempt))
    raise HubUnavailable(f"{url} failed {attempts} times (last: {last}); try again later, or set NANOCHAT_OFFLINE=1 to use the packaged data")


def list_parquet_urls(repo_id: str, subset: str, split: str, *, timeout: float = 30, attempts: int = 5, backoff: float = 1.0) -> list[str]:
    """The parquet file URLs of one (subset, split) of a Hub data set, in shard order."""
    base = hf_base()
    url = f"{base}/api/datasets/{repo_id}/parquet/{subset}/{split}"
    r = _get(url, timeout=timeout, attempts=attempts, backoff=backoff)
    try:
        urls = r.json()
    except ValueError as e:
        raise NanochatError(f"{url} did not answer a JSON list of parquet files; check NANOCHAT_HF_BASE") from e
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise NanochatError(f"{url} listed no parquet files for {repo_id} {subset}/{split}; check the subset and split names")
    return [urljoin(base + "/", u) for u in urls]


def download_file(url: str, dest: Path, *, timeout: float = 30, attempts: int = 5, backoff: float = 1.0) -> tuple[int, str]:
    """Stream `url` to `dest` via a temporary file, retrying a broken transfer; returns (bytes, sha256)."""
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    last = ""
    for attempt in range(attempts):
        r = _get(url, timeout=timeout, attempts=attempts, backoff=backoff, stream=True)
        h = hashlib.sha256()
        n = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            expected = r.headers.get("Content-Length")
            if expected is not None and int(expected) != n:
                raise OSError(f"got {n} of {expected} bytes")
            os.replace(tmp, dest)
            return n, h.hexdigest()
        except (OSError, requests.exceptions.RequestException) as e:
            last = str(e)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if attempt + 1 < attempts:
                time.sleep(backoff * (2**attempt))
    raise HubUnavailable(f"downloading {url} failed {attempts} times (last: {last}); try again later")


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock file, so that one process (one rank) downloads while the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; each process downloads to its own temporary files
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_split(repo_id: str, subset: str, split: str, *, attempts: int = 5, backoff: float = 1.0) -> list[Path]:
    """The local parquet files of a Hub split, downloading them on first use."""
    files = cached_files(repo_id, subset, split)
    if files is not None:
        return files
    if offline():
        raise HubUnavailable(f"{repo_id} {subset}/{split} is not downloaded and NANOCHAT_OFFLINE is set; unset it to download")
    d = split_dir(repo_id, subset, split)
    with _lock(d.parent / f".{split}.lock"):
        files = cached_files(repo_id, subset, split)
        if files is not None:
            return files
        urls = list_parquet_urls(repo_id, subset, split, attempts=attempts, backoff=backoff)
        entries = []
        for i, url in enumerate(urls):
            name = f"{i:05d}.parquet"
            n, sha = download_file(url, d / name, attempts=attempts, backoff=backoff)
            entries.append({"name": name, "url": url, "bytes": n, "sha256": sha})
        atomic_write_json(d / "manifest.json", {"repo_id": repo_id, "subset": subset, "split": split, "files": entries, "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return [d / e["name"] for e in entries]


def read_parquet_rows(files: list[Path]) -> list[dict]:
    """All rows of the files, in order, as plain dicts."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for p in files:
        try:
            rows.extend(pq.read_table(p).to_pylist())
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise NanochatError(f"{p} is not a readable parquet file ({e}); delete its folder {p.parent} to download it again") from e
    return rows
