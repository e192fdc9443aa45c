"""Threads on a shared machine: each `agd` process takes its share of the cores unless AGD_THREADS fixes it."""

import os
import subprocess
import sys

import torch

from pipeline.run import runtime


def test_each_agd_process_takes_its_share_of_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "REGISTRY", tmp_path)
    monkeypatch.setattr(runtime, "_state", {"fixed": None, "threads": None, "checked": 0.0, "registered": False})
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        runtime._register()
        assert runtime.running_processes() == 1 and runtime.rebalance(force=True) == 4
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True)
        (tmp_path / finished.stdout.strip()).touch()  # a process that ended without unregistering
        (tmp_path / str(os.getppid())).touch()  # a live one
        assert runtime.running_processes() == 2
        assert not (tmp_path / finished.stdout.strip()).exists(), "a stale entry was kept"
        assert runtime.rebalance() is None  # re-checked only every RECHECK_S seconds
        assert runtime.rebalance(force=True) == 2 and torch.get_num_threads() == 2
        (tmp_path / "1").touch()  # init: always alive
        assert runtime.rebalance(force=True) == 1  # 4 cores // 3 processes
        (tmp_path / "1").write_text("12345")  # an entry of a killed process whose id was given to another
        assert runtime.rebalance(force=True) == 2 and not (tmp_path / "1").exists()
        (tmp_path / str(os.getppid())).unlink()
        assert runtime.rebalance(force=True) == 4  # the others ended: threads come back
    finally:
        torch.set_num_threads(before)
    assert runtime.share(2, 3) == 1 and runtime.share(16, 3) == 5


def test_agd_threads_fixes_the_count(monkeypatch):
    monkeypatch.setattr(runtime, "_state", {"fixed": None, "threads": None, "checked": 0.0, "registered": False})
    monkeypatch.setenv("AGD_THREADS", "1")
    runtime.setup()
    assert torch.get_num_threads() == 1
    assert runtime.rebalance(force=True) is None  # never changed under AGD_THREADS
