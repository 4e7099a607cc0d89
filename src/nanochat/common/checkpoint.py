"""Checkpoints: save, verify, discover and load `checkpoints/{base,sft,rl}/<tag>/step_XXXXXX/`.

One checkpoint is one folder:

    model.safetensors          the weights (rank 0)
    meta.json                  model config, step, run options, loop state ... (rank 0)
    optim_rank{r}.safetensors  the tensors of rank r's optimizer state (every rank: it is sharded)
    rank{r}.json               rank r's optimizer state without its tensors, RNG states, data-loader state
    manifest.json              sha256 and size of every file above (written last, by rank 0)

Every rank writes its own files into the folder rank 0 creates, so on several machines that folder must
be one they all see (`common.dist.check_shared_dir` checks before step 0). A run on another number of
processes reads every rank's files (`load_all_rank_states`, lazily) and re-shards (optim.combined).

No pickle anywhere: tensors go to safetensors, everything else to JSON (nested containers whose
tensors are replaced by references into the safetensors file, see `encode_tree`).

Crash safety: the files are written into a temporary folder beside the final one, fsynced, and the
folder is renamed to `step_XXXXXX` only when complete. A checkpoint is *valid* when its manifest
reads back and every file matches its size and sha256; `find_latest` returns the newest valid one
and reports (and skips) any that fail, so a damaged disk never feeds a corrupt state to a run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanochat.common import paths
from nanochat.common.atomic import fsync_dir, naming, publish_dir
from nanochat.common.errors import NanochatError, UsageError
from nanochat.common.logging import warn0

FORMAT_VERSION = 1
SOURCES = ("base", "sft", "rl")
STEP_RE = re.compile(r"^step_(\d{6,})$")
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"


def optim_file(rank: int) -> str:
    return f"optim_rank{rank}.safetensors"


def rank_file(rank: int) -> str:
    return f"rank{rank}.json"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    source: str
    tag: str
    step: int


class CorruptCheckpoint(NanochatError):
    """A checkpoint folder that fails its manifest."""


# ---------------------------------------------------------------------------------------------
# JSON encoding of state trees (optimizer state dicts, RNG states) without pickle


def encode_tree(obj: Any, tensors: dict[str, Any]) -> Any:
    """A JSON-able copy of `obj`; tensors move into `tensors` (name → CPU tensor) and leave a reference.

    Dicts with non-string keys, tuples and non-finite floats are tagged so `decode_tree` restores
    them exactly (optimizer state dicts key their state by int; Python floats round-trip through repr).
    """
    import torch

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        # a private CPU copy: safetensors refuses views that share storage
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
            return {k: encode_tree(v, tensors) for k, v in obj.items()}
        return {"__items__": [[encode_tree(k, tensors), encode_tree(v, tensors)] for k, v in obj.items()]}
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return encode_tree(obj.item(), tensors)
    raise NanochatError(f"cannot store a {type(obj).__name__} in a checkpoint (only tensors, numbers, strings and containers)")


def decode_tree(obj: Any, tensors: Mapping[str, Any]) -> Any:
    """The inverse of `encode_tree`."""
    import torch

    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__dtype__" in obj:
            return getattr(torch, obj["__dtype__"])
        if "__tuple__" in obj:
            return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in obj["__items__"]}
        return {k: decode_tree(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# RNG states: Python, numpy, torch CPU and CUDA, as JSON


def capture_rng() -> dict:
    import random

    import numpy as np
    import torch

    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: dict) -> None:
    import random

    import numpy as np
    import torch

    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------------------------------------
# saving


def checkpoint_dir(source: str, tag: str) -> Path:
    if source not in SOURCES:
        raise UsageError(f"unknown checkpoint source {source!r}; use one of {', '.join(SOURCES)}")
    if not tag or "/" in tag or tag.startswith("."):
        raise UsageError(f"model tag {tag!r} is not a folder name; use something like d12")
    return paths.checkpoints_dir(source) / tag


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")


def _cleanup_stale(tag_dir: Path) -> None:
    """Remove what crashed saves left behind; put back a step folder a crash left renamed aside."""
    for p in tag_dir.iterdir():
        if p.name.startswith(".old-"):
            original = tag_dir / p.name[len(".old-") :].rsplit(".", 1)[0]
            if STEP_RE.match(original.name) and not original.exists():
                os.replace(p, original)
            else:
                shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _default_barrier() -> None:
    from nanochat.common.dist import barrier

    barrier()


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    model_state: Mapping[str, Any] | None = None,
    meta: dict | None = None,
    optimizer_state: dict | None = None,
    rank_state: dict | None = None,
    rank: int = 0,
    world_size: int = 1,
    keep_last: int | None = None,
    barrier: Callable[[], None] | None = None,
) -> Path:
    """Write one checkpoint atomically; every rank calls this with its own optimizer and rank state.

    Rank 0 passes `model_state` and `meta`. `rank_state` is any JSON-able tree (tensors allowed:
    they are stored with the optimizer tensors). With `keep_last`, older step folders beyond the
    newest K are deleted after the new one is published. Returns the final folder.
    """
    barrier = barrier or _default_barrier
    directory = Path(directory)
    final = directory / step_name(step)
    tmp = directory / f".tmp-{step_name(step)}"
    if rank == 0:
        if model_state is None or meta is None:
            raise ValueError("rank 0 must pass model_state and meta")
        directory.mkdir(parents=True, exist_ok=True)
        _cleanup_stale(directory)
        tmp.mkdir()
    if world_size > 1:
        barrier()
    try:
        with naming(final):  # a full disk mid-save names the checkpoint folder
            _write_rank_files(tmp, step, rank, world_size, model_state, meta, optimizer_state, rank_state)
            if world_size > 1:
                barrier()
            if rank == 0:
                _publish(tmp, final, step, world_size)
    except BaseException:
        if rank == 0:  # nothing half-written stays: the next save or run starts clean
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0 and keep_last is not None and keep_last > 0:
        prune(directory, keep_last)
    if world_size > 1:
        barrier()
    return final


def _write_rank_files(tmp: Path, step: int, rank: int, world_size: int, model_state, meta, optimizer_state, rank_state) -> None:
    """One rank's files into `tmp` (rank 0's with the weights and meta), each hashed into hashes_rank{r}.json, fsynced."""
    from safetensors.torch import save_file

    files: dict[str, dict] = {}

    def record(name: str) -> None:
        p = tmp / name
        files[name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}

    tensors: dict[str, Any] = {}
    tree = {"optimizer": encode_tree(optimizer_state, tensors), "state": encode_tree(rank_state, tensors)}
    save_file(tensors, str(tmp / optim_file(rank)), metadata={"format": str(FORMAT_VERSION)})
    record(optim_file(rank))
    _write_json(tmp / rank_file(rank), tree)
    record(rank_file(rank))
    if rank == 0:
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model_state.items()}
        save_file(weights, str(tmp / MODEL_FILE), metadata={"format": str(FORMAT_VERSION)})
        record(MODEL_FILE)
        _write_json(tmp / META_FILE, {**meta, "step": step, "world_size": world_size, "format": FORMAT_VERSION})
        record(META_FILE)
    _write_json(tmp / f"hashes_rank{rank}.json", files)
    for name in [*files, f"hashes_rank{rank}.json"]:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())


def _publish(tmp: Path, final: Path, step: int, world_size: int) -> None:
    """Rank 0: every rank's hashes into manifest.json (written last), then the folder renamed into place."""
    manifest = {"format": FORMAT_VERSION, "step": step, "world_size": world_size, "created": time.time(), "files": {}}
    for r in range(world_size):
        part = tmp / f"hashes_rank{r}.json"
        manifest["files"].update(json.loads(part.read_text()))
        part.unlink()
    _write_json(tmp / MANIFEST_FILE, manifest)
    publish_dir(tmp, final)


def check_writable(directory: Path) -> None:
    """Fail now, not at the first save hours into a run, when no checkpoint can be written into `directory`;
    leaves nothing behind (the folders it had to create for the test are removed again)."""
    import tempfile

    directory = Path(directory)
    created = [p for p in [directory, *directory.parents] if not p.exists()]
    blocker = next((p for p in [directory, *directory.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NanochatError(f"cannot write checkpoints to {directory}: {blocker} is a file, not a folder; remove or rename it, "
                            "or set NANOCHAT_HOME (or --model-tag) to somewhere else")  # fmt: skip
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:  # read-only, full, not ours: the CLI's one line names the folder and the fix
        raise type(e)(e.errno, e.strerror, str(directory)) from e
    finally:
        for p in created:  # the deepest first
            with contextlib.suppress(OSError):
                p.rmdir()


def prune(directory: Path, keep_last: int) -> list[Path]:
    """Delete step folders older than the newest `keep_last` ones; returns what was deleted."""
    steps = sorted(_step_dirs(directory), key=lambda x: x[0])
    doomed = [p for _, p in steps[:-keep_last]] if keep_last > 0 else []
    for p in doomed:
        # rename first so a crash mid-delete never leaves a half-deleted folder under a step name
        aside = p.with_name(f".tmp-deleting-{p.name}")
        os.replace(p, aside)
        shutil.rmtree(aside, ignore_errors=True)
    if doomed:
        fsync_dir(directory)
    return doomed


# ---------------------------------------------------------------------------------------------
# verification and discovery


def verify_checkpoint(path: Path) -> dict:
    """Check the manifest; returns it, or raises CorruptCheckpoint saying what is wrong."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        files = manifest["files"]
        world = int(manifest["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"checkpoint {path} has no readable manifest ({type(e).__name__}); it is incomplete or damaged") from None
    required = [MODEL_FILE, META_FILE] + [optim_file(r) for r in range(world)] + [rank_file(r) for r in range(world)]
    for name in required:
        if name not in files:
            raise CorruptCheckpoint(f"checkpoint {path} lists no {name} in its manifest")
    for name, want in files.items():
        p = path / name
        if not p.is_file():
            raise CorruptCheckpoint(f"checkpoint {path} is missing {name}")
        if p.stat().st_size != want["bytes"]:
            raise CorruptCheckpoint(f"checkpoint {path}: {name} has {p.stat().st_size} bytes, the manifest says {want['bytes']}")
        if _sha256(p) != want["sha256"]:
            raise CorruptCheckpoint(f"checkpoint {path}: {name} fails its sha256 check")
    for name in files:
        _check_readable(path, name)
    return manifest


def _check_readable(path: Path, name: str) -> None:
    """Bytes that match the manifest can still be unreadable (written so by a bug or another tool): a JSON
    file must parse (meta.json to an object), a safetensors file must have a header that fits the file."""
    p = path / name
    try:
        if name.endswith(".json"):
            obj = json.loads(p.read_text(encoding="utf-8"))
            if name == META_FILE and not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        elif name.endswith(".safetensors"):
            _check_safetensors_header(p)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"checkpoint {path}: {name} matches its manifest but cannot be read ({' '.join(str(e).split())[:120]})") from None


def _check_safetensors_header(p: Path) -> None:
    """The safetensors layout: 8 bytes of little-endian header length, a JSON header, then the tensor bytes."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ValueError(f"header of {n} bytes in a file of {size}")
        header = json.loads(f.read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    body = size - 8 - n
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"] if isinstance(entry, dict) and "data_offsets" in entry else (-1, -1)
        if not 0 <= begin <= end <= body:
            raise ValueError(f"tensor {key!r} lies outside the file")


def _step_dirs(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return out


def list_steps(source: str, tag: str) -> list[int]:
    """Every step folder of a tag, valid or not, ascending."""
    return sorted(s for s, _ in _step_dirs(checkpoint_dir(source, tag)))


def list_tags(source: str) -> list[str]:
    root = paths.checkpoints_dir(source)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


SKIPPED = "; skipping it and using an older one"


def latest_valid(directory: Path, report: Callable[[str], None] | None = warn0) -> tuple[int, Path] | None:
    """The newest step folder under `directory` that passes its manifest; failures are reported."""
    for step, p in sorted(_step_dirs(Path(directory)), key=lambda x: -x[0]):
        try:
            verify_checkpoint(p)
        except CorruptCheckpoint as e:
            if report:
                report(f"{e}{SKIPPED}")
            continue
        return step, p
    return None


def _newest_first(source: str, tags: list[str]) -> list[str]:
    """Tags ordered by their newest step folder's write time, most recent first."""

    def newest_write(t: str) -> float:
        dirs = _step_dirs(checkpoint_dir(source, t))
        return max((p.stat().st_mtime for _, p in dirs), default=-1.0)

    return sorted(tags, key=newest_write, reverse=True)


def find_latest(source: str, tag: str | None = None, report: Callable[[str], None] | None = warn0) -> CheckpointInfo | None:
    """The newest valid checkpoint of `tag`, or (tag None) of the tag written to most recently."""
    # most recently written tag first; hashing stops at the first tag with a valid checkpoint
    for t in _newest_first(source, [tag] if tag else list_tags(source)):
        found = latest_valid(checkpoint_dir(source, t), report)
        if found is not None:
            return CheckpointInfo(found[1], source, t, found[0])
    return None


def latest_or_why(source: str, tag: str | None = None) -> tuple[CheckpointInfo | None, str | None]:
    """`find_latest` with its warnings held back: shown when an older checkpoint is used instead of a damaged
    one; when none is valid, (None, what is wrong with the newest) for the caller's one-line error."""
    skipped: list[str] = []
    info = find_latest(source, tag, report=skipped.append)
    if info is not None:
        for message in skipped:
            warn0(message)
        return info, None
    return None, skipped[0].removesuffix(SKIPPED) if skipped else None


_TRAIN = {"base": "nanochat pretrain", "sft": "nanochat sft", "rl": "nanochat rl"}


def _steps_text(steps: list[int]) -> str:
    return ", ".join(str(s) for s in steps) if len(steps) <= 12 else ", ".join(str(s) for s in steps[:3]) + ", ..., " + ", ".join(str(s) for s in steps[-6:])


def require_checkpoint(source: str, tag: str | None = None, step: int | None = None) -> None:
    """Fail fast, reading no weights, when no checkpoint folder answers (source, tag, step).

    The errors name what does exist: the tags of the source when `tag` has no checkpoints, the steps of
    the tag when `step` is not one of them. Whether the folder found is valid is `resolve_checkpoint`'s
    check (it hashes the files); commands call this first so a typo fails before anything loads."""
    if step is not None and step < 0:
        raise UsageError(f"--step {step} is not a step number; use 0 or more, or omit --step for the newest")
    if tag is not None:
        checkpoint_dir(source, tag)  # a tag that is not a folder name is bad usage
    tags = [t for t in list_tags(source) if _step_dirs(checkpoint_dir(source, t))]
    if not tags:
        where, train = paths.checkpoints_dir(source), _TRAIN[source]
        if step is None:
            raise NanochatError(f"no valid {source} checkpoint under {where}; train one with `{train}`")
        raise NanochatError(f"no checkpoint step {step}: there are no {source} checkpoints under {where}; train one with `{train}`")
    if tag is not None and tag not in tags:
        raise NanochatError(f"no {source} checkpoints for --model-tag {tag}; tags there: {', '.join(_newest_first(source, tags))}; "
                            "pass one of them or omit --model-tag")  # fmt: skip
    if step is None:
        return
    if tag is None:
        having = [t for t in tags if step in list_steps(source, t)]
        if len(having) == 1:
            return
        if len(having) > 1:
            raise NanochatError(f"step {step} exists under {len(having)} {source} model tags ({', '.join(having)}); pass --model-tag with one of them")
        tag = _newest_first(source, tags)[0]  # the tag a bare command would pick
    steps = list_steps(source, tag)
    if step not in steps:
        others = [t for t in tags if t != tag]
        also = f" (other tags: {', '.join(others)}; pick one with --model-tag)" if others else ""
        raise NanochatError(f"no checkpoint step {step} for {source}/{tag}; steps there: {_steps_text(steps)}; pass one of them or omit --step{also}")


def resolve_checkpoint(source: str, tag: str | None = None, step: int | None = None) -> CheckpointInfo:
    """What a consumer loads: the given step (verified), or the newest valid one; errors say how to fix."""
    require_checkpoint(source, tag, step)
    if step is None:
        info, why = latest_or_why(source, tag)
        if info is None:
            where = checkpoint_dir(source, tag) if tag else paths.checkpoints_dir(source)
            raise NanochatError(f"no valid {source} checkpoint under {where}: every step folder is damaged (the newest: {why}); "
                                f"train one with `{_TRAIN[source]}`")  # fmt: skip
        return info
    if tag is None:
        tag = next(t for t in list_tags(source) if step in list_steps(source, t))
    p = checkpoint_dir(source, tag) / step_name(step)
    verify_checkpoint(p)
    return CheckpointInfo(p, source, tag, step)


# ---------------------------------------------------------------------------------------------
# loading


def load_meta(path: Path) -> dict:
    return json.loads((Path(path) / META_FILE).read_text())


def load_weights(path: Path, device: str = "cpu") -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / MODEL_FILE), device=str(device))


def load_rank_state(path: Path, rank: int = 0, device: str = "cpu") -> tuple[Any, Any]:
    """(optimizer state dict, rank state) that rank `rank` saved, tensors on `device`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / rank_file(rank)).is_file():
        meta = load_meta(path)
        raise NanochatError(
            f"checkpoint {path} was saved by {meta.get('world_size')} processes and has no state for rank {rank}; "
            f"resume with the same number of processes (--nproc {meta.get('world_size')})"
        )
    tensors = load_file(str(path / optim_file(rank)), device=str(device))
    tree = json.loads((path / rank_file(rank)).read_text())
    return decode_tree(tree["optimizer"], tensors), decode_tree(tree["state"], tensors)


class LazyTensor:
    """A tensor of a safetensors file that is read only in the rows asked for: `t[a:b]`, `t.shape`."""

    def __init__(self, handle: Any, name: str, device: str) -> None:
        self._handle, self._name, self._device = handle, name, device
        self.shape = tuple(handle.get_slice(name).get_shape())

    def __getitem__(self, index: Any):
        return self._handle.get_slice(self._name)[index].to(self._device)


class _Tensors:
    """The tensors of one open safetensors file by name: lazy ones or read whole."""

    def __init__(self, handle: Any, device: str, lazy: bool) -> None:
        self._handle, self._device, self._lazy = handle, device, lazy

    def __getitem__(self, name: str):
        if self._lazy:
            return LazyTensor(self._handle, name, self._device)
        return self._handle.get_tensor(name).to(self._device)


def saved_world_size(path: Path) -> int:
    """How many processes saved the checkpoint at `path`."""
    return int(load_meta(path).get("world_size", 1))


def load_all_rank_states(path: Path, device: str = "cpu") -> tuple[list[Any], list[Any]]:
    """(optimizer state dicts, rank states) of every rank that saved `path`, in rank order, for a run on
    another number of processes to re-shard. The optimizer tensors are `LazyTensor`s (a rank reads only
    the rows it needs of each); the rank states (data-loader positions, RNG) are read whole."""
    from safetensors import safe_open

    path = Path(path)
    optimizers, states = [], []
    for r in range(saved_world_size(path)):
        handle = safe_open(str(path / optim_file(r)), framework="pt", device="cpu")
        tree = json.loads((path / rank_file(r)).read_text())
        optimizers.append(decode_tree(tree["optimizer"], _Tensors(handle, str(device), lazy=True)))
        states.append(decode_tree(tree["state"], _Tensors(handle, str(device), lazy=False)))
    return optimizers, states
