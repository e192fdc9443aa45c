"""Forward-noised training data: the paper's ablation against sampling trajectories.

Instead of the states a CFG sampler visits, real training images of the condition's class are
noised to each of the sampler's timesteps, x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps
(the model's input in every scheduler's convention), and CFG's output at those states is the
target. The trajectory store holds them in its own format (one "trajectory" per condition: one
image, fresh noise at every step), so training reads either without knowing which it is.

Where the images come from, by backend:
- the embedded default: MNIST training digits (data/mnist.npz), one of the condition's class,
  chosen by the condition's seed;
- the real backends: not built. Their real images (fid_ref.image_folder) carry no condition to pair
  an image with (ImageNet class folders, COCO captions by image id would); the stage refuses
  `trajectories.data: forward_noised` for them with that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.backends import EMBEDDED
from pipeline.backends.schedulers import noise_levels, seeded_generators
from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.backends.family import Family


def require_backend(backend: str) -> None:
    """Refuse forward-noised data where no paired training images exist (before a model loads)."""
    if backend != EMBEDDED:
        raise AGDError("params.yaml: trajectories.data", f"forward_noised is built for the embedded default only, "
                       f"not {backend}: its real images carry no condition to pair them with",
                       "use trajectories.data: trajectories")


def training_images(family: Family, items: list[dict], data_dir: Path = Path("data")) -> np.ndarray:
    """One real training image per condition item, in the model's space: (N, C, H, W) float32."""
    require_backend(family.spec.name)
    from pipeline.data import mnist

    path = data_dir / "mnist.npz"
    if not path.exists():
        raise AGDError(str(path), "not found (forward-noised data noises MNIST training digits)", "run `agd prepare`")
    images, labels = mnist.load_split(data_dir, "train")
    if images.shape[1:] != family.latent_shape[1:]:
        raise AGDError(str(path), f"digits of {images.shape[1:]} pixels, the base model takes {family.latent_shape[1:]}",
                       "set prepare.resolution to the base model's sample size and run `agd prepare`")
    by_class = {c: np.flatnonzero(labels == c) for c in range(10)}
    chosen = [np.random.default_rng(int(item["seed"])).choice(by_class[int(item["label"])]) for item in items]
    return mnist.to_model_space(images[chosen]).numpy()


def noised_states(scheduler, x0: torch.Tensor, seeds) -> torch.Tensor:
    """x0 (B, C, H, W) noised to every sampler step: (B, S, C, H, W), the noise drawn from each
    sample's own seed (independent of batch and device, like the sampler's)."""
    sigmas = torch.as_tensor(noise_levels(scheduler), dtype=torch.float32)
    noise = torch.stack([torch.randn((len(sigmas), *x0.shape[1:]), generator=g) for g in seeded_generators(seeds)])
    sigma = sigmas.view(1, -1, 1, 1, 1)
    # x0 + sigma eps is the variance-exploding state; over sqrt(1 + sigma^2) it is the model's input
    return (x0.unsqueeze(1).cpu().float() + sigma * noise) / torch.sqrt(1 + sigma ** 2)


@torch.no_grad()
def states_and_targets(family: Family, scheduler, x0: torch.Tensor, cond: dict, seeds, w: torch.Tensor) -> dict[str, np.ndarray]:
    """The store's per-trajectory arrays for a batch: forward-noised inputs and CFG's output there."""
    states = noised_states(scheduler, x0, seeds)
    w = w.to(family.device)
    targets = []
    for s, t in enumerate(scheduler.timesteps):
        x = states[:, s].to(family.device)
        out = family.guide(*family.branches(x, t.to(family.device).expand(len(x)), cond), w)
        targets.append(out.float().cpu())
    return {"x": states.numpy(), "target": torch.stack(targets, 1).numpy()}
