"""`agd pretrain`: train the embedded default's small class-conditional DiT on MNIST.

Not a `dvc repro` stage: its result is committed under models/ so the pipeline starts from a
pretrained base, exactly as it would from DiT-XL/2. Resumable from its own checkpoints. The model,
its schedule and its loss: pipeline.backends.embedded. An EMA of the weights is what gets saved.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from pipeline.backends.embedded import build_model, build_scheduler, denoising_loss, min_snr_weight
from pipeline.config import Params
from pipeline.data import mnist
from pipeline.guidance.training import warmup_cosine
from pipeline.run import checkpoint, devices, files, preflight
from pipeline.run.progress import Tracker, log


def run(params: Params, data_dir: Path = Path("data")) -> None:
    p = params.pretrain
    resolution = params.prepare.resolution
    out = Path(p.output)
    preflight.writable(out, "params.yaml: pretrain.output", "folder")
    ckpt_path = out.parent / (out.name + "-checkpoints") / "pretrain.pt"
    torch.manual_seed(p.seed)
    images, labels = mnist.load_split(data_dir, "train")
    x_all, y_all = mnist.to_model_space(images), torch.from_numpy(labels)

    device = devices.resolve(params.base.device)
    model = build_model(p.num_heads, p.head_dim, p.num_layers, p.patch_size, resolution).to(device)
    model.eval()  # no dropout inside; the label drop below is the only stochastic part
    ema = copy.deepcopy(model).requires_grad_(False)
    scheduler = build_scheduler()
    weight = min_snr_weight(scheduler, p.min_snr_gamma).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(p.seed)
    step = 0
    state = checkpoint.load(ckpt_path)
    if state is not None and state["params"] == p.model_dump():
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
                checkpoint.save(ckpt_path, {"params": p.model_dump(), "model": model.state_dict(), "ema": ema.state_dict(),
                                            "opt": opt.state_dict(), "gen": gen.get_state(), "step": step})
    ema.to("cpu").save_pretrained(out / "transformer")
    build_scheduler().save_pretrained(out / "scheduler")
    files.write_json(out / "pretrain.json", {"params": p.model_dump(), "resolution": resolution,
                                             "parameters": n_params})
    log(f"pretrain: EMA weights saved to {out}")
