"""`agd stores`: the trajectory store in use and the stores set aside when params changed.

Each line says what a store was made with (backend, base fingerprint, sampler, steps, w range),
how far it got and how much disk it takes, so a user can decide what to keep.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.data import shelf
from pipeline.data.store import TrajectoryStore
from pipeline.run.progress import log


def summary(folder: Path, store: TrajectoryStore | None, size_bytes: int) -> str:
    size = shelf.human_bytes(size_bytes)
    if store is None:
        return f"{folder}: unreadable store, {size}"
    a = store.attrs
    base = a.get("base", {}) or {}
    done = int(store.done().sum())
    return (f"{folder}: {base.get('backend')} base {str(base.get('fingerprint'))[:8]}, {a.get('scheduler')} "
            f"{a.get('num_steps')} steps, w in {a.get('w_range')}, {done}/{len(store)} trajectories finished, {size}")


def run(params: Params, prune: bool = False) -> None:
    output = Path(params.trajectories.output)
    if (output / "zarr.json").exists():
        try:
            current = TrajectoryStore.open(output)
        except Exception:
            current = None
        log("in use (trajectories.output):\n  " + summary(output, current, shelf.disk_use(output)))
    else:
        log(f"in use (trajectories.output): {output} does not exist yet")
    aside = shelf.stores(output)
    if not aside:
        log(f"set aside: none ({shelf.shelf_dir(output)} is empty)")
        return
    sizes = [shelf.disk_use(folder) for folder, _ in aside]
    log(f"set aside ({len(aside)}, {shelf.human_bytes(sum(sizes))} in all; `agd stores --prune` deletes them):")
    for (folder, store), size in zip(aside, sizes):
        log("  " + summary(folder, store, size))
    if prune:
        count, freed = shelf.prune(output)
        log(f"pruned {count} set-aside stores, {shelf.human_bytes(freed)} freed")
