"""Several processes per stage, started by the standard launchers (torchrun, `accelerate launch`, srun).

`launch.nproc: N` (params.yaml) makes `agd trajectories` and `agd train` start themselves under
`torchrun --standalone --nproc-per-node N` on this machine; under a launcher already (RANK and
WORLD_SIZE set, as torchrun and accelerate set them) they run as the rank they are. One process
(N = 1, no launcher) is the plain path and needs no process group.

What each stage shares out:
- trajectories: rank r makes the collection batches b with b % world == r, the same batches a single
  process makes, and writes only their chunk files and completion-mask entries (one mask chunk per
  trajectory), so the store is byte for byte the single-process store. Rank 0 creates or repairs
  the store while the others wait.
- train: every rank draws the same global batch (train.batch_size) from the same shuffle-buffer
  state and trains on its own slice of it; DistributedDataParallel averages the adapters' gradients,
  so the adapters match a single process's (float tolerance) whatever the world size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from pipeline.run.errors import AGDError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the launcher's environment (one process when there is none)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise AGDError("RANK / WORLD_SIZE / LOCAL_RANK", "not integers", "start the stage with torchrun") from None


def under_launcher() -> bool:
    return "WORLD_SIZE" in os.environ


def relaunch(stage: str, nproc: int) -> int | None:
    """Run `agd <stage>` under torchrun with nproc processes on this machine, when launch.nproc asks
    for more than one and no launcher started this process; returns its exit code (None: run here)."""
    if nproc <= 1 or under_launcher():
        return None
    from pipeline.run.progress import log

    log(f"{stage}: starting {nproc} processes (launch.nproc) with torchrun --standalone")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pipeline.cli", stage]
    return subprocess.run(command).returncode


def check_split(batch_size: int, nproc: int) -> None:
    """Training splits its global batch evenly over the processes: refuse a count that cannot."""
    if batch_size % nproc:
        raise AGDError("params.yaml: train.batch_size", f"the global batch {batch_size} does not split evenly over "
                       f"{nproc} processes (launch.nproc)", f"use a multiple of {nproc} (or another launch.nproc)")


def init(device) -> None:
    """Join the launcher's process group: NCCL between GPUs, gloo on the CPU. A no-op for one process."""
    w = world()
    if w.size == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from datetime import timedelta

        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)  # NCCL's collectives run on this rank's own GPU

        # rank 0 may check a whole store before the others start: a long barrier timeout
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=3),
                                device_id=device if device.type == "cuda" else None)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(name: str) -> str:
    """base.device for this rank: `auto` and `cuda` mean the launcher's local GPU (LOCAL_RANK)."""
    w = world()
    if w.size > 1 and name in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{w.local_rank}"
    return name


def mean(value):
    """The mean of a tensor over the ranks (itself for one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value
