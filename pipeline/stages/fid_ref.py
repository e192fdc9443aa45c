"""Stage `fid_ref`: FID reference statistics, computed once: MNIST test digits for the embedded
default, a folder of real images for the real backends (ImageNet train, COCO-2017 val)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import fid, mnist
from pipeline import preflight
from pipeline.config import load_section
from pipeline.progress import log
from pipeline.stages.evaluate import FID_REF, INCEPTION


def run(data_dir: Path = Path("data")) -> None:
    p = load_section("fid_ref")
    preflight.writable(FID_REF, "FID reference statistics")
    extractor = fid.InceptionFeatures(INCEPTION)
    if p.image_folder:
        features = fid.folder_features(Path(p.image_folder), extractor, p.batch_size)
        source = p.image_folder
    else:
        images, _ = mnist.load_split(data_dir, "test")
        features = fid.image_features(images[: p.num_images], extractor, p.batch_size)
        source = f"MNIST test[:{p.num_images}]"
    stats = fid.statistics(features)
    FID_REF.parent.mkdir(parents=True, exist_ok=True)
    part = FID_REF.with_name("fid_ref.part.npz")
    np.savez(part, mu=stats["mu"], sigma=stats["sigma"], count=len(features))
    part.replace(FID_REF)
    log(f"fid_ref: statistics of {len(features)} images ({source}) -> {FID_REF}")
