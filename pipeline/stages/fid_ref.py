"""Stage `fid_ref`: FID reference statistics, computed once: MNIST test digits for the embedded
default, a folder of real images for the real backends (ImageNet train, COCO-2017 val).

In bounded memory whatever the count: features are made in chunks (clean-fid's reader, with
`fid_ref.num_workers` processes reading and resizing files) and folded into float64 moments
(pipeline.evaluation.fid.Moments); only the kept features for KID and precision/recall are held.
Under `launch.nproc` the chunks are shared out over the processes, each writes its moments beside
the reference, and rank 0 merges them: the same statistics as one process, to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data import mnist
from pipeline.evaluation import fid
from pipeline.run import devices, distributed, files, preflight
from pipeline.run.progress import Tracker, log

FOLDER_CHUNK = 10_000  # files per unit of work: one reader start per chunk, 80 MB of features
FEATURES = 2048


def _part(rank: int) -> Path:
    return fid.REFERENCE.with_name(f"{fid.REFERENCE.stem}.rank{rank}.npz")


def run(params: Params, data_dir: Path = Path("data")) -> None:
    p = params.fid_ref
    world = distributed.world()
    if world.main:
        preflight.writable(fid.REFERENCE, "FID reference statistics")
    device = devices.resolve(distributed.local_device(params.base.device))
    distributed.init(device)
    log(f"fid_ref: Inception-v3 on {devices.describe(device, torch.float32)}"
        + (f", rank {world.rank} of {world.size}" if world.size > 1 else ""))
    extractor = fid.InceptionFeatures(fid.WEIGHTS).to(device)
    if p.image_folder:
        paths = fid.folder_files(Path(p.image_folder), p.num_images or None)
        count, source, chunk = len(paths), p.image_folder, FOLDER_CHUNK

        def features_of(rows: range) -> np.ndarray:
            return fid.files_features(paths[rows.start:rows.stop], extractor, p.batch_size, device, p.num_workers)
    else:
        images, _ = mnist.load_split(data_dir, "test")
        count = min(p.num_images or len(images), len(images))
        source, chunk = f"MNIST test[:{count}]", 20 * p.batch_size

        def features_of(rows: range) -> np.ndarray:
            return fid.image_features(images[rows.start:rows.stop], extractor, p.batch_size, device)

    keep = fid.kept_rows(count, p.features_kept)
    chunk = max(1, min(chunk, -(-count // world.size)))  # every rank gets work, however few the images
    own = [range(s, min(s + chunk, count)) for s in range(0, count, chunk)][world.rank::world.size]
    moments, kept_at, kept = fid.Moments(FEATURES), [], []
    with Tracker(f"fid_ref ({source})", sum(len(r) for r in own)) as tracker:
        for rows in own:
            features = features_of(rows)
            moments.add(features)
            chosen = keep[(keep >= rows.start) & (keep < rows.stop)]
            kept_at.append(chosen)
            kept.append(features[chosen - rows.start])
            tracker.advance(len(rows))
    kept_at = np.concatenate(kept_at) if kept_at else np.zeros(0, np.int64)
    kept = np.concatenate(kept) if kept else np.zeros((0, FEATURES), np.float32)
    if world.size > 1:
        with files.atomic(_part(world.rank)) as tmp:
            np.savez(tmp, n=moments.n, mean=moments.mean, m2=moments.m2, kept_at=kept_at, kept=kept)
        distributed.barrier()
        distributed.finish()
        if not world.main:
            return
        moments, kept_at, kept = fid.Moments(FEATURES), [kept_at], [kept]
        for rank in range(world.size):
            with np.load(_part(rank)) as part:
                moments.merge(int(part["n"]), part["mean"], part["m2"])
                if rank:
                    kept_at.append(part["kept_at"])
                    kept.append(part["kept"])
            _part(rank).unlink()
        kept_at, kept = np.concatenate(kept_at), np.concatenate(kept)
    fid.write_reference(fid.REFERENCE, moments, kept[np.argsort(kept_at, kind="stable")])
    log(f"fid_ref: statistics of {moments.n} images ({source}) -> {fid.REFERENCE}")
