"""Opt-in (`pytest -m slow`, ~30 min on 2 CPU cores): models with the real backends' configurations,
randomly initialised and saved with save_pretrained, through every stage of the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dit-xl-2", "sd21", "sdxl"])
def test_real_architecture_runs_every_stage(backend, tmp_path, prepared_data):
    out = tmp_path / "real.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_architectures.py"), "--backends", backend,
                    "--work", str(tmp_path / "work"), "--out", str(out), "--assets", str(prepared_data / "assets")],
                   check=True, timeout=3 * 3600)
    run = json.loads(out.read_text())["runs"][backend]
    assert run["passed"], run["stages"]
    assert [s["stage"] for s in run["stages"]] == ["conditions", "trajectories", "verify", "train", "fid-ref",
                                                  "teacher", "evaluate", "sample"]
    assert 1.5 < run["train_report"]["percent_of_base"] < 3.5  # the paper's ~2 % adapters, at the widths of conf/backend/
