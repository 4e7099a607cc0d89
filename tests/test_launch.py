"""The torchrun relaunch: when it happens, the command it builds, and a real 2-process gloo run."""

from __future__ import annotations

import pytest

from nanochat.common.errors import NanochatError
from nanochat.common.launch import plan_relaunch
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
