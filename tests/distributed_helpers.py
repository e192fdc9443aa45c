"""What the multi-process tests share: stores and adapters compared across runs, and the ranks of a launch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from tests.conftest import agd, set_params

STORE = "data/trajectories.zarr"


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store (metadata, chunks, mask) by relative path."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _copy(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest, copy_function=lambda s, d: os.link(s, d) if "/data/assets/" in s else shutil.copy2(s, d))
    return dest


def _rank_pids(project: Path, rank: int) -> list[int]:
    """The processes torchrun started for `rank` in `project` (read from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and cwd == str(project):
            found.append(int(proc.name))
    return found


def _adapters(project: Path) -> dict[str, np.ndarray]:
    return load_file(str(project / "models/adapters/adapters.safetensors"))


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _one_process(project: Path, tmp_path: Path, steps: int) -> dict:
    """The adapters one process trains in a copy of the project, `steps` steps."""
    set_params(project, **{"train.steps": steps, "train.checkpoint_every": 10})
    single = _copy(project, tmp_path / "single")
    agd(single, "train")
    return _adapters(single)
