"""AGD vs CFG sampling time per image on this machine, for the embedded default.

    python benchmarks/sampling_speed.py [--threads 2] [--steps 25]

Prints seconds per image and the AGD/CFG ratio at several batch sizes (ideal: 0.5, since AGD
makes one forward pass per step where CFG makes two; small batches are overhead-bound).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import devices  # noqa: E402
from pipeline.adapters import AdapterSet  # noqa: E402
from pipeline.backends import load_base  # noqa: E402
from pipeline.sampling import sample  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="models/base-mnist-dit")
    parser.add_argument("--adapters", default="models/adapters", help="trained adapters (untrained if missing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batches", default="1,16,125")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as base.device)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family = load_base("mnist-dit", args.base, device=args.device)
    if Path(args.adapters, "adapters.json").exists():
        adapters = AdapterSet.load(Path(args.adapters), family)
    else:
        adapters = AdapterSet(family).attach(family)
    print(f"{devices.describe(family.device, family.dtype)}, threads {args.threads}, {args.steps} DPM-Solver++ steps")
    sync = torch.cuda.synchronize if family.device.type == "cuda" else (lambda: None)
    for batch in (int(b) for b in args.batches.split(",")):
        cond = {"labels": torch.arange(batch, device=family.device) % 10}
        seeds = list(range(batch))
        times = {}
        for mode in ("cfg", "agd"):
            sample(family, cond, seeds, torch.full((batch,), 3.0), "DPMSolverMultistepScheduler", 2, mode=mode, adapters=adapters)
            repeats = max(1, 64 // batch)
            start = time.perf_counter()
            for _ in range(repeats):
                sample(family, cond, seeds, torch.full((batch,), 3.0), "DPMSolverMultistepScheduler", args.steps, mode=mode,
                       adapters=adapters)
            sync()
            times[mode] = (time.perf_counter() - start) / (repeats * batch)
        print(f"batch {batch:>4}: CFG {times['cfg'] * 1e3:8.2f} ms/image  AGD {times['agd'] * 1e3:8.2f} ms/image  "
              f"AGD/CFG {times['agd'] / times['cfg']:.3f}")


if __name__ == "__main__":
    main()
