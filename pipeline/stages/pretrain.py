"""`agd pretrain`: train the embedded default's small class-conditional DiT on MNIST.

Not a `dvc repro` stage: its result is committed under models/ so the pipeline starts from a
pretrained base, exactly as it would from DiT-XL/2. Resumable from its own checkpoints.
Recipe: epsilon prediction on a cosine schedule, Min-SNR loss weighting, one label drop per
sample for CFG (as DiT-XL/2 was trained), and an EMA of the weights, which is what gets saved.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import checkpoint, devices, mnist, preflight
from pipeline.config import load_section
from pipeline.progress import Tracker, log
from pipeline.schedule import warmup_cosine

NUM_CLASSES = 10


def build_model(p, resolution: int):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=p.num_heads, attention_head_dim=p.head_dim, in_channels=1, out_channels=1,
        num_layers=p.num_layers, sample_size=resolution, patch_size=p.patch_size,
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


def run(data_dir: Path = Path("data")) -> None:
    p = load_section("pretrain")
    resolution = load_section("prepare").resolution
    out = Path(p.output)
    preflight.writable(out, "params.yaml: pretrain.output", "folder")
    ckpt_path = out.parent / (out.name + "-checkpoints") / "pretrain.pt"
    torch.manual_seed(p.seed)
    images, labels = mnist.load_split(data_dir, "train")
    x_all, y_all = mnist.to_model_space(images), torch.from_numpy(labels)

    device = devices.resolve(load_section("base").device)
    model = build_model(p, resolution).to(device)
    model.eval()  # no dropout inside; the label drop below is the only stochastic part
    ema = copy.deepcopy(model).requires_grad_(False)
    scheduler = build_scheduler()
    weight = min_snr_weight(scheduler, p.min_snr_gamma).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(p.seed)
    step = 0
    state = checkpoint.load(ckpt_path)
    if state is not None and state["params"] == asdict(p):
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step = state["step"]
        log(f"pretrain: resuming from {ckpt_path} at step {step}")
    n_params = sum(q.numel() for q in model.parameters())
    log(f"pretrain: DiT {n_params:,} parameters, {p.steps} steps x batch {p.batch_size} on "
        f"{devices.describe(device, torch.float32)}")
    losses = []
    with Tracker("pretrain", p.steps, start=step, every_s=30) as tracker:
        while step < p.steps:
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, p.steps, p.warmup_steps, p.lr, final_fraction=0.1)
            loss = denoising_loss(model, scheduler, weight, x_all, y_all, p.batch_size, p.label_drop, gen, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for e, q in zip(ema.parameters(), model.parameters()):
                    e.lerp_(q, 1 - p.ema_decay)
            step += 1
            losses.append(loss.item())
            tracker.advance(1, loss=sum(losses[-50:]) / len(losses[-50:]))
            if step % p.checkpoint_every == 0 or step == p.steps:
                checkpoint.save(ckpt_path, {"params": asdict(p), "model": model.state_dict(), "ema": ema.state_dict(),
                                            "opt": opt.state_dict(), "gen": gen.get_state(), "step": step})
    ema.to("cpu").save_pretrained(out / "transformer")
    build_scheduler().save_pretrained(out / "scheduler")
    (out / "pretrain.json").write_text(json.dumps({"params": asdict(p), "resolution": resolution,
                                                   "parameters": n_params}, indent=2) + "\n")
    log(f"pretrain: EMA weights saved to {out}")
