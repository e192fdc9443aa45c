"""GPU figures at the real shapes with random weights (no hub needed):

1. SDXL-shaped UNet, 1024x1024 (latent 128), batch 1: one adapter-training step with our
   adapters and training code (frozen bf16 base, bf16 autocast, Adam on adapters) - peak GPU
   memory with and without gradient checkpointing. Floor <= 24 GB without; target <= 8 GiB with.
2. DiT-XL/2-shaped sampling step with our sampler's model calls: AGD (1 pass with adapters)
   vs CFG (2 passes batched), batch 1 and 64; target ratio <= 0.55 at batch 64.

    python benchmarks/gpu_checks.py                # on a CUDA machine
    python benchmarks/gpu_checks.py --tiny --device cpu   # code-path check only
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import real_shapes  # noqa: E402
from pipeline.guidance.adapters import AdapterSet  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def sdxl_training_memory(device, checkpointing: bool, tiny: bool) -> float:
    family = real_shapes.sdxl() if not tiny else _tiny_sdxl()
    family.denoiser.to(device, torch.bfloat16)
    family.freeze()
    adapters = AdapterSet(family, "cross_attention", 128, 4, 64).attach(family)
    if checkpointing:
        family.denoiser.enable_gradient_checkpointing()
    opt = torch.optim.Adam(adapters.parameters(), lr=1e-4, weight_decay=0.0)
    c, h, w = family.latent_shape
    d = family.denoiser.config.cross_attention_dim
    cond = {"prompt_embeds": torch.randn(1, 77, d, device=device),
            "pooled": torch.randn(1, 1280 if not tiny else 16, device=device),
            "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], device=device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step includes Adam's state
        x, target = torch.randn(1, c, h, w, device=device), torch.randn(1, c, h, w, device=device)
        t, wt = torch.tensor([500], device=device), torch.tensor([7.5], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = adapters(family, x, t, cond, wt)
        loss = F.mse_loss(out.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        adapters.release()
    _sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del family, adapters, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak


def _tiny_sdxl():
    import tempfile

    from pipeline.backends.loading import load_base
    from tests.tiny_models import save_sdxl_like

    return load_base("sdxl", str(save_sdxl_like(Path(tempfile.mkdtemp()) / "sdxl")))


def dit_step_times(device, batch: int, tiny: bool, repeats: int) -> tuple[float, float]:
    family = real_shapes.dit_xl_2() if not tiny else _tiny_dit()
    family.denoiser.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    family.freeze()
    adapters = AdapterSet(family, "cross_attention", 128, 4, 64).attach(family)
    adapters.to(device)
    x = torch.randn(batch, *family.latent_shape, device=device)
    t = torch.full((batch,), 500, device=device)
    cond = {"labels": torch.randint(0, 1000, (batch,), device=device)}
    w = torch.full((batch,), 4.0, device=device)

    def timed(fn):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for _ in range(3):
                fn()
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            _sync(device)
        return (time.perf_counter() - start) / repeats

    agd = timed(lambda: adapters(family, x, t, cond, w))
    cfg = timed(lambda: family.guide(*family.branches(x, t, cond), w))
    return agd, cfg


def _tiny_dit():
    import tempfile

    from pipeline.backends.loading import load_base
    from tests.tiny_models import save_dit_xl_like

    return load_base("dit-xl-2", str(save_dit_xl_like(Path(tempfile.mkdtemp()) / "dit")))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as base.device)")
    parser.add_argument("--tiny", action="store_true", help="tiny models: check the code path, not the figures")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from pipeline.run.devices import describe, resolve

    device = resolve(args.device, key="--device")
    print(f"device: {describe(device, torch.bfloat16)}  torch {torch.__version__}")
    for ckpt in (False, True):
        peak = sdxl_training_memory(device, ckpt, args.tiny)
        print(f"SDXL adapter-training step 1024x1024 batch 1, gradient checkpointing {'on ' if ckpt else 'off'}: "
              f"peak {peak:.2f} GiB")
    for batch in (1, 64):
        agd, cfg = dit_step_times(device, batch, args.tiny, args.repeats)
        print(f"DiT-XL/2 sampling step batch {batch:>2}: AGD {agd * 1e3:8.2f} ms  CFG {cfg * 1e3:8.2f} ms  "
              f"ratio {agd / cfg:.3f}")


if __name__ == "__main__":
    main()
