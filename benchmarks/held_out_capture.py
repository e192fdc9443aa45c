"""How much of CFG's correction a set of adapters captures, without the rest of the evaluation.

    python benchmarks/held_out_capture.py [models/adapters ...] [--scales 1.5,3,6]

The same measurement as the evaluate stage's `correction_captured` / `_cosine` / `_gain` (the same
held-out conditions and seeds, from params.yaml's evaluate section and the trajectory sampler),
in about 20 seconds instead of the stage's minutes: what the adapter comparisons in the README
("Choosing the default adapters") were measured with. Prints one line per adapter folder and
scale, with captured for the first and last five sampler steps.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import config  # noqa: E402
from pipeline.backends.loading import load_base  # noqa: E402
from pipeline.evaluation import distill  # noqa: E402
from pipeline.evaluation.samples import held_out  # noqa: E402
from pipeline.guidance.adapters import AdapterSet  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="*", default=["models/adapters"], help="folders written by `agd train`")
    parser.add_argument("--scales", default="3,6", help="guidance scales, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = config.load()
    base, traj, p = params.base, params.trajectories, params.evaluate
    family = load_base(**base.model_dump())
    cond, seeds = held_out(family, p)
    print(f"{len(seeds)} held-out {traj.scheduler} trajectories of {traj.num_steps} steps")
    for folder in args.adapters:
        adapters = AdapterSet.load(Path(folder), family)
        for w in (float(s) for s in args.scales.split(",")):
            total, rows = distill.held_out(family, adapters, cond, seeds, w, traj.scheduler, traj.num_steps)
            figures = " ".join(f"{k.removeprefix('correction_')} {v:.3f}" for k, v in total.items()
                               if k != "correction_defined")
            steps = [r.get("captured", float("nan")) for r in rows]
            print(f"{folder} w={w:g}: {figures}; captured first steps {[round(x, 2) for x in steps[:5]]}, "
                  f"last {[round(x, 2) for x in steps[-5:]]}")
        adapters.detach()


if __name__ == "__main__":
    main()
