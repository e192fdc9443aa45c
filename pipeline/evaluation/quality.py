"""Sample-quality figures with their uncertainty: FID, KID, precision and recall in a feature space.

Every set of generated samples is a draw, so each figure comes with a 95 % bootstrap interval
over the generated samples (the reference is fixed). The interval is the bootstrap's spread
centred on the estimate: resampling with replacement repeats samples, and repeats alone raise FID
(by several points at a few hundred Inception samples), so the plain percentile interval
would not even contain the estimate. The spread is what varies from draw to draw; that shift is
not. AGD and CFG are sampled with the same seeds and conditions, so their difference is
bootstrapped *paired*: one resample of sample indices
scores both methods, and the noise the two share cancels. A difference is `significant` when its
interval excludes zero.

FID's bootstrap is cheap because of one identity: with R = sigma_ref^(1/2),
tr sqrt(sigma sigma_ref) = tr sqrt(R sigma R) = sum of sqrt(eigenvalues of Gram(Xc R)) / (n - 1),
so each resample costs an n x n eigenvalue problem (n generated samples) or a d x d one, whichever
is smaller, instead of a d x d matrix square root.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CONFIDENCE = 0.95
BLOCK = 512  # rows of a pairwise matrix held at once: memory BLOCK x n, not n x n (n = 10,000 at the paper's count)
KNN = 3  # neighbours that define a sample's manifold ball (Kynkäänniemi et al. 2019 use k = 3)


def interval(values: np.ndarray) -> tuple[float, float]:
    """The central 95 % of bootstrap values (percentile interval)."""
    lo, hi = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def resamples(n: int, count: int, seed: int) -> np.ndarray:
    """(count, n) bootstrap index sets, the same for every method so that differences are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


@dataclass
class Reference:
    """A feature space's reference: mean and covariance of all real images, and a feature sample
    of them for KID and precision/recall (which need samples, not moments)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    _root: np.ndarray | None = field(default=None, repr=False)

    @property
    def root(self) -> np.ndarray:
        """sigma^(1/2), by an eigen-decomposition (sigma is symmetric positive semi-definite)."""
        if self._root is None:
            vals, vecs = np.linalg.eigh(self.sigma.astype(np.float64))
            self._root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
        return self._root


class Frechet:
    """FID of a generated feature set (and of any resample of it) against a fixed reference."""

    def __init__(self, features: np.ndarray, ref: Reference):
        self.x = features.astype(np.float64)
        self.y = self.x @ ref.root  # centring commutes with the linear map: done per resample
        self.ref_mu, self.ref_trace = ref.mu.astype(np.float64), float(np.trace(ref.sigma))

    def __call__(self, idx: np.ndarray | None = None) -> float:
        x, y = (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])
        n, d = x.shape
        mu = x.mean(0)
        yc = y - y.mean(0)
        small = yc @ yc.T if n <= d else yc.T @ yc  # same non-zero eigenvalues
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(small / (n - 1)), 0, None)).sum()
        tr_sigma = ((x - mu) ** 2).sum() / (n - 1)
        return float(((mu - self.ref_mu) ** 2).sum() + tr_sigma + self.ref_trace - 2 * tr_sqrt)


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's polynomial kernel (a.b / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1) ** 3


class KernelDistance:
    """Unbiased KID (squared MMD, cubic polynomial kernel) of a generated set against reference features.

    A bootstrap resample repeats samples; counting a sample's similarity with its own copy would
    bias the within-set term, so resamples are scored with weights (copies per sample) and pairs of
    a sample with itself are left out, as in the unbiased estimator. The n x n kernel matrix is
    never held: every quadratic form is summed over blocks of its rows (BLOCK x n at a time).
    """

    def __init__(self, features: np.ndarray, ref: Reference):
        self.x, r = features.astype(np.float64), ref.features.astype(np.float64)
        self.diag = ((self.x ** 2).sum(1) / self.x.shape[1] + 1) ** 3
        # each generated sample's mean similarity to the reference
        self.kxr_rows = np.concatenate([_kernel(self.x[s:s + BLOCK], r).mean(1) for s in range(0, len(self.x), BLOCK)])
        m = len(r)
        within = sum(_kernel(r[s:s + BLOCK], r).sum() for s in range(0, m, BLOCK))
        self.within_ref = (within - (((r ** 2).sum(1) / r.shape[1] + 1) ** 3).sum()) / (m * (m - 1))

    def _quadratic(self, weights: np.ndarray) -> np.ndarray:
        """c K c for every row c of weights (k, n), by blocks of K's rows."""
        total = np.zeros(len(weights))
        for s in range(0, len(self.x), BLOCK):
            rows = _kernel(self.x[s:s + BLOCK], self.x)
            total += ((weights[:, s:s + BLOCK] @ rows) * weights).sum(1)
        return total

    def many(self, idx_sets: np.ndarray | None) -> np.ndarray:
        """The distance of the whole set (None) or of every resample (rows of sample indices)."""
        n = len(self.x)
        c = np.ones((1, n)) if idx_sets is None else np.stack([np.bincount(i, minlength=n) for i in idx_sets]).astype(np.float64)
        sums = c.sum(1)
        pairs = sums ** 2 - (c ** 2).sum(1)
        within = (self._quadratic(c) - (c ** 2 * self.diag).sum(1)) / pairs
        cross = (c @ self.kxr_rows) / sums
        return within + self.within_ref - 2 * cross

    def __call__(self, idx: np.ndarray | None = None) -> float:
        return float(self.many(None if idx is None else idx[None])[0])


def _kth_neighbour_radii(feats: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(len(feats))
    for s in range(0, len(feats), BLOCK):
        d = np.sqrt(np.maximum(_sq_dists(feats[s:s + BLOCK], feats), 0))
        out[s:s + BLOCK] = np.partition(d, k, axis=1)[:, k]  # column 0 is the sample itself
    return out


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Is each point inside some ball (centre, radius)? By blocks of points."""
    out = np.empty(len(points), bool)
    for s in range(0, len(points), BLOCK):
        d = np.sqrt(np.maximum(_sq_dists(points[s:s + BLOCK], centres), 0))
        out[s:s + BLOCK] = (d <= radii[None, :]).any(1)
    return out


def manifold_membership(generated: np.ndarray, real: np.ndarray, k: int = KNN
                        ) -> tuple[np.ndarray, np.ndarray] | None:
    """Improved precision and recall's indicators (Kynkäänniemi et al. 2019): for each generated
    sample, is it inside the real manifold (union of balls to each real sample's k-th real
    neighbour); for each real sample, is it inside the generated manifold. Equal set sizes (the
    smaller of the two, first samples of each), since recall grows with the number of generated
    samples. None when there are no more than k samples (no k-th neighbour: e.g. a smoke run)."""
    n = min(len(generated), len(real))
    if n <= k:
        return None
    g, r = generated[:n].astype(np.float64), real[:n].astype(np.float64)
    return _inside(g, r, _kth_neighbour_radii(r, k)), _inside(r, g, _kth_neighbour_radii(g, k))


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = KNN) -> dict:
    """Precision (share of generated samples inside the real manifold) and recall (share of real
    samples inside the generated manifold); {} when there are too few samples."""
    member = manifold_membership(generated, real, k)
    if member is None:
        return {}
    return {"precision": round(float(member[0].mean()), 4), "recall": round(float(member[1].mean()), 4),
            "pr_samples": len(member[0])}


class Share:
    """The share of true indicators, of all samples or of a resample: precision or recall.

    Precision's resamples draw generated samples (the real manifold is fixed). Recall's draw real
    samples, with the generated manifold fixed: a resample with repeats would shrink the k-NN balls
    of repeated samples to zero, so resampling the generated set would measure the repeats, not the
    draw. Recall's interval therefore covers which real images happened to be in the reference,
    not which samples were generated; read it as a lower bound on its uncertainty.
    """

    def __init__(self, indicators: np.ndarray):
        self.x = indicators.astype(np.float64)

    def __call__(self, idx: np.ndarray | None = None) -> float:
        return float(self.x.mean() if idx is None else self.x[idx].mean())


@dataclass
class Scored:
    """A distance of one sample set and its value on every bootstrap resample (the same resamples
    for every method, so that two Scored of different methods subtract as a paired bootstrap)."""

    value: float
    boot: np.ndarray

    @classmethod
    def of(cls, scorer, idx_sets: np.ndarray) -> "Scored":
        if hasattr(scorer, "many"):  # scores every resample at once (KID: one pass over its kernel)
            return cls(float(scorer.many(None)[0]), scorer.many(idx_sets))
        return cls(scorer(), np.array([scorer(i) for i in idx_sets]))

    def summary(self, digits: int = 4) -> dict:
        lo, hi = interval(self.boot - self.boot.mean())  # the spread, centred on the estimate
        lo, hi = self.value + lo, self.value + hi
        return {"value": round(self.value, digits), "ci_low": round(lo, digits), "ci_high": round(hi, digits)}

    def minus(self, other: "Scored", digits: int = 4) -> dict:
        """The paired difference self - other, its interval, and whether the interval excludes zero."""
        out = Scored(self.value - other.value, self.boot - other.boot).summary(digits)
        out["significant"] = bool(out["ci_low"] > 0 or out["ci_high"] < 0)
        return out
