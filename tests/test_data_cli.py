"""The data and tokenizer commands, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import socket

from nanochat.common import paths
from tests.conftest import run_cli
from tests.test_download import FILES, WANTED, Server


def test_tokenize_train_and_eval_on_demo(nanochat_home):
    r = run_cli("tokenize-train", "--data", "demo", "--vocab-size", "4096")
    assert r.returncode == 0, r.stderr
    assert "4,096" in r.stdout and "saved to" in r.stdout
    r = run_cli("tokenize-eval")
    assert r.returncode == 0, r.stderr
    for kind in ("news", "code", "math", "multilingual", "demo val"):
        assert kind in r.stdout
    assert "GPT-2" in r.stdout and "GPT-4" in r.stdout
    results = json.loads((paths.tokenizer_dir() / "eval.json").read_text())["results"]
    val = next(x for x in results if x["kind"] == "demo val")
    # Our 4K tokenizer, trained on Austen, needs more tokens than GPT-2 on Persuasion, but not 1.5x as many.
    assert val["tokens"]["gpt2"] < val["tokens"]["ours"] < 1.5 * val["tokens"]["gpt2"]
    assert not list(nanochat_home.rglob("*.pkl"))


def test_tokenize_needs_data_and_tokenizer(nanochat_home):
    r = run_cli("tokenize-train", "--data", "web", "--vocab-size", "512")
    assert r.returncode == 1 and "nanochat data download" in r.stderr and "--data demo" in r.stderr
    r = run_cli("tokenize-eval")
    assert r.returncode == 1 and "nanochat tokenize-train" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_download_cli(nanochat_home):
    with Server("drop") as s:
        r = run_cli("data", "download", "--shards", "2", "--workers", "2", env={"NANOCHAT_HF_BASE": s.base, "NANOCHAT_DOWNLOAD_BACKOFF": "0.01"})
    assert r.returncode == 0, r.stderr
    assert "3 shards downloaded" in r.stdout
    assert all((paths.data_dir("climbmix") / n).read_bytes() == FILES[n] for n in WANTED)
    r = run_cli("data", "list")
    assert r.returncode == 0 and "climbmix" in r.stdout and "2+1" in r.stdout

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    r = run_cli("data", "download", "--for-depth", "2", "--dataset", "fineweb-edu", env={"NANOCHAT_HF_BASE": f"http://127.0.0.1:{port}"})
    assert r.returncode == 1 and "2 training shards" in r.stdout
    assert r.stderr.startswith("error: cannot reach") and "--data demo" in r.stderr and "fineweb-edu" in r.stderr
    r = run_cli("data", "download", "--shards", "2", "--for-depth", "2")
    assert r.returncode == 2


def test_import_and_list_cli(nanochat_home, tmp_path):
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"body": f"note number {i}"}) + "\n" for i in range(40)))
    r = run_cli("data", "import", str(tmp_path / "notes.jsonl"), "--name", "notes", "--text-field", "body", "--val-fraction", "0.1")
    assert r.returncode == 0, r.stderr
    assert "36 documents" in r.stdout and "4 documents" in r.stdout
    r = run_cli("data", "list", "--depth", "2")
    assert r.returncode == 0
    line = next(l for l in r.stdout.splitlines() if "notes" in l)
    assert "imported" in line and "1+1" in line and "40" in line
    r = run_cli("data", "import", str(tmp_path / "notes.jsonl"), "--name", "notes")
    assert r.returncode == 1 and "--force" in r.stderr
