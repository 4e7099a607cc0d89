"""Downloading Hugging Face parquet exports, against a loopback http.server with fixture files."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common.errors import NanochatError


class Hub:
    """A fake Hub: serves files from a dict of path -> bytes; `fail` maps a path to how many 503s to send first."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail: dict[str, int] = {}
        self.hits: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.hits.append(self.path)
                if hub.fail.get(self.path, 0) > 0:
                    hub.fail[self.path] -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                body = hub.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add_split(self, repo: str, subset: str, split: str, tables: list[pa.Table], tmp: Path, absolute: bool = True):
        urls = []
        for i, table in enumerate(tables):
            path = f"/api/datasets/{repo}/parquet/{subset}/{split}/{i}.parquet"
            local = tmp / f"{repo.replace('/', '_')}_{subset}_{split}_{i}.parquet"
            pq.write_table(table, local)
            self.files[path] = local.read_bytes()
            urls.append(self.base + path if absolute else path)
        self.files[f"/api/datasets/{repo}/parquet/{subset}/{split}"] = json.dumps(urls).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch):
    h = Hub()
    monkeypatch.setenv("NANOCHAT_HF_BASE", h.base)
    monkeypatch.delenv("NANOCHAT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield h
    h.close()


def mmlu_table(questions):
    return pa.table(
        {
            "question": questions,
            "subject": ["testing"] * len(questions),
            "choices": [["w", "x", "y", "z"]] * len(questions),
            "answer": [i % 4 for i in range(len(questions))],
        }
    )


def test_mmlu_from_the_hub_then_from_the_cache(hub, tmp_path, nanochat_home):
    from nanochat.tasks.mmlu import MMLU

    qs = [f"question {i}?" for i in range(7)]
    hub.add_split("cais/mmlu", "all", "test", [mmlu_table(qs[:4]), mmlu_table(qs[4:])], tmp_path)
    t = MMLU(split="test")
    assert t.data_source == "hub:cais/mmlu all/test"
    assert len(t) == 7
    seen = {}
    for ex in t:
        q = ex["messages"][0]["content"].split("\n")[0].removeprefix("Multiple Choice question: ")
        seen[q] = ex["messages"][1]["content"]
    # answers of the two shards: 0..3 then 0..2, as letters
    assert seen == {q: "ABCD"[(i if i < 4 else i - 4) % 4] for i, q in enumerate(qs)}
    cached = nanochat_home / "task_data" / "cais--mmlu" / "all" / "test"
    manifest = json.loads((cached / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["00000.parquet", "00001.parquet"]
    hub.close()  # no server any more: the cached copy is used
    again = MMLU(split="test")
    assert again.data_source == "hub:cais/mmlu all/test" and len(again) == 7


def test_arc_rows_are_converted_from_the_hub_layout(hub, tmp_path):
    from nanochat.tasks.arc import ARC

    table = pa.table(
        {
            "id": ["q1", "q2"],
            "question": ["Which is wet?", "Pick three"],
            "choices": [{"text": ["sand", "water"], "label": ["A", "B"]}, {"text": ["1", "2", "3"], "label": ["1", "2", "3"]}],
            "answerKey": ["B", "3"],
        }
    )
    hub.add_split("allenai/ai2_arc", "ARC-Easy", "test", [table], tmp_path, absolute=False)
    t = ARC("ARC-Easy", "test")
    assert t.data_source.startswith("hub:allenai/ai2_arc")
    by_q = {ex["messages"][0]["content"].split("\n")[0]: ex for ex in t}
    wet = by_q["Multiple Choice question: Which is wet?"]
    assert wet["letters"] == ("A", "B") and wet["messages"][1]["content"] == "B"
    three = by_q["Multiple Choice question: Pick three"]
    assert three["letters"] == ("1", "2", "3") and "- 3=3\n" in three["messages"][0]["content"]


def test_retries_on_server_errors(hub, tmp_path):
    from nanochat.tasks.hub import fetch_split, read_parquet_rows

    hub.add_split("cais/mmlu", "all", "dev", [mmlu_table(["a?", "b?"])], tmp_path)
    listing = "/api/datasets/cais/mmlu/parquet/all/dev"
    hub.fail[listing] = 2
    hub.fail[listing + "/0.parquet"] = 1
    files = fetch_split("cais/mmlu", "all", "dev", backoff=0.01)
    assert [r["question"] for r in read_parquet_rows(files)] == ["a?", "b?"]
    assert hub.hits.count(listing) == 3 and hub.hits.count(listing + "/0.parquet") == 2


def test_gives_up_after_the_attempts(hub, tmp_path):
    from nanochat.tasks.hub import HubUnavailable, fetch_split

    hub.add_split("cais/mmlu", "all", "dev", [mmlu_table(["a?"])], tmp_path)
    hub.fail["/api/datasets/cais/mmlu/parquet/all/dev"] = 99
    with pytest.raises(HubUnavailable, match="failed 3 times"):
        fetch_split("cais/mmlu", "all", "dev", attempts=3, backoff=0.01)
    with pytest.raises(NanochatError, match="404"):
        fetch_split("cais/mmlu", "all", "nosuchsplit", attempts=3, backoff=0.01)


def test_unreachable_hub_falls_back_to_packaged_and_says_so(monkeypatch, capsys):
    from nanochat.tasks.hub import HubUnavailable, fetch_split
    from nanochat.tasks.mmlu import MMLU

    monkeypatch.setenv("NANOCHAT_HF_BASE", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.delenv("NANOCHAT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t = MMLU(split="dev")
    assert t.data_source == "packaged:tasks/mmlu_dev.jsonl" and len(t) == 285
    assert "packaged" in capsys.readouterr().out
    with pytest.raises(HubUnavailable):
        MMLU(split="dev", source="hub")
    monkeypatch.setenv("NANOCHAT_OFFLINE", "1")
    with pytest.raises(HubUnavailable, match="NANOCHAT_OFFLINE"):
        fetch_split("cais/mmlu", "all", "dev")


def test_core_bundle_download_and_unpack(hub, tmp_path, monkeypatch, nanochat_home):
    """The DCLM bundle zip (top folder eval_bundle/) is unpacked to <home>/eval/eval_bundle and preferred."""
    import io
    import zipfile

    from nanochat.eval.core import download_bundle, find_bundle

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eval_bundle/core.yaml", "icl_tasks:\n- {label: copa, dataset_uri: commonsense_reasoning/copa.jsonl, num_fewshot: [0], icl_task_type: multiple_choice}\n")
        z.writestr("eval_bundle/eval_meta_data.csv", "Eval Task,Random baseline\ncopa,50\n")
        z.writestr("eval_bundle/eval_data/commonsense_reasoning/copa.jsonl", json.dumps({"query": "q", "choices": ["a", "b"], "gold": 0}) + "\n")
    hub.files["/eval_bundle.zip"] = buf.getvalue()
    hub.files["/broken.zip"] = b"not a zip"
    monkeypatch.setenv("NANOCHAT_CORE_BUNDLE_URL", hub.base + "/eval_bundle.zip")
    path = download_bundle()
    assert path == nanochat_home / "eval" / "eval_bundle"
    b = find_bundle()
    assert b.label == "CORE" and not b.offline and b.root == path
    assert [s["label"] for s in b.task_specs()] == ["copa"] and b.task_specs()[0]["continuation_delimiter"] == " "
    assert b.baselines() == {"copa": 50.0} and b.load_data("commonsense_reasoning/copa.jsonl")[0]["gold"] == 0
    import shutil

    shutil.rmtree(path)
    with pytest.raises(NanochatError, match="not a valid zip"):
        download_bundle(hub.base + "/broken.zip")
    assert not path.exists() and not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]


def test_prepare_evals_downloads_bundle_and_chat_sets(hub, tmp_path, monkeypatch, nanochat_home):
    """`nanochat data prepare-evals` against the loopback Hub: bundle plus the five downloadable sets."""
    import io
    import zipfile

    from tests.conftest import run_cli

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eval_bundle/core.yaml", "icl_tasks:\n- {label: copa, dataset_uri: c/copa.jsonl, num_fewshot: [0], icl_task_type: multiple_choice}\n")
        z.writestr("eval_bundle/eval_meta_data.csv", "Eval Task,Random baseline\ncopa,50\n")
        z.writestr("eval_bundle/eval_data/c/copa.jsonl", json.dumps({"query": "q", "choices": ["a", "b"], "gold": 0}) + "\n")
    hub.files["/eval_bundle.zip"] = buf.getvalue()
    arc = pa.table({"id": ["x"], "question": ["q?"], "choices": [{"text": ["a", "b"], "label": ["A", "B"]}], "answerKey": ["A"]})
    hub.add_split("allenai/ai2_arc", "ARC-Easy", "test", [arc], tmp_path)
    hub.add_split("allenai/ai2_arc", "ARC-Challenge", "test", [arc, arc], tmp_path)
    hub.add_split("cais/mmlu", "all", "test", [mmlu_table(["m1?", "m2?", "m3?"])], tmp_path)
    hub.add_split("openai/gsm8k", "main", "test", [pa.table({"question": ["1+1?"], "answer": ["1+1=<<1+1=2>>2\n#### 2"]})], tmp_path)
    he = pa.table({"task_id": ["HumanEval/0"], "prompt": ["def f():\n"], "canonical_solution": ["    return 1\n"], "test": ["def check(c):\n    assert c() == 1\n"], "entry_point": ["f"]})
    hub.add_split("openai/openai_humaneval", "openai_humaneval", "test", [he], tmp_path)
    env = {"NANOCHAT_CORE_BUNDLE_URL": hub.base + "/eval_bundle.zip"}
    r = run_cli("data", "prepare-evals", env=env)
    assert r.returncode == 0, r.stderr
    assert "CORE: 1 tasks" in r.stdout
    for name, n in (("arc-easy", 1), ("arc-challenge", 2), ("mmlu", 3), ("gsm8k", 1), ("humaneval", 1)):
        assert re.search(rf"{name}\s+.\s+{n}\s+.\s+hub:", r.stdout), (name, r.stdout)
    assert (nanochat_home / "task_data" / "openai--gsm8k" / "main" / "test" / "manifest.json").is_file()
    hub.close()
    r = run_cli("data", "prepare-evals", env={"NANOCHAT_CORE_BUNDLE_URL": "http://127.0.0.1:9/x.zip"})
    assert r.returncode == 0, r.stderr  # everything is already here: nothing to fetch
    import shutil

    shutil.rmtree(nanochat_home / "eval" / "eval_bundle")
    r = run_cli("data", "prepare-evals", env={"NANOCHAT_CORE_BUNDLE_URL": "http://127.0.0.1:9/x.zip"})
    assert r.returncode == 1 and "prepare-evals --offline" in r.stderr and "Traceback" not in r.stderr
