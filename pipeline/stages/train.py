"""Stage `train`: fit the adapters so that one pass at guidance scale w reproduces the stored CFG output.

Only adapter parameters train (Adam, no weight decay; linear warm-up over the first 10 % of
steps, then cosine annealing), with MSE to the stored target. The base stays frozen in eval
mode. Checkpoints hold adapters, optimizer, RNG, data-order state and step, so a killed run
resumes where it stopped and ends at the configured step count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import checkpoint, devices, distributed, preflight
from pipeline.adapters import AdapterSet
from pipeline.background import Prefetcher
from pipeline.backends import DTYPES, load_base
from pipeline.config import load_section
from pipeline.errors import AGDError
from pipeline.loader import ShuffleBuffer
from pipeline.progress import Tracker, log
from pipeline.schedule import warmup_cosine
from pipeline.store import TrajectoryStore
from pipeline.stages.trajectories import mismatches

CHECKPOINT = Path("checkpoints/train.pt")
REPORT = Path("reports/train.json")
LIVE_DIR = Path("reports/train_live")


def open_store_for(family, traj_params) -> TrajectoryStore:
    """The store, refused if unfinished or made by another base or sampler configuration."""
    store = TrajectoryStore.open(Path(traj_params.output))
    if not store.is_complete():
        missing = int((~store.done()).sum())
        raise AGDError(traj_params.output, f"{missing} of {len(store)} trajectories unfinished",
                       "run `agd trajectories` (dvc repro) to complete it")
    expected = {"base": family.identity(), "scheduler": traj_params.scheduler, "num_steps": traj_params.num_steps}
    stale = mismatches(store.attrs, expected, keys=("scheduler", "num_steps"))
    if store.attrs.get("base", {}).get("fingerprint") != family.fingerprint:
        stale.insert(0, "base model")
    if stale:
        raise AGDError(traj_params.output, f"made with another {', '.join(stale)} than params.yaml names",
                       "re-run `agd trajectories` (dvc repro) for this base and sampler")
    # Read every trajectory once before the first step (a minute for the largest paper store, against
    # hours of training): a missing, unreadable or non-finite chunk is refused now, not at the step
    # that happens to draw it, and never trained on.
    with Tracker("train: checking the store", len(store)) as tracker:
        damaged = store.damaged(progress=tracker.advance)
    if damaged:
        first = min(damaged)
        raise AGDError(f"{traj_params.output} trajectory {first}",
                       f"{damaged[first]}" + (f" ({len(damaged) - 1} more damaged)" if len(damaged) > 1 else ""),
                       "run `agd trajectories` (or dvc repro): it writes only the damaged trajectories again")
    return store


def fit(family, store: TrajectoryStore, p, checkpoint_path: Path | None = CHECKPOINT, on_start=None, on_step=None,
        label: str = "train", prefetch_depth: int = 2, stats: dict | None = None) -> tuple[AdapterSet, list[float], dict]:
    """Train adapters with settings p (TrainParams) on the store; resumes from checkpoint_path when it
    holds this run (None: no checkpoints). on_start(first_step) runs before the first step (0 unless
    resumed), on_step(step, losses, lr) after every step.
    prefetch_depth: batches drawn ahead in a background thread (0: inline); `stats`, when given, receives
    the loop's states per second and seconds spent waiting for data.
    Returns the adapters (attached to family), the loss per step and their size summary."""
    world = distributed.world()
    distributed.check_split(p.batch_size, world.size)  # under a launcher that did not check it
    adapters = AdapterSet(family, p.architecture, p.width, p.heads, p.fourier_features, p.seed, p.mlp,
                          p.w_gate).attach(family)
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
    run_id = hashlib.sha256(json.dumps([asdict(p), store.attrs.get("conditions_sha256"),
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
    autocast = DTYPES.get(p.autocast) if p.autocast != "none" else None
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
            loss = F.mse_loss(family.guided_channels(out).float(), family.guided_channels(target).float())
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


def run() -> None:
    base, traj, p = load_section("base"), load_section("trajectories"), load_section("train")
    preflight.writable_all([("params.yaml: train.output", p.output, "folder"), ("checkpoint", CHECKPOINT, "file"),
                            ("report", REPORT, "file"), ("loss curve", LIVE_DIR, "folder")])
    world = distributed.world()
    family = load_base(**{**asdict(base), "device": distributed.local_device(base.device)})
    distributed.init(family.device)
    log(f"train: {family.spec.name} base on {devices.describe(family.device, family.dtype)}, autocast {p.autocast}"
        + (f", rank {world.rank} of {world.size} (DistributedDataParallel)" if world.size > 1 else ""))
    if world.main:  # one rank reads the whole store to check it; the others wait for its verdict
        store = open_store_for(family, traj)
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
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    # Thread count is recorded because it changes the adapters' last bits (README: guarantees).
    REPORT.write_text(json.dumps({"initial_loss": round(first, 6), "final_loss": round(final, 6), "steps": p.steps,
                                  "torch_threads": torch.get_num_threads(), **summary}, indent=2) + "\n")
    CHECKPOINT.unlink(missing_ok=True)
    log(f"train: loss {first:.5f} -> {final:.5f}; adapters saved to {p.output}")
