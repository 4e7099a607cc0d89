"""Downloading pretraining shards from the Hugging Face hub: parallel, retried, resumable, verified.

URL of shard i: `{base}/datasets/{repo}/resolve/main/shard_{i:05d}.parquet`, where `base` is
https://huggingface.co or `$NANOCHAT_HF_BASE` (a mirror, or a local server in tests). The last shard
of a data set is its validation split and is always fetched.

Crash safety: a shard is written to `shard_XXXXX.parquet.partial` (continued with an HTTP Range
request after a dropped connection), checked (size equals the announced length; the parquet footer
reads back and has a `text` column), fsynced and only then renamed to its final name. So a file
under a final name is always complete, and an interrupted download resumes where it stopped.
A lock file keeps two downloads out of the same folder.

How many shards a run needs (`shards_for_depth`), as an estimate:
    scaling params N = 12·L·d² (attention + MLP matrices) + V·d (lm_head), d = ceil(64·L/128)·128
    tokens trained   = ratio × N                      (ratio 12 by default, as pretraining uses)
    tokens read      = tokens trained / (1 − 0.35)    (BOS-aligned best-fit packing crops ~35% at T=2048)
    characters       = tokens read × 4.8              (chars per token of a 32K tokenizer on web text)
    shards           = ceil(characters / 250M)        (a ClimbMix shard holds ~250M characters)
e.g. depth 24 at ratio 8 → 173 shards (the reference speedrun fetches 170), depth 20 at ratio 12 → 155.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.common import paths
from nanochat.common.atomic import fsync_dir
from nanochat.common.errors import NanochatError
from nanochat.data.corpus import TEXT_COLUMN, WEB_DATASETS, WebDataset

HF_BASE_ENV = "NANOCHAT_HF_BASE"
DEFAULT_HF_BASE = "https://huggingface.co"
PARTIAL_SUFFIX = ".partial"
LOCK_NAME = ".download.lock"

CHARS_PER_TOKEN = 4.8
CHARS_PER_SHARD = 250e6
CROP_LOSS = 0.35
DEFAULT_RATIO = 12.0
DEFAULT_VOCAB = 32768


# ---- how many shards -----------------------------------------------------------------------------


def scaling_params(depth: int, vocab_size: int = DEFAULT_VOCAB, aspect_ratio: int = 64, head_dim: int = 128) -> int:
    """Transformer matrices + lm_head of the model at `depth` (the N that sets the token budget)."""
    d = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    return 12 * depth * d * d + vocab_size * d


def shards_for_depth(depth: int, ratio: float = DEFAULT_RATIO, vocab_size: int = DEFAULT_VOCAB) -> dict:
    """The estimate of training shards a run at `depth` reads (see the module docstring)."""
    if depth < 1:
        raise NanochatError(f"depth must be at least 1, got {depth}")
    if ratio <= 0:
        raise NanochatError(f"the tokens-per-parameter ratio must be positive, got {ratio}")
    n = scaling_params(depth, vocab_size)
    tokens = ratio * n
    chars = tokens / (1 - CROP_LOSS) * CHARS_PER_TOKEN
    return {"depth": depth, "ratio": ratio, "scaling_params": n, "tokens": tokens, "chars": chars, "shards": max(1, math.ceil(chars / CHARS_PER_SHARD))}


# ---- one shard ----------------------------------------------------------------------------------


def hf_base() -> str:
    return os.environ.get(HF_BASE_ENV, DEFAULT_HF_BASE).rstrip("/")


def shard_url(ds: WebDataset, index: int, base: str | None = None) -> str:
    return f"{base or hf_base()}/datasets/{ds.repo}/resolve/main/{ds.filename(index)}"


class PermanentError(Exception):
    """The server said no in a way retrying won't change (404, 401, 403)."""


def check_parquet(path: Path) -> None:
    """Raise ValueError unless `path` is a parquet file whose footer reads and has a text column."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except Exception as e:
        raise ValueError(f"parquet footer does not read back ({e})") from None
    if TEXT_COLUMN not in meta.schema.names:
        raise ValueError(f"no `{TEXT_COLUMN}` column")


def is_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        check_parquet(path)
    except ValueError:
        return False
    return True


@dataclass
class Fetcher:
    """Downloads shards of one data set into one folder (thread-safe; one HTTP session per thread)."""

    ds: WebDataset
    directory: Path
    base: str
    attempts: int = 5
    backoff: float = 1.0  # seconds before the 2nd attempt; doubled for each further one
    timeout: float = 30.0
    chunk_size: int = 1 << 20
    on_bytes: object = None  # callable(n) for progress
    _local: threading.local = field(default_factory=threading.local)

    def session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _transfer(self, url: str, part: Path) -> None:
        """One attempt: fetch (or continue) `url` into `part`; raise on anything short of complete."""
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # byte counts and Range offsets refer to the file itself
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with self.session().get(url, stream=True, timeout=self.timeout, headers=headers, allow_redirects=True) as r:
            if r.status_code == 416 and offset:  # nothing left to send: the partial file is whole
                return
            if r.status_code in (401, 403, 404):
                raise PermanentError(f"HTTP {r.status_code} for {url}")
            if r.status_code == 206 and offset:
                mode = "ab"
            elif r.status_code == 200:
                mode, offset = "wb", 0  # the server ignored the range: start over
            else:
                raise OSError(f"HTTP {r.status_code}")
            length = r.headers.get("Content-Length")
            expected = offset + int(length) if length is not None else None
            with open(part, mode) as f:
                for chunk in r.iter_content(chunk_size=self.chunk_size):
                    f.write(chunk)
                    if self.on_bytes:
                        self.on_bytes(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        size = part.stat().st_size
        if expected is not None and size != expected:
            raise OSError(f"connection ended after {size} of {expected} bytes")

    def fetch(self, index: int) -> Path:
        """Download shard `index` to its final name; returns the path. Raises after the last attempt."""
        import requests

        name = self.ds.filename(index)
        final = self.directory / name
        part = self.directory / (name + PARTIAL_SUFFIX)
        url = shard_url(self.ds, index, self.base)
        last: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                self._transfer(url, part)
                try:
                    check_parquet(part)
                except ValueError:
                    part.unlink(missing_ok=True)  # whole but wrong: continuing it cannot help
                    raise
                os.replace(part, final)
                fsync_dir(self.directory)
                return final
            except PermanentError as e:
                part.unlink(missing_ok=True)
                raise OSError(str(e)) from None
            except (requests.RequestException, OSError, ValueError) as e:
                last = e
        raise OSError(f"{type(last).__name__}: {last}")


# ---- many shards --------------------------------------------------------------------------------


@dataclass
class DownloadResult:
    directory: Path
    downloaded: list[str]
    skipped: list[str]
    seconds: float
    bytes: int


class _Lock:
    """An exclusive lock on a folder for the life of a download (no-op where fcntl is missing)."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise NanochatError(f"another `nanochat data download` is writing to {self.path.parent}; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock


def probe(url: str, directory: Path, timeout: float = 10.0) -> None:
    """One cheap request before starting: fail fast, and clearly, when offline."""
    import requests

    try:
        r = requests.head(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as e:
        reason = type(e).__name__
        raise NanochatError(
            f"cannot reach {url} ({reason}); shards would go to {directory}. Check the network (or set {HF_BASE_ENV} to a mirror), "
            "or train on the packaged data with --data demo"
        ) from None
    if r.status_code in (401, 403, 404):
        raise NanochatError(f"{url} answered HTTP {r.status_code}; check the data set name (or {HF_BASE_ENV}), or use --data demo")


def download_shards(
    dataset: str = "climbmix",
    num_train: int = 8,
    *,
    workers: int = 4,
    attempts: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
    base: str | None = None,
    directory: Path | None = None,
    progress: bool = True,
) -> DownloadResult:
    """Make sure training shards 0..num_train-1 and the validation shard are present and whole."""
    ds = WEB_DATASETS.get(dataset)
    if ds is None:
        raise NanochatError(f"unknown data set {dataset!r}; use one of {', '.join(WEB_DATASETS)}")
    if not 1 <= num_train <= ds.num_shards - 1:
        raise NanochatError(f"{ds.name} has {ds.num_shards - 1} training shards; ask for 1 to {ds.num_shards - 1}, not {num_train}")
    if workers < 1:
        raise NanochatError(f"--workers must be at least 1, got {workers}")
    base = (base or hf_base()).rstrip("/")
    directory = directory or paths.data_dir(ds.name)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = list(range(num_train)) + [ds.val_index]
    t0 = time.perf_counter()
    with _Lock(directory):
        todo, skipped = [], []
        for i in wanted:
            final = directory / ds.filename(i)
            if is_complete(final):
                skipped.append(final.name)
                continue
            if final.exists():  # never trust a final name that does not read back
                final.unlink()
            todo.append(i)
        if not todo:
            return DownloadResult(directory, [], skipped, time.perf_counter() - t0, 0)
        probe(shard_url(ds, todo[0], base), directory, timeout=min(timeout, 10.0))

        received = [0]
        lock = threading.Lock()
        bar = _progress(progress, len(todo))

        def on_bytes(n: int) -> None:
            with lock:
                received[0] += n
            bar.bytes(received[0])

        fetcher = Fetcher(ds, directory, base, attempts=attempts, backoff=backoff, timeout=timeout, chunk_size=chunk_size, on_bytes=on_bytes)
        done, failed = [], []
        with bar, ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            futures = {pool.submit(fetcher.fetch, i): i for i in todo}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    done.append(fut.result().name)
                except Exception as e:
                    failed.append((ds.filename(i), str(e)))
                bar.advance()
    if failed:
        failed.sort()
        raise NanochatError(
            f"{len(failed)} of {len(todo)} shards failed after {attempts} attempts (first: {failed[0][0]}: {failed[0][1]}); "
            f"the {len(done) + len(skipped)} whole shards in {directory} are kept: rerun the same command to resume"
        )
    return DownloadResult(directory, sorted(done), skipped, time.perf_counter() - t0, received[0])


class _progress:
    """A rich progress bar over shards with the bytes received and the rate (silent if disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled
        self.total = total
        self.t0 = time.perf_counter()
        self.p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from nanochat.common.logging import console

            self.p = Progress(
                TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console()
            )
            self.task = self.p.add_task("download", total=total, rate="")

    def __enter__(self):
        if self.p:
            self.p.start()
        return self

    def __exit__(self, *exc):
        if self.p:
            self.p.stop()

    def bytes(self, n: int) -> None:
        if self.p:
            dt = max(time.perf_counter() - self.t0, 1e-6)
            self.p.update(self.task, rate=f"{n / 1e6:,.0f} MB at {n / 1e6 / dt:,.1f} MB/s")

    def advance(self) -> None:
        if self.p:
            self.p.advance(self.task)
