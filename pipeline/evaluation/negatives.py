"""Negative conditions, measured: AGD with a negative against CFG with the same negative (its
unconditional branch), on the same seeds, for adapters trained with negatives (conditions.negative_share).

`evaluate.negative_samples` conditions, each with a negative (class models: another class, drawn with
evaluate.seed; text models: a line of conditions.negatives_file), are sampled four ways on the same
seeds: CFG and AGD with the negative, CFG and AGD without it. Per sample only scalars are kept (the
judge's probability on the negative class and whether it sees the condition's class; pixel distances),
so memory is bounded by the batch. Figures, each a mean with a 95 % paired bootstrap interval:

- negative_mass: the judge's probability on the negative class (embedded default; lower: the negative
  was applied), per method, and AGD minus CFG with the negative; negative_logprob: its mean log
  (nats), which still separates methods where a confident judge leaves every other class ~1e-4;
- accuracy: the judge's class is the condition's, per method, and AGD minus CFG;
- same_seed_mse: AGD's images against CFG's, both with the negative; and how far the negative moves
  each method's images from its own without it (a negative that AGD ignored would move nothing);
- correction captured, cosine and gain on fresh held-out CFG trajectories with negatives
  (pipeline.evaluation.distill), beside evaluate's own figures without a negative.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.data.conditions import read_negatives
from pipeline.evaluation import distill, quality
from pipeline.guidance.sampling import sample
from pipeline.run.progress import Tracker

if TYPE_CHECKING:
    from pipeline.evaluation.samples import Generator
    from pipeline.guidance.rules import Rule

SEED_OFFSET = 2 * 10**6  # the negatives' seeds: apart from every other evaluation and held-out seed
METHODS = ("cfg_negative", "agd_negative", "cfg", "agd")


def negative_items(gen: Generator, p, negatives_file: str, count: int) -> list[dict]:
    """The evaluation's conditions (classes in turn, or its captions) each with a drawn negative."""
    rng = np.random.default_rng([p.seed, 2])
    base = gen.items[:count] if len(gen.items) >= count else [gen.items[i % len(gen.items)] for i in range(count)]
    if gen.family.spec.condition == "class":
        classes = gen.family.spec.num_classes
        other = rng.integers(0, classes - 1, count)
        return [{"label": i["label"], "negative": int(o + (o >= i["label"]))} for i, o in zip(base, other)]
    prompts = read_negatives(Path(negatives_file))
    return [{"caption": i["caption"], "negative": prompts[k]} for i, k in zip(base, rng.integers(0, len(prompts), count))]


def _probabilities(gen: Generator, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(gen.judge(gen._digits(images)), dim=1).cpu().numpy()


def figures(gen: Generator, p, w: float, rule: Rule, negatives_file: str, held_scheduler: str,
            held_steps: int) -> dict:
    """The negative figures at guidance scale w (see the module docstring)."""
    family, adapters = gen.family, gen.adapters
    n = p.negative_samples
    items = negative_items(gen, p, negatives_file, n)
    seeds = p.seed + SEED_OFFSET + np.arange(n)
    arrays = family.with_negatives(items, family.condition_arrays(items))
    family.release_text_encoders()
    per_sample = {k: np.zeros(n) for k in ("mse_agd_cfg", "moved_cfg", "moved_agd")}
    mass = {m: np.zeros(n) for m in METHODS}
    logprob = {m: np.zeros(n) for m in METHODS}
    correct = {m: np.zeros(n) for m in METHODS}
    with Tracker(f"evaluate negatives w={w:g}", n) as tracker:
        for start in range(0, n, p.batch_size):
            idx = list(range(start, min(start + p.batch_size, n)))
            with_neg = family.condition_batch({k: v[idx] for k, v in arrays.items()})
            plain = {k: v for k, v in with_neg.items() if not k.startswith("negative_")}
            wt = torch.full((len(idx),), float(w))
            images = {}
            for method, cond in (("cfg_negative", with_neg), ("agd_negative", with_neg), ("cfg", plain),
                                 ("agd", plain)):
                mode = method.split("_")[0]
                x = sample(family, cond, seeds[idx], wt, gen.scheduler, p.num_steps, mode=mode, adapters=adapters,
                           rule=rule)
                images[method] = family.decode(x).cpu().numpy()
                if gen.judge is not None:
                    probs = _probabilities(gen, images[method])
                    labels = np.array([items[i]["label"] for i in idx])
                    negs = np.array([items[i]["negative"] for i in idx])
                    mass[method][idx] = probs[np.arange(len(idx)), negs]
                    logprob[method][idx] = np.log(np.maximum(mass[method][idx], 1e-30))
                    correct[method][idx] = probs.argmax(1) == labels
            pixels = {k: v.astype(np.float64) / 255.0 for k, v in images.items()}
            per_sample["mse_agd_cfg"][idx] = _mse(pixels["agd_negative"], pixels["cfg_negative"])
            per_sample["moved_cfg"][idx] = _mse(pixels["cfg_negative"], pixels["cfg"])
            per_sample["moved_agd"][idx] = _mse(pixels["agd_negative"], pixels["agd"])
            tracker.advance(len(idx))
    resamples = quality.resamples(n, p.bootstrap, p.seed)
    out = {"samples": n, "same_seed_mse": _summary(per_sample["mse_agd_cfg"], resamples),
           "moved_by_negative_mse": {"cfg": _summary(per_sample["moved_cfg"], resamples),
                                     "agd": _summary(per_sample["moved_agd"], resamples)}}
    if gen.judge is not None:
        for name, values in (("negative_mass", mass), ("negative_logprob", logprob), ("accuracy", correct)):
            scored = {m: quality.Scored.of(quality.Share(values[m]), resamples) for m in METHODS}
            digits = 6 if name == "negative_mass" else 4  # the mass is ~1e-4 on a confident judge
            out[name] = {m: s.summary(digits) for m, s in scored.items()}
            out[name]["agd_minus_cfg"] = scored["agd_negative"].minus(scored["cfg_negative"], digits)
            out[name]["negative_minus_none"] = {m: scored[f"{m}_negative"].minus(scored[m], digits)
                                                for m in ("cfg", "agd")}
    held = min(p.held_out_trajectories, n)
    held_cond = family.condition_batch({k: v[:held] for k, v in arrays.items()})
    held_seeds = 10**9 + p.seed + SEED_OFFSET + np.arange(held)
    summary, _ = distill.held_out(family, adapters, held_cond, held_seeds, w, held_scheduler, held_steps)
    out["held_out_with_negative"] = summary
    return out


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a - b) ** 2).reshape(len(a), -1).mean(1)


def _summary(values: np.ndarray, resamples: np.ndarray) -> dict:
    return quality.Scored.of(quality.Share(values), resamples).summary(6)
