"""What the epsilon-only adapter loss costs DDPM sampling with a DiT's learned variance (issue 22).

    python benchmarks/dit_variance.py [--base-steps 1200] [--train-steps 600] [--adapter paper]
                                      [--adapter-seeds 0,1] [--scales 1.5,4.0] [--ddpm-steps 250,50]
                                      [--samples 64]

DiT-XL/2 outputs 8 channels: 4 epsilon and 4 variance values v in [-1, 1] that DDPM's
`learned_range` turns into log sigma^2 = (v + 1)/2 log beta_t + (1 - v)/2 log beta~_t. CFG guides
epsilon and takes v from the conditional branch; our adapter loss (pipeline.guidance.training.fit)
covers the epsilon channels only (`family.guided_channels`), while the authors' covers all 8. At a
DDPM evaluation the sampler reads the *adapted* model's v, which our loss leaves free.

On a tiny learned-variance DiT (pixel space 4x8x8, 10 classes, trained here in 1-2 minutes on a
synthetic class-conditional data set with improved DDPM's hybrid loss, so that its v means
something and CFG moves samples), this benchmark:
  1. collects a CFG trajectory store with the project's own code (TrajectoryStore and
     cfg_trajectory_arrays, the DDIM grid as conf/backend/dit-xl-2.yaml collects it, w ~ U[1, 6]);
  2. trains adapters with pipeline.guidance.training.fit, as the dit-xl-2 backend does (the paper's
     cross-attention adapter, no content path, no w gate), once with our epsilon-only loss ("eps4")
     and once with all 8 channels ("all8", the authors' loss: `guided_channels` patched to the
     identity on the family instance for the training call only; pipeline/ has no setting for it);
  3. samples the same seeds and labels with DDPM and the learned variance (the dit-xl-2 evaluation)
     and compares, per guidance scale:
       drift     along CFG's own DDPM trajectories: mean |v_AGD - v_CFG| of the variance channels,
                 the log sigma^2 change it makes, and the epsilon error beside CFG's correction size
       mse       same-seed MSE of final samples against CFG's, for
                 agd      the adapted model, its own v (what `agd evaluate` samples)
                 oracle   AGD's epsilon with CFG's v at the same state (isolates the variance effect)
                 cfg+agdv CFG's epsilon with the adapted model's v (the drift alone, on the teacher)
                 cond     the unguided model (the size of what guidance does: the reference scale)
       cfg learned vs fixed_small: CFG's samples with its own learned variance against CFG's with
                 the fixed one (same noise): what the whole learned variance does to samples here
       and the same comparison under fixed-variance DDPM (`fixed_small`) and DDIM, which read
       epsilon only.
Every MSE has a bootstrap 95 % interval over samples; agd - oracle is paired per sample. With
several --adapter-seeds every adapter is trained once per seed: the spread between seeds is the
noise the variance effect is judged against. Writes reports/dit_variance.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AGD_THREADS", "1")  # one thread: a shared 2-core machine (docs: environment)
from pipeline.run import runtime  # noqa: E402

CLASSES = 10
ADAPTERS = {"paper": (0, False), "embedded": (2, True)}  # train.mlp, train.w_gate: dit-xl-2's, the embedded default's
LATENT = (4, 8, 8)
SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
             "clip_sample": False}  # DiT-XL/2's schedule; no variance_type: the family sets it per sampler


# --- the tiny base: a learned-variance DiT on synthetic class-conditional data -----------------
def class_data(n: int, gen):
    """n samples of 10 classes: a smooth pattern per class at a random strength plus smooth noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1234)
    patterns = F.interpolate(torch.randn(CLASSES, 4, 3, 3, generator=g), size=LATENT[1:], mode="bilinear",
                             align_corners=True)
    patterns = 0.7 * patterns / patterns.std(dim=(1, 2, 3), keepdim=True)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    strength = 0.4 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
    noise = F.interpolate(torch.randn(n, 4, 4, 4, generator=gen), size=LATENT[1:], mode="bilinear",
                          align_corners=True)
    return strength * patterns[labels] + 0.3 * noise, labels


def hybrid_loss(model, scheduler, x0, labels, gen):
    """Improved DDPM's L_hybrid (Nichol & Dhariwal 2021), as DiT trains: epsilon MSE plus the
    variational bound's term at t for the variance channels (mean stopped), in bits per dimension."""
    import torch

    b = len(x0)
    t = torch.randint(0, 1000, (b,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    ab = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    ab_prev = torch.where(t > 0, scheduler.alphas_cumprod[(t - 1).clamp(min=0)], torch.ones(())).view(-1, 1, 1, 1)
    beta = scheduler.betas[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = model(x_t, timestep=t, class_labels=labels).sample
    eps_hat, v = out[:, :4], out[:, 4:]
    mse = (eps_hat - eps).pow(2).mean()
    beta_tilde = (beta * (1 - ab_prev) / (1 - ab)).clamp(min=1e-20)
    log_q = beta_tilde.log()
    log_p = (v + 1) / 2 * beta.log() + (1 - v) / 2 * log_q
    x0_hat = (x_t - (1 - ab).sqrt() * eps_hat.detach()) / ab.sqrt()
    mean_gap = beta * ab_prev.sqrt() / (1 - ab) * (x0 - x0_hat)  # mu_q - mu_p: the x_t terms cancel
    kl = 0.5 * (-1 + log_p - log_q + (log_q - log_p).exp() + mean_gap.pow(2) * (-log_p).exp())
    vb = (kl.mean(dim=(1, 2, 3)) / math.log(2))[t > 0].sum() / b  # t = 0 (the decoder term) left out
    return mse, vb


def train_base(steps: int, batch_size: int, lr: float, seed: int):
    """The tiny DiT (out_channels 8, as DiT-XL/2), trained briefly; label drop once per sample (10 %)."""
    import torch
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from pipeline.run.progress import Tracker

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
                                  num_layers=4, sample_size=LATENT[1], patch_size=2, num_embeds_ada_norm=CLASSES)
    model.eval()  # no per-block label drop: one drop per sample below, as DiT-XL/2 was trained
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    scheduler = DDPMScheduler(**SCHEDULER)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    mse = vb = torch.zeros(())
    with Tracker("base: tiny learned-variance DiT", steps) as tracker:
        for step in range(steps):
            x0, labels = class_data(batch_size, gen)
            drop = torch.rand(batch_size, generator=gen) < 0.1
            labels = torch.where(drop, torch.full_like(labels, CLASSES), labels)
            mse, vb = hybrid_loss(model, scheduler, x0, labels, gen)
            opt.zero_grad(set_to_none=True)
            (mse + vb).backward()
            opt.step()
            decay = min(0.995, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            tracker.advance(1, mse=mse.item(), vb=vb.item())
    model.load_state_dict(ema)
    return model, {"mse": mse.item(), "vb_bits": vb.item(), "parameters": sum(p.numel() for p in model.parameters())}


# --- the project's own pipeline: store, adapters ---------------------------------------------
def collect_store(family, path: Path, per_class: int, w_range, scheduler: str, num_steps: int, batch: int):
    """A CFG trajectory store, written as `agd trajectories` writes one (TrajectoryStore API)."""
    import numpy as np
    import torch

    from pipeline.backends.schedulers import family_scheduler
    from pipeline.data.store import TrajectoryStore
    from pipeline.guidance.sampling import cfg_trajectory_arrays

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), per_class)
    w = rng.uniform(*w_range, len(labels)).astype(np.float32)
    seeds = np.arange(len(labels))
    timesteps = family_scheduler(family, scheduler, num_steps).timesteps.numpy()
    store = TrajectoryStore.create(path, {"conditions_sha256": "benchmarks/dit_variance"}, num_steps, LATENT,
                                   (8, *LATENT[1:]), timesteps, w, seeds, {"labels": labels})
    for start in range(0, len(labels), batch):
        rows = list(range(start, min(start + batch, len(labels))))
        cond = {"labels": torch.from_numpy(labels[rows])}
        store.write(rows, cfg_trajectory_arrays(family, cond, seeds[rows], torch.from_numpy(w[rows]), scheduler,
                                                num_steps))
    return TrajectoryStore.open(path)


def train_adapters(family, store, args, seed: int, all_channels: bool):
    """pipeline.guidance.training.fit; all_channels: the loss over all 8 output channels (the authors')."""
    from pipeline.config.sections import TrainParams
    from pipeline.guidance.training import fit

    mlp, w_gate = ADAPTERS[args.adapter]
    p = TrainParams(architecture="cross_attention", width=args.width, heads=4, mlp=mlp, w_gate=w_gate,
                    fourier_features=32, steps=args.train_steps, batch_size=64, lr=args.lr,
                    buffer_trajectories=len(store), seed=seed)
    if all_channels:  # no setting for it in pipeline/: the loss compares what guided_channels returns
        family.guided_channels = lambda out: out
    try:
        adapters, losses, summary = fit(family, store, p, None, prefetch_depth=0,
                                        label=f"train {'all8' if all_channels else 'eps4'} seed {seed}")
    finally:
        if all_channels:
            del family.guided_channels
    # the first steps' loss is the base's own error (adapters start at zero): captured = 1 - final / first
    first, final = sum(losses[:10]) / 10, sum(losses[-50:]) / 50
    return adapters, {**summary, "first_loss": first, "final_loss": final, "captured": 1 - final / first}


class Spliced:
    """Stands in for an AdapterSet in `sample(mode="agd")`: the epsilon channels of one source and the
    variance channels of another at the same state. A source is an AdapterSet, "cfg" (CFG's two
    branches, guided) or "cond" (the conditional branch alone: where CFG's variance channels come from,
    so it gives exactly CFG's v for one pass instead of two)."""

    def __init__(self, eps, var):
        self.eps, self.var = eps, var

    def context(self, family, cond, w):
        sets = [s for s in (self.eps, self.var) if not isinstance(s, str)]
        return {"w": w, **{id(s): s.context(family, cond, w) for s in sets}}

    def _out(self, source, family, fixed, x, t, cond):
        if source == "cfg":
            return family.guide(*family.branches(x, t, cond), fixed["w"])
        if source == "cond":
            return family.forward(x, t, cond)
        return source.step(family, fixed[id(source)], x, t, cond)

    def step(self, family, fixed, x, t, cond):
        import torch

        c = family.latent_shape[0]
        eps = self._out(self.eps, family, fixed, x, t, cond)
        var = self._out(self.var, family, fixed, x, t, cond)
        return torch.cat([eps[:, :c], var[:, c:]], dim=1)


# --- measurements ----------------------------------------------------------------------------
def drift_recorder(family, adapter_sets: dict, cond, w, steps: int):
    """A `record` for CFG's own DDPM (learned variance) run: at every state of its trajectories, how far
    each adapter set's pass moves the variance channels from CFG's (the conditional branch's), what
    that does to log sigma^2, and its epsilon error beside CFG's correction. Returns (record, result)."""
    import torch

    from pipeline.backends.schedulers import family_scheduler

    c = family.latent_shape[0]
    sched = family_scheduler(family, "DDPMScheduler", steps)
    log_range = {}  # log beta_t - log beta~_t per step: what a unit of v is worth in log sigma^2
    for t in sched.timesteps.tolist():
        prev = sched.previous_timestep(t)
        ab, ab_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        beta = 1 - ab / ab_prev
        log_range[t] = float(beta.log() - (beta * (1 - ab_prev) / (1 - ab)).clamp(min=1e-20).log())
    contexts = {name: a.context(family, cond, w) for name, a in adapter_sets.items()}
    sums = {name: {"v_abs_diff": 0.0, "logvar_abs_diff": 0.0, "eps_abs_err": 0.0} for name in adapter_sets}
    ref = {"v_abs": 0.0, "v_mean": 0.0, "eps_correction_abs": 0.0, "steps": 0}

    def record(step, x_in, t, out):
        ref["steps"] += 1
        span = log_range[int(t[0])]
        eps_cond = family.forward(x_in, t, cond)[:, :c]
        ref["v_abs"] += out[:, c:].abs().mean().item()
        ref["v_mean"] += out[:, c:].mean().item()  # -1: beta~ (fixed_small), +1: beta (fixed_large)
        ref["eps_correction_abs"] += (out[:, :c] - eps_cond).abs().mean().item()
        for name, adapters in adapter_sets.items():
            agd = adapters.step(family, contexts[name], x_in, t, cond)
            dv = (agd[:, c:] - out[:, c:]).abs()
            sums[name]["v_abs_diff"] += dv.mean().item()
            sums[name]["logvar_abs_diff"] += (dv * span / 2).mean().item()
            sums[name]["eps_abs_err"] += (agd[:, :c] - out[:, :c]).abs().mean().item()

    def result() -> dict:
        n = ref["steps"]
        out = {"cfg_v_abs": ref["v_abs"] / n, "cfg_v_mean": ref["v_mean"] / n,
               "cfg_eps_correction_abs": ref["eps_correction_abs"] / n}
        for name, s in sums.items():
            out[name] = {k: v / n for k, v in s.items()}
            out[name]["v_drift_over_v"] = out[name]["v_abs_diff"] / out["cfg_v_abs"]
            out[name]["eps_err_over_correction"] = out[name]["eps_abs_err"] / out["cfg_eps_correction_abs"]
        return out

    return record, result


def interval(values, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean and bootstrap 95 % interval over samples."""
    import numpy as np

    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    return {"mean": float(values.mean()), "lo": float(np.quantile(means, 0.025)),
            "hi": float(np.quantile(means, 0.975))}


def per_sample_mse(a, b):
    return (a - b).pow(2).mean(dim=(1, 2, 3)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-steps", type=int, default=1200, help="training steps of the tiny base")
    parser.add_argument("--base-lr", type=float, default=1e-3)
    parser.add_argument("--per-class", type=int, default=16, help="CFG trajectories per class in the store")
    parser.add_argument("--store-steps", type=int, default=25, help="DDIM steps of the stored trajectories")
    parser.add_argument("--train-steps", type=int, default=600, help="adapter training steps (batch 64)")
    parser.add_argument("--lr", type=float, default=5e-3, help="adapters' peak learning rate")
    parser.add_argument("--width", type=int, default=16, help="adapter width")
    parser.add_argument("--adapter", choices=tuple(ADAPTERS), default="paper",
                        help="paper: dit-xl-2's cross-attention adapter (mlp 0, no w gate); embedded: the embedded "
                        "default's (content path, w gate)")
    parser.add_argument("--adapter-seeds", default="0,1", help="every adapter is trained once per seed")
    parser.add_argument("--scales", default="1.5,4.0", help="guidance scales evaluated")
    parser.add_argument("--samples", type=int, default=64, help="samples per setting (same seeds and labels)")
    parser.add_argument("--ddpm-steps", default="250,50", help="DDPM step counts (250: the DiT paper's; fewer "
                        "steps make the variance matter more)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "reports/dit_variance.json")
    args = parser.parse_args()
    runtime.setup()
    import torch

    from pipeline.backends import BACKENDS
    from pipeline.backends.dit import DiTFamily
    from pipeline.guidance.sampling import sample

    started = time.perf_counter()
    print(f"settings: {json.dumps({k: str(v) for k, v in vars(args).items()})}, threads {torch.get_num_threads()}")
    spec = BACKENDS["dit-xl-2"]
    model, base_info = train_base(args.base_steps, 128, args.base_lr, seed=0)
    family = DiTFamily(spec, "tiny-learned-variance", model, dict(SCHEDULER)).freeze()
    base_s = time.perf_counter() - started
    seeds_list = [int(s) for s in args.adapter_seeds.split(",")]
    adapter_sets, adapter_info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        store = collect_store(family, Path(tmp) / "trajectories.zarr", args.per_class, spec.w_range, "DDIMScheduler",
                              args.store_steps, 80)
        for seed in seeds_list:
            for loss, all8 in (("eps4", False), ("all8", True)):
                name = f"{loss}/s{seed}"
                adapter_sets[name], adapter_info[name] = train_adapters(family, store, args, seed, all8)
    train_s = time.perf_counter() - started - base_s
    print("adapters: share of the base's error to CFG's target captured on the store: "
          + ", ".join(f"{k} {v['captured']:.3f}" for k, v in adapter_info.items()), flush=True)

    labels = torch.arange(args.samples) % CLASSES
    cond, seeds = {"labels": labels}, list(range(100_000, 100_000 + args.samples))
    fixed_variance = {"variance_type": "fixed_small"}  # DDPM reading epsilon only (no params.yaml option gives it)

    def run(mode, w, scheduler, steps, adapters=None, fixed=False, record=None):
        if fixed:
            family.scheduler_overrides = lambda name: fixed_variance
        try:
            return sample(family, cond, seeds, torch.full((args.samples,), w), scheduler, steps, mode=mode,
                          adapters=adapters, record=record)
        finally:
            if fixed:
                del family.scheduler_overrides

    results = {"settings": {**vars(args), "out": str(args.out), "store_trajectories": CLASSES * args.per_class,
                            "store_sampler": "DDIMScheduler", "w_range": list(spec.w_range)},
               "base": base_info, "adapters": adapter_info, "evaluations": {}}
    for w in (float(s) for s in args.scales.split(",")):
        for n in (int(s) for s in args.ddpm_steps.split(",")):
            print(f"w = {w:g}, DDPM {n} steps: CFG (measuring the drift along its trajectories), then the others",
                  flush=True)
            w_batch = torch.full((args.samples,), w)
            record, drift = drift_recorder(family, adapter_sets, cond, w_batch, n)
            cfg = run("cfg", w, "DDPMScheduler", n, record=record)
            mse = {"cond": per_sample_mse(run("cond", w, "DDPMScheduler", n), cfg)}
            for name, a in adapter_sets.items():
                mse[f"{name}/agd"] = per_sample_mse(run("agd", w, "DDPMScheduler", n, a), cfg)
                mse[f"{name}/oracle"] = per_sample_mse(run("agd", w, "DDPMScheduler", n, Spliced(a, "cond")), cfg)
                mse[f"{name}/cfg+agdv"] = per_sample_mse(run("agd", w, "DDPMScheduler", n, Spliced("cfg", a)), cfg)
            cfg_fixed = run("cfg", w, "DDPMScheduler", n, fixed=True)
            fixed = {"cond": per_sample_mse(run("cond", w, "DDPMScheduler", n, fixed=True), cfg_fixed)}
            for name, a in adapter_sets.items():
                fixed[f"{name}/agd"] = per_sample_mse(run("agd", w, "DDPMScheduler", n, a, fixed=True), cfg_fixed)
            results["evaluations"][f"w{w:g}/ddpm{n}"] = row = {
                "drift": drift(),
                "mse": {k: interval(v) for k, v in mse.items()},
                "agd_minus_oracle": {a: interval(mse[f"{a}/agd"] - mse[f"{a}/oracle"]) for a in adapter_sets},
                "mse_fixed_small": {k: interval(v) for k, v in fixed.items()},
                # same seeds, same step noise: how far CFG's samples move when its own learned variance
                # is replaced by the fixed one (how much the variance channels matter at all here)
                "cfg_learned_vs_fixed_small": interval(per_sample_mse(cfg, cfg_fixed)),
                "cfg_sample_mean_square": float(cfg.pow(2).mean()),
            }
            print(ddpm_table(w, n, row, seeds_list), flush=True)
        m = args.ddim_steps
        cfg_ddim = run("cfg", w, "DDIMScheduler", m)
        ddim = {"cond": per_sample_mse(run("cond", w, "DDIMScheduler", m), cfg_ddim)}
        for name, a in adapter_sets.items():
            ddim[f"{name}/agd"] = per_sample_mse(run("agd", w, "DDIMScheduler", m, a), cfg_ddim)
        results["evaluations"][f"w{w:g}/ddim{m}"] = row = {"mse": {k: interval(v) for k, v in ddim.items()}}
        ref = row["mse"]["cond"]["mean"]
        print(f"w = {w:g}, DDIM {m} steps (epsilon only): AGD MSE / cond MSE "
              + ", ".join(f"{a} {row['mse'][a + '/agd']['mean'] / ref:.3f}" for a in adapter_sets)
              + f" (cond MSE {ref:.4g})", flush=True)
    results["runtime_s"] = {"base": round(base_s, 1), "store_and_adapters": round(train_s, 1),
                            "total": round(time.perf_counter() - started, 1)}
    results["summary"] = summarise(results, seeds_list)
    print("summary (means over adapter seeds; MSEs / the unguided model's MSE to CFG):")
    print(json.dumps(results["summary"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({results['runtime_s']['total']:.0f} s)")


def ddpm_table(w: float, n: int, row: dict, seeds: list[int]) -> str:
    """The figures of one scale and DDPM step count, as a markdown table; MSEs over the unguided model's."""
    m, d, fx = row["mse"], row["drift"], row["mse_fixed_small"]
    ref, ref_fixed = m["cond"]["mean"], fx["cond"]["mean"]
    lines = [f"\nw = {w:g}, DDPM {n} steps, learned variance. Drift along CFG's trajectories (CFG's v: mean "
             f"{d['cfg_v_mean']:+.3f}, mean |v| {d['cfg_v_abs']:.4f}; CFG's epsilon correction "
             f"|eps_cfg - eps_cond| {d['cfg_eps_correction_abs']:.4f}); "
             f"same-seed MSE to CFG's samples over the unguided model's ({ref:.4g}; fixed_small: {ref_fixed:.4g}); "
             f"CFG learned vs fixed_small variance {row['cfg_learned_vs_fixed_small']['mean'] / ref:.4f}",
             "| adapters | v drift | / CFG's v | abs dlog var | eps err / correction | agd | oracle | "
             "agd - oracle [95 %] | cfg+agdv | fixed_small agd |", "|---|---|---|---|---|---|---|---|---|---|"]
    for loss in ("eps4", "all8"):
        for s in seeds:
            a = f"{loss}/s{s}"
            diff = row["agd_minus_oracle"][a]
            lines.append(
                f"| {a} | {d[a]['v_abs_diff']:.4f} | {d[a]['v_drift_over_v']:.3f} | {d[a]['logvar_abs_diff']:.4f} | "
                f"{d[a]['eps_err_over_correction']:.3f} | {m[a + '/agd']['mean'] / ref:.4f} | "
                f"{m[a + '/oracle']['mean'] / ref:.4f} | {diff['mean'] / ref:+.5f} [{diff['lo'] / ref:+.5f}, "
                f"{diff['hi'] / ref:+.5f}] | {m[a + '/cfg+agdv']['mean'] / ref:.5f} | "
                f"{fx[a + '/agd']['mean'] / ref_fixed:.4f} |")
    return "\n".join(lines)


def summarise(results: dict, seeds: list[int]) -> dict:
    """Per evaluation and loss, the means over adapter seeds of the figures the docs quote."""
    import numpy as np

    out = {}
    for key, row in results["evaluations"].items():
        ref = row["mse"]["cond"]["mean"]
        for loss in ("eps4", "all8"):
            names = [f"{loss}/s{s}" for s in seeds]

            def mean(get):
                return round(float(np.mean([get(a) for a in names])), 6)

            item = {"agd_mse_over_cond": mean(lambda a: row["mse"][f"{a}/agd"]["mean"] / ref),
                    "agd_mse_over_cond_per_seed": [round(row["mse"][f"{a}/agd"]["mean"] / ref, 6) for a in names]}
            if "drift" in row:
                ref_fixed = row["mse_fixed_small"]["cond"]["mean"]
                item.update({
                    "v_drift_abs": mean(lambda a: row["drift"][a]["v_abs_diff"]),
                    "v_drift_over_cfg_v": mean(lambda a: row["drift"][a]["v_drift_over_v"]),
                    "logvar_drift_abs": mean(lambda a: row["drift"][a]["logvar_abs_diff"]),
                    "eps_err_over_correction": mean(lambda a: row["drift"][a]["eps_err_over_correction"]),
                    "oracle_mse_over_cond": mean(lambda a: row["mse"][f"{a}/oracle"]["mean"] / ref),
                    "agd_minus_oracle_over_cond": mean(lambda a: row["agd_minus_oracle"][a]["mean"] / ref),
                    "agd_minus_oracle_over_cond_95": [[round(row["agd_minus_oracle"][a][k] / ref, 6)
                                                       for k in ("lo", "hi")] for a in names],
                    "cfg_with_agd_v_over_cond": mean(lambda a: row["mse"][f"{a}/cfg+agdv"]["mean"] / ref),
                    "fixed_small_agd_mse_over_cond": mean(lambda a: row["mse_fixed_small"][f"{a}/agd"]["mean"]
                                                          / ref_fixed),
                    "cfg_learned_vs_fixed_small_over_cond": round(row["cfg_learned_vs_fixed_small"]["mean"] / ref, 6),
                })
            out[f"{key}/{loss}"] = item
    return out


if __name__ == "__main__":
    main()
