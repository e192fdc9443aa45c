"""Seconds per image of every method of the nfe stage, timed apart from its quality run.

    python benchmarks/nfe_timing.py [--threads 2] [--batch 125] [--rounds 3] [--steps 5,8,12,25]

The nfe stage records each run's time too, but a stage's timing shares the machine with whatever
else runs; here every method and step count is timed in rounds, interleaved (round-robin), and
the fastest round is kept, so a burst of load elsewhere hits all methods alike. Prints seconds per
image, NFE and time relative to AGD at the same step count: the wall-time axis of the NFE curve.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import config  # noqa: E402
from pipeline.backends.loading import load_base  # noqa: E402
from pipeline.guidance.adapters import AdapterSet  # noqa: E402
from pipeline.guidance.sampling import Guidance, nfe, plan_for, sample  # noqa: E402
from pipeline.run import devices  # noqa: E402
from pipeline.stages.nfe import runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=125)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default="", help="step counts (default: params.yaml nfe.steps)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as base.device)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = config.load()
    base, p = params.base, params.nfe
    steps = [int(s) for s in args.steps.split(",")] if args.steps else p.steps
    family = load_base(base.backend, base.path, device=args.device)
    adapters = AdapterSet.load(Path(params.train.output), family)
    sampler = params.evaluate.scheduler or params.trajectories.scheduler
    guidance = Guidance(interval=(p.interval[0], p.interval[1]), reuse=p.reuse)
    cond = {"labels": torch.arange(args.batch, device=family.device) % 10}
    seeds, w = list(range(args.batch)), torch.full((args.batch,), p.guidance_scale)
    sync = torch.cuda.synchronize if family.device.type == "cuda" else (lambda: None)
    jobs = sorted({how for n in steps for how in runs(n).values()})
    best = {job: float("inf") for job in jobs}
    print(f"{devices.describe(family.device, family.dtype)}, threads {args.threads}, batch {args.batch}, {sampler}, "
          f"{args.rounds} interleaved rounds")
    sample(family, cond, seeds, w, sampler, 2, mode="agd", adapters=adapters)  # warm-up
    for _ in range(args.rounds):
        for mode, n in jobs:
            start = time.perf_counter()
            sample(family, cond, seeds, w, sampler, n, mode=mode, adapters=adapters, guidance=guidance)
            sync()
            best[mode, n] = min(best[mode, n], (time.perf_counter() - start) / args.batch)
    print(f"{'steps':>5} {'method':>15} {'NFE':>4} {'ms/image':>9} {'vs AGD':>7}")
    for n in steps:
        agd = best["agd", n]
        for method, (mode, k) in runs(n).items():
            cost = nfe(plan_for(family, sampler, k, mode, guidance))
            print(f"{n:>5} {method:>15} {cost:>4} {best[mode, k] * 1e3:9.2f} {best[mode, k] / agd:7.2f}")


if __name__ == "__main__":
    main()
