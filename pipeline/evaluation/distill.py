"""How much of CFG's correction AGD's one pass reproduces: overall and per sampler step.

Measured on fresh, held-out CFG trajectories (seeds no sample or training trajectory uses) of the
sampler the adapters were trained on: at every state x_t of them, CFG's output, the conditional
output and AGD's output are compared. The correction is `out_cfg - out_cond`:

- captured = 1 - |agd - cfg|^2 / |cfg - cond|^2: 1 is exact, 0 no better than the unguided
  model, below 0 further from CFG than no guidance at all;
- cosine between AGD's correction `agd - cond` and CFG's: is the direction right;
- gain = |agd - cond| / |cfg - cond|: is the size right (1: as strong as CFG, below: guides less).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.guidance.sampling import plan_for, sample

if TYPE_CHECKING:
    from pipeline.backends.family import Family
    from pipeline.guidance.adapters import AdapterSet

# CFG's correction counts as zero below this share of the conditional output's energy: at w = 1
# it is float rounding (~1e-14), and a ratio against it would be noise (it gave -2e10).
MIN_CORRECTION_ENERGY = 1e-8


@dataclass
class Sums:
    """Summed squares over the states of one step (or all steps)."""

    err: float = 0.0  # |agd - cfg|^2
    corr: float = 0.0  # |cfg - cond|^2
    dot: float = 0.0  # (agd - cond) . (cfg - cond)
    norm_a: float = 0.0  # |agd - cond|^2
    cond_energy: float = 0.0  # |cond|^2

    def add(self, other: "Sums") -> None:
        for key in self.__dataclass_fields__:
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def metrics(self) -> dict:
        return correction_metrics(self.err, self.corr, self.dot, self.norm_a, self.cond_energy)


def correction_metrics(err: float, corr: float, dot: float, norm_a: float, cond_energy: float) -> dict:
    """captured, cosine and gain from summed squares. All three are undefined where CFG corrects
    nothing (w = 1): then `correction_defined` is false and none is reported. For w < 1 CFG moves
    towards the unconditional model and the same definitions hold."""
    if corr <= MIN_CORRECTION_ENERGY * cond_energy:
        return {"correction_defined": False}
    return {"correction_defined": True, "correction_captured": round(1 - err / corr, 4),
            "correction_cosine": round(dot / max((corr * norm_a) ** 0.5, 1e-12), 4),
            "correction_gain": round((norm_a / corr) ** 0.5, 4)}


@torch.no_grad()
def held_out(family: Family, adapters: AdapterSet, cond: dict, seeds: np.ndarray, w: float, scheduler: str, steps: int
             ) -> tuple[dict, list[dict]]:
    """Overall metrics and one row per sampler step (step, t, captured, cosine, gain), on trajectories of
    the adapters' own teacher rule; where that rule does not guide (outside the interval) AGD runs the
    conditional pass alone, as sampling does, and CFG's correction there is nothing."""
    wt = torch.full((len(seeds),), w)
    per_step: list[tuple[int, float, Sums]] = []
    plan = plan_for(family, scheduler, steps, "agd", rule=adapters.teacher)

    def record(step, x_t, t, out_cfg):
        cfg = family.guided_channels(out_cfg).float()
        cond_out = family.guided_channels(family.forward(x_t, t, cond)).float()
        agd = family.guided_channels(adapters(family, x_t, t, cond, wt.to(x_t.device))).float() \
            if plan[step] == "agd" else cond_out if plan[step] == "cond" else torch.zeros_like(cond_out)
        s = Sums(err=(agd - cfg).pow(2).sum().item(), corr=(cfg - cond_out).pow(2).sum().item(),
                 dot=((agd - cond_out) * (cfg - cond_out)).sum().item(), norm_a=(agd - cond_out).pow(2).sum().item(),
                 cond_energy=cond_out.pow(2).sum().item())
        per_step.append((step, float(t.flatten()[0]), s))

    sample(family, cond, seeds, wt, scheduler, steps, mode="cfg", record=record, rule=adapters.teacher)
    total = Sums()
    rows = []
    for step, t, s in per_step:
        total.add(s)
        m = s.metrics()
        rows.append({"step": step, "t": round(t, 3), **{k.removeprefix("correction_"): v for k, v in m.items()
                                                        if k != "correction_defined"}})
    return total.metrics(), rows
