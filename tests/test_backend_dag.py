"""One dvc.yaml, a pipeline that fits the backend: which stages exist and run after a switch.

Driven with the real `dvc` on the real dvc.yaml and conf/ tree: the params come from Hydra
composition (`agd preset`, the same as `dvc exp run -S backend=NAME`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import config
from pipeline.config import compose, dag
from tests import tiny_models
from tests.conftest import ROOT, agd, chunk_files, dvc

MNIST_ONLY = {"prepare@mnist", "classifier@mnist"}
EXPERIMENTS = {"sweep", "nfe", "samplers", "transfer"}  # stages that do nothing until their params turn them on
EVERY_BACKEND = {"check", "assets", "fid_ref", "conditions", "trajectories", "train", "teacher", "evaluate",
                 "report"} | EXPERIMENTS


def stages(project: Path) -> set[str]:
    listed = dvc(project, "stage", "list", "--name-only")
    assert listed.returncode == 0, listed.stderr
    return set(listed.stdout.split())


def would_run(project: Path) -> set[str]:
    dry = dvc(project, "repro", "--dry")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    return set(re.findall(r"Running stage '([^']+)'", dry.stdout))


@pytest.mark.parametrize("backend", compose.backends(ROOT / "conf"))
def test_every_backend_composes_to_valid_params_with_a_matching_dag(backend, tmp_path):
    text = compose.compose([f"backend={backend}"], conf=ROOT / "conf")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = config.load(path)
    assert params.dag == dag.expected(params)  # what dvc.yaml will track is what the stages read
    assert bool(params.dag.mnist) == (backend == "mnist")


def test_committed_params_are_the_default_composition():
    """`dvc exp run -S train.lr=...` composes from conf/: without overrides it must give the committed file."""
    assert compose.compose([], conf=ROOT / "conf") == (ROOT / "params.yaml").read_text()


@pytest.fixture
def switchable(tmp_path) -> Path:
    """A DVC project with the real dvc.yaml, conf/ tree and code (no outputs)."""
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    assert dvc(tmp_path, "init", "--no-scm", "-q").returncode == 0
    return tmp_path


def test_only_the_embedded_default_has_mnist_stages(switchable):
    for backend in compose.backends(switchable / "conf"):
        agd(switchable, "preset", backend)
        want = EVERY_BACKEND | (MNIST_ONLY if backend == "mnist" else set())
        assert stages(switchable) == want, backend


def _real_images(folder: Path, count: int = 6) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _switch(project: Path, backend: str, base: str, **sections) -> None:
    """params.yaml of the finished tiny project, switched to another backend with a matching dag
    (paths relative to the project, as a user writes them)."""
    doc = yaml.safe_load((project / "params.yaml").read_text())
    doc["base"].update(backend=backend, path=base)
    for section, values in sections.items():
        doc[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    params = config.load(project / "params.yaml")
    doc["dag"] = {k: getattr(dag.expected(params), k)
                  for k in ("mnist", "fid_ref", "conditions", "evaluate", "train_images", "negatives")}
    (project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def test_switch_to_dit_runs_its_stages_and_no_mnist_work(dvc_project):
    assert would_run(dvc_project) == set()  # the finished default: nothing to do
    before = (dvc_project / "params.yaml").read_text()
    tiny_models.save_dit_xl_like(dvc_project / "models/dit")
    _real_images(dvc_project / "imagenet")
    _switch(dvc_project, "dit-xl-2", "models/dit", fid_ref={"image_folder": "imagenet"})
    assert "prepare@mnist" not in stages(dvc_project)
    # The Inception weights are shared and already there; MNIST and its classifier are gone.
    assert would_run(dvc_project) == {"check", "fid_ref", "conditions", "trajectories", "train", "teacher",
                                      "evaluate"} | EXPERIMENTS
    (dvc_project / "params.yaml").write_text(before)
    assert would_run(dvc_project) == set()  # switching back finds the default's results where they were


def test_captions_file_and_reference_folder_are_dependencies(dvc_project):
    """Text backends: a changed captions file or reference folder makes its stage stale in `dvc status`."""
    tiny_models.save_sd2_like(dvc_project / "models/sd")
    captions = dvc_project / "captions.json"
    captions.write_text(json.dumps({"annotations": [{"image_id": i, "caption": f"a photo of thing {i}"}
                                                    for i in range(8)]}))
    folder = _real_images(dvc_project / "coco-val")
    _switch(dvc_project, "sd21", "models/sd", conditions={"captions_file": "captions.json", "num_captions": 4},
            evaluate={"captions_file": "captions.json"}, fid_ref={"image_folder": "coco-val"})
    for stage in ("check", "conditions", "fid-ref"):
        agd(dvc_project, stage)
    done = dvc(dvc_project, "commit", "-f", "-q", "check", "conditions", "fid_ref")
    assert done.returncode == 0, done.stderr
    assert dvc(dvc_project, "status", "conditions", "fid_ref").stdout.strip().endswith("up to date.")
    captions.write_text(captions.read_text().replace("thing 3", "thing three"))
    Image.new("RGB", (16, 16)).save(folder / "extra.png")
    status = dvc(dvc_project, "status", "conditions", "fid_ref").stdout
    assert re.search(r"conditions:.*modified:\s+captions.json", status, re.S), status
    assert re.search(r"fid_ref:.*modified:\s+coco-val", status, re.S), status


def _under_git_with_hydra(project: Path) -> None:
    """The project as a user has it: a git repository, DVC composing params.yaml with Hydra, the
    default params committed."""
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=project, check=True)
    for key, value in (("core.no_scm", "false"), ("hydra.enabled", "true")):
        assert dvc(project, "config", key, value).returncode == 0
    agd(project, "preset", "mnist")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "default"], cwd=project, check=True)


def test_dvc_exp_run_composes_the_same_params_as_agd_preset(switchable):
    """`dvc exp run -S backend=sd21` (DVC's Hydra composition) writes what `agd preset sd21` writes;
    here the sd21 model and COCO are absent, so the run stops at `check` with the file to fetch."""
    _under_git_with_hydra(switchable)
    run = dvc(switchable, "exp", "run", "-S", "backend=sd21", "-S", "train.lr=0.0002")
    assert run.returncode != 0 and "Running stage 'check'" in run.stdout
    assert "captions_train2017.json: not found" in run.stdout + run.stderr
    composed = (switchable / "params.yaml").read_text()
    agd(switchable, "preset", "sd21", "train.lr=0.0002")
    assert (switchable / "params.yaml").read_text() == composed


def test_preset_refuses_an_unknown_backend_and_keeps_params(switchable):
    agd(switchable, "preset", "mnist")
    before = (switchable / "params.yaml").read_text()
    done = agd(switchable, "preset", "sd3", check=False)
    assert done.returncode == 2 and "unknown backend" in done.stderr and "sdxl" in done.stderr
    done = agd(switchable, "preset", "sdxl", "train.nope=1", check=False)
    assert done.returncode == 2 and "train.nope" in done.stderr
    assert (switchable / "params.yaml").read_text() == before


@pytest.mark.parametrize("override, key", [("train.lr=abc", "train.lr"), ("+train.newkey=1", "train.newkey")])
def test_a_failed_dvc_exp_run_says_how_to_get_params_yaml_back(switchable, override, key):
    """DVC leaves the bad value in the workspace params.yaml: the error names the key and says how to
    bring the committed file back, and that command does."""
    _under_git_with_hydra(switchable)
    committed = (switchable / "params.yaml").read_text()
    run = dvc(switchable, "exp", "run", "-S", override)
    said = run.stdout + run.stderr
    assert run.returncode != 0 and "Running stage 'check'" in run.stdout, said
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0] and "git checkout params.yaml" in errors[0], said
    assert (switchable / "params.yaml").read_text() != committed  # what DVC leaves behind
    subprocess.run(["git", "checkout", "params.yaml"], cwd=switchable, check=True)
    assert (switchable / "params.yaml").read_text() == committed


def test_a_train_only_experiment_re_samples_agd_alone(dvc_project):
    """`dvc exp run -S train.lr=...`: the adapters are trained again and AGD re-sampled; the teacher's
    samples (CFG and the unguided base: two thirds of the evaluation's passes or more) stay cached."""
    doc = yaml.safe_load((dvc_project / "params.yaml").read_text())
    doc["train"]["lr"] = doc["train"]["lr"] / 2
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert would_run(dvc_project) == {"check", "train", "transfer"}  # the rest waits on train's outputs
    teacher = chunk_files(dvc_project / "data" / "teacher.zarr")
    repro = dvc(dvc_project, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    ran = set(re.findall(r"Running stage '([^']+)'", repro.stdout))
    assert {"train", "evaluate", "report"} <= ran, ran
    assert not ran & {"teacher", "trajectories", "conditions", "fid_ref", "classifier@mnist", "prepare@mnist"}, ran
    assert chunk_files(dvc_project / "data" / "teacher.zarr") == teacher
