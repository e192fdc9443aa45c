"""Stage `fid_ref`: FID reference statistics, computed once: MNIST test digits for the embedded
default, a folder of real images for the real backends (ImageNet train, COCO-2017 val)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Params
from pipeline.data import mnist
from pipeline.evaluation import fid
from pipeline.run import devices, preflight
from pipeline.run.progress import log


def run(params: Params, data_dir: Path = Path("data")) -> None:
    p = params.fid_ref
    preflight.writable(fid.REFERENCE, "FID reference statistics")
    device = devices.resolve(params.base.device)
    log(f"fid_ref: Inception-v3 on {devices.describe(device, torch.float32)}")
    extractor = fid.InceptionFeatures(fid.WEIGHTS).to(device)
    if p.image_folder:
        features = fid.folder_features(Path(p.image_folder), extractor, p.batch_size, device, p.num_images or None)
        source = p.image_folder
    else:
        images, _ = mnist.load_split(data_dir, "test")
        count = p.num_images or len(images)
        features = fid.image_features(images[:count], extractor, p.batch_size, device)
        source = f"MNIST test[:{count}]"
    fid.save_reference(fid.REFERENCE, features, keep=p.features_kept)
    log(f"fid_ref: statistics of {len(features)} images ({source}) -> {fid.REFERENCE}")
