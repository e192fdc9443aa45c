"""benchmarks/gpu_smoke.py is not rotten: `--tiny --device cpu` runs every check's code path with tiny
models (the figures need a GPU), writes a line per check and passes what a CPU can judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

# in the script's order; the rest need a GPU to be judged and say so ("skipped: needs CUDA")
CPU_JUDGED = ["fused_adapters", "training_loop", "cli_stages"]
NEEDS_CUDA = ["environment", "training_memory", "ddp_nccl", "sampling_speed", "cuda_graphs", "encoders"]
ORDER = ["environment", "fused_adapters", "training_memory", "training_loop", "ddp_nccl", "sampling_speed",
         "cuda_graphs", "encoders", "cli_stages"]


def test_gpu_smoke_runs_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "gpu" / "smoke.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "AGD_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--tiny", "--device", "cpu",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["check"] for r in records] == ORDER
    for r in records:
        assert isinstance(r["pass"], bool) and r["rule"], r
        assert r["status"] in ("passed", "skipped"), r.get("error") or r
        assert r["summary"], r  # the check ran to its end, skipped or not
    status = {r["check"]: r for r in records}
    for name in CPU_JUDGED:
        assert status[name]["status"] == "passed" and status[name]["pass"], status[name]
    for name in NEEDS_CUDA:
        assert status[name]["status"] == "skipped" and not status[name]["pass"], status[name]
        assert status[name]["skipped"].startswith("needs CUDA"), status[name]
    assert [r["stage"] for r in status["cli_stages"]["stages"]][:2] == ["preset", "check"]
    assert status["training_loop"]["store_loss_after"] < status["training_loop"]["store_loss_before"]
    lines = done.stdout.splitlines()
    assert sum(line.split()[0] in ("PASSED", "SKIPPED") for line in lines if line.strip()) == len(ORDER), done.stdout
    assert "3 passed, 0 failed, 6 skipped" in lines[-1], done.stdout
    assert out.with_suffix(".log").exists()
