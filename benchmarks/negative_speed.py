"""AGD with a negative condition against AGD without: one pass per step either way, and what the
negative's tokens add to the adapters' work.

    python benchmarks/negative_speed.py [--threads 2] [--steps 10] [--batches 1,16] [--xl-batches 1]
                                        [--out reports/negative_speed.json]

Per model and batch size, interleaved rounds (the fastest counts) of:
  plain         the conditional model alone, one pass per step
  AGD           adapters trained without negatives (the paper's input [w, t, c])
  AGD+neg       the same adapters with negatives (n_proj, conditions.negative_share > 0), given a
                negative class: their input is [w, t, c, negative]
  CFG+neg       the two-pass teacher with the negative as its unconditional branch
Columns: ms per image, and overheads over plain; `neg/AGD` = AGD+neg / AGD - 1, what reading the
negative costs. Models: the embedded default (its adapters' width and heads from conf/backend/mnist.yaml,
untrained: the arithmetic is the same) and DiT-XL/2 with its real configuration and random weights
(benchmarks/sampling_speed.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.backends.loading import load_base  # noqa: E402
from pipeline.guidance.adapters import AdapterSet  # noqa: E402
from pipeline.guidance.sampling import sample  # noqa: E402
from pipeline.run import devices, runtime  # noqa: E402

METHODS = ("plain", "agd", "agd_negative", "cfg_negative")


def _speed_module():
    spec = importlib.util.spec_from_file_location("sampling_speed", ROOT / "benchmarks" / "sampling_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_methods(family, plain_set, negative_set, batch: int, steps: int, rounds: int) -> dict[str, float]:
    labels = torch.arange(batch, device=family.device) % 10
    cond = {"labels": labels}
    with_negative = {"labels": labels, "negative_labels": (labels + 1) % 10}
    seeds, w = list(range(batch)), torch.full((batch,), 3.0)
    sync = torch.cuda.synchronize if family.device.type == "cuda" else (lambda: None)
    runs = {"plain": lambda n: sample(family, cond, seeds, w, "DPMSolverMultistepScheduler", n, mode="cond"),
            "agd": lambda n: sample(family, cond, seeds, w, "DPMSolverMultistepScheduler", n, mode="agd",
                                    adapters=plain_set),
            "agd_negative": lambda n: sample(family, with_negative, seeds, w, "DPMSolverMultistepScheduler", n,
                                             mode="agd", adapters=negative_set),
            "cfg_negative": lambda n: sample(family, with_negative, seeds, w, "DPMSolverMultistepScheduler", n,
                                             mode="cfg")}
    best = {m: float("inf") for m in METHODS}
    for m in METHODS:
        _armed(plain_set, negative_set, m)
        runs[m](2)  # warm-up
    for _ in range(rounds):
        for m in METHODS:
            _armed(plain_set, negative_set, m)
            sync()
            start = time.perf_counter()
            runs[m](steps)
            sync()
            best[m] = min(best[m], (time.perf_counter() - start) / batch)
    return best


def _armed(plain_set, negative_set, method: str) -> None:
    """Only one set's hooks on the denoiser at a time (both would add their outputs)."""
    plain_set.detach()
    negative_set.detach()
    if method == "agd":
        plain_set.attach(plain_set._family)
    elif method == "agd_negative":
        negative_set.attach(negative_set._family)


def report(name: str, batch: int, t: dict, steps: int) -> dict:
    row = {"model": name, "batch": batch, "steps": steps, **{f"{m}_ms": 1e3 * t[m] for m in METHODS},
           "agd_overhead": t["agd"] / t["plain"] - 1, "agd_negative_overhead": t["agd_negative"] / t["plain"] - 1,
           "negative_over_agd": t["agd_negative"] / t["agd"] - 1, "agd_negative_over_cfg_negative":
           t["agd_negative"] / t["cfg_negative"]}
    print(f"{name:<10} {batch:>5} {row['plain_ms']:>9.2f} {row['agd_ms']:>9.2f} {row['agd_negative_ms']:>9.2f} "
          f"{row['cfg_negative_ms']:>9.2f} {100 * row['agd_overhead']:>+8.1f}% {100 * row['agd_negative_overhead']:>+8.1f}% "
          f"{100 * row['negative_over_agd']:>+8.1f}% {row['agd_negative_over_cfg_negative']:>8.3f}", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="models/base-mnist-dit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--xl-batches", default="1", help="DiT-XL/2 batch sizes ('' skips it)")
    parser.add_argument("--xl-steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ["AGD_THREADS"] = str(args.threads)
    runtime.setup()
    device = devices.resolve(args.device)
    print(f"{devices.describe(device, torch.float32)}, threads {args.threads}, DPM-Solver++, w = 3; ms per image")
    print(f"{'model':<10} {'batch':>5} {'plain':>9} {'AGD':>9} {'AGD+neg':>9} {'CFG+neg':>9} {'AGD ovh':>9} "
          f"{'+neg ovh':>9} {'neg/AGD':>9} {'AGD+neg/CFG+neg':>8}")
    rows = []
    family = load_base("mnist-dit", args.base, device=str(device))
    config = {"architecture": "cross_attention", "width": 64, "heads": 8, "mlp": 2, "w_gate": True}
    models = [("embedded", family, config, [int(b) for b in args.batches.split(",") if b], args.steps)]
    if args.xl_batches:
        xl = _speed_module().dit_xl_2(device)
        models.append(("DiT-XL/2", xl, {"architecture": "cross_attention", "width": 128, "heads": 4,
                                        "fourier_features": 64}, [int(b) for b in args.xl_batches.split(",")],
                       args.xl_steps))
    for name, fam, cfg, batches, steps in models:
        plain_set = AdapterSet(fam, **cfg)
        negative_set = AdapterSet(fam, **cfg, negatives=True)
        for m in (plain_set, negative_set):  # off zero, so the folded paths do real work
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.01)
            m.to(fam.device)
        for batch in batches:
            rows.append(report(name, batch, time_methods(fam, plain_set, negative_set, batch, steps, args.rounds),
                               steps))
    if args.out:
        Path(args.out).write_text(json.dumps({"threads": args.threads, "device": devices.describe(device, torch.float32),
                                              "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
