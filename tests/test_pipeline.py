"""The whole pipeline, tiny, through the real CLI: every stage's outputs and what users read."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.store import TrajectoryStore
from tests.conftest import ROOT, agd

COMMANDS = ["check", "assets", "prepare", "pretrain", "classifier", "fid-ref", "conditions", "trajectories", "train",
            "evaluate", "verify", "stores", "sample", "preset"]


def test_every_command_has_help(tmp_path):
    top = agd(tmp_path, "--help").stdout
    for command in COMMANDS:
        assert command in top
        assert "Usage" in agd(tmp_path, command, "--help").stdout


def test_dvc_yaml_stages_are_cli_commands():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage.get("do", stage)["cmd"].split()  # foreach stages (prepare, classifier) keep it under do
        assert command[0] == "agd" and command[1] in COMMANDS, name


def test_store_contents_and_attributes(tiny_project):
    store = TrajectoryStore.open(tiny_project / "data" / "trajectories.zarr")
    a = store.attrs
    assert len(store) == 20 and store.is_complete()
    assert store.group["x"].shape == (20, 5, 1, 16, 16)
    assert store.group["target"].shape == (20, 5, 1, 16, 16)
    assert a["scheduler"] == "DDIMScheduler" and a["num_steps"] == 5 and a["w_range"] == [1.0, 5.0]
    assert a["base"]["backend"] == "mnist-dit" and len(a["base"]["fingerprint"]) == 32
    assert a["format_version"] == 1 and a["package_version"]
    assert a["scheduler_config"]["beta_schedule"] == "squaredcos_cap_v2"
    meta = store.meta()
    assert sorted(np.bincount(meta["cond/labels"]).tolist()) == [2] * 10
    assert ((meta["w"] >= 1.0) & (meta["w"] <= 5.0)).all()
    assert len(set(meta["seed"].tolist())) == 20
    conditions = json.loads((tiny_project / "data" / "conditions.json").read_text())
    assert [i["seed"] for i in conditions["items"]] == meta["seed"].tolist()


def test_training_lowered_the_loss_and_reports_size(tiny_project):
    report = json.loads((tiny_project / "reports" / "train.json").read_text())
    assert report["final_loss"] < report["initial_loss"]
    assert report["parameters"] > 0 and 0 < report["percent_of_base"] < 100
    adapters = json.loads((tiny_project / "models" / "adapters" / "adapters.json").read_text())
    assert adapters["architecture"] == "cross_attention"
    assert adapters["base"]["fingerprint"] == TrajectoryStore.open(
        tiny_project / "data" / "trajectories.zarr").attrs["base"]["fingerprint"]
    live = tiny_project / "reports" / "train_live" / "plots" / "metrics" / "loss.tsv"
    assert len(live.read_text().splitlines()) > 2  # dvclive logged the loss curve


def test_metrics_line_up_agd_against_cfg(tiny_project):
    m = json.loads((tiny_project / "reports" / "metrics.json").read_text())
    assert set(m) == {"unguided", "w3", "w6", "default_scale"}
    for key in ("w3", "w6"):
        cfg, agd_m = m[key]["cfg"], m[key]["agd"]
        assert cfg["nfe_per_image"] == 2 * agd_m["nfe_per_image"] == 10
        for method in (cfg, agd_m):
            assert method["fid"] > 0 and 0 <= method["accuracy"] <= 1 and method["seconds_per_image"] > 0
        versus = m[key]["agd_vs_cfg"]
        assert versus["fid_ratio"] == pytest.approx(agd_m["fid"] / cfg["fid"], rel=1e-3)
        assert versus["correction_defined"] and versus["correction_captured"] <= 1
        assert versus["in_training_range"] == (key == "w3")
    assert m["default_scale"]["w"] == 3.0
    grid = Image.open(tiny_project / "reports" / "samples.png")
    assert grid.width > 2 * grid.height  # CFG block | AGD block side by side


def test_sample_command(tiny_project, tmp_path):
    out = tmp_path / "row.png"
    done = agd(tiny_project, "sample", "--labels", "0,1,2", "-w", "3", "--out", str(out))
    assert "3 images" in done.stdout
    image = Image.open(out)
    assert image.size == (48, 16)
    bad = agd(tiny_project, "sample", "--labels", "0,12", check=False)
    assert bad.returncode == 2 and "--labels" in bad.stderr
