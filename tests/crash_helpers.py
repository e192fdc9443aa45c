"""Starting the real CLI as a process of its own, and killing it the moment a condition holds.

The processes come from a fork server that has imported torch, diffusers and the stages once: each
one is a fresh process running `agd COMMAND` (the console script's own code path) that a SIGKILL
ends abruptly, without paying an interpreter's start-up and imports every time.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

PRELOAD = ["torch", "diffusers", "zarr", "pipeline.cli", "pipeline.stages.trajectories", "pipeline.stages.train"]
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run(project: str, command: str) -> None:  # in the child
    os.chdir(project)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    from pipeline.cli import app

    app([command])  # exits with the command's status


class Running:
    """A started command, with the parts of subprocess.Popen the tests use."""

    def __init__(self, process):
        self.process = process

    def poll(self):
        return self.process.exitcode

    def send_signal(self, sig) -> None:
        os.kill(self.process.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()
        self.process.join()


def _spawn(project: Path, command: str) -> Running:
    process = _server().Process(target=_run, args=(str(project), command), daemon=True)
    process.start()
    return Running(process)


def _kill_when(proc: Running, ready, timeout: float = 120) -> bool:
    """SIGKILL proc as soon as ready() holds; False if it finished first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("timed out waiting for the kill point")
