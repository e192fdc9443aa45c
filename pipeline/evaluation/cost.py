"""The wall-time axis of quality against cost: what one step of each kind costs, timed interleaved.

A sampler's time is the sum of its steps, and a step's cost depends only on what it computes (its
action in the step plan: two passes, an AGD pass, one conditional pass, nothing), not on its noise
level. So each action is timed once per machine, in rounds that run every action in turn
(round-robin) and keep each action's fastest round: a burst of load elsewhere hits all of them
alike, which the time of one long run inside an evaluation (measured while other methods and the
scorer share the machine) does not. Any plan's seconds per image then follow from its actions;
`benchmarks/nfe_timing.py` times whole runs the same way and prints both, to check the sum.

What a step's figure leaves out or folds in, all small beside a denoiser pass: a run's fixed cost
(the scheduler, the seeds' noise, AGD's per-run adapter context) is spread over the timed run's
steps; CFG and the conditional pass are timed with the adapters attached (their hooks do nothing
outside AGD); every two-pass rule is timed as plain CFG's combination (APG's projection, the
rescale's statistics are elementwise work on one output).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from pipeline.backends.family import Family
from pipeline.guidance import rules
from pipeline.guidance.adapters import AdapterSet
from pipeline.guidance.sampling import sample
from pipeline.run.progress import log

# action -> the sampling mode whose every step is that action (a reused step is one conditional
# pass and a combination: timed as the conditional pass)
TIMED = {"cfg": "cfg", "agd": "agd", "cond": "cond"}
SAME_AS = {"reuse": "cond"}


@contextmanager
def adapters_on_every_step(adapters: AdapterSet):
    """Adapters whose teacher guides every step while timing (an interval's adapters run only inside
    their band, which would time conditional passes under the name of AGD's)."""
    teacher, adapters.teacher = adapters.teacher, rules.PLAIN
    try:
        yield adapters
    finally:
        adapters.teacher = teacher


def action_seconds(family: Family, adapters: AdapterSet, cond: dict, w: float, scheduler: str,
                   steps: int = 5, rounds: int = 3) -> dict[str, float]:
    """Seconds per image of one step of each action ("cfg", "agd", "cond", "reuse", "zero") on the
    batch `cond` (its size is the batch timed): the fastest of `rounds` interleaved rounds of a
    `steps`-step run of each, divided by the steps and the batch."""
    n = len(next(iter(cond.values())))
    seeds, ws = list(range(n)), torch.full((n,), float(w))
    sync = torch.cuda.synchronize if family.device.type == "cuda" else (lambda: None)
    best = {action: float("inf") for action in TIMED}
    with adapters_on_every_step(adapters), torch.inference_mode():
        for mode in TIMED.values():  # warm-up: each batch shape's first call (allocations, compiled graphs)
            sample(family, cond, seeds, ws, scheduler, 1, mode=mode, adapters=adapters)
        for _ in range(rounds):
            for action, mode in TIMED.items():
                start = time.perf_counter()
                sample(family, cond, seeds, ws, scheduler, steps, mode=mode, adapters=adapters)
                sync()
                best[action] = min(best[action], (time.perf_counter() - start) / (steps * n))
    return {**best, **{action: best[same] for action, same in SAME_AS.items()}, "zero": 0.0}


def stage_action_seconds(stage: str, family: Family, adapters: AdapterSet, cond_arrays: dict, batch: int, w: float,
                         scheduler: str, rounds: int) -> dict[str, float]:
    """`action_seconds` on the first `batch` of a stage's condition arrays, with the stage's log lines."""
    cond = family.condition_batch({k: v[:batch] for k, v in cond_arrays.items()})
    log(f"{stage}: timing each kind of step ({rounds} interleaved rounds, batch {batch})")
    per_action = action_seconds(family, adapters, cond, w, scheduler, rounds=rounds)
    log(f"{stage}: ms per image and step: " + ", ".join(f"{a} {s * 1e3:.2f}" for a, s in per_action.items()))
    return per_action


def plan_seconds(plan: list[str], per_action: dict[str, float]) -> float:
    """Seconds per image of a step plan: the sum of its steps' actions."""
    return sum(per_action[a] for a in plan)


def figures(seconds: float) -> float:
    """Six significant figures: a GPU's microseconds keep their digits as a CPU's milliseconds do (a
    fixed number of decimals would round them away)."""
    return float(f"{seconds:.6g}")
