"""Shard downloads against a real HTTP server on 127.0.0.1: good, dropping, failing and lying servers."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common import paths
from nanochat.common.errors import NanochatError
from nanochat.data.corpus import open_corpus
from nanochat.data.download import download_shards, scaling_params, shards_for_depth

PREFIX = "/datasets/karpathy/climbmix-400b-shuffle/resolve/main/"
WANTED = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]  # 2 training shards + validation


def parquet_bytes(docs: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf, row_group_size=2)
    return buf.getvalue()


FILES = {name: parquet_bytes([f"{name} doc {i} " + "lorem ipsum " * 50 for i in range(6)]) for name in WANTED}


class Server:
    """A loopback HTTP server; `mode` picks its behaviour, `log` records (method, file, range header)."""

    def __init__(self, mode: str = "ok", failures: int = 1):
        self.mode, self.failures = mode, failures
        self.log: list[tuple[str, str, str | None]] = []
        self.served = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.log.append((self.command, name, rng))
                if outer.mode == "500":
                    return self._plain(500)
                if not self.path.startswith(PREFIX) or name not in FILES:
                    return self._plain(404)
                data = FILES[name]
                if outer.mode == "corrupt":
                    data = data[: len(data) - 40] + b"\0" * 40  # right length, broken footer
                if not body:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return
                start = 0
                if rng and outer.mode != "no-range":
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                drop = outer.mode in ("drop", "no-range") and outer.served[name] < outer.failures
                outer.served[name] += 1
                if drop:  # half the body, then the connection dies
                    self.wfile.write(data[start : start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[start:])

            def _plain(self, code: int):
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, name: str) -> int:
        return sum(1 for m, n, _ in self.log if m == "GET" and n == name)


def fetch(server, **kw):
    kw = {"workers": 3, "attempts": 3, "backoff": 0.01, "timeout": 5.0, "progress": False, "chunk_size": 1024} | kw
    return download_shards("climbmix", 2, base=server.base, **kw)


def final_names():
    d = paths.data_dir("climbmix")
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def test_downloads_verify_and_skip_present(nanochat_home):
    with Server() as s:
        r = fetch(s, progress=True)
        assert sorted(r.downloaded) == WANTED and r.skipped == []
        for name in WANTED:
            assert (paths.data_dir("climbmix") / name).read_bytes() == FILES[name]
        assert final_names() == WANTED
        # The corpus reads them: validation is the last shard.
        assert next(open_corpus("web", "val").iter_docs())[0].startswith("shard_06542.parquet doc 0")
        # Run again: nothing is fetched; a corrupt file under a final name is replaced.
        before = len(s.log)
        assert fetch(s).skipped == WANTED and len(s.log) == before
        (paths.data_dir("climbmix") / "shard_00001.parquet").write_bytes(b"garbage")
        r = fetch(s)
        assert r.downloaded == ["shard_00001.parquet"]
        assert (paths.data_dir("climbmix") / "shard_00001.parquet").read_bytes() == FILES["shard_00001.parquet"]


def test_dropped_connections_resume_with_range(nanochat_home):
    with Server("drop", failures=1) as s:
        fetch(s)
    for name in WANTED:
        assert (paths.data_dir("climbmix") / name).read_bytes() == FILES[name]
        gets = [rng for m, n, rng in s.log if m == "GET" and n == name]
        # The retry continued from the bytes already on disk (whole 1 KiB chunks of the first half).
        assert gets[0] is None and gets[1] == f"bytes={len(FILES[name]) // 2 // 1024 * 1024}-"
    assert final_names() == WANTED


def test_server_that_ignores_range_still_gives_whole_files(nanochat_home):
    with Server("no-range", failures=2) as s:
        fetch(s)
    assert all((paths.data_dir("climbmix") / n).read_bytes() == FILES[n] for n in WANTED)


def test_server_errors_leave_nothing_under_final_names(nanochat_home):
    with Server("500") as s:
        with pytest.raises(NanochatError, match=r"3 of 3 shards failed after 3 attempts.*HTTP 500.*rerun"):
            fetch(s)
        assert s.gets("shard_00000.parquet") == 3  # retried
    assert final_names() == []


def test_too_many_drops_fail_but_keep_nothing_corrupt(nanochat_home):
    with Server("drop", failures=10) as s:
        with pytest.raises(NanochatError, match="shards failed"):
            fetch(s, attempts=2)
    # Only partial files remain, under names the corpus never reads.
    assert all(n.endswith(".partial") for n in final_names())
    with pytest.raises(NanochatError, match="nanochat data download"):
        open_corpus("web", "train")


def test_corrupt_content_is_never_published(nanochat_home):
    with Server("corrupt") as s:
        with pytest.raises(NanochatError, match="footer"):
            fetch(s, attempts=2)
    assert final_names() == []


def test_offline_fails_fast_naming_url_folder_and_demo(nanochat_home):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    t0 = time.perf_counter()
    with pytest.raises(NanochatError) as e:
        download_shards("climbmix", 2, base=f"http://127.0.0.1:{port}", progress=False, backoff=5.0)
    assert time.perf_counter() - t0 < 3  # one probe, no retries with back-off
    msg = str(e.value)
    assert f"http://127.0.0.1:{port}{PREFIX}shard_00000.parquet" in msg
    assert str(paths.data_dir("climbmix")) in msg and "--data demo" in msg


def test_missing_dataset_files_are_not_retried(nanochat_home):
    with Server() as s:
        with pytest.raises(NanochatError, match="HTTP 404"):
            download_shards("fineweb-edu", 1, base=s.base, progress=False, backoff=0.01)
        assert [m for m, _, _ in s.log] == ["HEAD"]


def test_shards_for_depth_by_hand():
    # Depth 2: width ceil(2*64/128)*128 = 128; N = 12*2*128^2 + 32768*128 = 4,587,520.
    assert scaling_params(2) == 4_587_520
    est = shards_for_depth(2, ratio=12)
    # 12 N = 55,050,240 tokens; / 0.65 * 4.8 = 406,524,849 chars; / 250M = 1.6 -> 2 shards.
    assert est["tokens"] == 55_050_240 and est["shards"] == 2
    # The reference's table (REFERENCE §2.4): scaling params of d12 and d20.
    assert round(scaling_params(12) / 1e6, 1) == 110.1 and round(scaling_params(20) / 1e6, 1) == 435.2
    with pytest.raises(NanochatError):
        shards_for_depth(0)
