"""The interval code on inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation import fid, quality


def _ref(features: np.ndarray) -> quality.Reference:
    stats = fid.statistics(features)
    return quality.Reference(stats["mu"], stats["sigma"], features)


def _population(d: int, n: int = 4000, seed: int = 0) -> quality.Reference:
    """The reference distribution N(0, I) with exact moments (and a sample for KID / PR)."""
    return quality.Reference(np.zeros(d), np.eye(d), np.random.default_rng(seed).normal(size=(n, d)))


def test_frechet_matches_clean_fid():
    rng = np.random.default_rng(1)
    ref = _ref(rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)))
    for n in (12, 200):  # fewer samples than dimensions (Gram route) and more (covariance route)
        gen = rng.normal(0.3, 1.2, size=(n, 20))
        want = fid.frechet(fid.statistics(gen), {"mu": ref.mu, "sigma": ref.sigma})
        assert quality.Frechet(gen, ref)() == pytest.approx(want, rel=1e-6, abs=1e-8)


def test_identical_sets_give_zero_and_no_significant_difference():
    x = np.random.default_rng(2).normal(size=(400, 16))
    score = quality.Frechet(x, _ref(x))
    assert abs(score()) < 1e-8
    scored = quality.Scored.of(score, quality.resamples(len(x), 100, seed=0))
    assert scored.minus(scored) == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "significant": False}


def test_shifted_gaussian_fid_interval_holds_the_true_value():
    d, n = 8, 2000
    rng = np.random.default_rng(3)
    shift = np.full(d, 0.5)  # true FID against N(0, I): |shift|^2 = 2 (equal covariances)
    gen = rng.normal(size=(n, d)) + shift
    score = quality.Frechet(gen, _population(d))
    boot = np.array([score(i) for i in quality.resamples(n, 300, seed=0)])
    lo, hi = quality.interval(boot)
    assert lo < 2.0 < hi and hi - lo < 0.6


def test_kid_separates_shifted_from_same_distribution():
    d, n = 8, 600
    rng = np.random.default_rng(4)
    ref = _population(d, n=n, seed=5)
    idx = quality.resamples(n, 200, seed=1)
    same = quality.KernelDistance(rng.normal(size=(n, d)), ref)
    shifted = quality.KernelDistance(rng.normal(size=(n, d)) + 0.5, ref)
    lo, hi = quality.interval(np.array([same(i) for i in idx]))
    assert lo < 0 < hi  # unbiased: a sample of the reference distribution scores around zero
    lo, hi = quality.interval(np.array([shifted(i) for i in idx]))
    assert lo > 0


def test_pairing_by_seed_narrows_the_interval():
    """Two methods driven by the same noise: pairing cancels what they share."""
    d, n = 8, 500
    rng = np.random.default_rng(6)
    z = rng.normal(size=(n, d))  # the shared per-seed noise
    ref = _population(d)
    a = quality.Frechet(z + 0.30, ref)
    b = quality.Frechet(z + 0.25 + 0.05 * rng.normal(size=(n, d)), ref)
    idx = quality.resamples(n, 300, seed=2)
    paired = quality.Scored.of(a, idx).minus(quality.Scored.of(b, idx))
    other = quality.resamples(n, 300, seed=3)
    unpaired = np.array([a(i) - b(j) for i, j in zip(idx, other)])
    lo, hi = quality.interval(unpaired)
    assert (paired["ci_high"] - paired["ci_low"]) * 3 < hi - lo
    assert paired["significant"] and paired["value"] > 0  # a is further from N(0, I) than b


def test_precision_recall_see_a_collapsed_generator():
    d = 4
    rng = np.random.default_rng(7)
    real = rng.normal(size=(800, d))
    assert min(quality.precision_recall(rng.normal(size=(800, d)), real)[k] for k in ("precision", "recall")) > 0.8
    collapsed = 0.2 * rng.normal(size=(800, d))  # all samples near the mode: realistic, not diverse
    pr = quality.precision_recall(collapsed, real)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.3


def test_interval_holds_the_estimate_although_repeats_raise_fid():
    """Resampling repeats samples, which alone raises FID: the reported interval is the bootstrap's
    spread centred on the estimate, so it contains the estimate (the raw percentiles would not)."""
    rng = np.random.default_rng(8)
    ref = _ref(rng.normal(size=(1000, 64)))
    score = quality.Frechet(rng.normal(size=(60, 64)) + 0.1, ref)  # few samples, many dimensions
    scored = quality.Scored.of(score, quality.resamples(60, 200, seed=0))
    assert quality.interval(scored.boot)[0] > scored.value  # the shift the summary removes
    summary = scored.summary()
    assert summary["ci_low"] < summary["value"] < summary["ci_high"]


def test_precision_recall_need_more_samples_than_neighbours():
    rng = np.random.default_rng(9)
    assert quality.precision_recall(rng.normal(size=(3, 4)), rng.normal(size=(50, 4))) == {}


def test_precision_and_recall_carry_paired_intervals():
    """What AGD gives up, with its uncertainty: a generator that loses diversity has a recall
    significantly below a faithful one's, and its precision is not significantly lower."""
    d = 4
    rng = np.random.default_rng(10)
    real = rng.normal(size=(600, d))
    faithful, narrow = rng.normal(size=(600, d)), 0.5 * rng.normal(size=(600, d))
    idx = quality.resamples(600, 200, seed=0)
    scored = {}
    for name, gen in (("faithful", faithful), ("narrow", narrow)):
        in_real, in_gen = quality.manifold_membership(gen, real)
        assert round(in_real.mean(), 4) == quality.precision_recall(gen, real)["precision"]
        scored[name] = [quality.Scored.of(quality.Share(x), idx) for x in (in_real, in_gen)]
        for s in scored[name]:
            summary = s.summary()
            assert 0 <= summary["ci_low"] <= summary["value"] <= summary["ci_high"] <= 1
            assert summary["ci_high"] > summary["ci_low"]  # a real spread, not a point
    recall_diff = scored["narrow"][1].minus(scored["faithful"][1])
    precision_diff = scored["narrow"][0].minus(scored["faithful"][0])
    assert recall_diff["significant"] and recall_diff["value"] < -0.1
    assert precision_diff["value"] > -0.02 and not (precision_diff["significant"] and precision_diff["value"] < 0)
