"""The torchrun relaunch: when it happens, the command it builds (one machine or several, SLURM), and a real 2-process gloo run."""

from __future__ import annotations

import pytest

from nanochat.common.errors import NanochatError
from nanochat.common.launch import NodeOptions, plan_relaunch
from tests.conftest import run_cli

ARGV = ["pretrain", "--depth", "12"]
TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}


def test_single_gpu_or_cpu_runs_here():
    assert plan_relaunch(ARGV, {}, gpu_count=0, nproc=None) is None
    assert plan_relaunch(ARGV, {}, gpu_count=1, nproc=None) is None


def test_several_gpus_relaunch_one_process_each():
    assert plan_relaunch(ARGV, {}, gpu_count=4, nproc=None) == [
        "torchrun", "--standalone", "--nproc_per_node=4", "-m", "nanochat", "pretrain", "--depth", "12",
    ]


def test_nproc_overrides_and_nproc_1_disables():
    assert plan_relaunch(ARGV + ["--nproc", "2"], {}, gpu_count=8, nproc=2)[2] == "--nproc_per_node=2"
    assert plan_relaunch(ARGV + ["--nproc", "1"], {}, gpu_count=8, nproc=1) is None


def test_nproc_is_not_passed_on_to_workers():
    # torchrun's parser would read `--nproc` as an abbreviation of its own --nproc-per-node
    plan = plan_relaunch(["pretrain", "--nproc", "2", "--depth", "4", "--nproc=2"], {}, gpu_count=2, nproc=2)
    assert plan[5:] == ["pretrain", "--depth", "4"]


def test_never_relaunch_inside_torchrun():
    assert plan_relaunch(ARGV, TORCHRUN_ENV, gpu_count=8, nproc=None) is None
    assert plan_relaunch(ARGV, TORCHRUN_ENV, gpu_count=8, nproc=8) is None


def test_cpu_device_needs_explicit_nproc():
    assert plan_relaunch(ARGV, {}, gpu_count=8, nproc=None, device="cpu") is None
    assert plan_relaunch(ARGV, {}, gpu_count=0, nproc=2, device="cpu")[2] == "--nproc_per_node=2"


def test_bad_nproc_values():
    with pytest.raises(NanochatError, match="--nproc 0"):
        plan_relaunch(ARGV, {}, gpu_count=2, nproc=0)
    with pytest.raises(NanochatError, match="only 2 GPUs"):
        plan_relaunch(ARGV, {}, gpu_count=2, nproc=4)


def test_visible_gpu_count_honours_empty_cuda_visible_devices():
    from nanochat.common.launch import visible_gpu_count

    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}) == 0


def test_two_process_gloo_all_reduce_through_relaunch():
    r = run_cli("dist-check", "--device", "cpu", "--nproc", "2", timeout=180)
    assert r.returncode == 0, r.stderr
    assert "torchrun --standalone --nproc_per_node=2 -m nanochat dist-check --device cpu" in r.stdout
    # rank 0 alone prints the result; 1 + 2 = 3
    assert r.stdout.count("all-reduce ok") == 1
    assert "world size 2, backend gloo, sum 3" in r.stdout


def test_single_process_dist_check():
    r = run_cli("dist-check", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "world size 1, backend none, sum 1" in r.stdout


def test_exit_code_passes_through_torchrun():
    # a user error raised in every worker must come back as a failure, not a hang or a 0
    r = run_cli("dist-check", "--device", "tpu", "--nproc", "2", timeout=180)
    assert r.returncode != 0
    assert "unknown device 'tpu'" in r.stderr


# ---- several machines -------------------------------------------------------------------------------------

ENDPOINT = "10.0.0.1:29500"


def test_two_machines_relaunch_through_a_c10d_rendezvous():
    plan = plan_relaunch(ARGV + ["--nnodes", "2", "--node-rank=1", "--rdzv-endpoint", ENDPOINT, "--rdzv-id", "run7", "--nproc", "1"], {},
                         gpu_count=0, nproc=1, device="cpu", nodes=NodeOptions(2, 1, ENDPOINT, "run7"))  # fmt: skip
    assert plan == [
        "torchrun", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={ENDPOINT}", "--rdzv-id=run7",
        "--rdzv-conf=is_host=0", "-m", "nanochat", "pretrain", "--depth", "12",
    ]  # fmt: skip
    # node 0 hosts the rendezvous store; without --node-rank torchrun decides by the endpoint's address
    assert "--rdzv-conf=is_host=1" in plan_relaunch(ARGV, {}, 0, 1, "cpu", NodeOptions(2, 0, ENDPOINT, None))
    assert not any(a.startswith("--rdzv-conf") for a in plan_relaunch(ARGV, {}, 0, 1, "cpu", NodeOptions(2, None, ENDPOINT, None)))


def test_several_machines_run_every_visible_gpu_and_relaunch_even_for_one_process():
    plan = plan_relaunch(ARGV, {}, gpu_count=8, nproc=None, nodes=NodeOptions(4, 3, ENDPOINT, None))
    assert "--nnodes=4" in plan and "--nproc_per_node=8" in plan and "--rdzv-id=nanochat" in plan
    # one process per machine still needs torchrun: it is what joins the rendezvous
    assert "--nproc_per_node=1" in plan_relaunch(ARGV, {}, gpu_count=0, nproc=None, device="cpu", nodes=NodeOptions(2, 0, ENDPOINT, None))


def test_master_addr_stands_in_for_a_missing_endpoint():
    plan = plan_relaunch(ARGV, {"MASTER_ADDR": "node0"}, 0, 1, "cpu", NodeOptions(2, 1, None, None))
    assert "--rdzv-endpoint=node0:29500" in plan
    plan = plan_relaunch(ARGV, {"MASTER_ADDR": "node0", "MASTER_PORT": "1234"}, 0, 1, "cpu", NodeOptions(2, 1, None, None))
    assert "--rdzv-endpoint=node0:1234" in plan


def test_srun_with_one_task_per_machine_fills_in_the_machine_options():
    env = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "4", "SLURM_NODEID": "2", "SLURM_JOB_ID": "4242", "MASTER_ADDR": "gpu-a01"}
    plan = plan_relaunch(ARGV, env, gpu_count=8, nproc=None)
    assert plan[:7] == ["torchrun", "--nnodes=4", "--nproc_per_node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-a01:29500",
                        "--rdzv-id=4242", "--rdzv-conf=is_host=0"]  # fmt: skip
    # what the command line says wins over SLURM's
    plan = plan_relaunch(ARGV, env, gpu_count=8, nproc=2, nodes=NodeOptions(None, None, "gpu-a01:3000", "mine"))
    assert "--rdzv-endpoint=gpu-a01:3000" in plan and "--rdzv-id=mine" in plan and "--nproc_per_node=2" in plan


def test_srun_with_one_task_per_gpu_runs_each_task_as_a_worker():
    from nanochat.common.dist import slurm_worker_env

    env = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
           "MASTER_ADDR": "gpu-a01"}  # fmt: skip
    assert slurm_worker_env(env) == {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "GROUP_RANK": "1", "MASTER_ADDR": "gpu-a01", "MASTER_PORT": "29500"}
    assert plan_relaunch(ARGV, env, gpu_count=8, nproc=None) is None
    with pytest.raises(NanochatError, match="MASTER_ADDR is not set.*scontrol show hostnames"):
        slurm_worker_env({k: v for k, v in env.items() if k != "MASTER_ADDR"})
    # torchrun's own variables win (srun running torchrun), and a plain one-task step is no worker
    assert slurm_worker_env({**env, **TORCHRUN_ENV}) is None
    assert slurm_worker_env({**env, "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_NUM_NODES": "1"}) is None


@pytest.mark.parametrize(
    "nodes, message",
    [
        (NodeOptions(0, None, None, None), "--nnodes 0 is not a machine count"),
        (NodeOptions(2, 2, ENDPOINT, None), r"--node-rank 2 is outside 0\.\.1"),
        (NodeOptions(2, -1, ENDPOINT, None), r"--node-rank -1 is outside 0\.\.1"),
        (NodeOptions(2, 0, None, None), "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        (NodeOptions(2, 0, "node0", None), "must be HOST:PORT"),
        (NodeOptions(2, 0, "node0:70000", None), "must be HOST:PORT"),
        (NodeOptions(2, 0, ENDPOINT, "my run"), "--rdzv-id 'my run' must be letters"),
        (NodeOptions(None, 1, None, None), "--node-rank is for training on several machines; add --nnodes"),
        (NodeOptions(1, None, ENDPOINT, None), "--rdzv-endpoint is for training on several machines"),
    ],
)
def test_bad_machine_options_are_usage_errors(nodes, message):
    from nanochat.common.errors import UsageError

    with pytest.raises(UsageError, match=message):
        plan_relaunch(ARGV, {}, gpu_count=0, nproc=1, device="cpu", nodes=nodes)


def test_ipv6_endpoint_and_local_addresses():
    from nanochat.common.launch import is_local_address, split_endpoint

    assert split_endpoint("[::1]:29500") == ("::1", 29500) and split_endpoint("node-7.cluster:80") == ("node-7.cluster", 80)
    assert is_local_address("127.0.0.1")
    assert not is_local_address("192.0.2.1")  # TEST-NET-1: never an address of this machine


def test_machine_options_fail_fast_on_the_command_line(nanochat_home):
    r = run_cli("pretrain", "--data", "demo", "--device", "cpu", "--nnodes", "2")
    assert r.returncode == 2 and "--rdzv-endpoint HOST:PORT" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # node 0 hosts the rendezvous: an endpoint that is another machine is a mistake found before anything starts
    r = run_cli("pretrain", "--data", "demo", "--device", "cpu", "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "192.0.2.1:29500")
    assert r.returncode == 1 and "is not this machine" in r.stderr and "Traceback" not in r.stderr
    for command in ("sft", "rl", "eval"):
        r = run_cli(command, "--device", "cpu", "--nnodes", "3", "--node-rank", "5", "--rdzv-endpoint", ENDPOINT)
        assert r.returncode == 2 and "--node-rank 5 is outside 0..2" in r.stderr, (command, r.stderr)
