"""The teacher's guidance rules against diffusers' guiders on the same inputs, step by step.

diffusers' guiders take one scale per call; ours take one per sample, so each check runs a batch of
samples at several scales and compares each sample with the guider at that sample's scale."""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
)
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

from pipeline.guidance import rules

SCALES = [1.0, 1.5, 3.0, 7.5]
STEPS = 6


def outputs(seed: int, steps: int = STEPS, shape=(len(SCALES), 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 0.8) for _ in range(steps)]


def guided_by_diffusers(make, steps_io, sigmas=None) -> torch.Tensor:
    """Each sample's outputs at every step through a fresh guider at that sample's scale."""
    per_sample = []
    for i, w in enumerate(SCALES):
        guider = make(w)
        if isinstance(guider, AdaptiveProjectedGuidance) and guider.adaptive_projected_guidance_momentum is not None:
            # what its prepare_inputs does at step 0: a fresh buffer for the run
            guider.momentum_buffer = MomentumBuffer(guider.adaptive_projected_guidance_momentum)
        rows = []
        for step, (cond, null) in enumerate(steps_io):
            guider.set_state(step, len(steps_io), torch.tensor(999 - step))
            rows.append(guider.forward(cond[i:i + 1], null[i:i + 1]).pred)
        per_sample.append(torch.stack(rows))
    return torch.cat(per_sample, 1)


def guided_by_ours(rule: rules.Rule, steps_io, sigmas) -> torch.Tensor:
    run, w, rows = rule.run(), torch.tensor(SCALES), []
    for step, (cond, null) in enumerate(steps_io):
        action = rule.action(step, sigmas[step])
        rows.append(run.combine(cond, null, w) if action == rules.GUIDE else
                    cond if action == rules.COND else torch.zeros_like(cond))
    return torch.stack(rows)


SIGMAS = [14.6, 5.0, 2.9, 1.0, 0.31, 0.05]


@pytest.mark.parametrize("rule, make", [
    (rules.CFG(), lambda w: ClassifierFreeGuidance(guidance_scale=w)),
    (rules.Rescale(phi=0.7), lambda w: ClassifierFreeGuidance(guidance_scale=w, guidance_rescale=0.7)),
    # sigma in (0.3, 3.0] holds steps 2..4 of SIGMAS: diffusers' start/stop fractions 2/6 and 5/6 pick them
    (rules.Interval(0.3, 3.0), lambda w: ClassifierFreeGuidance(guidance_scale=w, start=2 / 6, stop=5 / 6 + 1e-9)),
    (rules.APG(eta=0.0, norm_threshold=2.0, momentum=-0.5), lambda w: AdaptiveProjectedGuidance(
        guidance_scale=w, eta=0.0, adaptive_projected_guidance_rescale=2.0,
        adaptive_projected_guidance_momentum=-0.5)),
    (rules.APG(eta=0.4, norm_threshold=0.0, momentum=0.0), lambda w: AdaptiveProjectedGuidance(
        guidance_scale=w, eta=0.4, adaptive_projected_guidance_rescale=0.0)),
    (rules.CFGZeroStar(zero_init_steps=1), lambda w: ClassifierFreeZeroStarGuidance(guidance_scale=w,
                                                                                    zero_init_steps=1)),
    (rules.CFGZeroStar(zero_init_steps=0), lambda w: ClassifierFreeZeroStarGuidance(guidance_scale=w,
                                                                                    zero_init_steps=0)),
], ids=["cfg", "rescale", "interval", "apg-momentum-cap", "apg-eta", "cfg-zero-star", "cfg-zero-star-no-init"])
def test_each_rule_gives_the_diffusers_guider_s_output(rule, make):
    steps_io = outputs(seed=len(rule.name))
    ours, theirs = guided_by_ours(rule, steps_io, SIGMAS), guided_by_diffusers(make, steps_io)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_rules_differ_where_they_should():
    """Not all the same formula under another name: at w = 3 each rule moves the CFG output."""
    cond, null = outputs(seed=3, steps=1)[0]
    w = torch.full((len(cond),), 3.0)
    plain = rules.CFG().run().combine(cond, null, w)
    for rule in (rules.Rescale(0.7), rules.APG(), rules.CFGZeroStar()):
        assert (rule.run().combine(cond, null, w) - plain).abs().max() > 1e-2, rule.name


def test_apg_momentum_runs_along_the_trajectory_and_starts_fresh():
    steps_io = outputs(seed=5, steps=3)
    rule, w = rules.APG(momentum=-0.5, norm_threshold=0.0), torch.full((len(SCALES),), 3.0)
    run = rule.run()
    first = [run.combine(c, n, w) for c, n in steps_io]
    again = [rule.run().combine(c, n, w) for c, n in steps_io]  # a fresh run at each step: no momentum
    torch.testing.assert_close(first[0], again[0])
    assert (first[2] - again[2]).abs().max() > 1e-3
    second = rule.run()
    torch.testing.assert_close([second.combine(c, n, w) for c, n in steps_io], first)


def test_every_rule_is_the_conditional_model_at_w_1():
    cond, null = outputs(seed=7, steps=1)[0]
    w = torch.ones(len(cond))
    for cls in rules.RULES.values():
        torch.testing.assert_close(cls().run().combine(cond, null, w), cond, msg=cls.name)


def test_identity_round_trips_and_plain_cfg_records_nothing():
    for rule in (rules.Interval(0.5, 2.0), rules.Rescale(0.3), rules.APG(0.1, 5.0, -0.25), rules.CFGZeroStar(2)):
        assert rules.from_identity(rules.recorded(rule)) == rule
    assert rules.recorded(rules.CFG()) is None and rules.from_identity(None) == rules.CFG()
    assert rules.guided_steps(rules.Interval(0.3, 3.0), SIGMAS) == [False, False, True, True, True, False]
