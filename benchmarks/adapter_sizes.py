"""Adapter parameter counts and their share of each real backend, at the adapter widths of conf/backend/.

    python benchmarks/adapter_sizes.py

Models are built on the meta device: real shapes, no weights, no memory, no hub.
"""

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.real_shapes import BUILDERS  # noqa: E402
from pipeline.config.compose import compose  # noqa: E402
from pipeline.guidance.adapters import AdapterSet  # noqa: E402


def main():
    root = Path(__file__).resolve().parents[1]
    print(f"{'backend':10} {'architecture':16} {'width':>5} {'modules':>7} {'adapter params':>15} {'base params':>15} {'%':>6}")
    for name, build in BUILDERS.items():
        train = yaml.safe_load(compose([f"backend={name}"], conf=root / "conf"))["train"]
        with torch.device("meta"):
            family = build()
            for architecture in ("cross_attention", "offset"):
                s = AdapterSet(family, architecture, train["width"], train["heads"], train.get("fourier_features", 32)).summary()
                print(f"{name:10} {architecture:16} {train['width']:>5} {s['modules']:>7} {s['parameters']:>15,} "
                      f"{s['base_parameters']:>15,} {s['percent_of_base']:>6.2f}")


if __name__ == "__main__":
    main()
