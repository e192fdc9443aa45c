"""Collection and training throughput, with the store I/O inline and in the background.

    python benchmarks/data_throughput.py [--threads 2] [--trajectories 128] [--train-steps 300]

Collection: CFG trajectories of the first `--trajectories` conditions of data/conditions.json
(the trajectories stage's sampler and batch size from params.yaml) into a fresh store in a temp
folder, written inline (depth 0, as before) and by the background writer (pipeline.data.background).
Training: `--train-steps` steps of the train stage's loop (pipeline.guidance.training.fit, params.yaml's train
section) on data/trajectories.zarr, batches drawn inline and prefetched. Prints trajectory
states per second and the share of the time the compute waited on the store, for each; for
training also without the first batch, which waits for the shuffle buffer's initial fill
(train.buffer_trajectories whole trajectories read before any step can start; in the default's
1,000 steps it is a small share, in this benchmark's 300 a larger one).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.run import runtime  # noqa: E402


def collection(family, p, items, depth: int, folder: Path) -> tuple[float, float]:
    import torch

    from pipeline.backends.schedulers import family_scheduler
    from pipeline.data.background import Writer
    from pipeline.data.store import TrajectoryStore
    from pipeline.guidance.sampling import cfg_trajectory_arrays

    n = len(items)
    w_all = np.array([i["w"] for i in items], np.float32)
    seeds = np.array([i["seed"] for i in items], np.int64)
    cond_all = family.condition_arrays(items)
    scheduler = family_scheduler(family, p.scheduler, p.num_steps)
    shape = family.latent_shape
    store = TrajectoryStore.create(folder / f"depth{depth}.zarr", {"benchmark": True}, p.num_steps, shape,
                                   (family.denoiser.config.out_channels, *shape[1:]), scheduler.timesteps.numpy(),
                                   w_all, seeds, cond_all)
    start = time.perf_counter()
    with Writer(store, depth) as writer:
        for s in range(0, n, p.batch_size):
            idx = list(range(s, min(s + p.batch_size, n)))
            cond = family.condition_batch({k: v[idx] for k, v in cond_all.items()})
            arrays = cfg_trajectory_arrays(family, cond, seeds[idx], torch.from_numpy(w_all[idx]), p.scheduler, p.num_steps)
            writer.write(idx, arrays)
    seconds = time.perf_counter() - start
    return n * p.num_steps / seconds, writer.wait_s / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trajectories", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    os.environ["AGD_THREADS"] = str(args.threads)
    runtime.setup()

    from pipeline import config
    from pipeline.backends.loading import load_base
    from pipeline.data import conditions as conditions_file
    from pipeline.data.store import TrajectoryStore
    from pipeline.guidance.training import fit

    params = config.load()
    base, traj, train_p = params.base, params.trajectories, params.train
    family = load_base(**base.model_dump())
    items = conditions_file.read()["items"][: args.trajectories]
    print(f"threads {args.threads}; collection: {len(items)} trajectories x {traj.num_steps} steps, "
          f"batches of {traj.batch_size}; training: {args.train_steps} steps of {train_p.batch_size} states")
    print(f"{'':<12} {'store I/O':<11} {'states/s':>9} {'waiting':>8} {'after 1st':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for depth in (0, 2) if items else ():
            rate, wait = collection(family, traj, items, depth, Path(folder))
            print(f"{'collection':<12} {'background' if depth else 'inline':<11} {rate:>9.0f} {100 * wait:>7.1f}%",
                  flush=True)
    store = TrajectoryStore.open(Path(traj.output))
    p = train_p.replace(steps=args.train_steps)
    for depth in (0, 2):
        stats: dict = {}
        adapters, _, _ = fit(family, store, p, checkpoint_path=None, label="benchmark", prefetch_depth=depth,
                             stats=stats)
        adapters.detach()
        print(f"{'training':<12} {'prefetch' if depth else 'inline':<11} {stats['states_per_s']:>9.0f} "
              f"{100 * stats['wait_s'] / stats['seconds']:>7.1f}% "
              f"{100 * (stats['wait_s'] - stats['fill_s']) / stats['seconds']:>8.1f}%", flush=True)


if __name__ == "__main__":
    main()
