"""Seconds per image of every method of the nfe stage, each whole run timed interleaved, beside the
sum of its steps' interleaved per-step costs that the nfe stage reports (pipeline.evaluation.cost).

    python benchmarks/nfe_timing.py [--threads 2] [--batch 125] [--rounds 3] [--steps 5,8,12,25]

Every method and step count is timed in rounds, interleaved (round-robin), and the fastest round is
kept, so a burst of load elsewhere hits all methods alike. Prints NFE, measured ms per image, the
stage's per-step sum and their ratio (the check that a run's time is the sum of its steps), and the
time relative to AGD at the same step count: the wall-time axis of the NFE curve.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import config  # noqa: E402
from pipeline.backends.loading import load_base  # noqa: E402
from pipeline.evaluation import cost  # noqa: E402
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
    guidance, band = Guidance(reuse=p.reuse), (p.interval[0], p.interval[1])
    cond = {"labels": torch.arange(args.batch, device=family.device) % 10}
    seeds, w = list(range(args.batch)), torch.full((args.batch,), p.guidance_scale)
    sync = torch.cuda.synchronize if family.device.type == "cuda" else (lambda: None)
    print(f"{devices.describe(family.device, family.dtype)}, threads {args.threads}, batch {args.batch}, {sampler}, "
          f"{args.rounds} interleaved rounds, AGD distilled from {adapters.teacher.name}")
    per_action = cost.action_seconds(family, adapters, cond, p.guidance_scale, sampler, rounds=args.rounds)

    def plan(r):
        return plan_for(family, sampler, r.steps, r.mode, guidance, adapters.teacher if r.mode == "agd" else r.rule)

    def stage_seconds(r):
        return cost.plan_seconds(plan(r), per_action)

    table = {n: runs(n, adapters.teacher, band, lambda r: nfe(plan(r)), stage_seconds) for n in steps}
    jobs = sorted({r for methods in table.values() for r in methods.values()}, key=repr)
    best = {job: float("inf") for job in jobs}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for r in jobs:
                start = time.perf_counter()
                sample(family, cond, seeds, w, sampler, r.steps, mode=r.mode, adapters=adapters, guidance=guidance,
                       rule=r.rule)
                sync()
                best[r] = min(best[r], (time.perf_counter() - start) / args.batch)
    print(f"{'steps':>5} {'method':>20} {'run':>5} {'NFE':>4} {'ms/image':>9} {'stage ms':>9} {'ratio':>6} {'vs AGD':>7}")
    for n, methods in table.items():
        agd = best[methods["agd"]]
        for method, r in methods.items():
            print(f"{n:>5} {method:>20} {r.steps:>5} {nfe(plan(r)):>4} {best[r] * 1e3:9.2f} "
                  f"{stage_seconds(r) * 1e3:9.2f} {stage_seconds(r) / best[r]:6.2f} {best[r] / agd:7.2f}")


if __name__ == "__main__":
    main()
