"""Adapter training: the loop that fits adapters to a trajectory store, and the paper's schedule.

Only adapter parameters train (Adam, no weight decay; linear warm-up over the first share of steps,
then cosine annealing), with MSE to the stored CFG target. The base stays frozen in eval mode.
Checkpoints hold adapters, optimizer, RNG, data-order state and step, so a killed run resumes where
it stopped and ends at the configured step count. Several processes (DistributedDataParallel over
the adapters) draw the same global batch and train on their slices of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.backends.family import NEGATIVE
from pipeline.data.background import Prefetcher
from pipeline.data.loader import ShuffleBuffer
from pipeline.data.store import TrajectoryStore
from pipeline.guidance import rules
from pipeline.guidance.adapters import AdapterSet
from pipeline.run import checkpoint, distributed
from pipeline.run.progress import Tracker, log

if TYPE_CHECKING:
    from pipeline.backends.family import Family

AUTOCAST = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fit(family: Family, store: TrajectoryStore, p, checkpoint_path: Path | None, on_start=None, on_step=None,
        label: str = "train", prefetch_depth: int = 2, stats: dict | None = None) -> tuple[AdapterSet, list[float], dict]:
    """Train adapters with settings p (the train section, pipeline.config.TrainParams) on the store;
    resumes from checkpoint_path when it holds this run (None: no checkpoints). on_start(first_step)
    runs before the first step (0 unless resumed), on_step(step, losses, lr) after every step.
    prefetch_depth: batches drawn ahead in a background thread (0: inline); `stats`, when given, receives
    the loop's states per second and seconds spent waiting for data.
    Returns the adapters (attached to family), the loss per step and their size summary."""
    world = distributed.world()
    distributed.check_split(p.batch_size, world.size)  # under a launcher that did not check it
    # a store whose conditions carry negatives (conditions.negative_share > 0) trains adapters that read them
    negatives = any(name.startswith(NEGATIVE) for name in store.cond_names)
    adapters = AdapterSet(family, p.architecture, p.width, p.heads, p.fourier_features, p.seed, p.mlp,
                          p.w_gate, negatives).attach(family)
    adapters.teacher = rules.from_identity(store.attrs.get("guidance"))  # what the store's targets came from
    if p.gradient_checkpointing:
        family.denoiser.enable_gradient_checkpointing()
    summary = adapters.summary()
    log(f"{label}: {p.architecture} adapters on {summary['modules']} modules: {summary['parameters']:,} parameters "
        f"= {summary['percent_of_base']:.2f} % of the base's {summary['base_parameters']:,}")
    opt = torch.optim.Adam(adapters.parameters(), lr=p.lr, weight_decay=0.0)
    # every rank draws the same global batch and trains on its slice; DDP averages the adapters'
    # gradients (the frozen base is not wrapped), so one step is the single-process step
    per_rank = p.batch_size // world.size
    rows = slice(world.rank * per_rank, (world.rank + 1) * per_rank) if world.size > 1 else None
    batches = ShuffleBuffer(store, p.batch_size, p.buffer_trajectories, p.seed, rows)
    model = adapters
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(adapters, device_ids=[family.device] if family.device.type == "cuda" else None)
    torch.manual_seed(p.seed)
    run_id = hashlib.sha256(json.dumps([p.model_dump(), store.attrs.get("conditions_sha256"),
                                        family.fingerprint]).encode()).hexdigest()[:16]
    step, losses = 0, []
    state = checkpoint.load(checkpoint_path) if checkpoint_path is not None else None
    if state is not None and state.get("run_id") == run_id:
        adapters.load_state_dict(state["adapters"])
        opt.load_state_dict(state["opt"])
        batches.restore(state["data"])
        checkpoint.set_rng_state(state["rng"])
        step, losses = state["step"], state["losses"]
        log(f"{label}: resuming from {checkpoint_path} at step {step}")
        written_by = state.get("world_size", 1)
        if written_by != world.size:
            log(f"{label}: the checkpoint was written by {written_by} processes, this run has {world.size}: the "
                f"global batch (train.batch_size {p.batch_size}) and the data order do not depend on the number of "
                "processes, so training continues as it would have (to float tolerance)")
    autocast = AUTOCAST[p.autocast]
    warmup = int(p.warmup_fraction * p.steps)
    if on_start is not None:
        on_start(step)
    first_step, start = step, time.perf_counter()
    # the next batches are drawn and read from the store in a background thread while this step runs
    with Tracker(label, p.steps, start=step) as tracker, Prefetcher(batches, prefetch_depth) as prefetch:
        while step < p.steps:
            lr = warmup_cosine(step, p.steps, warmup, p.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            b = prefetch.next()
            x = torch.from_numpy(b["x"]).to(family.device)
            target = torch.from_numpy(b["target"]).to(family.device)
            t = torch.from_numpy(b["t"]).to(family.device)
            w = torch.from_numpy(b["w"]).to(family.device)
            cond = family.condition_batch({k[5:]: v for k, v in b.items() if k.startswith("cond/")})
            with torch.autocast(family.device.type, dtype=autocast, enabled=autocast is not None):
                out = model(family, x, t, cond, w)
            loss = torch.nn.functional.mse_loss(family.guided_channels(out).float(), family.guided_channels(target).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            adapters.release()
            step += 1
            losses.append(distributed.mean(loss.detach()).item())  # the global batch's loss on every rank
            tracker.advance(1, loss=sum(losses[-20:]) / len(losses[-20:]), lr=lr)
            if on_step is not None:
                on_step(step, losses, lr)
            if checkpoint_path is not None and step % p.checkpoint_every == 0 and step < p.steps and world.main:
                # the buffer state after the last batch consumed, not after the ones prefetched; the
                # same on every rank, so rank 0's checkpoint resumes them all
                checkpoint.save(checkpoint_path, {"run_id": run_id, "adapters": adapters.state_dict(),
                                                  "opt": opt.state_dict(), "data": prefetch.state,
                                                  "rng": checkpoint.rng_state(), "step": step, "losses": losses,
                                                  "world_size": world.size})
    if step > first_step:
        seconds, states = time.perf_counter() - start, (step - first_step) * p.batch_size
        wait, fill = prefetch.wait_s, prefetch.first_wait_s or 0.0
        log(f"{label}: {step - first_step} steps, {states:,} states in {seconds:.1f} s ({states / seconds:,.0f} "
            f"states/s); waited {wait:.1f} s for data ({100 * wait / seconds:.1f} % of training; "
            f"{100 * (wait - fill) / seconds:.1f} % after the first batch, which fills the shuffle buffer)")
        if stats is not None:
            stats.update(seconds=seconds, states_per_s=states / seconds, wait_s=wait, fill_s=fill)
    return adapters, losses, summary


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_fraction: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based): 0 -> peak over warm-up, then cosine to final_fraction * peak."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    floor = final_fraction * peak_lr
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
