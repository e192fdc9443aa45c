"""GPU smoke check: the pipeline's GPU paths once each, at the real shapes, one pass/fail line per check.

    python benchmarks/gpu_smoke.py                        # one H100 / H200: under 10 minutes
    python benchmarks/gpu_smoke.py --tiny --device cpu    # every check's code path, tiny models (CI: < 1 min)
    python benchmarks/gpu_smoke.py --checks training_memory,sampling_speed --out reports/gpu/rerun.jsonl

Models have random weights at the real backends' shapes (benchmarks/real_shapes.py), built on the
GPU, so nothing comes from a hub; dtypes, batch sizes, checkpointing, adapters and samplers are the
backend files' (conf/backend/*.yaml). Each check writes one JSON line to --out: check, status
(passed | failed | skipped), pass, rule (the pass rule in words), seconds and what it measured; a
one-line summary per check is printed, and what the checks print goes to the .log beside --out.
A check that fails or raises does not stop the others. Each check stops at its share of --budget
(seconds, default 540), and checks not started before that deadline are recorded as skipped.
Exit status 1 when a check failed or was not reached; the --tiny CPU run's "skipped: needs CUDA"
(what only a GPU can show: memory, NCCL, flash attention, CUDA graphs, GPU speed) is no failure.

| check             | what it measures                                   | passes when                          |
|-------------------|----------------------------------------------------|--------------------------------------|
| environment       | torch, CUDA, driver; base.device auto; flash SDPA  | auto -> cuda:0, bf16 flash SDPA runs |
| fused_adapters    | fused vs per-block adapters, sampling and training | equal within tolerance               |
| training_memory   | fit() step at each backend file's settings         | peak <= 24 GiB (a 4090)              |
| training_loop     | 30 steps of fit() on a small CFG store             | losses finite, store loss falls      |
| ddp_nccl          | DDP over NCCL, one rank, adapter step, all_reduce  | runs, gradients as without DDP       |
| sampling_speed    | sample(): AGD / CFG time, DiT-XL/2 b64, SDXL b4    | ratio <= 0.6                         |
| cuda_graphs       | Family.compile (sample.compile) on small models    | equals eager, no graph breaks/skips  |
| encoders          | CLIP text encoders, SDXL VAE decode, Inception     | finite, right shape, <= 24 GiB       |
| cli_stages        | agd check ... evaluate for DiT-XL/2 on the device  | every stage exits 0                  |
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "reports" / "gpu" / "smoke.jsonl"
DEFAULT_BUDGET_S = 540.0  # under the 10 minutes one GPU command may run, with room for start-up
CARD_GIB = 24.0  # a 24 GB consumer card (RTX 4090): what the backend files are sized for
PROMPT_TOKENS = 77  # CLIP's context: every SD / SDXL prompt embedding
NEEDS_CUDA = "needs CUDA"


# --- checks, their rules and the budget -------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    rule: str
    cap_s: float  # its share of the default budget (scaled with --budget)
    run: Callable


CHECKS: list[Check] = []


def check(name: str, rule: str, cap_s: float):
    """Register a check. It returns its figures with "summary" (one line) and either "pass" (the
    rule held or not) or "skipped" (why the rule cannot be judged here, after running what can run)."""
    def register(fn):
        CHECKS.append(Check(name, rule, cap_s, fn))
        return fn
    return register


class OutOfTime(BaseException):
    """A check ran past its share of the budget (BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def stop(signum, frame):
        raise OutOfTime(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- models and data, shared by the checks --------------------------------------------------------
class Context:
    """The device, the backend files' settings, and the models the checks share (built once each;
    on CUDA only the model in use stays on the GPU, so each memory figure is that model's own)."""

    def __init__(self, device: torch.device, tiny: bool, work: Path):
        self.device, self.tiny, self.work = device, tiny, work
        self.cuda = device.type == "cuda"
        self._families: dict = {}
        self._settings: dict = {}

    def settings(self, backend: str) -> dict:
        """conf/backend/<backend>.yaml as written (the real backends' values)."""
        if backend not in self._settings:
            self._settings[backend] = yaml.safe_load((ROOT / "conf" / "backend" / f"{backend}.yaml").read_text())
        return self._settings[backend]

    def dtype(self, backend: str) -> torch.dtype:
        return getattr(torch, self.settings(backend)["base"]["dtype"])

    def family(self, backend: str):
        """The frozen base of a backend on the device: real shapes with random weights, or (--tiny)
        the tests' tiny model of the family loaded through load_base from its saved folder."""
        for name, other in self._families.items():
            if name != backend and self.cuda:
                for module in other.modules():
                    if module is not None:
                        module.to("cpu")
        self.free()
        family = self._families.get(backend)
        if family is None:
            family = self._build(backend)
            self._families[backend] = family
        family.denoiser.to(self.device)
        return family

    def _build(self, backend: str):
        if self.tiny:
            from pipeline.backends.loading import load_base

            family = load_base(backend, str(self.tiny_base(backend)), dtype=self.settings(backend)["base"]["dtype"],
                               device=str(self.device))
        else:
            from benchmarks import real_shapes

            with torch.device(self.device):  # initialised on the GPU: seconds, not minutes on the CPU
                family = real_shapes.BUILDERS[backend]()
            family.denoiser.to(self.device, self.dtype(backend))
            family.denoiser.eval().requires_grad_(False)  # Family.freeze, for a base without its VAE
        if family.spec.condition == "text":
            offline_null(family)
        return family

    def tiny_base(self, backend: str) -> Path:
        """The tests' tiny model of a family (tests/tiny_models.py), saved once with save_pretrained."""
        from tests import tiny_models

        path = self.work / "tiny" / backend
        if not path.exists():
            save = {"dit-xl-2": tiny_models.save_dit_xl_like, "sd21": tiny_models.save_sd2_like,
                    "sdxl": tiny_models.save_sdxl_like}[backend]
            save(path)
        return path

    def drop_models(self) -> None:
        """Forget every shared model (after a check that raised: hooks, checkpointing or a half-done
        pass may be left on them)."""
        self._families.clear()
        self.free()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) / 2**30


def adapters_for(ctx: Context, family, backend: str, perturb: float = 0.0):
    """The backend file's adapters on family. perturb: noise on every weight (output layers start at
    zero, and adapters that add nothing would make any comparison pass)."""
    from pipeline.guidance.adapters import AdapterSet

    t = ctx.settings(backend)["train"]
    adapters = AdapterSet(family, t["architecture"], t["width"], t["heads"], t["fourier_features"], seed=0,
                          mlp=t["mlp"], w_gate=t["w_gate"]).attach(family)
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in adapters.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g).to(p.device))
    return adapters


def random_cond_arrays(family, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Condition arrays of n samples as the store keeps them (labels; fp16 prompt embeddings, and
    SDXL's pooled embedding and size ids), without text encoders."""
    if family.spec.condition == "class":
        return {"labels": rng.integers(0, family.num_classes, n).astype(np.int64)}
    cfg = family.denoiser.config
    arrays = {"prompt_embeds": rng.standard_normal((n, PROMPT_TOKENS, cfg.cross_attention_dim)).astype(np.float16)}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        size = 8 * family.latent_shape[1]
        arrays["pooled"] = rng.standard_normal((n, pooled)).astype(np.float16)
        arrays["time_ids"] = np.tile(np.array([size, size, 0, 0, size, size], np.float16), (n, 1))
    return arrays


def random_cond(family, n: int, seed: int = 0) -> dict:
    return family.condition_batch(random_cond_arrays(family, n, np.random.default_rng(seed)))


def offline_null(family) -> None:
    """The unconditional prompt without text encoders: zeros (as SDXL's pipeline makes it with
    force_zeros_for_empty_prompt). Random-weight bases have no encoders, and the denoiser checks need
    none; SDFamily encodes "" on first use otherwise, so the smoke sets what it would cache."""
    arrays = random_cond_arrays(family, 1, np.random.default_rng(0))
    family._null = family.condition_batch({k: np.zeros_like(v) for k, v in arrays.items() if k != "time_ids"})


def synthetic_store(ctx: Context, family, backend: str, path: Path, n: int, num_steps: int, cfg_targets: bool):
    """A trajectory store (TrajectoryStore.create) of n trajectories on the backend's trajectory
    sampler: real CFG trajectories of the base (cfg_targets) or random states and targets."""
    from pipeline.backends.schedulers import family_scheduler
    from pipeline.data.store import TrajectoryStore
    from pipeline.guidance.sampling import cfg_trajectory_arrays

    s = ctx.settings(backend)
    sampler = s["trajectories"]["scheduler"]
    rng = np.random.default_rng(0)
    w = rng.uniform(s["conditions"]["w_min"], s["conditions"]["w_max"], n).astype(np.float32)
    seeds, cond = np.arange(n, dtype=np.int64), random_cond_arrays(family, n, rng)
    x_shape = family.latent_shape
    target_shape = (family.denoiser.config.out_channels or x_shape[0], *x_shape[1:])
    timesteps = family_scheduler(family, sampler, num_steps).timesteps.numpy()
    store = TrajectoryStore.create(path, {"backend": family.spec.name, "made_by": "benchmarks/gpu_smoke.py"},
                                   num_steps, x_shape, target_shape, timesteps, w, seeds, cond)
    if cfg_targets:
        arrays = cfg_trajectory_arrays(family, family.condition_batch(cond), seeds, torch.from_numpy(w), sampler,
                                       num_steps)
    else:
        arrays = {"x": rng.standard_normal((n, num_steps, *x_shape), np.float32),
                  "target": rng.standard_normal((n, num_steps, *target_shape), np.float32)}
    store.write(range(n), arrays)
    return store


def train(ctx: Context, family, backend: str, store, steps: int, **changes) -> dict:
    """`steps` steps of the train stage's loop (training.fit) with the backend file's train section
    (changes on top); the losses and each step's milliseconds."""
    from pipeline.config.sections import TrainParams
    from pipeline.guidance.training import fit

    p = TrainParams(**{**ctx.settings(backend)["train"], "steps": steps, "buffer_trajectories": len(store),
                       "checkpoint_every": 10**9, **changes})
    marks = []

    def mark(*_):
        ctx.sync()
        marks.append(time.perf_counter())

    stats: dict = {}
    try:
        adapters, losses, summary = fit(family, store, p, None, on_start=mark, on_step=mark, label=f"smoke {backend}",
                                        stats=stats)
        adapters.detach()
    finally:
        if p.gradient_checkpointing:  # fit turns it on and leaves it on: the shared model must not keep it
            family.denoiser.disable_gradient_checkpointing()
    step_ms = [1e3 * (b - a) for a, b in zip(marks, marks[1:])]
    timed = step_ms[1:] or step_ms  # the first step fills the shuffle buffer and warms the kernels
    return {"adapters": adapters, "losses": losses, "step_ms": float(np.median(timed)), "first_step_ms": step_ms[0],
            "adapter_parameters": summary["parameters"], "percent_of_base": summary["percent_of_base"],
            "states_per_s": stats.get("states_per_s"), "settings": {k: getattr(p, k) for k in (
                "batch_size", "autocast", "gradient_checkpointing", "architecture", "width", "heads", "lr")}}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: one number for how far a is from the reference b."""
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# --- 1. environment ---------------------------------------------------------------------------------
@check("environment", "base.device `auto` resolves to cuda:0 (pipeline.run.devices.resolve) and torch's CUDA build "
       "can use the GPU (devices.cuda_state); flash attention is enabled (torch.backends.cuda.flash_sdp_enabled) "
       "and a bfloat16 scaled_dot_product_attention under the flash backend runs at head dims 64 (SD, SDXL) "
       "and 72 (DiT-XL/2), within 2 % (of the largest value) of the float32 math backend", 30)
def environment(ctx: Context) -> dict:
    from pipeline.run import devices

    available, cause = devices.cuda_state()
    auto = devices.resolve("auto", key="--device auto")
    fig = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
           "driver": driver_version(), "auto": str(auto), "cuda_usable": available, "cuda_problem": cause or None}
    if not ctx.cuda:
        q = torch.randn(1, 2, 16, 8)
        fig["sdpa_cpu_ok"] = bool(torch.isfinite(F.scaled_dot_product_attention(q, q, q)).all())
        return {**fig, "skipped": f"{NEEDS_CUDA}: flash attention, driver; auto resolves to {auto} here",
                "summary": f"torch {torch.__version__}, auto -> {auto}"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    props = torch.cuda.get_device_properties(ctx.device)
    fig.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
               bf16_supported=torch.cuda.is_bf16_supported(), described=devices.describe(ctx.device, torch.bfloat16),
               flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled())
    flash = {}
    for head_dim in (64, 72):
        q, k, v = (torch.randn(4, 16, 1024, head_dim, device=ctx.device, dtype=torch.bfloat16) for _ in range(3))
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v)
            with sdpa_kernel(SDPBackend.MATH):
                ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            flash[str(head_dim)] = relative(out, ref)
        except RuntimeError as err:  # "No available kernel": flash cannot run these inputs here
            flash[str(head_dim)] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    fig["flash_error"] = flash
    ok = all(isinstance(e, float) and e <= 0.02 for e in flash.values())
    fig["pass"] = str(auto) == "cuda:0" and available and fig["flash_sdp_enabled"] and ok
    fig["summary"] = (f"{props.name}, torch {torch.__version__} (CUDA {torch.version.cuda}), driver {fig['driver']}, "
                      f"auto -> {auto}, flash bf16 {'ok' if ok else flash}")
    return fig


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        version = torch._C._cuda_getDriverVersion()  # the CUDA version the driver supports, e.g. 13000
    except (AttributeError, RuntimeError):
        return None
    return f"CUDA driver API {version // 1000}.{version % 1000 // 10}" if version else None


# --- 2. fused vs per-block adapters -----------------------------------------------------------------
FUSED_TOL_FP32 = 1e-4  # the tests hold 1e-5 on the CPU; GPU kernels sum in other orders
# bfloat16 rounds each path differently, by more as the base gets deeper: the fused path must be no
# further from the float32 answer than the per-block reference is (twice, plus this)
FUSED_SLACK_BF16 = 1e-3


@check("fused_adapters", "the fused adapter path (AdapterSet.fused, the default) equals the per-block reference "
       "(fused = False) on the device, for DiT-XL/2 (class tokens: the folded value path) and SD2.1 (77 prompt "
       "tokens: attention): with a float32 base and TF32 off, a 3-step sample run and a training step's output and "
       f"adapter gradients within {FUSED_TOL_FP32:g} (max |difference| / max |reference|); in bfloat16 (the stages' "
       "bfloat16 base for sampling, autocast bfloat16 for the training step) the fused path's distance from the "
       f"float32 reference is at most twice the per-block path's, plus {FUSED_SLACK_BF16:g}; the perturbed adapters "
       "change the output by more than 1e-3", 60)
def fused_adapters(ctx: Context) -> dict:
    from pipeline.guidance.sampling import sample

    fig, ok = {}, True
    for backend in ("dit-xl-2", "sd21"):
        family = ctx.family(backend)
        s = ctx.settings(backend)
        adapters = adapters_for(ctx, family, backend, perturb=0.05)
        n, steps, sampler = 4, 3, s["trajectories"]["scheduler"]
        cond = random_cond(family, n)
        w = torch.linspace(s["conditions"]["w_min"], s["conditions"]["w_max"], n)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(n, *family.latent_shape, generator=g).to(ctx.device)
        t = torch.randint(0, 1000, (n,), generator=g).to(ctx.device)
        target = torch.randn(n, family.denoiser.config.out_channels or x.shape[1], *x.shape[2:],
                             generator=g).to(ctx.device)

        def both(fn):
            """fn's result on the fused path and on the per-block reference."""
            out = {}
            for fused in (True, False):
                adapters.fused = fused
                out[fused] = fn()
            adapters.fused = True
            return out[True], out[False]

        def run():
            return {"sample": sample(family, cond, list(range(n)), w, sampler, steps, mode="agd", adapters=adapters)}

        def step(autocast: bool):
            adapters.zero_grad(set_to_none=True)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
                out = adapters(family, x, t, cond, w)
            loss = F.mse_loss(family.guided_channels(out).float(), family.guided_channels(target))
            loss.backward()
            adapters.release()
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in adapters.parameters()]
            return {"train_output": out.detach(), "train_grads": torch.cat([g.flatten() for g in grads])}

        half, tf32 = family.dtype, (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        family.denoiser.to(torch.float32)  # bf16 -> fp32 -> bf16 is exact: the shared base comes back unchanged
        # TF32 rounds a matmul's or convolution's inputs to 10 bits: a 1e-7 difference would flip roundings
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            exact = [both(run), both(lambda: step(False))]
            with torch.no_grad():
                change = relative(adapters(family, x, t, cond, w), family.forward(x, t, cond))
        finally:
            family.denoiser.to(half)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        rounded = [both(run), both(lambda: step(True))]
        adapters.detach()
        row = {"base_dtype": str(half).removeprefix("torch."), "adapters_change_output": change}
        row_ok = change > 1e-3
        for (fused32, ref32), (fused16, ref16) in zip(exact, rounded):
            for name in ref32:
                row[f"{name}_fp32"] = relative(fused32[name], ref32[name])
                row[f"{name}_bf16_fused_vs_fp32"] = fused_err = relative(fused16[name], ref32[name])
                row[f"{name}_bf16_per_block_vs_fp32"] = block_err = relative(ref16[name], ref32[name])
                row_ok = row_ok and row[f"{name}_fp32"] <= FUSED_TOL_FP32 and \
                    fused_err <= 2 * block_err + FUSED_SLACK_BF16
        row["pass"], ok = row_ok, ok and row_ok
        fig[backend] = row
    fig["pass"] = ok
    fig["summary"] = "; ".join(
        f"{b}: fp32 {max(r['sample_fp32'], r['train_output_fp32'], r['train_grads_fp32']):.1e}, bf16 fused/per-block "
        f"vs fp32 sample {r['sample_bf16_fused_vs_fp32']:.1e}/{r['sample_bf16_per_block_vs_fp32']:.1e}, grads "
        f"{r['train_grads_bf16_fused_vs_fp32']:.1e}/{r['train_grads_bf16_per_block_vs_fp32']:.1e}"
        for b, r in fig.items() if isinstance(r, dict))
    return fig


# --- 3. training-step memory and time ---------------------------------------------------------------
@check("training_memory", "a training step through the train stage's loop (pipeline.guidance.training.fit) at each "
       "backend file's settings (base dtype, autocast, batch size, gradient checkpointing, adapters) peaks at "
       f"<= {CARD_GIB:g} GiB of torch.cuda.max_memory_allocated (fits a 24 GB card such as a 4090): SDXL 1024 px "
       "without and with gradient checkpointing, SD2.1 768 px, DiT-XL/2 256 px; step_ms recorded", 150)
def training_memory(ctx: Context) -> dict:
    fig, peaks = {}, {}
    runs = [("sdxl", False), ("sdxl", True), ("sd21", None), ("dit-xl-2", None)]  # None: the file's value
    for backend, checkpointing in runs:
        label = backend if checkpointing is None else f"{backend}_checkpointing_{'on' if checkpointing else 'off'}"
        family = ctx.family(backend)
        store = synthetic_store(ctx, family, backend, ctx.work / f"memory-{label}.zarr", 2, 2, cfg_targets=False)
        changes = {} if checkpointing is None else {"gradient_checkpointing": checkpointing}
        ctx.reset_peak()
        row = train(ctx, family, backend, store, 2 if ctx.tiny else 4, **changes)
        row["peak_gib"] = peaks[label] = ctx.peak_gib()
        row["latent"] = list(family.latent_shape)
        row.pop("losses"), row.pop("adapters")
        fig[label] = row
    text = ", ".join(f"{k} {v['step_ms']:.0f} ms" + ("" if peaks[k] is None else f" {peaks[k]:.1f} GiB")
                     for k, v in fig.items())
    fig["summary"] = text
    if not ctx.cuda:
        return {**fig, "skipped": f"{NEEDS_CUDA}: torch.cuda.max_memory_allocated (the steps ran)"}
    fig["pass"] = all(p <= CARD_GIB for p in peaks.values())
    return fig


# --- 4. the training loop ---------------------------------------------------------------------------
LOOP_STEPS, LOOP_LR = 30, 1e-3  # ten times the file's lr: 30 steps must move the adapters visibly


@check("training_loop", f"{LOOP_STEPS} steps of the train stage's loop (training.fit, DiT-XL/2 file settings, lr "
       f"{LOOP_LR:g}) on a small trajectory store (TrajectoryStore.create) of the base's own CFG trajectories "
       "(sampling.cfg_trajectory_arrays) on the device: every training loss finite, and the loss over all the "
       "store's states lower after the steps than before them (the adapters start as the base: their last layers "
       "are zero). Batch losses are recorded, not ruled: at 16 states they vary twofold from batch to batch", 60)
def training_loop(ctx: Context) -> dict:
    backend = "dit-xl-2"
    family = ctx.family(backend)
    start = time.perf_counter()
    store = synthetic_store(ctx, family, backend, ctx.work / "loop.zarr", 4, 4, cfg_targets=True)
    store_s = time.perf_counter() - start
    before = store_loss(ctx, family, backend, store, None)
    row = train(ctx, family, backend, store, LOOP_STEPS, lr=LOOP_LR)
    adapters = row.pop("adapters").attach(family)
    try:
        after = store_loss(ctx, family, backend, store, adapters)
    finally:
        adapters.detach()
    losses = row.pop("losses")
    finite = all(math.isfinite(v) for v in losses) and math.isfinite(after)
    return {**row, "store_seconds": store_s, "store_loss_before": before, "store_loss_after": after,
            "first5_mean": float(np.mean(losses[:5])), "last5_mean": float(np.mean(losses[-5:])), "losses": losses,
            "pass": finite and after < before,
            "summary": f"store loss {before:.4g} -> {after:.4g} after {len(losses)} steps (batch losses "
                       f"{np.mean(losses[:5]):.3g} -> {np.mean(losses[-5:]):.3g}), {row['step_ms']:.0f} ms/step"}


def store_loss(ctx: Context, family, backend: str, store, adapters) -> float:
    """The training loss (fit's: MSE on the guided channels, the file's autocast) over every state of
    the store at once; adapters None: the base alone, which is what untrained adapters compute."""
    meta, steps = store.meta(), len(store.meta()["t"])
    rows = [i for i in range(len(store)) for _ in range(steps)]
    arrays = [store.read(i) for i in range(len(store))]
    x = torch.from_numpy(np.concatenate([a["x"] for a in arrays])).to(ctx.device)
    target = torch.from_numpy(np.concatenate([a["target"] for a in arrays])).to(ctx.device)
    t = torch.from_numpy(np.tile(meta["t"], len(store))).to(ctx.device)
    w = torch.from_numpy(meta["w"][rows]).to(ctx.device)
    cond = family.condition_batch({k[5:]: v[rows] for k, v in meta.items() if k.startswith("cond/")})
    autocast = ctx.settings(backend)["train"]["autocast"]
    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=getattr(torch, autocast, None),
                                         enabled=autocast != "none"):
        out = family.forward(x, t, cond) if adapters is None else adapters(family, x, t, cond, w)
    return F.mse_loss(family.guided_channels(out).float(), family.guided_channels(target).float()).item()


# --- 5. DDP over NCCL, one rank ---------------------------------------------------------------------
@check("ddp_nccl", "a process group of one rank initialises (NCCL on CUDA); a DistributedDataParallel-wrapped "
       "adapter training step, as training.fit wraps the adapters under a launcher, runs twice with a finite loss "
       "and adapter gradients as the unwrapped step's (within 10x the unwrapped step's own run-to-run difference, "
       "which GPU attention backwards have, or 1e-5); all_reduce and pipeline.run.distributed.mean return the "
       "expected values", 40)
def ddp_nccl(ctx: Context) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.run import distributed

    backend = "dit-xl-2"
    family = ctx.family(backend)
    adapters = adapters_for(ctx, family, backend, perturb=0.05)
    n = 8
    cond = random_cond(family, n)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, *family.latent_shape, generator=g).to(ctx.device)
    t = torch.randint(0, 1000, (n,), generator=g).to(ctx.device)
    w = torch.linspace(1.0, 6.0, n).to(ctx.device)
    target = torch.randn(n, *family.latent_shape, generator=g).to(ctx.device)

    def step(model):
        adapters.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            out = model(family, x, t, cond, w)
        loss = F.mse_loss(family.guided_channels(out).float(), target)
        loss.backward()
        adapters.release()
        return loss.detach(), torch.cat([p.grad.flatten() for p in adapters.parameters() if p.grad is not None])

    group = "nccl" if ctx.cuda else "gloo"
    # distributed.init joins a launcher's group and is a no-op for one process: the group is made here
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    start = time.perf_counter()
    dist.init_process_group(group, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=ctx.device if ctx.cuda else None)
    fig = {"backend": group, "init_seconds": time.perf_counter() - start}
    try:
        plain_loss, plain_grads = step(adapters)
        noise = relative(step(adapters)[1], plain_grads)  # atomics in attention backwards: not bit-exact on GPUs
        model = DistributedDataParallel(adapters, device_ids=[ctx.device] if ctx.cuda else None)
        losses, grads = zip(*(step(model) for _ in range(2)))  # the second step: the reducer's next iteration
        value = torch.tensor([1.0, 2.0, 3.0], device=ctx.device)
        dist.all_reduce(value)
        mean = distributed.mean(losses[0])
        distributed.barrier()
        fig.update(loss=losses[0].item(), plain_loss=plain_loss.item(), grads_vs_plain=relative(grads[0], plain_grads),
                   plain_run_to_run=noise, all_reduce=value.tolist(), distributed_mean=mean.item())
        ok = (all(math.isfinite(v.item()) for v in losses) and fig["grads_vs_plain"] <= max(10 * noise, 1e-5)
              and fig["all_reduce"] == [1.0, 2.0, 3.0] and abs(fig["distributed_mean"] - fig["loss"]) <= 1e-6)
    finally:
        distributed.finish()
        adapters.detach()
    fig["summary"] = (f"{group}: 2 DDP steps, loss {fig['loss']:.4g}, grads vs plain {fig['grads_vs_plain']:.1e}, "
                      f"all_reduce {'ok' if fig['all_reduce'] == [1.0, 2.0, 3.0] else fig['all_reduce']}")
    if not ctx.cuda:
        return {**fig, "pass": False} if not ok else {**fig, "skipped": f"{NEEDS_CUDA}: NCCL (gloo ran the same step)"}
    return {**fig, "pass": ok}


# --- 6. sampling speed ------------------------------------------------------------------------------
SPEED_RULE = 0.6


@check("sampling_speed", "through the stages' sampling loop (pipeline.guidance.sampling.sample) with the backend "
       f"file's evaluation sampler and adapters, AGD's time per sample run over CFG's is <= {SPEED_RULE:g} for "
       "DiT-XL/2 at batch 64 and SDXL at batch 4 (fastest of 3 interleaved rounds, 10 steps)", 90)
def sampling_speed(ctx: Context) -> dict:
    from pipeline.guidance.sampling import sample

    fig, ratios = {}, {}
    for backend, batch in (("dit-xl-2", 64), ("sdxl", 4)):
        family = ctx.family(backend)
        s = ctx.settings(backend)
        adapters = adapters_for(ctx, family, backend)
        sampler = s["evaluate"]["scheduler"] or s["trajectories"]["scheduler"]
        steps, rounds = (2, 1) if ctx.tiny else (10, 3)
        cond, seeds = random_cond(family, batch), list(range(batch))
        w = torch.full((batch,), float(s["evaluate"]["default_scale"]))

        def run(mode, n):
            sample(family, cond, seeds, w, sampler, n, mode=mode, adapters=adapters)

        for mode in ("agd", "cfg"):  # warm-up: kernels, cuDNN's choices, the allocator's blocks
            run(mode, 2)
        best = {"agd": float("inf"), "cfg": float("inf")}
        for _ in range(rounds):
            for mode in best:
                ctx.sync()
                start = time.perf_counter()
                run(mode, steps)
                ctx.sync()
                best[mode] = min(best[mode], time.perf_counter() - start)
        adapters.detach()
        ratios[backend] = best["agd"] / best["cfg"]
        fig[backend] = {"batch": batch, "sampler": sampler, "steps": steps, "agd_ms_per_step": 1e3 * best["agd"] / steps,
                        "cfg_ms_per_step": 1e3 * best["cfg"] / steps, "agd_over_cfg": ratios[backend]}
    fig["summary"] = ", ".join(f"{b} b{fig[b]['batch']}: AGD {fig[b]['agd_ms_per_step']:.1f} / CFG "
                               f"{fig[b]['cfg_ms_per_step']:.1f} ms per step = {r:.3f}" for b, r in ratios.items())
    if not ctx.cuda:
        return {**fig, "skipped": f"{NEEDS_CUDA}: the rule is about GPU step time (tiny CPU figures say nothing)"}
    return {**fig, "pass": all(r <= SPEED_RULE for r in ratios.values())}


# --- 7. CUDA graphs (sample.compile) ----------------------------------------------------------------
GRAPH_TOL = 1e-2  # inductor fuses and reorders; TF32 matmuls on both sides


@check("cuda_graphs", "with sample.compile's path (Family.compile: torch.compile, CUDA graphs on CUDA) small DiT "
       f"and UNet models with adapters give AGD and CFG sample runs within {GRAPH_TOL:g} (relative) of eager, "
       "with no graph breaks (torch._dynamo.explain of the denoiser pass and the fused AGD pass; dynamo's "
       "graph_break counter) and no skipped CUDA graphs (inductor's cudagraph_skips counter)", 150)
def cuda_graphs(ctx: Context) -> dict:
    import torch._dynamo
    from torch._dynamo.utils import counters

    from pipeline.backends.loading import load_base
    from pipeline.guidance.sampling import sample

    fig, ok = {}, True
    for backend in ("dit-xl-2", "sd21"):
        # a fresh small model (the tests' tiny one): compiling changes it for good
        family = load_base(backend, str(ctx.tiny_base(backend)), device=str(ctx.device))
        if family.spec.condition == "text":
            offline_null(family)
        adapters = adapters_for(ctx, family, backend, perturb=0.05)
        n, steps, sampler = 2, 3, ctx.settings(backend)["trajectories"]["scheduler"]
        cond, w = random_cond(family, n), torch.full((n,), 4.0)
        x = torch.randn(n, *family.latent_shape).to(ctx.device)
        t = torch.full((n,), 500, device=ctx.device)

        def runs():
            return {mode: sample(family, cond, list(range(n)), w, sampler, steps, mode=mode, adapters=adapters).clone()
                    for mode in ("agd", "cfg")}

        eager = runs()
        with torch.no_grad():
            fixed, stacks = adapters.context(family, cond, w), adapters.stacks.get()
            explained = {"denoiser": torch._dynamo.explain(family.forward)(x, t, cond),
                         "agd_pass": torch._dynamo.explain(adapters._fused_pass)(family, fixed, stacks, x, t, cond)}
        row = {"explain_graph_breaks": {k: e.graph_break_count for k, e in explained.items()},
               "break_reasons": [str(r.reason)[:300] for e in explained.values() for r in e.break_reasons][:5]}
        breaks = sum(row["explain_graph_breaks"].values())
        torch._dynamo.reset()
        if ctx.cuda:
            counters.clear()
            start = time.perf_counter()
            family.compile()
            runs()  # compiles, warms up and records the graphs
            compiled = runs()
            row["compile_seconds"] = time.perf_counter() - start
            row["vs_eager"] = {mode: relative(compiled[mode], eager[mode]) for mode in eager}
            row["graph_breaks"] = sum(counters["graph_break"].values())
            row["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
            row["unique_graphs"] = counters["stats"]["unique_graphs"]
            breaks += row["graph_breaks"]
            row["pass"] = (breaks == 0 and row["cudagraph_skips"] == 0
                           and all(v <= GRAPH_TOL for v in row["vs_eager"].values()))
        else:
            row["pass"] = breaks == 0
        ok = ok and row["pass"]
        adapters.detach()
        fig[backend] = row
        torch._dynamo.reset()
    fig["summary"] = "; ".join(
        f"{b}: breaks {sum(r['explain_graph_breaks'].values()) + r.get('graph_breaks', 0)}"
        + (f", cudagraph skips {r['cudagraph_skips']}, vs eager "
           f"{max(r['vs_eager'].values()):.1e}" if "vs_eager" in r else "") for b, r in fig.items())
    if not ctx.cuda and ok:
        return {**fig, "skipped": f"{NEEDS_CUDA}: CUDA graphs (explain found no graph breaks)"}
    return {**fig, "pass": ok}


# --- 8. text encoders, VAE decode, Inception ----------------------------------------------------------
@check("encoders", "SDXL's two CLIP text encoders and SD2.1's OpenCLIP encoder through the conditions path "
       "(Family.condition_arrays), the SDXL VAE decoding 1024 px through Family.decode, and Inception-v3 "
       "(pipeline.evaluation.fid.InceptionFeatures; a random-weight torchvision stand-in when "
       "data/assets/inception-2015-12-05.pt is absent) give finite outputs of the right shape, each peaking at "
       f"<= {CARD_GIB:g} GiB with the base resident, as in the stages; so do the whole-file encodes the stages make "
       "in one call (conditions.num_captions captions measured, evaluate.num_samples projected linearly)", 90)
def encoders(ctx: Context) -> dict:
    fig, peaks, ok = {}, {}, True
    for backend in ("sdxl", "sd21"):
        family = ctx.family(backend)
        s = ctx.settings(backend)
        vae = family.vae
        if backend == "sdxl" and vae is None:
            attach_vae(ctx, family)  # SDXL's size ids are read off the VAE
        attach_text_encoders(ctx, family, backend)
        try:
            tokens = family.text_models()[0][0].model_max_length
            rows = {}
            counts = [s["trajectories"]["batch_size"], min(s["conditions"]["num_captions"], 32 if ctx.tiny else 10**9)]
            for n in counts:
                captions = [f"a photograph of object number {i} on a wooden table" for i in range(n)]
                ctx.reset_peak()
                start = time.perf_counter()
                arrays = family.condition_arrays([{"caption": c} for c in captions])
                seconds = time.perf_counter() - start
                want = (n, tokens, family.denoiser.config.cross_attention_dim)
                good = arrays["prompt_embeds"].shape == want and all(np.isfinite(v).all() for v in arrays.values())
                rows[n] = {"captions": n, "seconds": seconds, "captions_per_s": n / seconds, "peak_gib": ctx.peak_gib(),
                           "shapes": {k: list(v.shape) for k, v in arrays.items()}, "ok": good}
                ok = ok and good
            row = {"batches": list(rows.values())}
            if ctx.cuda:
                (b, pb), (m, pm) = ((n, r["peak_gib"]) for n, r in rows.items())
                target = s["evaluate"]["num_samples"]
                row["projected_peak_gib"] = {str(target): pm + (pm - pb) / max(m - b, 1) * (target - m)}
                peaks.update({f"{backend}_text_{n}": r["peak_gib"] for n, r in rows.items()})
                peaks[f"{backend}_text_{target}_projected"] = row["projected_peak_gib"][str(target)]
            fig[f"{backend}_text"] = row
        finally:
            family._text = None  # as release_text_encoders: the encoders leave the device
            family.vae = vae
            ctx.free()
    family = ctx.family("sdxl")
    vae = family.vae
    if vae is None:
        attach_vae(ctx, family)
    try:
        c, h, w = family.latent_shape
        for n in (1, ctx.settings("sdxl")["evaluate"]["batch_size"]):
            finite = []
            hook = family.vae.decoder.register_forward_hook(lambda m, a, out: finite.append(bool(torch.isfinite(out).all())))
            ctx.reset_peak()
            start = time.perf_counter()
            images = family.decode(torch.randn(n, c, h, w, device=ctx.device))
            ctx.sync()
            seconds = time.perf_counter() - start
            hook.remove()
            good = images.dtype == torch.uint8 and images.shape[0] == n and images.shape[-1] == 3 and all(finite)
            fig[f"vae_decode_b{n}"] = {"pixels": list(images.shape[1:3]), "seconds": seconds, "images_per_s": n / seconds,
                                       "peak_gib": ctx.peak_gib(), "ok": good}
            peaks[f"vae_decode_b{n}"] = fig[f"vae_decode_b{n}"]["peak_gib"]
            ok = ok and good
        fig["inception"] = inception(ctx)
        peaks["inception"] = fig["inception"]["peak_gib"]
        ok = ok and fig["inception"]["ok"]
    finally:
        family.vae = vae
        ctx.free()
    parts = []
    for key in ("sdxl_text", "sd21_text"):
        top = fig[key]["batches"][-1]
        parts.append(f"{key} {top['captions']}: {top['captions_per_s']:.0f}/s"
                     + ("" if top["peak_gib"] is None else f" {top['peak_gib']:.1f} GiB")
                     + "".join(f", {k} projected {v:.1f} GiB" for k, v in fig[key].get("projected_peak_gib", {}).items()))
    vae_row = fig[f"vae_decode_b{ctx.settings('sdxl')['evaluate']['batch_size']}"]
    parts.append(f"VAE {vae_row['pixels'][0]} px {vae_row['images_per_s']:.2f} img/s"
                 + ("" if vae_row["peak_gib"] is None else f" {vae_row['peak_gib']:.1f} GiB"))
    parts.append(f"Inception ({fig['inception']['weights']}) {fig['inception']['images_per_s']:.0f} img/s")
    fig["summary"] = "; ".join(parts)
    if not ctx.cuda:
        return {**fig, "pass": False} if not ok else {**fig, "skipped": f"{NEEDS_CUDA}: memory (outputs checked)"}
    fig["peaks_gib"] = peaks
    fig["over_card"] = [k for k, v in peaks.items() if v > CARD_GIB]
    return {**fig, "pass": ok and not fig["over_card"]}


def attach_text_encoders(ctx: Context, family, backend: str) -> None:
    """Real-shape random-weight text encoders where the base has none (the tiny bases carry theirs,
    loaded from their folder as the stages load them): the sizes of benchmarks/real_architectures.py."""
    if ctx.tiny:
        return
    from benchmarks.real_architectures import clip_text
    from tests.tiny_models import byte_tokenizer

    with torch.device(ctx.device):
        if backend == "sdxl":  # CLIP ViT-L, OpenCLIP bigG
            models = [clip_text(768, 12, 12, 3072, "quick_gelu"), clip_text(1280, 32, 20, 5120, "gelu", projection=1280)]
        else:  # OpenCLIP ViT-H (penultimate layer)
            models = [clip_text(1024, 23, 16, 4096, "gelu")]
    family._text = [(byte_tokenizer(PROMPT_TOKENS), m.eval().requires_grad_(False)) for m in models]


def attach_vae(ctx: Context, family) -> None:
    """SDXL's VAE (real configuration, random weights) in the base's dtype, as SDFamily.load keeps it."""
    from benchmarks.real_architectures import vae

    with torch.device(ctx.device):
        family.vae = vae(1024, 0.13025).to(family.dtype).eval().requires_grad_(False)


def inception(ctx: Context) -> dict:
    """Inception-v3 features of one evaluation batch (fid.image_features' batch of 50)."""
    from pipeline.evaluation import fid

    batch = 2 if ctx.tiny else 50
    weights = ROOT / fid.WEIGHTS
    if weights.exists():
        net, name = fid.InceptionFeatures(weights), "pinned 2015-12-05 weights"
        skipped = None
    else:
        import torchvision

        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        net.fc = torch.nn.Identity()  # the 2048-d pool features
        name, skipped = "random-weight torchvision stand-in", f"{fid.WEIGHTS} absent (`agd assets` fetches it)"
    net = net.to(ctx.device).eval()
    images = torch.rand(batch, 3, 299, 299, device=ctx.device) * 255
    with torch.no_grad():
        net(images)  # warm-up
        ctx.reset_peak()
        start = time.perf_counter()
        features = net(images)
        ctx.sync()
        seconds = time.perf_counter() - start
    good = tuple(features.shape) == (batch, 2048) and bool(torch.isfinite(features).all())
    return {"weights": name, "skipped": skipped, "batch": batch, "seconds": seconds, "images_per_s": batch / seconds,
            "peak_gib": ctx.peak_gib(), "ok": good}


# --- 9. the CLI stages on the device ----------------------------------------------------------------
# in dvc.yaml's order; fid-ref and teacher (evaluate's CFG half, where the CLI has split it off) run when the CLI has them
STAGES = ["check", "conditions", "trajectories", "train", "fid-ref", "teacher", "evaluate"]
REQUIRED_STAGES = ["check", "conditions", "trajectories", "train", "evaluate"]
CPU_SETTINGS = ("base.dtype", "train.autocast", "train.gradient_checkpointing")  # the tests' CPU choices


@check("cli_stages", "in a fresh project composed by `agd preset dit-xl-2` with base.device on the device and small "
       "counts (tests/test_backend_repro.py's), a DiT-XL/2 base of the real configuration with random weights "
       "(--tiny: the tests' tiny one) saved with save_pretrained, `agd` " + ", ".join(STAGES) + " (those the CLI has; "
       + ", ".join(REQUIRED_STAGES) + " at least) each exit 0 "
       "(run in this process as the tests run them), writing adapters for dit-xl-2 and reports/metrics.json", 150)
def cli_stages(ctx: Context) -> dict:
    from PIL import Image

    from tests.conftest import agd  # the tests' in-process runner of the real CLI
    from tests.test_backend_repro import TINY

    project = ctx.work / "project"
    shutil.copytree(ROOT / "conf", project / "conf")
    base = project / "models" / "base"
    start = time.perf_counter()
    if ctx.tiny:
        from tests.tiny_models import save_dit_xl_like

        save_dit_xl_like(base)
    else:
        from benchmarks.real_architectures import save_dit_xl_2

        with torch.device(ctx.device):
            save_dit_xl_2(base, 256)
    fig = {"base": "tests' tiny DiT-XL/2-like" if ctx.tiny else "DiT-XL/2 256 (real configuration, random weights)",
           "save_seconds": time.perf_counter() - start}
    real = project / "data" / "real"  # the FID reference folder: its content does not matter here
    real.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(real / f"{i}.png")
    fig["inception"] = place_inception(project)
    device = {"base.device": "cuda" if ctx.cuda else "cpu"}
    overrides = [o for o in TINY if not (ctx.cuda and o.split("=")[0] in CPU_SETTINGS)]
    overrides += [f"{k}={v}" for k, v in device.items()]
    fig["overrides"] = overrides
    from pipeline.cli import app

    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    stages = [s for s in STAGES if s in commands]
    missing = [s for s in REQUIRED_STAGES if s not in commands]
    ran = []
    for args in [["preset", "dit-xl-2", *overrides], *([s] for s in stages)]:
        start = time.perf_counter()
        done = agd(project, *args, check=False)
        ran.append({"stage": args[0], "exit": done.returncode, "seconds": time.perf_counter() - start})
        if done.returncode:
            fig["output_tail"] = (done.stdout + done.stderr)[-3000:]
            break
    fig["stages"] = ran
    metrics_file, meta_file = project / "reports" / "metrics.json", project / "models" / "adapters" / "adapters.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    fig["metrics_keys"] = {k: sorted(v)[:8] for k, v in metrics.items()}
    fig["adapters_backend"] = meta.get("base", {}).get("backend")
    fig["missing_stages"] = missing
    passed = not missing and len(ran) == len(stages) + 1 and all(r["exit"] == 0 for r in ran)
    fig["pass"] = passed and bool(metrics) and fig["adapters_backend"] == "dit-xl-2"
    fig["summary"] = ", ".join(f"{r['stage']} {r['seconds']:.0f} s" + (f" EXIT {r['exit']}" if r["exit"] else "")
                               for r in ran)
    return fig


def place_inception(project: Path) -> str:
    """data/assets/inception-2015-12-05.pt for fid-ref and evaluate: the pinned weights when this
    checkout has them (linked), else a small TorchScript stand-in of the same interface (float
    (B, 3, H, W) -> (B, 2048)): the stages' code path, not their figures."""
    from pipeline.evaluation import fid

    target = project / fid.WEIGHTS
    target.parent.mkdir(parents=True, exist_ok=True)
    if (ROOT / fid.WEIGHTS).exists():
        os.link(ROOT / fid.WEIGHTS, target)
        return "pinned 2015-12-05 weights"
    torch.jit.script(StandInInception()).save(str(target))
    return "TorchScript stand-in (pooled pixels, fixed random projection)"


class StandInInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3 * 8 * 8, 2048, generator=g) / 14.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 8).flatten(1) @ self.projection


# --- running them -----------------------------------------------------------------------------------
def plain(value):
    """JSON-ready figures: numbers to 4 significant digits, tensors and arrays as lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return plain(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if not math.isfinite(value) or value == 0 else float(f"{value:.4g}")
    return value


def run_one(ctx: Context, c: Check, seconds: float, log) -> dict:
    buffer = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), time_limit(seconds):
            figures = c.run(ctx)
        if figures.get("pass") is False:
            status = "failed"
        elif "skipped" in figures:
            status = "skipped"
        else:
            status = "passed" if figures.get("pass") else "failed"
    except (Exception, OutOfTime) as err:
        figures = {"error": f"{type(err).__name__}: {str(err)[:1000]}",
                   "traceback": "".join(traceback.format_exception(err))[-3000:]}
        status = "failed"
        ctx.drop_models()
    finally:
        ctx.free()
        log.write(f"\n===== {c.name} =====\n{buffer.getvalue()}")
        log.flush()
    figures.pop("pass", None)
    return {"status": status, "pass": status == "passed", "seconds": time.perf_counter() - start, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as base.device)")
    parser.add_argument("--tiny", action="store_true", help="tiny models: every check's code path, not its figures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines, one per check (a .log beside it)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for all checks: each stops at its share, later ones are skipped")
    parser.add_argument("--checks", default="", help="comma-separated names to run (default: all, in order)")
    args = parser.parse_args()
    from pipeline.run import devices, runtime

    try:
        runtime.setup()  # as every `agd` command: threads, quiet library logging, no hub
    except ImportError as err:  # a GPU image without the pipeline's packages: the checks that need them fail alone
        print(f"warning: {err}; the checks that need it will fail", file=sys.stderr)
    device = devices.resolve(args.device, key="--device")
    if device.type == "cpu" and not args.tiny:
        print("error: --device cpu runs the real shapes for hours; add --tiny (code paths only)", file=sys.stderr)
        return 2
    names = [n for n in args.checks.split(",") if n]
    unknown = set(names) - {c.name for c in CHECKS}
    if unknown:
        print(f"error: --checks: unknown {sorted(unknown)}; use {', '.join(c.name for c in CHECKS)}", file=sys.stderr)
        return 2
    checks = [c for c in CHECKS if not names or c.name in names]
    out = args.out.resolve()  # the CLI check changes directory
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = args.budget / DEFAULT_BUDGET_S
    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    print(f"gpu_smoke: {where}, torch {torch.__version__}, {'tiny models' if args.tiny else 'real shapes'}, "
          f"{len(checks)} checks, budget {args.budget:.0f} s -> {out}", flush=True)
    start = time.perf_counter()
    deadline = start + args.budget
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    not_reached = 0
    with tempfile.TemporaryDirectory(prefix="agd-gpu-smoke-") as work, open(out, "w") as lines, \
            open(out.with_suffix(".log"), "w") as log:
        ctx = Context(device, args.tiny, Path(work))
        for c in checks:
            left = deadline - time.perf_counter()
            head = {"check": c.name, "rule": c.rule, "device": str(device), "tiny": args.tiny}
            if left < 5:
                record = {"status": "skipped", "pass": False, "seconds": 0.0,
                          "skipped": f"not reached: the {args.budget:.0f} s budget (--budget) was spent"}
                not_reached += 1
            else:
                record = run_one(ctx, c, min(c.cap_s * scale, left), log)
            record = {**head, **plain(record)}
            lines.write(json.dumps(record) + "\n")
            lines.flush()
            counts[record["status"]] += 1
            said = record.get("summary") or record.get("error") or ""
            if record["status"] == "skipped":
                said = f"{record['skipped']}" + (f" | {record['summary']}" if record.get("summary") else "")
            elif record["status"] == "failed" and record.get("error"):
                said = record["error"].splitlines()[0][:200]
            print(f"{record['status'].upper():<8}{c.name:<17}{record['seconds']:7.1f} s  {said}", flush=True)
    total = time.perf_counter() - start
    print(f"gpu_smoke: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
          f"({not_reached} not reached) of {len(checks)} checks in {total:.0f} s; lines in {out}", flush=True)
    return 1 if counts["failed"] or not_reached else 0


if __name__ == "__main__":
    sys.exit(main())
