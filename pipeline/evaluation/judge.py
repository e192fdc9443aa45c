"""The judge of the embedded default: a small CNN trained on MNIST at the base model's resolution.

It judges class accuracy, and its penultimate features (128-d) are a feature space where Frechet
distance, precision and recall are cheap enough for thousands of samples on a CPU. Its folder
holds the weights and the reference statistics of those features on all MNIST test digits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.run.errors import AGDError

JUDGE = Path("models/judge")
WEIGHTS = JUDGE / "classifier.pt"
REFERENCE = JUDGE / "reference.npz"  # mu, sigma and features of the judge on MNIST test digits


class DigitClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (N, 1, H, W) in [-1, 1] -> logits (N, 10)."""
        return self.head(self.features(x))


def shift_augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translations by up to max_shift pixels (padding with background)."""
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    h, w = x.shape[-2:]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    return pad[..., dy:dy + h, dx:dx + w]


@torch.no_grad()
def features(model: DigitClassifier, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate features (N, 128) of float images in [-1, 1]."""
    model.eval()
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict(model: DigitClassifier, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def load(path: Path = WEIGHTS) -> DigitClassifier:
    if not Path(path).exists():
        raise AGDError(str(path), "classifier weights not found", "run `agd classifier` (dvc repro) first")
    model = DigitClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
