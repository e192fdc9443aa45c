"""How long DVC takes to hash a folder dependency like ImageNet train (1.28 M files, ~140 GB), by
extrapolation from a folder of N files of ImageNet's mean size:

    python benchmarks/dvc_hashing.py [--files 10000] [--kb 110]

Times `dvc status` on a stage that depends on the folder twice: the first hashes every file (md5 of
its bytes), the second finds the hashes in DVC's state database (a stat per file). Prints both, per
file and per GB, and the projection to 1.28 M files of 110 KB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGENET_FILES, IMAGENET_GB = 1_281_167, 140.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--kb", type=int, default=110, help="size of each file (ImageNet's JPEGs average ~110 KB)")
    args = ap.parse_args()
    dvc = str(Path(sys.executable).parent / "dvc")
    root = Path(tempfile.mkdtemp(prefix="agd-dvc-hash-"))
    try:
        folder = root / "images"
        for d in range(args.files // 1000 + 1):  # ImageNet's layout: one folder per class
            (folder / f"n{d:08d}").mkdir(parents=True)
        for i in range(args.files):
            (folder / f"n{i // 1000:08d}" / f"{i:08d}.JPEG").write_bytes(os.urandom(args.kb * 1024))
        (root / "dvc.yaml").write_text("stages:\n  ref:\n    cmd: echo\n    deps:\n      - images\n")
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True, env=env)
        gb = args.files * args.kb / 1024 ** 2
        for label in ("first (hashes every file)", "again (hash cache)"):
            t0 = time.perf_counter()
            subprocess.run([dvc, "status"], cwd=root, check=True, env=env, capture_output=True)
            s = time.perf_counter() - t0
            per_file = s / args.files
            print(f"dvc status, {label}: {s:.1f} s for {args.files:,} files ({gb:.2f} GB): "
                  f"{1e3 * per_file:.3f} ms per file, {s / gb:.1f} s per GB; ImageNet train projected "
                  f"{per_file * IMAGENET_FILES / 60:.1f} min by files, {s / gb * IMAGENET_GB / 60:.1f} min by bytes")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
