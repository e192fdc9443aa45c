"""Stage `train`: fit the adapters so that one pass at guidance scale w reproduces the stored CFG
output (the loop: pipeline.guidance.training). Writes the adapters (train.output), reports/train.json
and the dvclive loss curve; resumes from checkpoints/train.pt."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from pipeline.backends.loading import load_base
from pipeline.config import Params
from pipeline.data.provenance import open_for_training
from pipeline.data.store import TrajectoryStore
from pipeline.guidance import rules
from pipeline.guidance.training import fit
from pipeline.run import devices, distributed, files, preflight
from pipeline.run.progress import log

CHECKPOINT = Path("checkpoints/train.pt")
REPORT = Path("reports/train.json")
LIVE_DIR = Path("reports/train_live")


def run(params: Params) -> None:
    base, traj, p = params.base, params.trajectories, params.train
    preflight.writable_all([("params.yaml: train.output", p.output, "folder"), ("checkpoint", CHECKPOINT, "file"),
                            ("report", REPORT, "file"), ("loss curve", LIVE_DIR, "folder")])
    world = distributed.world()
    family = load_base(**{**base.model_dump(), "device": distributed.local_device(base.device)})
    distributed.init(family.device)
    log(f"train: {family.spec.name} base on {devices.describe(family.device, family.dtype)}, autocast {p.autocast}"
        + (f", rank {world.rank} of {world.size} (DistributedDataParallel)" if world.size > 1 else ""))
    if world.main:  # one rank reads the whole store to check it; the others wait for its verdict
        store = open_for_training(family, traj.output, traj.scheduler, traj.num_steps,
                              rules.recorded(rules.from_params(params.guidance)))
    distributed.barrier()
    if not world.main:
        store = TrajectoryStore.open(Path(traj.output))
    from dvclive import Live

    with contextlib.ExitStack() as stack:
        live = []  # opened once fit knows whether it resumes (the loss curve then continues)

        def on_start(step):
            live.append(stack.enter_context(Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False,
                                                 resume=step > 0)))

        def on_step(step, losses, lr):
            if step % 10 == 0 or step == p.steps:
                live[0].step = step
                live[0].log_metric("loss", sum(losses[-10:]) / len(losses[-10:]))
                live[0].log_metric("lr", lr)
                live[0].next_step()

        adapters, losses, summary = fit(family, store, p, CHECKPOINT, *((on_start, on_step) if world.main else ()))
    distributed.finish()
    if not world.main:  # rank 0 writes the adapters, the report and the loss curve
        return
    adapters.save(Path(p.output))
    first = sum(losses[:20]) / min(len(losses), 20)
    final = sum(losses[-20:]) / min(len(losses), 20)
    # Thread count is recorded because it changes the adapters' last bits (docs/guarantees.md).
    files.write_json(REPORT, {"initial_loss": round(first, 6), "final_loss": round(final, 6), "steps": p.steps,
                              "torch_threads": torch.get_num_threads(), **summary})
    CHECKPOINT.unlink(missing_ok=True)
    log(f"train: loss {first:.5f} -> {final:.5f}; adapters saved to {p.output}")
