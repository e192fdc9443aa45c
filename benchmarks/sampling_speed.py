"""One pass against two: plain single pass, CFG and AGD sampling time per image, side by side.

    python benchmarks/sampling_speed.py [--threads 2] [--steps 10] [--batches 1,16,125]
                                        [--xl-batches 1,8] [--xl-steps 2] [--compile] [--out FILE]

Two models, in one process: the embedded default (models/base-mnist-dit with models/adapters,
untrained adapters if there are none; the arithmetic is the same; then again with the paper's
adapter, no content path, as "emb-paper") and DiT-XL/2 with its real
configuration and random weights (latent 4x32x32, no VAE: only the denoiser steps are timed;
`--xl-batches ''` skips it). For every batch size, each method samples the same seeds in rounds,
interleaved, and the fastest round counts, so a burst of load elsewhere hits all methods alike.

Columns (per image):
  plain     the conditional model alone, one pass per step: what AGD can at best cost
  CFG, AGD  the two-pass teacher and the one-pass student
  overhead  AGD / plain - 1: what the adapters add to the single pass
  AGD/CFG   next to bound = plain / CFG (same batch, same run): what one pass can at best save;
            gap = (AGD/CFG) / bound - 1 is the overhead seen from CFG's side
  per-block the overhead of the same adapters computed block by block, each from (w, t, c) in
            its own block (AdapterSet.fused = False: the code before the adapter work moved out of
            the blocks), in the same run
"adapter arithmetic" is the adapters' share of the pass's floating-point work (torch's FLOP
counter): an overhead no removal of Python or launch cost takes away.
With --compile every method runs through torch.compile (sample.compile), CFG's model as well,
so the comparison stays fair; compile time is left out (a warm-up round per method).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.backends import BACKENDS  # noqa: E402
from pipeline.backends.dit import DiTFamily  # noqa: E402
from pipeline.backends.loading import load_base  # noqa: E402
from pipeline.guidance.adapters import AdapterSet  # noqa: E402
from pipeline.guidance.sampling import sample  # noqa: E402
from pipeline.run import devices, runtime  # noqa: E402

METHODS = ("cond", "cfg", "agd", "agd-per-block")


def dit_xl_2(device: torch.device) -> DiTFamily:
    """DiT-XL/2 256 as released (28 blocks, 1152 wide, 16 heads, learned variance), random weights."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                        num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    scheduler = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                 "clip_sample": False}
    return DiTFamily(BACKENDS["dit-xl-2"], "random-weights", transformer, scheduler).freeze().to(device)


def extra_flops(family, adapters) -> float:
    """The adapters' floating-point work over the plain pass's (torch's FLOP counter, one sample):
    the overhead that no removal of Python or launch cost can take away."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *family.latent_shape, device=family.device)
    t, w = torch.tensor([500], device=family.device), torch.tensor([3.0])
    cond = {"labels": torch.tensor([1], device=family.device)}
    counts = []
    with torch.no_grad():
        for run in (lambda: family.forward(x, t, cond), lambda: adapters(family, x, t, cond, w)):
            with FlopCounterMode(display=False) as counter:
                run()
            counts.append(counter.get_total_flops())
    return counts[1] / counts[0] - 1


def time_methods(family, adapters, batch: int, steps: int, rounds: int, compile_: bool) -> dict[str, float]:
    """Fastest round's seconds per image of every method, rounds interleaved."""
    cond = {"labels": torch.arange(batch, device=family.device) % min(10, family.num_classes)}
    seeds, w = list(range(batch)), torch.full((batch,), 3.0)
    sync = torch.cuda.synchronize if family.device.type == "cuda" else (lambda: None)

    def run(mode, n):
        adapters.fused = mode != "agd-per-block"
        sample(family, cond, seeds, w, "DPMSolverMultistepScheduler", n, mode=mode.split("-")[0], adapters=adapters)

    if compile_:
        family.compile()
    for mode in METHODS:  # warm-up (and compilation)
        run(mode, 2)
    best = {m: float("inf") for m in METHODS}
    for _ in range(rounds):
        for mode in METHODS:
            sync()
            start = time.perf_counter()
            run(mode, steps)
            sync()
            best[mode] = min(best[mode], (time.perf_counter() - start) / batch)
    return best


def report(name: str, batch: int, t: dict[str, float], steps: int) -> dict:
    bound = t["cond"] / t["cfg"]
    row = {"model": name, "batch": batch, "steps": steps, "plain_ms": 1e3 * t["cond"], "cfg_ms": 1e3 * t["cfg"],
           "agd_ms": 1e3 * t["agd"], "overhead": t["agd"] / t["cond"] - 1, "agd_over_cfg": t["agd"] / t["cfg"],
           "bound": bound}
    row["gap"] = row["agd_over_cfg"] / bound - 1
    row["per_block_overhead"] = t["agd-per-block"] / t["cond"] - 1
    print(f"{name:<10} {batch:>5} {row['plain_ms']:>10.2f} {row['cfg_ms']:>10.2f} {row['agd_ms']:>10.2f} "
          f"{100 * row['overhead']:>+8.1f}% {row['agd_over_cfg']:>8.3f} {bound:>7.3f} {100 * row['gap']:>+6.1f}% "
          f"{100 * row['per_block_overhead']:>+9.1f}%", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="models/base-mnist-dit")
    parser.add_argument("--adapters", default="models/adapters", help="trained adapters (untrained if missing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="sampler steps per image, embedded default")
    parser.add_argument("--batches", default="1,16,125")
    parser.add_argument("--xl-batches", default="", help="DiT-XL/2 batch sizes (default 1,8 on CPU, 1,64 on GPU)")
    parser.add_argument("--xl-steps", type=int, default=0, help="DiT-XL/2 steps (default 2 on CPU, 10 on GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-paper-adapter", dest="paper_adapter", action="store_false",
                        help="skip the embedded base with the paper's adapter (no content path)")
    parser.add_argument("--compile", action="store_true", help="sample through torch.compile (sample.compile)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as base.device)")
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    args = parser.parse_args()
    os.environ["AGD_THREADS"] = str(args.threads)
    runtime.setup()  # as every `agd` command: threads, allocator
    device = devices.resolve(args.device)
    gpu = device.type == "cuda"
    rows = []
    print(f"{devices.describe(device, torch.float32)}, threads {args.threads}, DPM-Solver++, w = 3, "
          f"{'compiled' if args.compile else 'eager'}; ms per image (whole sample)")
    print(f"{'model':<10} {'batch':>5} {'plain':>10} {'CFG':>10} {'AGD':>10} {'overhead':>9} {'AGD/CFG':>8} "
          f"{'bound':>7} {'gap':>7} {'per-block':>10}")
    family = load_base("mnist-dit", args.base, device=str(device))
    if Path(args.adapters, "adapters.json").exists():
        adapters = AdapterSet.load(Path(args.adapters), family)
    else:
        adapters = AdapterSet(family, width=64, heads=8, mlp=2, w_gate=True).attach(family)
    print(f"{'':<10} adapter arithmetic: {100 * extra_flops(family, adapters):+.1f}% of the plain pass")
    for batch in (int(b) for b in args.batches.split(",") if b):
        rows.append(report("embedded", batch, time_methods(family, adapters, batch, args.steps, args.rounds,
                                                           args.compile), args.steps))
    if args.paper_adapter:
        # the same base with the paper's adapter (no content path): what the once-per-pass machinery
        # costs when the adapters' own arithmetic is small
        adapters.detach()
        adapters = AdapterSet(family, "cross_attention", width=64, heads=8, w_gate=True).attach(family)
        print(f"{'':<10} paper adapter, arithmetic: {100 * extra_flops(family, adapters):+.1f}% of the plain pass")
        for batch in (int(b) for b in args.batches.split(",") if b):
            rows.append(report("emb-paper", batch, time_methods(family, adapters, batch, args.steps, args.rounds,
                                                                args.compile), args.steps))
    xl_batches = args.xl_batches or ("1,64" if gpu else "1,8")
    xl_steps = args.xl_steps or (10 if gpu else 2)
    if xl_batches != "none":
        family = dit_xl_2(device)
        # conf/backend/dit-xl-2.yaml's adapters: the paper's cross-attention adapter, width 128, 4 heads
        adapters = AdapterSet(family, "cross_attention", width=128, heads=4, fourier_features=64).attach(family)
        print(f"{'':<10} adapter arithmetic: {100 * extra_flops(family, adapters):+.1f}% of the plain pass")
        for batch in (int(b) for b in xl_batches.split(",") if b):
            rows.append(report("DiT-XL/2", batch, time_methods(family, adapters, batch, xl_steps,
                                                               max(1, args.rounds - 1), args.compile), xl_steps))
    if args.out:
        Path(args.out).write_text(json.dumps({"threads": args.threads, "compile": args.compile,
                                              "device": devices.describe(device, torch.float32), "rows": rows},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
