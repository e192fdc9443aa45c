"""The teacher's guidance rule: how one sampler step turns the conditional and unconditional outputs
into the output the sampler uses. AGD distils whatever its teacher did, so the rule is a choice
(`guidance.rule` in params.yaml) and part of the trajectory store's and the adapters' identity.

    cfg            null + w (cond - null)                       Ho & Salimans 2022 (arXiv:2207.12598)
    interval       CFG while sigma lies in (low, high], the     Kynkäänniemi et al. 2024, "Applying
                   conditional pass alone elsewhere             guidance in a limited interval" (arXiv:2404.07724)
    rescale        CFG, its per-sample std rescaled towards the Lin et al. 2024, "Common diffusion noise
                   conditional output's, mixed by phi           schedules ... are flawed" §3.4 (arXiv:2305.08891)
    apg            the update cond - null, with momentum along  Sadat et al. 2025, "Eliminating oversaturation
                   the trajectory, its norm capped and its      ... of high guidance scales" (arXiv:2410.02416)
                   part parallel to cond weighted by eta
    cfg_zero_star  the unconditional output scaled by its       Fan et al. 2025, "CFG-Zero*" (arXiv:2503.18886)
                   projection coefficient on cond; a zero
                   output for the first zero_init_steps steps

The formulas follow diffusers' guiders (`diffusers.guiders`, the "diffusers-native" formulation, in
which w = 1 is the conditional model); tests/test_rules.py checks each against its guider. Norms and
standard deviations are per sample (every dimension but the batch), so a batch is a set of
independent samples, whatever its size. Every rule gives the conditional output at w = 1 exactly,
as diffusers' guiders do (they switch guidance off there), which the adapters' (w - 1) gate matches.

What a step does is the rule's `action` (guide both branches, the conditional branch alone, or
nothing); `RuleRun` carries a rule's state along one sampling run (APG's momentum).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from pipeline.backends.family import cfg

# What a step of a rule computes: both branches combined, the conditional branch alone (1 NFE),
# or no pass at all (CFG-Zero*'s zero-initialised steps: the output is 0).
GUIDE, COND, ZERO = "guide", "cond", "zero"


def _per_sample(x: torch.Tensor) -> list[int]:
    return list(range(1, x.dim()))


def _scales(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(w, device=like.device).to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _unguided_where_one(out: torch.Tensor, cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The conditional output for samples at w = 1 (where diffusers' guiders are off)."""
    one = (torch.as_tensor(w, device=out.device) == 1).view(-1, *([1] * (out.dim() - 1)))
    return torch.where(one, cond, out)


@dataclass(frozen=True)
class Rule:
    """A guidance rule. Subclasses: `name`, their parameters as fields, and `combine`."""

    name: ClassVar[str] = ""

    def identity(self) -> dict:
        """What the store and the adapters record: the rule's name and every parameter."""
        return {"rule": self.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}}

    def action(self, step: int, sigma: float) -> str:
        """GUIDE, COND or ZERO for a step (its index and noise level)."""
        return GUIDE

    def combine(self, cond: torch.Tensor, null: torch.Tensor, w: torch.Tensor, state: dict) -> torch.Tensor:
        raise NotImplementedError

    def run(self) -> "RuleRun":
        return RuleRun(self)


class RuleRun:
    """One sampling run under a rule: the state it carries from step to step (fresh per run)."""

    def __init__(self, rule: Rule):
        self.rule, self.state = rule, {}

    def combine(self, cond: torch.Tensor, null: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.rule.combine(cond, null, w, self.state)


@dataclass(frozen=True)
class CFG(Rule):
    name: ClassVar[str] = "cfg"

    def combine(self, cond, null, w, state):
        return cfg(cond, null, w)


@dataclass(frozen=True)
class Interval(Rule):
    """CFG only while the noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) lies in (low, high]."""

    name: ClassVar[str] = "interval"
    low: float = 0.3
    high: float = 3.0

    def action(self, step, sigma):
        return GUIDE if self.low < sigma <= self.high else COND

    def combine(self, cond, null, w, state):
        return cfg(cond, null, w)


def rescaled(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. §3.4: the guided output's per-sample std brought to the conditional output's, mixed
    with the plain guided output by phi (diffusers' `rescale_noise_cfg`, the same unbiased std)."""
    ratio = cond.std(dim=_per_sample(cond), keepdim=True) / guided.std(dim=_per_sample(guided), keepdim=True)
    return phi * (guided * ratio) + (1 - phi) * guided


@dataclass(frozen=True)
class Rescale(Rule):
    name: ClassVar[str] = "rescale"
    phi: float = 0.7

    def combine(self, cond, null, w, state):
        return rescaled(cfg(cond, null, w), cond, self.phi)


@dataclass(frozen=True)
class APG(Rule):
    """momentum: the update's running average r <- update + momentum * r along the run (0: none;
    the paper's is negative); norm_threshold: the update's per-sample norm capped there (0: no cap);
    eta: weight of the update's part parallel to the conditional output (0: the paper's choice)."""

    name: ClassVar[str] = "apg"
    eta: float = 0.0
    norm_threshold: float = 15.0
    momentum: float = -0.5

    def combine(self, cond, null, w, state):
        diff = cond - null
        if self.momentum != 0:
            diff = diff + self.momentum * state["average"] if "average" in state else diff
            state["average"] = diff
        dims = _per_sample(diff)
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / norm)
        # the projection in float64, as diffusers does: at bfloat16 it would lose the parallel part
        v0, v1 = diff.double(), torch.nn.functional.normalize(cond.double(), dim=dims)
        parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
        update = (v0 - parallel).to(diff.dtype) + self.eta * parallel.to(diff.dtype)
        return _unguided_where_one(null + _scales(w, cond) * update, cond, w)


@dataclass(frozen=True)
class CFGZeroStar(Rule):
    """zero_init_steps: the first steps output zero (the paper's setting for flow-matching velocities;
    an epsilon of zero is not "no motion", so 0 for the DDPM-family bases)."""

    name: ClassVar[str] = "cfg_zero_star"
    zero_init_steps: int = 0

    def action(self, step, sigma):
        return ZERO if step < self.zero_init_steps else GUIDE

    def combine(self, cond, null, w, state):
        flat_c, flat_n = cond.flatten(1).float(), null.flatten(1).float()
        alpha = (flat_c * flat_n).sum(1, keepdim=True) / ((flat_n ** 2).sum(1, keepdim=True) + 1e-8)
        scaled = null * alpha.to(cond.dtype).view(-1, *([1] * (cond.dim() - 1)))
        return cfg(cond, scaled, w)


RULES: dict[str, type[Rule]] = {r.name: r for r in (CFG, Interval, Rescale, APG, CFGZeroStar)}
PLAIN = CFG()


def from_identity(identity: dict | None) -> Rule:
    """The rule a store or an adapter set recorded (none recorded: plain CFG, what every earlier one used)."""
    if not identity:
        return PLAIN
    cls = RULES[identity["rule"]]
    return cls(**{f.name: identity[f.name] for f in fields(cls) if f.name in identity})


def recorded(rule: Rule) -> dict | None:
    """What a store or an adapter set records: nothing for plain CFG, so what was made before the rule
    was a choice keeps its identity."""
    return None if rule == PLAIN else rule.identity()


def guided_steps(rule: Rule, sigmas) -> list[bool]:
    """Per step of a schedule: whether the teacher guides there (what the adapters are trained on)."""
    return [rule.action(i, float(s)) == GUIDE for i, s in enumerate(sigmas)]



def from_params(g) -> Rule:
    """The rule params.yaml's guidance section names (pipeline.config.GuidanceParams), with its parameters."""
    made = {"cfg": CFG, "interval": lambda: Interval(float(g.interval[0]), float(g.interval[1])),
            "rescale": lambda: Rescale(g.rescale_phi),
            "apg": lambda: APG(g.apg_eta, g.apg_norm_threshold, g.apg_momentum),
            "cfg_zero_star": lambda: CFGZeroStar(g.zero_init_steps)}
    return made[g.rule]()
