"""The common layer: home folder, atomic writes, device choice, and `nanochat env`."""

from __future__ import annotations

import json
import os

import pytest

from nanochat.common import atomic, paths
from nanochat.common.device import choose_dtype, detect_device
from nanochat.common.errors import NanochatError
from tests.conftest import run_cli


def test_home_follows_nanochat_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_HOME", str(tmp_path / "h"))
    assert paths.home() == (tmp_path / "h").resolve()
    assert paths.checkpoints_dir("base") == (tmp_path / "h" / "checkpoints" / "base").resolve()
    monkeypatch.delenv("NANOCHAT_HOME")
    assert paths.home().name == "nanochat"


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "f.json"
    atomic.atomic_write_json(target, {"x": 1})
    atomic.atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(os.listdir(target.parent)) == ["f.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "f.json"
    atomic.atomic_write_json(target, {"ok": True})
    with pytest.raises(ValueError):
        atomic.atomic_write_json(target, {"bad": float("nan")})  # NaN is not JSON
    assert json.loads(target.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["f.json"]


def test_publish_dir_swaps_whole_folders(tmp_path):
    final = tmp_path / "step_000001"
    tmp = atomic.fresh_temp_dir(final)
    (tmp / "a").write_text("1")
    atomic.publish_dir(tmp, final)
    tmp = atomic.fresh_temp_dir(final)
    (tmp / "b").write_text("2")
    atomic.publish_dir(tmp, final)
    assert sorted(os.listdir(final)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["step_000001"]


def test_device_choice_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert detect_device("auto") == "cpu"
    assert choose_dtype("cpu").dtype_name == "float32"
    with pytest.raises(NanochatError, match="--device cpu"):
        detect_device("cuda")
    with pytest.raises(NanochatError, match="unknown device"):
        detect_device("tpu")


def test_dtype_override(monkeypatch):
    monkeypatch.setenv("NANOCHAT_DTYPE", "bf16")
    assert choose_dtype("cpu").dtype_name == "bfloat16"
    monkeypatch.setenv("NANOCHAT_DTYPE", "int3")
    with pytest.raises(NanochatError, match="NANOCHAT_DTYPE"):
        choose_dtype("cpu")


def test_env_command_is_truthful(nanochat_home):
    import platform

    import torch

    r = run_cli("env", env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    assert torch.__version__ in r.stdout
    assert platform.python_version() in r.stdout
    assert f"{nanochat_home} (NANOCHAT_HOME)" in r.stdout
    if not torch.cuda.is_available():
        assert "float32" in r.stdout and "not available" in r.stdout
    assert "checkpoints" in r.stdout and "none" in r.stdout


def test_table_cells_are_plain_text_not_markup():
    import io

    from rich.console import Console

    from nanochat.common.logging import table

    out = io.StringIO()
    Console(file=out, width=120).print(table("t [x]", [("total batch", "65,536 [auto off the GPU]"), ("n", "[bold]2")]))
    text = out.getvalue()
    assert "65,536 [auto off the GPU]" in text and "[bold]2" in text and "t [x]" in text
