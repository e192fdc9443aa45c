"""Opt-in (`pytest -m slow`, ~15-30 min per backend on 2 CPU cores): models with the real backends'
configurations, randomly initialised and saved with save_pretrained, through every stage of the CLI,
with teacher and evaluate at two sample counts (batches of 1) and the base in the backend file's
dtype (bfloat16)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COUNTS = "2,4"  # evaluate.num_samples of the two teacher + evaluate runs, 2x apart, batches of 1
GROWTH_BOUND_MIB = 256  # allowed growth of each stage's peak resident memory from the first count to the second


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dit-xl-2", "sd21", "sdxl"])
def test_real_architecture_runs_every_stage(backend, tmp_path, prepared_data):
    out = tmp_path / "real.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_architectures.py"), "--backends", backend,
                    "--work", str(tmp_path / "work"), "--out", str(out), "--assets", str(prepared_data / "assets"),
                    "--device", "cpu", "--counts", COUNTS, "--steps", "1,1", "--batch-size", "1"],
                   check=True, timeout=3 * 3600)
    run = json.loads(out.read_text())["runs"][backend]
    assert run["passed"], run["stages"]
    assert [s["stage"] for s in run["stages"]] == ["check", "conditions", "trajectories", "verify", "train", "fid-ref",
                                                  "teacher", "evaluate", "teacher", "evaluate", "sample"]
    assert run["dtype"] == "bfloat16" and "bfloat16" in run["sample_ran_on"], run["sample_ran_on"]
    assert 1.5 < run["train_report"]["percent_of_base"] < 3.5  # the paper's ~2 % adapters, at the widths of conf/backend/
    for stage in ("teacher", "evaluate"):
        growth = run["peak_growth"][stage]
        assert growth["growth_mib"] < GROWTH_BOUND_MIB, f"{stage}: peak {growth['peak_rss_gib']} GiB at " \
            f"{growth['counts']} samples: {growth['growth_mib']} MiB more (bound {GROWTH_BOUND_MIB} MiB)"
