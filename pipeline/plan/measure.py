"""`agd plan --measure`: time the passes a plan needs on this machine, now, as a table to project from.

Each (kind of work, batch) the plan calls is timed once on base.device with the params' base, adapters
and training settings (the embedded default's passes are a few ms each, so a CPU run takes under a
minute); the rows have the shapes pipeline.backends.timings reads. Bases too large to time on a CPU
are refused rather than left running for minutes.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.backends.loading import load_base
from pipeline.evaluation import fid
from pipeline.guidance.adapters import AdapterSet
from pipeline.guidance.training import AUTOCAST
from pipeline.plan.timings import Table
from pipeline.run import runtime
from pipeline.run.errors import AGDError

CPU_PARAMETER_LIMIT = 100_000_000  # beyond this a CPU pass takes seconds to minutes: measure on the GPU


def measure(params, needs: list[tuple[str, int]]) -> Table:
    """Time every (kind, batch) in `needs` (pipeline.plan.work.needs) on base.device: one warm-up call,
    the best of two. params: pipeline.config.Params (base, sample and train are read)."""
    runtime.setup()
    family = load_base(**params.base.model_dump())
    device = family.device
    if device.type == "cpu" and family.num_parameters() > CPU_PARAMETER_LIMIT:
        raise AGDError("agd plan --measure", f"the {params.base.backend} base has {family.num_parameters() / 1e6:.0f} M "
                       "parameters: timing its passes on this CPU takes minutes each",
                       "measure where it runs (base.device: cuda), or give a table with --table FILE")
    if params.sample.compile:
        family.compile()
    spec, tr = family.spec, params.train
    key = spec.name.replace("-", "_")

    def items(n):
        return [{"label": i % spec.num_classes} if spec.condition == "class" else {"caption": "a photograph"}
                for i in range(n)]

    def timed(fn) -> tuple[float, float | None]:
        fn()
        best = math.inf
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):  # the best of two; one where a call takes long enough not to be noise
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
            if best > 0.5:
                break
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return 1000 * best, peak

    conds = {}

    def inputs(n):
        if n not in conds:
            conds[n] = family.condition_batch(family.condition_arrays(items(n)))
        x = torch.randn(n, *family.latent_shape, device=device)
        return x, torch.full((n,), 500, device=device, dtype=torch.long), conds[n]

    rows = []
    adapters = AdapterSet(family, tr.architecture, tr.width, tr.heads, tr.fourier_features, tr.seed, tr.mlp, tr.w_gate)
    for kind, n in needs:
        if kind in ("cond", "cfg", "agd"):
            x, t, cond = inputs(n)
            with torch.no_grad():
                if kind == "agd":
                    adapters.attach(family)
                    fixed = adapters.context(family, cond, torch.full((n,), 3.0))
                    ms, peak = timed(lambda: adapters.step(family, fixed, x, t, cond))
                    adapters.detach()
                elif kind == "cond":
                    ms, peak = timed(lambda: family.forward(x, t, cond))
                else:
                    ms, peak = timed(lambda: family.branches(x, t, cond))
            field_ = {"cond": "single_ms", "cfg": "cfg_ms", "agd": "agd_ms"}[kind]
            rows.append({"what": f"{key}_step", "batch": n, field_: ms, "peak_gib": peak})
        elif kind == "train":
            x, t, cond = inputs(n)
            adapters.attach(family)
            if tr.gradient_checkpointing:
                family.denoiser.enable_gradient_checkpointing()
            opt = torch.optim.Adam(adapters.parameters(), lr=tr.lr)
            target, w = torch.randn_like(x), torch.full((n,), 3.0, device=device)
            autocast = AUTOCAST[tr.autocast]

            def step():
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    out = adapters(family, x, t, cond, w)
                loss = F.mse_loss(family.guided_channels(out).float(), family.guided_channels(target).float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                adapters.release()

            ms, peak = timed(step)
            adapters.detach()
            rows.append({"what": f"{key}_train", "batch": n, "step_ms": ms, "peak_gib": peak,
                         "base_dtype": params.base.dtype, "autocast": autocast is not None,
                         "grad_ckpt": tr.gradient_checkpointing})
        elif kind == "decode":
            x, _, _ = inputs(n)
            with torch.no_grad():
                ms, peak = timed(lambda: family.decode(x))
            rows.append({"what": f"{key}_decode", "batch": n, "ms": ms, "peak_gib": peak})
        elif kind == "text":
            prompts = items(n)
            ms, peak = timed(lambda: family.condition_arrays(prompts))
            rows.append({"what": f"{key}_text", "batch": n, "ms": ms, "peak_gib": peak})
        elif kind == "inception" and fid.WEIGHTS.exists():
            m = n if device.type == "cuda" else min(n, 4)  # on a CPU a few images give the per-image cost
            if any(r["what"] == "inception" and r["batch"] == m for r in rows):
                continue
            extractor = fid.InceptionFeatures(fid.WEIGHTS).to(device)
            h, w_, c = family.image_shape
            images = np.random.default_rng(0).integers(0, 256, (m, h, w_, c), dtype=np.uint8)
            ms, peak = timed(lambda: fid.image_features(images, extractor, batch_size=m, device=device))
            rows.append({"what": "inception", "batch": m, "ms": ms, "peak_gib": peak})
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        name = (f"this machine's CPU, {torch.get_num_threads()} torch thread(s) of {os.cpu_count()} cores, load "
                f"average {load:.1f} while measuring")
    if any(k == "inception" for k, _ in needs) and not fid.WEIGHTS.exists():
        name += f"; Inception not measured ({fid.WEIGHTS} is absent: `agd assets`)"
    return Table(f"measured now on {device}", name, rows)
