"""Stage `trajectories`: CFG-guided sampling trajectories of the frozen base, into the Zarr store
(or, with `trajectories.data: forward_noised`, the paper's ablation: real images noised to the
sampler's timesteps with CFG's output there, in the same format; pipeline.data.forward_noised).

Resumable: trajectories are made in fixed batches; a re-run skips every finished trajectory
and recomputes only unfinished batches (whole batches, so results do not depend on where a
run was interrupted). A finished trajectory found damaged (a chunk file missing, unreadable or
non-finite) is marked unfinished and written again, alone. A store made with settings that
change its content is set aside (pipeline.data.shelf), never deleted, and taken back when the
settings return to it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline import __version__
from pipeline.backends.family import Family
from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler, noise_levels
from pipeline.config import Params
from pipeline.data import conditions, forward_noised, shelf
from pipeline.data.background import Writer
from pipeline.data.provenance import expected_attrs, mismatches
from pipeline.data.store import StoreLock, TrajectoryStore
from pipeline.guidance import rules
from pipeline.guidance.sampling import cfg_trajectory_arrays
from pipeline.run import devices, distributed, preflight
from pipeline.run.errors import AGDError
from pipeline.run.progress import Tracker, log


def _open_or_set_aside(path: Path, attrs: dict) -> TrajectoryStore | None:
    """The store at `path` if it was made with these settings; otherwise it goes onto the shelf
    and a set-aside store made with these settings (if any) comes back."""
    if (path / "zarr.json").exists():
        try:
            store = TrajectoryStore.open(path, mode="r+")
        except AGDError as err:  # another format version, or truncated: keep it for inspection
            aside = shelf.set_aside(path, shelf.raw_attrs(path), note="unusable")
            log(f"trajectories: {path} cannot be resumed ({err.problem}): set aside as {aside}")
        else:
            stale = mismatches(store.attrs, attrs)
            if not stale:
                return store
            aside = shelf.set_aside(path, store.attrs)
            log(f"trajectories: {path} was made with other {', '.join(stale)}: set aside as {aside} "
                f"({shelf.human_bytes(shelf.disk_use(aside))}; `agd stores` lists set-aside stores)")
    elif path.exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            raise AGDError(f"params.yaml: trajectories.output {path}", "exists and is not a trajectory store",
                           "point trajectories.output at a new path (nothing there is overwritten)")
    taken = shelf.take_back(path, lambda a: not mismatches(a, attrs))
    if taken is None:
        return None
    log(f"trajectories: took back the set-aside store {taken}, made with these settings")
    return TrajectoryStore.open(path, mode="r+")


def _repair(store: TrajectoryStore) -> None:
    """Mark finished trajectories that cannot be trained on as unfinished, so they are made again;
    remove what interrupted chunk writes left behind."""
    orphans = store.remove_partial_writes()
    if orphans:
        log(f"trajectories: removed {orphans} temporary files of interrupted chunk writes")
    with Tracker("trajectories: checking finished trajectories", int(store.done().sum())) as tracker:
        damaged = store.damaged(progress=tracker.advance)
    if damaged:
        listed = "; ".join(f"{i}: {why}" for i, why in list(damaged.items())[:5])
        log(f"trajectories: {len(damaged)} finished trajectories damaged ({listed}"
            f"{' ...' if len(damaged) > 5 else ''}): writing them again")
        store.unmark(sorted(damaged))


def _prepare(path: Path, family: Family, p, attrs: dict, extra: dict, w_all, seeds, cond_all, world) -> None:
    """Rank 0 (or the only process): the store opened, repaired or created, before any rank writes."""
    store = _open_or_set_aside(path, attrs)
    if store is not None:
        if world.size > 1 and not store.mask_per_trajectory():
            raise AGDError(str(path), "its completion mask is one chunk (a store made before multi-process "
                           "collection), which several processes cannot share",
                           "finish it with launch.nproc: 1, or move it away to collect a new one")
        _repair(store)
        return
    scheduler = family_scheduler(family, p.scheduler, p.num_steps)
    x_shape = family.latent_shape
    out_channels = family.denoiser.config.out_channels
    TrajectoryStore.create(path, {**attrs, **extra, "created_by": f"agd {__version__}"}, p.num_steps,
                           x_shape, (out_channels, *x_shape[1:]), scheduler.timesteps.numpy(), w_all, seeds, cond_all)


def run(params: Params) -> None:
    base, p = params.base, params.trajectories
    rule = rules.from_params(params.guidance)
    if p.data == "forward_noised":
        forward_noised.require_backend(base.backend)
        if rule != rules.PLAIN:  # its states are real images noised, not a run of the sampler
            raise AGDError("params.yaml: guidance.rule", f"{rule.name} with trajectories.data: forward_noised: the "
                           "ablation's targets are plain CFG at noised real images, with no sampling run for a rule's "
                           "steps and state", "use guidance.rule: cfg with forward_noised, or trajectories.data: "
                           "trajectories")
    cond_doc = conditions.read()
    world = distributed.world()
    family = load_base(**{**base.model_dump(), "device": distributed.local_device(base.device)})
    distributed.init(family.device)
    if params.sample.compile:
        family.compile()
    if cond_doc["backend"] != family.spec.name:
        raise AGDError(str(conditions.CONDITIONS_FILE), f"made for backend {cond_doc['backend']}",
                       "re-run `agd conditions` after changing base.backend")
    items = cond_doc["items"]
    n = len(items)
    w_all = np.array([i["w"] for i in items], np.float32)
    seeds = np.array([i["seed"] for i in items], np.int64)
    cond_all = family.with_negatives(items, family.condition_arrays(items))  # negative_* arrays: CFG's 2nd branch
    images = forward_noised.training_images(family, items) if p.data == "forward_noised" else None
    family.release_text_encoders()  # every prompt is encoded: from here on only the denoiser runs
    attrs = expected_attrs(family, p.scheduler, p.num_steps, p.data, cond_doc, rules.recorded(rule))
    extra = {"captions": [i["caption"] for i in items]} if cond_doc["condition"] == "text" else {}
    if "negatives" in cond_doc:  # share, seed, source and count of the negative conditions (cond/negative_*)
        extra["negatives"] = cond_doc["negatives"]
    guided = rules.guided_steps(rule, noise_levels(family_scheduler(family, p.scheduler, p.num_steps)))
    if not any(guided):
        raise AGDError("params.yaml: guidance.interval", f"{list(params.guidance.interval)} holds none of the "
                       f"sampler's {p.num_steps} noise levels: the teacher would never guide",
                       "widen the band (sigma runs from about 0.03 to 15 on the embedded default)")
    if not all(guided):  # the training loader draws its states from these steps only
        extra["guided_steps"] = guided
    path = Path(p.output)
    preflight.writable(path, "params.yaml: trajectories.output", "folder")
    log(f"trajectories: {family.spec.name} base on {devices.describe(family.device, family.dtype)}"
        + (f", rank {world.rank} of {world.size}" if world.size > 1 else ""))
    with StoreLock(path, world.rank):
        if world.main:
            _prepare(path, family, p, attrs, extra, w_all, seeds, cond_all, world)
        distributed.barrier()  # the other ranks open the store rank 0 has made ready
        store = TrajectoryStore.open(path, mode="r+")
        done = store.done()
        # this rank's share: every world.size-th batch of the single-process order, so each trajectory
        # is made in the same batch as by one process, and the store's bytes do not depend on world.size
        own = [range(s, min(s + p.batch_size, n)) for s in range(0, n, p.batch_size)][world.rank::world.size]
        own_done = done[[i for b in own for i in b]]
        todo = [b for b in own if not done[list(b)].all()]
        log(f"trajectories: {int(done.sum())}/{n} finished in {path}; {int((~done).sum())} to make "
            f"({p.data}, {p.scheduler}, {p.num_steps} steps, batches of {p.batch_size})"
            + (f"; this rank makes {int((~own_done).sum())} of them" if world.size > 1 else ""))
        noiser = family_scheduler(family, p.scheduler, p.num_steps)  # its timesteps and noise levels, once
        made, start = 0, time.perf_counter()
        # chunks are compressed and written in a background thread while the next batch samples
        label = f"trajectories (rank {world.rank})" if world.size > 1 else "trajectories"
        with Tracker(label, len(own_done), start=int(own_done.sum())) as tracker, Writer(store) as writer:
            for batch in todo:
                idx = list(batch)
                cond = family.condition_batch({k: v[idx] for k, v in cond_all.items()})
                w = torch.from_numpy(w_all[idx])
                if images is None:
                    arrays = cfg_trajectory_arrays(family, cond, seeds[idx], w, p.scheduler, p.num_steps, rule)
                else:
                    arrays = forward_noised.states_and_targets(family, noiser, torch.from_numpy(images[idx]),
                                                               cond, seeds[idx], w)
                missing = [row for row, i in enumerate(idx) if not done[i]]
                writer.write([idx[r] for r in missing], {k: v[missing] for k, v in arrays.items()})
                made += len(missing)
                tracker.advance(len(missing))
        if made:
            seconds, states = time.perf_counter() - start, made * p.num_steps
            log(f"trajectories: {made} trajectories, {states:,} states in {seconds:.1f} s ({states / seconds:,.0f} "
                f"states/s); writing took {writer.busy_s:.1f} s beside the sampler, which waited {writer.wait_s:.1f} s "
                f"for it ({100 * writer.wait_s / seconds:.1f} % of the collection)")
        distributed.barrier()
    distributed.finish()
    if not world.main:
        return
    if not TrajectoryStore.open(path).is_complete():
        raise AGDError(str(path), "unfinished after every rank ended", "run `agd trajectories` again: it resumes")
    log(f"trajectories: store complete: {path}")
    aside = shelf.stores(path)
    if aside:
        total = sum(shelf.disk_use(folder) for folder, _ in aside)
        log(f"trajectories: {len(aside)} set-aside stores use {shelf.human_bytes(total)} "
            "(`agd stores` lists them, `agd stores --prune` deletes them)")
