"""Several `agd` processes on one machine: torch's default threads against each process's share.

    python benchmarks/shared_machine.py [--processes 3] [--steps 20] [--batch 64]

Each worker process trains the embedded default's adapters (forward and backward at `--batch`,
random states) for `--steps` steps, after all workers have loaded (a start barrier), and prints its
steps per second. Three runs:
  alone        one process, one thread per core (torch's default)
  default      N processes at once, each with one thread per core (what `agd` did before)
  share        N processes at once, no AGD_THREADS: each takes usable cores // running agd processes
               (pipeline.run.runtime), re-checked while it runs
Prints each run's slowest process, its slowdown against running alone, and all processes' total
throughput.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    from pipeline.run import runtime

    if args.threads:
        os.environ["AGD_THREADS"] = str(args.threads)
    runtime.setup()
    import torch

    from pipeline.backends.loading import load_base
    from pipeline.guidance.adapters import AdapterSet

    family = load_base("mnist-dit", args.base)
    adapters = AdapterSet(family, "cross_attention", 64, 8, mlp=2, w_gate=True).attach(family)
    opt = torch.optim.Adam(adapters.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *family.latent_shape, generator=g)
    t = torch.randint(0, 1000, (args.batch,), generator=g)
    cond, w = {"labels": torch.randint(0, 10, (args.batch,), generator=g)}, torch.rand(args.batch, generator=g) * 4 + 1
    target = torch.randn_like(x)
    ready = Path(args.barrier) / f"{os.getpid()}"
    ready.touch()
    while len(list(Path(args.barrier).iterdir())) < args.expect:
        time.sleep(0.05)
    start = time.perf_counter()
    for _ in range(args.steps):
        runtime.rebalance()
        loss = (adapters(family, x, t, cond, w) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        adapters.release()
    print(f"{args.steps / (time.perf_counter() - start):.4f} {torch.get_num_threads()}", flush=True)


def run(n: int, threads: int, args) -> list[tuple[float, int]]:
    with tempfile.TemporaryDirectory() as barrier:
        cmd = [sys.executable, __file__, "--worker", "--barrier", barrier, "--expect", str(n), "--steps",
               str(args.steps), "--batch", str(args.batch), "--base", args.base, "--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k not in ("AGD_THREADS", "OMP_NUM_THREADS")}
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(n)]
        results = []
        for p in procs:
            out, _ = p.communicate()
            rate, used = out.split()
            results.append((float(rate), int(used)))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--base", default="models/base-mnist-dit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--barrier", default="", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} usable cores; adapter training steps (batch {args.batch}) per second per process")
    alone = run(1, cores, args)[0][0]
    print(f"{'run':<10} {'processes':>9} {'threads each':>12} {'slowest':>9} {'slowdown':>9} {'total':>8}")
    print(f"{'alone':<10} {1:>9} {cores:>12} {alone:>9.3f} {1.0:>8.1f}x {alone:>8.3f}")
    for name, threads in (("default", cores), ("share", 0)):
        results = run(args.processes, threads, args)
        slowest = min(r for r, _ in results)
        used = ",".join(str(u) for _, u in results)
        print(f"{name:<10} {args.processes:>9} {used:>12} {slowest:>9.3f} {alone / slowest:>8.1f}x "
              f"{sum(r for r, _ in results):>8.3f}", flush=True)


if __name__ == "__main__":
    main()
