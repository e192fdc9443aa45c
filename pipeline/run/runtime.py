"""Process set-up before torch work: threads (AGD_THREADS), offline hub, quiet library logging.

Threads on a shared machine. torch runs one compute thread per core by default; two or three
`agd` processes on one machine (a `dvc exp run` beside a `dvc repro` of another checkout) then run
two or three times as many spinning threads as there are cores, and each slows many times over
(benchmarks/shared_machine.py measures it). So, unless AGD_THREADS
fixes the count, every `agd` process registers itself (a file per process id under the temp
folder) and takes its share: usable cores // running `agd` processes, at least one. Long loops
re-check the share every few seconds (`rebalance`, called by the progress tracker), so a process
that started alone gives threads back when others start, and takes them back when they end.
AGD_THREADS=N fixes N threads and turns this off (tests and bit-for-bit comparisons: the thread
count changes the last bits of float sums).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

REGISTRY = Path(tempfile.gettempdir()) / f"agd-processes-{os.getuid()}"
RECHECK_S = 5.0
_state = {"fixed": None, "threads": None, "checked": 0.0, "registered": False}


def setup() -> None:
    """Idempotent; every `agd` command runs it before its first model (the experiment stages only once
    they are on, so that when off they return without importing torch)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here; without it a hub id retries ~24 s
    _keep_freed_memory()
    import torch

    fixed = os.environ.get("AGD_THREADS")
    if fixed:
        _state["fixed"] = int(fixed)
        torch.set_num_threads(int(fixed))
    else:
        _register()
        rebalance(force=True)
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def _keep_freed_memory() -> None:
    """glibc returns large freed blocks to the system at once (mmap), so every forward pass of a
    batch gets fresh pages and pays a page fault per 4 KiB on first touch, a large share of a CPU
    sampling step at large batches. Keep blocks up to 256 MiB in the heap for reuse, and
    trim it only past 1 GiB free. Nothing changes but speed; other C libraries are left alone."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where unknown: with the id it
    names a process uniquely, so an entry left by a killed process is not mistaken for a new one
    that got its id."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that id: not an agd process of ours
        return False
    return not started or _start_time(pid) in ("", started)


def _register() -> None:
    if _state["registered"]:
        return
    try:
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / str(os.getpid())).write_text(_start_time(os.getpid()))
        _state["registered"] = True
    except OSError:  # a read-only temp folder: behave as if alone
        return
    import atexit

    atexit.register(lambda: (REGISTRY / str(os.getpid())).unlink(missing_ok=True))


def running_processes() -> int:
    """`agd` processes alive on this machine now (this one included); stale entries are removed."""
    if not _state["registered"]:
        return 1
    count = 0
    for entry in REGISTRY.iterdir():
        try:
            pid = int(entry.name)
        except ValueError:
            continue
        try:
            started = entry.read_text().strip()
        except OSError:
            continue
        if pid == os.getpid() or _alive(pid, started):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(count, 1)


def share(cores: int, processes: int) -> int:
    return max(1, cores // processes)


def rebalance(force: bool = False) -> int | None:
    """Set this process's torch threads to its share, at most every RECHECK_S seconds; returns the
    new count when it changed (None otherwise, and always under AGD_THREADS)."""
    if _state["fixed"] is not None or not _state["registered"]:
        return None
    now = time.monotonic()
    if not force and now - _state["checked"] < RECHECK_S:
        return None
    _state["checked"] = now
    threads = share(usable_cores(), running_processes())
    if threads == _state["threads"]:
        return None
    import torch

    torch.set_num_threads(threads)
    _state["threads"] = threads
    return threads
