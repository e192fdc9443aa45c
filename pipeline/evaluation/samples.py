"""The evaluation's samples and their figures: generation with the same seeds and conditions for
every method, features in each space, and scores with bootstrap intervals (pipeline.evaluation.quality).

Two feature spaces:
- Inception-v3 (clean-fid, pinned weights): FID, KID, precision and recall, comparable with the
  real backends and the literature; costly on a CPU, so on the first `evaluate.inception_samples`.
- the digit classifier's penultimate features (the embedded default only, where the judge exists):
  cheap, so on all `evaluate.num_samples`; the figure with the tightest interval on a CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.backends import EMBEDDED
from pipeline.backends.family import Family
from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler
from pipeline.evaluation import fid, judge, quality
from pipeline.guidance.adapters import AdapterSet
from pipeline.guidance.sampling import Guidance, nfe, plan_for, sample
from pipeline.run.progress import Tracker


class Samples:
    """One method's samples at one scale: images, features per space, seconds per image."""

    def __init__(self, images: np.ndarray, features: dict[str, np.ndarray], seconds: float, nfe: int):
        self.images, self.features, self.seconds, self.nfe = images, features, seconds, nfe
        self.scored: dict[str, quality.Scored] = {}  # distance name -> value and bootstrap values


def load_models(params) -> tuple[Family, AdapterSet, str]:
    """The frozen base, set up for the evaluation sampler (refused when it cannot take
    `evaluate.num_steps`), the trained adapters and the sampler's name: every sampling stage.
    params: pipeline.config.Params (base, sample, trajectories, train and evaluate are read)."""
    family = load_base(**params.base.model_dump())
    if params.sample.compile:
        family.compile()
    sampler = params.evaluate.scheduler or params.trajectories.scheduler
    family_scheduler(family, sampler, params.evaluate.num_steps, key="params.yaml: evaluate.num_steps")
    return family, AdapterSet.load(Path(params.train.output), family), sampler


def items(family: Family, p) -> list[dict]:
    """The evaluation's conditions: classes in turn, or captions drawn from evaluate.captions_file."""
    n = p.num_samples
    if family.spec.condition == "class":
        return [{"label": int(i % family.spec.num_classes)} for i in range(n)]
    from pipeline.data.captions import sample_captions

    rng = np.random.default_rng(p.seed)
    return [{"caption": c} for c in sample_captions(Path(p.captions_file), n, rng)]


def held_out(family: Family, p, arrays: dict | None = None) -> tuple[dict, np.ndarray]:
    """Conditions and seeds of the held-out CFG trajectories: evaluation conditions (`arrays`, the
    evaluation's encoded conditions, when already at hand), with seeds no sample or training
    trajectory uses."""
    arrays = family.condition_arrays(items(family, p)) if arrays is None else arrays
    count = len(next(iter(arrays.values())))
    n = p.held_out_trajectories
    rows = np.random.default_rng(p.seed + 1).choice(count, n, replace=count < n)
    return family.condition_batch({k: v[rows] for k, v in arrays.items()}), 10**9 + p.seed + np.arange(n)


class Evaluation:
    def __init__(self, family: Family, adapters: AdapterSet, p, scheduler: str):
        self.family, self.adapters, self.p, self.scheduler = family, adapters, p, scheduler
        self.seeds = p.seed + np.arange(p.num_samples)
        self.items = items(family, p)
        self.cond_arrays = family.condition_arrays(self.items)
        family.release_text_encoders()
        self.judge = None
        if family.spec.name == EMBEDDED:  # the only backend with a judge of its classes
            self.judge = judge.load(judge.WEIGHTS).to(family.device)
        self.extractor = fid.InceptionFeatures(fid.WEIGHTS).to(family.device)
        n = len(self.seeds)
        self.n_inception = min(p.inception_samples or n, n)
        self.refs = {"inception": fid.load_reference(fid.REFERENCE)}
        if self.judge is not None:
            self.refs["judge"] = fid.load_reference(judge.REFERENCE)
        # One set of resamples per space, shared by every method: paired differences.
        self.resamples = {space: quality.resamples(self.count(space), p.bootstrap, p.seed) for space in self.refs}

    def count(self, space: str) -> int:
        return self.n_inception if space == "inception" else len(self.seeds)

    def rows(self, idx):
        return {k: v[idx] for k, v in self.cond_arrays.items()}

    def run(self, mode: str, w: float, scheduler: str | None = None, num_steps: int | None = None,
            guidance: Guidance = Guidance(), label: str | None = None) -> Samples:
        """All evaluation samples of one method at one scale, and their features; by default with
        the evaluation's sampler and step count."""
        scheduler, num_steps = scheduler or self.scheduler, num_steps or self.p.num_steps
        images, seconds = [], 0.0
        bs = self.p.batch_size
        with Tracker(f"evaluate {label or mode} w={w:g}", len(self.seeds)) as tracker:
            for s in range(0, len(self.seeds), bs):
                idx = list(range(s, min(s + bs, len(self.seeds))))
                cond = self.family.condition_batch(self.rows(idx))
                t0 = time.perf_counter()
                x = sample(self.family, cond, self.seeds[idx], torch.full((len(idx),), w), scheduler,
                           num_steps, mode=mode, adapters=self.adapters, guidance=guidance)
                seconds += time.perf_counter() - t0
                images.append(self.family.decode(x).cpu().numpy())
                tracker.advance(len(idx))
        images = np.concatenate(images)
        features = {"inception": fid.image_features(images[: self.n_inception], self.extractor, batch_size=50,
                                                    device=self.family.device)}
        if self.judge is not None:
            features["judge"] = judge.features(self.judge, self._digits(images)).cpu().numpy()
        cost = nfe(plan_for(self.family, scheduler, num_steps, mode, guidance))
        result = Samples(images, features, seconds / len(self.seeds), cost)
        self.measure(result)
        return result

    def _digits(self, images: np.ndarray) -> torch.Tensor:
        from pipeline.data import mnist

        return mnist.to_model_space(torch.from_numpy(images[..., 0])).to(self.family.device)

    def accuracy(self, s: Samples) -> float:
        pred = judge.predict(self.judge, self._digits(s.images)).cpu().numpy()
        return round(float((pred == self.cond_arrays["labels"]).mean()), 4)

    def measure(self, s: Samples) -> None:
        """s's distances and their bootstrap values, once (score and compare both read them)."""
        for space, ref in self.refs.items():
            name = "fid" if space == "inception" else "judge_fd"
            s.scored[name] = quality.Scored.of(quality.Frechet(s.features[space], ref), self.resamples[space])
        s.scored["kid"] = quality.Scored.of(quality.KernelDistance(s.features["inception"], self.refs["inception"]),
                                            self.resamples["inception"])
        for space, ref in self.refs.items():
            member = quality.manifold_membership(s.features[space], ref.features)
            if member is None:
                continue
            n = len(member[0])  # fewer than the samples when the reference keeps fewer features
            idx = self.resamples[space] if n == self.count(space) else quality.resamples(n, self.p.bootstrap, self.p.seed)
            prefix = "" if space == "inception" else "judge_"
            for name, indicators in zip(("precision", "recall"), member):
                s.scored[prefix + name] = quality.Scored.of(quality.Share(indicators), idx)

    def score(self, s: Samples) -> dict:
        """Quality of one method's samples, each distance with its 95 % interval."""
        result = {name: scored.summary(DIGITS.get(name, 4)) for name, scored in s.scored.items()}
        if self.judge is not None:
            result["accuracy"] = self.accuracy(s)
        return result

    def compare(self, a: Samples, b: Samples) -> dict:
        """a minus b, paired by seed and condition; and how close a's images are to b's, seed by seed."""
        out = {f"{name}_diff": a.scored[name].minus(b.scored[name], DIGITS.get(name, 4)) for name in a.scored}
        out["same_seed_mse"] = same_seed_mse(a.images, b.images)
        if "judge" in a.features:
            distance = np.linalg.norm(a.features["judge"] - b.features["judge"], axis=1).mean()
            out["same_seed_judge_distance"] = round(float(distance), 4)
        return out


DIGITS = {"kid": 6}  # KID is small (1e-3 .. 1e-1): more decimals


def same_seed_mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared pixel difference of two sample sets drawn with the same seeds, pixels in [0, 1]."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return round(float((diff ** 2).mean()), 6)
