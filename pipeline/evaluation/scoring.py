"""Scores of sample sets with bootstrap intervals (pipeline.evaluation.quality), against the fixed
references, and paired differences between methods drawn with the same seeds and conditions.

Scoring reads only per-sample features (10,000 x 2,048 float32 is 80 MB) and, for same-seed pixel
distances, the sets' small pixels in blocks: its memory does not grow with the images' size.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation import fid, judge, quality
from pipeline.evaluation.sample_store import blocks
from pipeline.evaluation.samples import Samples

DIGITS = {"kid": 6}  # KID is small (1e-3 .. 1e-1): more decimals
PIXEL_BLOCK = 512  # samples per block of same-seed pixel distances


class Scorer:
    def __init__(self, layout, p, labels: np.ndarray | None = None):
        """layout: the sets' pipeline.evaluation.sample_store.Layout; p: the evaluate section;
        labels: the class of every sample (accuracy, where there is a judge)."""
        self.layout, self.p, self.labels = layout, p, labels
        self.refs = {"inception": fid.load_reference(fid.REFERENCE)}
        if layout.judge_dim:
            self.refs["judge"] = fid.load_reference(judge.REFERENCE)
        # One set of resamples per space, shared by every method: paired differences.
        self.resamples = {space: quality.resamples(self.count(space), p.bootstrap, p.seed) for space in self.refs}

    def count(self, space: str) -> int:
        return self.layout.inception if space == "inception" else self.layout.count

    def measure(self, s: Samples) -> Samples:
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
        return s

    def accuracy(self, s: Samples) -> float:
        return round(float((s.pred == self.labels).mean()), 4)

    def score(self, s: Samples) -> dict:
        """Quality of one method's samples, each distance with its 95 % interval."""
        if not s.scored:
            self.measure(s)
        result = {name: scored.summary(DIGITS.get(name, 4)) for name, scored in s.scored.items()}
        if s.pred is not None and self.labels is not None:
            result["accuracy"] = self.accuracy(s)
        return result

    def compare(self, a: Samples, b: Samples) -> dict:
        """a minus b, paired by seed and condition; and how close a's images are to b's, seed by seed."""
        for s in (a, b):
            if not s.scored:
                self.measure(s)
        out = {f"{name}_diff": a.scored[name].minus(b.scored[name], DIGITS.get(name, 4)) for name in a.scored}
        out["same_seed_mse"] = same_seed_mse(a, b)
        if "judge" in a.features:
            distance = np.linalg.norm(a.features["judge"] - b.features["judge"], axis=1).mean()
            out["same_seed_judge_distance"] = round(float(distance), 4)
        return out


def same_seed_mse(a: Samples, b: Samples) -> float:
    """Mean squared pixel difference of two sample sets drawn with the same seeds, pixels in [0, 1]
    (at the sets' comparison size: the whole image up to 64 px a side, else averaged blocks)."""
    total, count = 0.0, 0
    for x, y in blocks(a.source, b.source, "pixels", PIXEL_BLOCK):
        diff = (x.astype(np.float64) - y.astype(np.float64)) / 255.0
        total += float((diff ** 2).sum())
        count += diff.size
    return round(total / count, 6)
