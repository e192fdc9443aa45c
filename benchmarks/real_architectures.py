"""Models with the real backends' configurations, randomly initialised, through every stage, with the
evaluation at two sample counts to show that its peak memory does not grow with the count.

    python benchmarks/real_architectures.py [--backends dit-xl-2,sd21,sdxl] [--device cpu]
                                            [--counts 2,4] [--steps 1,1] [--batch-size 1]
                                            [--sdxl-resolution 1024] [--work /tmp/agd-real]
                                            [--out reports/real_architectures.json]

For each backend the models are built from their real configurations (DiT-XL/2 256 with its VAE;
SD2.1 768: v-prediction UNet, OpenCLIP ViT-H text encoder, VAE; SDXL: UNet, CLIP ViT-L and
OpenCLIP bigG text encoders, VAE), written with save_pretrained, never downloaded. Then the CLI
runs check, conditions, trajectories (2 trajectories x 2 sampler steps), verify, train (2 steps,
frozen base in the backend file's dtype, bfloat16 autocast, gradient checkpointing), fid-ref (4
generated reference images), then teacher and evaluate once per --counts value (evaluate.num_samples;
evaluate.num_steps from --steps, batches of --batch-size, so batches, not counts, set the memory;
a new count remakes both sample stores), and last `agd sample`, each in its own process as
`dvc repro` runs them, on --device (base.device). base.dtype is the backend file's
(conf/backend/<name>.yaml: bfloat16 for all three). The wall time and peak resident memory of
every stage are written to --out, and per backend the growth of teacher's and evaluate's peaks
from the first count to the second. Each stage's process reports its own peak (VmHWM from
/proc/self/status as it exits), so the parent's pre-exec fork copy is not counted; the rusage
the parent gets (ru_maxrss) is kept beside it. The tokenizers are byte-level (no vocabulary
download); the text encoders have the real sizes. This process stays small (models are built in
a child process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD_SCALED = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
CAPTIONS = ["a red bus parked beside a brick building", "two dogs running on a sandy beach",
            "a bowl of fruit on a wooden table", "a man riding a bicycle down a city street"]
CAPTIONS += [f"{a} {b}" for a in ("a small boat", "a yellow kite", "an old clock", "a green tram")
             for b in ("under a cloudy sky", "beside a river", "on a snowy hill", "in a busy market")]
# 20 captions: evaluation draws num_samples distinct ones


# --- the real configurations -------------------------------------------------------------------
def vae(sample_size: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=4, sample_size=sample_size, scaling_factor=scaling_factor)


def clip_text(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act=act, projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def save_dit_xl_2(path: Path, resolution: int) -> None:
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                          sample_size=resolution // 8, patch_size=2, num_embeds_ada_norm=1000
                          ).save_pretrained(path / "transformer")
    vae(resolution, 0.18215).save_pretrained(path / "vae")
    DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False
                  ).save_pretrained(path / "scheduler")


def save_sd21(path: Path, resolution: int) -> None:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from tests.tiny_models import byte_tokenizer

    UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                         use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280)
                         ).save_pretrained(path / "unet")
    clip_text(1024, 23, 16, 4096, "gelu").save_pretrained(path / "text_encoder")  # OpenCLIP ViT-H, penultimate
    byte_tokenizer(77).save_pretrained(path / "tokenizer")
    vae(resolution, 0.18215).save_pretrained(path / "vae")
    DDIMScheduler(**SD_SCALED, prediction_type="v_prediction").save_pretrained(path / "scheduler")


def save_sdxl(path: Path, resolution: int) -> None:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    from tests.tiny_models import byte_tokenizer

    UNet2DConditionModel(
        sample_size=resolution // 8, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ).save_pretrained(path / "unet")
    clip_text(768, 12, 12, 3072, "quick_gelu").save_pretrained(path / "text_encoder")  # CLIP ViT-L
    clip_text(1280, 32, 20, 5120, "gelu", projection=1280).save_pretrained(path / "text_encoder_2")  # OpenCLIP bigG
    byte_tokenizer(77).save_pretrained(path / "tokenizer")
    byte_tokenizer(77).save_pretrained(path / "tokenizer_2")
    vae(resolution, 0.13025).save_pretrained(path / "vae")
    EulerDiscreteScheduler(**{k: v for k, v in SD_SCALED.items() if k not in ("set_alpha_to_one", "clip_sample")},
                           timestep_spacing="leading").save_pretrained(path / "scheduler")


BUILDERS = {"dit-xl-2": (save_dit_xl_2, 256, "DDIMScheduler", 128),
            "sd21": (save_sd21, 768, "DDIMScheduler", 256),
            "sdxl": (save_sdxl, 1024, "EulerDiscreteScheduler", 128)}


# --- one project per backend -------------------------------------------------------------------
def backend_file(backend: str) -> dict:
    """conf/backend/<backend>.yaml: what `agd preset` and `dvc exp run -S backend=...` use."""
    return yaml.safe_load((ROOT / "conf" / "backend" / f"{backend}.yaml").read_text())


def backend_dtype(backend: str) -> str:
    return backend_file(backend)["base"]["dtype"]


def params(backend: str, scheduler: str, width: int, device: str = "cpu", batch_size: int = 1) -> dict:
    text = backend != "dit-xl-2"
    return {
        "dag": {"mnist": [], "fid_ref": "refs", "conditions": "captions.json" if text else "base/transformer/config.json",
                "evaluate": "captions.json" if text else "base", "train_images": "base"},
        "base": {"backend": backend, "path": "base", "dtype": backend_dtype(backend), "device": device, "cfg_channels": 0},
        "fid_ref": {"num_images": 4, "batch_size": 4, "image_folder": "refs"},
        "conditions": {"per_class": 1, "max_trajectories": 2, "captions_file": "captions.json" if text else "",
                       "num_captions": 2, "w_min": 1.0, "w_max": 12.0 if text else 6.0, "seed": 0},
        "trajectories": {"scheduler": scheduler, "num_steps": 2, "batch_size": 2, "output": "data/trajectories.zarr"},
        "train": {"architecture": "cross_attention", "width": width, "heads": 4, "fourier_features": 64, "steps": 2,
                  **{k: backend_file(backend)["train"][k] for k in ("mlp", "w_gate")},  # the paper's adapter
                  "batch_size": 2 if not text else 1, "lr": 1e-4, "buffer_trajectories": 2, "checkpoint_every": 100,
                  "autocast": "bfloat16", "gradient_checkpointing": True, "seed": 0, "output": "models/adapters"},
        "evaluate": {"guidance_scales": [4.0], "default_scale": 4.0, "num_samples": 2, "num_steps": 2,
                     "batch_size": batch_size, "inception_samples": 0, "held_out_trajectories": 1,
                     "captions_file": "captions.json" if text else "", "seed": 1000,
                     # no interleaved step timing: dozens of extra passes at real shapes cost hours on a CPU,
                     # and this benchmark measures memory and that every stage runs
                     "timing_rounds": 0},
    }


def prepare_project(project: Path, resolution: int, assets: Path) -> None:
    from PIL import Image

    project.mkdir(parents=True, exist_ok=True)
    (project / "data" / "assets").mkdir(parents=True, exist_ok=True)
    inception = assets / "inception-2015-12-05.pt"
    if not inception.exists():
        raise SystemExit(f"{inception} missing: run `agd prepare` (or dvc repro) in {ROOT} first")
    target = project / "data" / "assets" / inception.name
    if not target.exists():
        os.link(inception, target)
    refs = project / "refs"
    refs.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):  # reference images: FID needs a folder; their content does not matter here
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(refs / f"{i}.png")
    coco = {"annotations": [{"id": i, "image_id": i, "caption": c} for i, c in enumerate(CAPTIONS)]}
    (project / "captions.json").write_text(json.dumps(coco))


# The stage's process reports its own peak (VmHWM) as it exits: the rusage a parent gets from wait4
# also counts the moments between fork and exec, when the child is a copy of the parent.
PEAK = """
import atexit, os, runpy, sys
def peak():
    kb = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    open(os.environ["AGD_PEAK_FILE"], "w").write(kb)
atexit.register(peak)
sys.argv = ["agd", *sys.argv[1:]]
runpy.run_module("pipeline.cli", run_name="__main__", alter_sys=True)
"""


def run_stage(project: Path, args: list[str]) -> dict:
    """One CLI stage in its own process: wall time, peak resident memory (of that process), exit status."""
    peak_file = project / ".peak_kb"
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "AGD_PEAK_FILE": str(peak_file)}
    start = time.perf_counter()
    with open(project / "stages.log", "a") as log:
        log.write(f"\n$ agd {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-c", PEAK, *args], cwd=project, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    rusage = usage.ru_maxrss / 2**20  # KiB -> GiB
    peak = int(peak_file.read_text()) / 2**20 if peak_file.exists() else rusage  # VmHWM in kB
    return {"stage": args[0], "seconds": round(seconds, 1), "peak_rss_gib": round(peak, 3),
            "rusage_maxrss_gib": round(rusage, 3), "exit": code}


def set_evaluation(project: Path, count: int, steps: int) -> None:
    doc = yaml.safe_load((project / "params.yaml").read_text())
    doc["evaluate"]["num_samples"] = count
    doc["evaluate"]["num_steps"] = steps
    (project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def run_backend(backend: str, work: Path, resolution: int, assets: Path, reuse: bool = False, device: str = "cpu",
                counts: tuple[int, int] = (2, 4), steps: tuple[int, int] = (1, 1), batch_size: int = 1,
                save=lambda partial: None) -> dict:
    _, _, scheduler, width = BUILDERS[backend]
    project = work / backend
    reusing = reuse and (project / "base" / "scheduler").is_dir()
    for entry in project.iterdir() if project.exists() else []:
        if not (reusing and entry.name == "base"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    prepare_project(project, resolution, assets)
    start = time.perf_counter()
    if not reusing:
        subprocess.run([sys.executable, __file__, "--build", backend, "--resolution", str(resolution),
                        "--work", str(project / "base")], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    build_seconds = time.perf_counter() - start
    (project / "params.yaml").write_text(yaml.safe_dump(params(backend, scheduler, width, device, batch_size),
                                                        sort_keys=False))
    sample = ["sample", "-w", "4", "--steps", "2", "--out", "sample.png"]
    sample += ["--labels", "0,1"] if backend == "dit-xl-2" else ["--prompt", CAPTIONS[0]]
    stages: list[tuple[list[str], tuple[int, int] | None]] = [
        ([name], None) for name in ("check", "conditions", "trajectories", "verify", "train", "fid-ref")]
    for count, n in zip(counts, steps):
        stages += [(["teacher"], (count, n)), (["evaluate"], (count, n))]
    stages.append((sample, None))
    results = []
    for args, evaluation in stages:
        if evaluation:
            set_evaluation(project, *evaluation)
        result = run_stage(project, args)
        if evaluation:
            result.update(num_samples=evaluation[0], num_steps=evaluation[1], batch_size=batch_size)
        results.append(result)
        save({"backend": backend, "resolution": resolution, "stages": results, "passed": False, "unfinished": True})
        at = f" ({evaluation[0]} samples, {evaluation[1]} steps)" if evaluation else ""
        print(f"{backend} {result['stage']:>12}{at}: {result['seconds']:8.1f} s  peak {result['peak_rss_gib']:6.2f} GiB"
              f"  exit {result['exit']}", flush=True)
        if result["exit"]:
            print((project / "stages.log").read_text()[-3000:], flush=True)
            break
    growth = {}
    for name in ("teacher", "evaluate"):
        peaks = {r["num_samples"]: r["peak_rss_gib"] for r in results if r["stage"] == name and r["exit"] == 0}
        if len(peaks) == 2:
            growth[name] = {"counts": list(counts), "peak_rss_gib": [peaks[c] for c in counts],
                            "growth_mib": round((peaks[counts[1]] - peaks[counts[0]]) * 1024, 1)}
    log = (project / "stages.log").read_text()
    on = [line for line in log.splitlines() if line.startswith("sample: on")]
    metrics = project / "reports" / "metrics.json"
    train = project / "reports" / "train.json"
    return {"backend": backend, "resolution": resolution, "device": device, "dtype": backend_dtype(backend),
            "build_and_save_seconds": round(build_seconds, 1), "sample_ran_on": on[-1] if on else None,
            "stages": results, "peak_growth": growth,
            "passed": all(r["exit"] == 0 for r in results) and len(results) == len(stages),
            "train_report": json.loads(train.read_text()) if train.exists() else None,
            "metrics": json.loads(metrics.read_text()) if metrics.exists() else None,
            "disk_gib": round(sum(f.stat().st_size for f in (project / "base").rglob("*") if f.is_file()) / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="dit-xl-2,sd21,sdxl")
    parser.add_argument("--device", default="cpu", help="base.device of every stage: cpu, cuda, cuda:N or auto")
    parser.add_argument("--counts", default="2,4", help="the two evaluate.num_samples of teacher + evaluate")
    parser.add_argument("--steps", default="1,1", help="evaluate.num_steps at each count (1 keeps a CPU run short: "
                        "all three backends in about 35 min on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=1, help="evaluate.batch_size: batches, not counts, set memory")
    parser.add_argument("--sdxl-resolution", type=int, default=1024, help="512 if 1024 takes too long on a CPU")
    parser.add_argument("--work", type=Path, default=Path("/tmp/agd-real"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "real_architectures.json")
    parser.add_argument("--keep", action="store_true", help="keep the saved models under --work")
    parser.add_argument("--reuse-base", action="store_true", help="use models saved by an earlier --keep run")
    parser.add_argument("--assets", type=Path, default=ROOT / "data" / "assets", help="folder with the Inception weights")
    parser.add_argument("--build", help=argparse.SUPPRESS)  # child process: build one backend's models
    parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        BUILDERS[args.build][0](args.work, args.resolution)
        return
    from importlib.metadata import version

    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    counts = tuple(int(c) for c in args.counts.split(","))
    steps = tuple(int(c) for c in args.steps.split(","))
    if len(counts) != 2 or len(steps) != 2:
        raise SystemExit("--counts and --steps take two values each, e.g. --counts 2,6 --steps 2,1")
    out.update({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "torch": version("torch"), "threads": "torch default (one per core)",
                "options": {"device": args.device, "counts": list(counts), "steps": list(steps),
                            "batch_size": args.batch_size, "sdxl_resolution": args.sdxl_resolution},
                "peak_memory": "VmHWM of each stage's own process, read as it exits (peak_rss_gib); "
                               "rusage_maxrss_gib: what wait4 reports to the parent"})
    out.setdefault("runs", {})
    for backend in args.backends.split(","):
        resolution = args.sdxl_resolution if backend == "sdxl" else BUILDERS[backend][1]
        out["runs"][backend] = run_backend(backend, args.work, resolution, args.assets, args.reuse_base, args.device,
                                           counts, steps, args.batch_size, save=lambda partial, b=backend: (
                                               out["runs"].__setitem__(b, partial),
                                               args.out.write_text(json.dumps(out, indent=2) + "\n")))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")  # after each backend: a partial run keeps its rows
        if not args.keep:
            shutil.rmtree(args.work / backend / "base", ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
