"""Where models run: `base.device` (auto | cpu | cuda | cuda:N), resolved once per stage.

auto takes the first CUDA device when torch sees one, else the CPU, so the same params run on a
laptop and on a GPU box without an edit. Asking for CUDA where there is none is one error line.
Initial noise is always drawn on the CPU (pipeline.backends.schedulers.seeded_generators), so a sample depends
on its seed alone, not on the device or the batch.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    import torch

# base.device values; torch is imported only to resolve one (params are checked without it)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def resolve(name: str, key: str = "params.yaml: base.device") -> torch.device:
    """The torch device for a `base.device` value; CUDA matmuls may use TF32 (as the authors' code)."""
    import torch

    if not DEVICE_PATTERN.match(name):
        raise AGDError(key, f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N")
    available, cause = cuda_state()
    if name == "auto":
        name = "cuda:0" if available else "cpu"
        if cause:  # a GPU is there, but this torch cannot use it: say so once, and run on the CPU
            print(f"warning: {key} auto runs on the CPU: {cause}. Fix: {_MATCHING_BUILD}", file=sys.stderr)
    device = torch.device(name)
    if device.type == "cuda":
        if not available:
            if cause:
                raise AGDError(key, f"{name} requested, but {cause}", _MATCHING_BUILD)
            raise AGDError(key, f"{name} requested, but torch sees no CUDA device",
                           "set base.device: auto or cpu, or install a CUDA build of torch on a GPU machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise AGDError(key, f"{name} requested, but torch sees {torch.cuda.device_count()} CUDA devices",
                           f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device = torch.device("cuda", index)
    return device


_MATCHING_BUILD = ("install the torch build for the CUDA version your driver supports (`nvidia-smi` shows it; "
                   "e.g. pip install torch --index-url https://download.pytorch.org/whl/cu121), or update the "
                   "NVIDIA driver")


def cuda_state() -> tuple[bool, str]:
    """Whether torch can use a CUDA device, and when a CUDA build cannot, torch's own reason (its
    "CUDA initialization" warning: a driver too old for the build, say); "" on a machine without one."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available or torch.version.cuda is None:
        return available, ""
    reasons = [str(w.message) for w in caught if "CUDA initialization" in str(w.message)]
    if not reasons or "no NVIDIA driver" in reasons[0]:
        return False, ""  # no GPU here: the CPU is what auto means
    reason = reasons[0].split("CUDA initialization:", 1)[1].strip().split("\n")[0].rstrip(". ")
    return False, f"torch {torch.__version__} (a CUDA {torch.version.cuda} build) cannot use the GPU: {reason}"


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """"cuda:0 (NVIDIA H200, bfloat16)" or "cpu (float32)": what each stage prints at its start."""
    import torch

    kind = str(dtype).replace("torch.", "")
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, {kind})"
    return f"{device} ({kind})"


def free_memory(device: torch.device) -> None:
    """Return cached blocks after text encoders or a VAE leave the device."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
