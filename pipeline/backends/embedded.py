"""The embedded default's base: a small class-conditional DiT on 16x16 MNIST digits, its noise schedule
and its training loss (`agd pretrain` trains it; the transfer study fine-tunes a copy).

Recipe: epsilon prediction on a cosine schedule, Min-SNR loss weighting, one label drop per sample
for CFG (as DiT-XL/2 was trained), noise drawn on the CPU from a seeded generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_CLASSES = 10


def build_model(num_heads: int, head_dim: int, num_layers: int, patch_size: int, resolution: int):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=num_heads, attention_head_dim=head_dim, in_channels=1, out_channels=1,
        num_layers=num_layers, sample_size=resolution, patch_size=patch_size,
        num_embeds_ada_norm=NUM_CLASSES, norm_type="ada_norm_zero",
    )


def build_scheduler():
    from diffusers import DDIMScheduler

    # Pixel space in [-1, 1]: a cosine schedule and x0 clipping suit small images.
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                         prediction_type="epsilon", set_alpha_to_one=False)


def min_snr_weight(scheduler, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight per timestep, for epsilon prediction."""
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def denoising_loss(model, scheduler, weight, x_all, y_all, batch_size: int, label_drop: float, gen, device):
    """One batch of the base's training loss: random digits, one label drop per sample (for CFG), random
    timesteps, noise from the seeded generator on the CPU (device-independent data)."""
    idx = torch.randint(len(x_all), (batch_size,), generator=gen)
    x0, y = x_all[idx], y_all[idx].clone()
    y[torch.rand(batch_size, generator=gen) < label_drop] = NUM_CLASSES
    t = torch.randint(0, 1000, (batch_size,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    xt = scheduler.add_noise(x0, noise, t)
    xt, t, y, noise = xt.to(device), t.to(device), y.to(device), noise.to(device)
    pred = model(xt, timestep=t, class_labels=y).sample
    return (weight[t] * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
