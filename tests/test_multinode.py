"""Several machines, played by two torchrun invocations on 127.0.0.1 (`--nnodes 2`, a c10d rendezvous on a
free port, one gloo process each), against a single-machine 2-process run of the same total batch:

- two nodes train, save, stop and resume with the losses of the one-node run;
- a 2-process checkpoint resumes in 1 process (optimizer re-sharded, data streams regrouped) with them too;
- a killed node ends the other within 60 s with one error line, and `--resume auto` continues (on the machine left);
- a node that holds other data shards stops both before step 0 (and, on two gloo processes, a folder that is
  not shared, other inputs or a missing file stop every rank alike).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanochat.common import checkpoint as ck
from tests.conftest import run_cli
from tests.train_helpers import TINY, install_tokenizer, train_losses

# 4 rows of 32 tokens per process; 256 tokens a step = 2 processes x 1 micro-step = 1 process x 2 micro-steps
COMMON = [*TINY, "--max-seq-len", "32", "--total-batch-size", "256", "--eval-every", "-1"]
RUN = ["pretrain", *COMMON, "--num-iterations", "8", "--save-every", "4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One "machine": `python -m nanochat ARGS --nnodes 2 --node-rank R ...` with its own NANOCHAT_HOME and a
    marker in its environment (inherited by torchrun's agent and worker) to find its processes by."""

    def __init__(self, home: Path, rank: int, port: int, args: list[str], logs: Path) -> None:
        self.marker = f"NANOCHAT_TEST_NODE={logs.name}-{rank}-{port}"
        env = {**os.environ, "NANOCHAT_HOME": str(home), self.marker.split("=")[0]: self.marker.split("=")[1]}
        self.out, self.err = logs.with_suffix(f".{rank}.out"), logs.with_suffix(f".{rank}.err")
        cmd = [sys.executable, "-m", "nanochat", *args, "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}", "--nproc", "1"]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def pids(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    env = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
                except OSError:
                    continue
                if self.marker.encode() in env:
                    found.append(int(entry))
        return found

    def kill(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def two_nodes(args: list[str], tmp: Path, homes: tuple[Path, Path], name: str) -> tuple[Node, Node]:
    port = _free_port()
    logs = tmp / name
    return Node(homes[0], 0, port, args, logs), Node(homes[1], 1, port, args, logs)


def run_two_nodes(args: list[str], tmp: Path, homes: tuple[Path, Path], name: str, timeout: float = 300) -> tuple[Node, Node]:
    nodes = two_nodes(args, tmp, homes, name)
    try:
        for n in nodes:
            n.wait(timeout)
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.kill()
                n.proc.wait()
    return nodes


def _both(nodes) -> str:
    return "".join(n.stdout() + n.stderr() for n in nodes)


@pytest.fixture(scope="module")
def one_node_run(tmp_path_factory) -> Path:
    """The reference: one machine, 2 processes (torchrun --standalone), 8 steps, checkpoints at 4 and 8."""
    home = tmp_path_factory.mktemp("one-node")
    install_tokenizer(home)
    r = run_cli(*RUN, "--nproc", "2", env={"NANOCHAT_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "--standalone" in r.stdout
    return home / "checkpoints" / "base" / "d2"


def test_two_nodes_train_save_stop_and_resume_like_one_node(one_node_run, nanochat_home, tmp_path):
    reference = train_losses(one_node_run)
    assert sorted(reference) == list(range(8)) and len(set(reference.values())) == 8  # the losses move
    install_tokenizer(nanochat_home)
    homes = (nanochat_home, nanochat_home)  # one home seen by both "machines", as a shared filesystem would be
    nodes = run_two_nodes(RUN, tmp_path, homes, "first")
    out = _both(nodes)
    assert [n.proc.returncode for n in nodes] == [0, 0], out[-4000:]
    assert out.count("--nnodes=2") == 2 and out.count("done: 8 steps") == 1  # global rank 0 alone reports
    run_dir = nanochat_home / "checkpoints" / "base" / "d2"
    first = train_losses(run_dir)
    assert sorted(first) == list(range(8))
    assert max(abs(first[s] - reference[s]) for s in range(8)) < 1e-6, (first, reference)
    assert ck.verify_checkpoint(run_dir / "step_000004")["world_size"] == 2

    # stop after step 4 (the final checkpoint gone) and resume on two new "machines"
    shutil.rmtree(run_dir / "step_000008")
    nodes = run_two_nodes(RUN, tmp_path, homes, "resumed")
    out = _both(nodes)
    assert [n.proc.returncode for n in nodes] == [0, 0], out[-4000:]
    assert "resuming d2 from step 4" in out
    again = train_losses(run_dir)
    assert max(abs(again[s] - reference[s]) for s in range(4, 8)) < 1e-6, (again, reference)
    assert ck.find_latest("base", "d2").step == 8


def test_two_process_checkpoint_resumes_in_one_process(one_node_run, nanochat_home):
    reference = train_losses(one_node_run)
    install_tokenizer(nanochat_home)
    run_dir = nanochat_home / "checkpoints" / "base" / "d2"
    run_dir.mkdir(parents=True)
    shutil.copytree(one_node_run / "step_000004", run_dir / "step_000004")
    # one process, 2 micro-steps: the same 256 tokens a step, read as the same two data streams
    r = run_cli(*RUN, "--nproc", "1", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "re-sharding the optimizer state and data streams of 2 processes for 1" in r.stdout
    assert "resuming d2 from step 4" in r.stdout and "gradient accumulation" in r.stdout
    resumed = train_losses(run_dir)
    assert sorted(resumed) == [4, 5, 6, 7]
    # steps 5..7 depend on the optimizer moments carried over, not only on the weights
    assert max(abs(resumed[s] - reference[s]) for s in range(4, 8)) < 1e-6, (resumed, reference)

    # a split that reads the data as other streams (1 process x 1 micro-step) is refused in one line
    shutil.rmtree(run_dir / "step_000008")
    r = run_cli("pretrain", *COMMON, "--total-batch-size", "128", "--num-iterations", "8", "--nproc", "1", timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "read its data as 2 streams (2 processes x 1 micro-steps) and this run would read 1 (1 x 1)" in r.stderr
    assert "--total-batch-size 256 --device-batch-size 4 as it had" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_killed_node_ends_the_other_with_one_line_and_resume_continues(nanochat_home, tmp_path):
    install_tokenizer(nanochat_home)
    homes = (nanochat_home, nanochat_home)
    args = ["pretrain", *COMMON, "--num-iterations", "400", "--save-every", "2"]
    run_dir = nanochat_home / "checkpoints" / "base" / "d2"
    node0, node1 = two_nodes(args, tmp_path, homes, "killed")
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "step_000004").is_dir():
            assert node0.proc.poll() is None and node1.proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 4"
            time.sleep(0.2)
        assert len(node1.pids()) >= 2  # torchrun's agent and its worker: the whole "machine" goes
        node1.kill()
        killed_at = time.monotonic()
        node0.wait(timeout=90)
        took = time.monotonic() - killed_at
        node1.wait(timeout=30)
    finally:
        for n in (node0, node1):
            if n.proc.poll() is None:
                n.kill()
                n.proc.wait()
    print(f"node 0 ended {took:.1f} s after node 1 was killed")
    assert took < 60, f"node 0 took {took:.0f} s to end after node 1 died"
    assert node0.proc.returncode != 0 and not node0.pids(), "node 0 outlived the run"
    errors = [line for line in node0.stderr().splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "lost contact with the other processes" in errors[0], node0.stderr()[-3000:]
    assert "--resume auto" in errors[0]

    # go on without the dead machine: the one left resumes the newest checkpoint in 1 process (re-sharded)
    newest = ck.find_latest("base", "d2").step
    assert newest >= 4
    r = run_cli("pretrain", *COMMON, "--num-iterations", str(newest + 2), "--save-every", "2", "--nproc", "1", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming d2 from step {newest}" in r.stdout and "of 2 processes for 1" in r.stdout
    assert ck.find_latest("base", "d2").step == newest + 2


def _shards(folder: Path, train_docs: list[str]) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    pq.write_table(pa.table({"text": train_docs}), folder / "a.parquet", row_group_size=4)
    pq.write_table(pa.table({"text": [f"held out text number {i}." for i in range(8)]}), folder / "b.parquet", row_group_size=4)
    (folder / "dataset.json").write_text(json.dumps({"val_file": "b.parquet"}))


def test_a_node_with_other_data_shards_stops_both_before_step_0(nanochat_home, tmp_path):
    home0, home1 = nanochat_home, tmp_path / "home1"
    for h in (home0, home1):
        install_tokenizer(h)
    # shared checkpoints (node 1's a symlink to node 0's), node-local data: node 1's training shard differs
    (home0 / "checkpoints").mkdir()
    (home1 / "checkpoints").symlink_to(home0 / "checkpoints", target_is_directory=True)
    docs = [f"Training text number {i}, long enough to fill a row or two of tokens." for i in range(16)]
    _shards(home0 / "data" / "mini", docs)
    _shards(home1 / "data" / "mini", docs[:-1] + ["a different last document"])
    nodes = run_two_nodes(["pretrain", *COMMON, "--num-iterations", "4", "--data", "mini"], tmp_path, (home0, home1), "data")
    for n in nodes:
        assert n.proc.returncode == 1, _both(nodes)[-3000:]
        lines = n.stderr().strip().splitlines()
        assert len(lines) == 1 and "the tokenizer and data differ between processes: train shards on rank 1" in lines[0], n.stderr()
        assert "nanochat data download" in lines[0]
    assert "step 00001" not in _both(nodes)


def _agreement_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import json

    import torch
    import torch.distributed as dist

    from nanochat.common.dist import SameOnEveryRank, agree, check_shared_dir
    from nanochat.common.errors import NanochatError

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = {}

    def outcome(fn):
        try:
            return ["ok", fn()]
        except SameOnEveryRank as e:
            return ["same-everywhere", str(e)]
        except NanochatError as e:
            return ["error", str(e)]

    try:
        shared = Path(out_dir) / "shared"
        out["shared"] = outcome(lambda: check_shared_dir(shared))
        out["own folders"] = outcome(lambda: check_shared_dir(Path(out_dir) / f"own{rank}"))
        out["same"] = outcome(lambda: agree("the inputs", lambda: (rank * 10, {"shards": "3 shards"}), fix="copy them"))
        out["differ"] = outcome(lambda: agree("the inputs", lambda: (rank, {"shards": f"{3 + rank} shards"}), fix="copy them"))

        def missing():
            if rank == 1:
                raise NanochatError("no data shards in /data/x; download them")
            return None, {"shards": "3 shards"}

        out["missing"] = outcome(lambda: agree("the inputs", missing, fix="copy them"))
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def test_ranks_check_the_shared_folder_and_agree_on_their_inputs(tmp_path):
    # two gloo processes on one host stand for two machines: a folder each is "not shared"
    import json

    import torch.multiprocessing as mp

    mp.spawn(_agreement_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    host = socket.gethostname()
    for r, out in enumerate(seen):
        assert out["shared"] == ["ok", None]
        assert not [p for p in (tmp_path / "shared").iterdir()], "the probe file is left behind"
        kind, message = out["own folders"]
        assert kind == "same-everywhere" and message.startswith(f"rank 1 on {host} does not see {tmp_path / f'own{r}'}, the checkpoints folder")
        assert out["same"] == ["ok", r * 10]  # each rank keeps its own result
        assert out["differ"] == ["same-everywhere", f"the inputs differ between processes: shards on rank 1 ({host}) are 4 shards, on rank 0 ({host}) 3 shards; copy them"]
        assert out["missing"] == ["same-everywhere", f"rank 1 on {host}: no data shards in /data/x; download them"]


def test_sft_refuses_to_resume_on_another_process_count(nanochat_home):
    import json

    from nanochat.common.errors import NanochatError
    from nanochat.train.sft import SFTConfig, run_sft
    from tests.test_sft import _tiny_base

    _tiny_base(nanochat_home)
    cfg = dict(data="demo", eval_every=-1, device="cpu", model_tag="t", out_tag="s")
    run_sft(SFTConfig(**cfg, num_iterations=2))
    # the same checkpoint, as a 2-process run would have saved it (the meta says so; the manifest vouches for it)
    step = ck.checkpoint_dir("sft", "s") / ck.step_name(2)
    meta = json.loads((step / ck.META_FILE).read_text())
    (step / ck.META_FILE).write_text(json.dumps({**meta, "world_size": 2}))
    manifest = json.loads((step / ck.MANIFEST_FILE).read_text())
    manifest["files"][ck.META_FILE] = {"sha256": ck._sha256(step / ck.META_FILE), "bytes": (step / ck.META_FILE).stat().st_size}
    (step / ck.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(NanochatError, match=r"saved by 2 processes and this run has 1: an SFT run resumes on as many processes"):
        run_sft(SFTConfig(**cfg, num_iterations=4))


def test_ranks_of_one_machine_download_a_hub_file_once(tmp_path):
    # four "ranks" of one machine fetch the same task data at the same moment: the file lock lets one
    # download while the others wait, then read its copy (the server counts the downloads, and is slow)
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "shard.parquet")
    body, hits = (tmp_path / "shard.parquet").read_bytes(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith(".parquet"):
                hits.append(self.path)
                time.sleep(0.5)
                data = body
            else:
                data = json.dumps([f"/files/{i}.parquet" for i in range(2)]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    go = tmp_path / "go"
    code = ("import os, sys, time\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
            "from nanochat.tasks.hub import fetch_split\n"
            "print(' '.join(p.name for p in fetch_split('some/set', 'default', 'train')))\n")  # fmt: skip
    env = {**os.environ, "NANOCHAT_HF_BASE": f"http://127.0.0.1:{server.server_address[1]}"}
    env.pop("NANOCHAT_OFFLINE", None)
    env.pop("HF_HUB_OFFLINE", None)
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
        time.sleep(1.0)  # every process waiting at the start line
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        server.shutdown()
        server.server_close()
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert [o.strip() for o, _ in outs] == ["00000.parquet 00001.parquet"] * 4
    assert sorted(hits) == ["/files/0.parquet", "/files/1.parquet"]  # each file downloaded once, not four times
