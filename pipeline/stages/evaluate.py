"""Stage `evaluate`: AGD (1 NFE per step) against CFG (2 NFE per step) on the same conditions and noise.

Per guidance scale: FID (clean-fid, pinned Inception), class accuracy (where a judge exists),
NFE and seconds per image, and how much of CFG's correction `out_cfg - out_cond` AGD's one
pass captures on states of fresh, held-out CFG trajectories. The unguided base (w = 1) is
reported beside them. Writes reports/metrics.json and a CFG | AGD sample grid.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline import devices, fid, preflight
from pipeline.adapters import AdapterSet
from pipeline.backends import load_base
from pipeline.config import load_section
from pipeline.progress import Tracker, log
from pipeline.sampling import NFE_PER_STEP, family_scheduler, sample

METRICS = Path("reports/metrics.json")
GRID = Path("reports/samples.png")
INCEPTION = Path("data/assets/inception-2015-12-05.pt")
FID_REF = Path("data/fid_ref.npz")
CLASSIFIER = Path("models/classifier.pt")


def scale_key(w: float) -> str:
    """3.0 -> "w3", 1.5 -> "w1_5": keys without dots keep `dvc metrics diff` readable."""
    return "w" + (f"{w:g}").replace(".", "_")


class Evaluation:
    def __init__(self, family, adapters, p, scheduler: str, held_out: tuple[str, int] | None = None):
        """scheduler: the sampler of the evaluation samples (evaluate.num_steps steps); held_out: the
        (sampler, steps) of the fresh CFG trajectories that measure distillation, by default the same."""
        self.family, self.adapters, self.p, self.scheduler = family, adapters, p, scheduler
        self.held_out = held_out or (scheduler, p.num_steps)
        n = p.num_samples
        self.seeds = p.seed + np.arange(n)
        if family.spec.condition == "class":
            self.items = [{"label": int(i % family.spec.num_classes)} for i in range(n)]
        else:
            from pipeline.captions import sample_captions

            rng = np.random.default_rng(p.seed)
            self.items = [{"caption": c} for c in sample_captions(Path(p.captions_file), n, rng)]
        self.cond_arrays = family.condition_arrays(self.items)
        family.release_text_encoders()
        self.judge = None
        if family.spec.condition == "class" and family.spec.name == "mnist-dit":
            from pipeline import classifier

            self.judge = classifier.load(CLASSIFIER).to(family.device)
        self.extractor = fid.InceptionFeatures(INCEPTION).to(family.device)
        self.ref = fid.load_stats(FID_REF)

    def generate(self, mode: str, w: float) -> tuple[np.ndarray, float]:
        """All evaluation samples of one method at one scale; returns uint8 images and s/image."""
        images, seconds = [], 0.0
        bs = self.p.batch_size
        with Tracker(f"evaluate {mode} w={w:g}", len(self.seeds)) as tracker:
            for s in range(0, len(self.seeds), bs):
                idx = list(range(s, min(s + bs, len(self.seeds))))
                cond = self.family.condition_batch({k: v[idx] for k, v in self.cond_arrays.items()})
                t0 = time.perf_counter()
                x = sample(self.family, cond, self.seeds[idx], torch.full((len(idx),), w), self.scheduler,
                           self.p.num_steps, mode=mode, adapters=self.adapters)
                seconds += time.perf_counter() - t0
                images.append(self.family.decode(x).cpu().numpy())
                tracker.advance(len(idx))
        return np.concatenate(images), seconds / len(self.seeds)

    def judge_accuracy(self, images: np.ndarray) -> float | None:
        if self.judge is None:
            return None
        from pipeline import classifier, mnist

        x = mnist.to_model_space(torch.from_numpy(images[..., 0])).to(self.family.device)
        pred = classifier.predict(self.judge, x).cpu().numpy()
        labels = self.cond_arrays["labels"]
        return round(float((pred == labels).mean()), 4)

    def score(self, mode: str, w: float) -> tuple[dict, np.ndarray]:
        images, spi = self.generate(mode, w)
        feats = fid.image_features(images, self.extractor, batch_size=50, device=self.family.device)
        result = {"fid": round(fid.frechet(fid.statistics(feats), self.ref), 4),
                  "nfe_per_image": NFE_PER_STEP[mode] * self.p.num_steps,
                  "seconds_per_image": round(spi, 5)}
        accuracy = self.judge_accuracy(images)
        if accuracy is not None:
            result["accuracy"] = accuracy
        return result, images

    @torch.no_grad()
    def correction_captured(self, w: float) -> dict:
        """Share of CFG's correction that AGD reproduces, on every state of fresh CFG trajectories."""
        n = self.p.held_out_trajectories
        rng = np.random.default_rng(self.p.seed + 1)
        rows = rng.choice(len(self.items), n, replace=len(self.items) < n)
        seeds = 10**9 + self.p.seed + np.arange(n)  # never used by trajectories or samples above
        cond = self.family.condition_batch({k: v[rows] for k, v in self.cond_arrays.items()})
        wt = torch.full((n,), w)
        err, corr, dot, norm_a, cond_energy = 0.0, 0.0, 0.0, 0.0, 0.0
        family, adapters = self.family, self.adapters

        def record(step, x_t, t, out_cfg):
            nonlocal err, corr, dot, norm_a, cond_energy
            cfg = family.guided_channels(out_cfg).float()
            cond_out = family.guided_channels(family.forward(x_t, t, cond)).float()
            cond_energy += cond_out.pow(2).sum().item()
            agd = family.guided_channels(adapters(family, x_t, t, cond, wt.to(x_t.device))).float()
            err += (agd - cfg).pow(2).sum().item()
            corr += (cfg - cond_out).pow(2).sum().item()
            dot += ((agd - cond_out) * (cfg - cond_out)).sum().item()
            norm_a += (agd - cond_out).pow(2).sum().item()

        sample(family, cond, seeds, wt, *self.held_out, mode="cfg", record=record)
        return correction_metrics(err, corr, dot, norm_a, cond_energy)


# CFG's correction counts as zero below this share of the conditional output's energy: at w = 1
# it is float rounding (~1e-14), and a ratio against it would be noise (it gave -2e10).
MIN_CORRECTION_ENERGY = 1e-8


def correction_metrics(err: float, corr: float, dot: float, norm_a: float, cond_energy: float) -> dict:
    """How much of CFG's correction `out_cfg - out_cond` AGD reproduces, from summed squares.

    captured = 1 - |agd - cfg|^2 / |cfg - cond|^2: 1 is exact, 0 is no better than the unguided
    model, below 0 is further from CFG than no guidance at all. cosine compares the directions of
    AGD's and CFG's corrections. Both are undefined where CFG corrects nothing (w = 1): then
    `correction_defined` is false and neither is reported. For w < 1 CFG moves towards the
    unconditional model (w = 0 is the unconditional model) and the same definitions hold.
    """
    if corr <= MIN_CORRECTION_ENERGY * cond_energy:
        return {"correction_defined": False}
    return {"correction_defined": True, "correction_captured": round(1 - err / corr, 4),
            "correction_cosine": round(dot / max((corr * norm_a) ** 0.5, 1e-12), 4)}


def grid(left: np.ndarray, right: np.ndarray, columns: int = 10, rows: int = 4, zoom: int = 3) -> np.ndarray:
    """CFG samples left, AGD samples right (same seeds and conditions), a white gap between."""
    def tile(images):
        images = images[: columns * rows]
        n, h, w, c = images.shape
        r = -(-n // columns)
        images = np.concatenate([images, np.zeros((r * columns - n, h, w, c), np.uint8)])
        out = images.reshape(r, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(r * h, columns * w, c)
        return out.repeat(zoom, 0).repeat(zoom, 1)

    a, b = tile(left), tile(right)
    gap = np.full((a.shape[0], 4 * zoom, a.shape[2]), 255, np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def run() -> None:
    from PIL import Image

    base, traj, train_p, cond_p, p = (load_section(s) for s in ("base", "trajectories", "train", "conditions",
                                                                  "evaluate"))
    preflight.writable_all([("metrics", METRICS, "file"), ("sample grid", GRID, "file")])
    family = load_base(**asdict(base))
    sampler = p.scheduler or traj.scheduler
    family_scheduler(family, sampler, p.num_steps, key="params.yaml: evaluate.num_steps")
    log(f"evaluate: {family.spec.name} base on {devices.describe(family.device, family.dtype)}; samples with "
        f"{sampler}, {p.num_steps} steps; distillation on {traj.scheduler} trajectories of {traj.num_steps} steps")
    adapters = AdapterSet.load(Path(train_p.output), family)
    ev = Evaluation(family, adapters, p, sampler, held_out=(traj.scheduler, traj.num_steps))
    metrics: dict = {}
    metrics["unguided"], _ = ev.score("cond", 1.0)
    log(f"evaluate: unguided {metrics['unguided']}")
    for w in p.guidance_scales:
        cfg, cfg_images = ev.score("cfg", w)
        agd, agd_images = ev.score("agd", w)
        versus = {"fid_ratio": round(agd["fid"] / cfg["fid"], 4),
                  "time_ratio": round(agd["seconds_per_image"] / cfg["seconds_per_image"], 4),
                  "in_training_range": bool(cond_p.w_min <= w <= cond_p.w_max),
                  **ev.correction_captured(w)}
        if "accuracy" in cfg:
            versus["accuracy_gap"] = round(agd["accuracy"] - cfg["accuracy"], 4)
        metrics[scale_key(w)] = {"cfg": cfg, "agd": agd, "agd_vs_cfg": versus}
        log(f"evaluate: w={w:g} cfg {cfg} agd {agd} {versus}")
        if w == p.default_scale:
            metrics["default_scale"] = {"w": w, **versus}
            GRID.parent.mkdir(parents=True, exist_ok=True)
            image = grid(cfg_images, agd_images)
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(GRID)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"evaluate: wrote {METRICS} and {GRID}")
