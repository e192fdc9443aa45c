"""A DiT's learned variance against its scheduler: the rule the family applies when it loads and
`agd check` applies to the files on disk before any stage runs (no torch here)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.run.errors import AGDError

LEARNED = ("learned", "learned_range")


def reads_variance(scheduler_config) -> bool:
    """Whether a scheduler config samples with the model's learned variance (DDPM's learned_range)."""
    return dict(scheduler_config).get("variance_type") in LEARNED


def check_variance(path: str, in_channels: int, out_channels: int, scheduler_config: dict) -> None:
    """A scheduler config that samples with a learned variance needs a model that predicts one
    (out_channels = 2 x in_channels); else the first sampler step fails deep inside diffusers."""
    if out_channels not in (in_channels, 2 * in_channels):
        raise AGDError(f"{path}/transformer/config.json: out_channels",
                       f"{out_channels}, for in_channels {in_channels}: neither epsilon alone nor epsilon and a variance",
                       f"use out_channels {in_channels} or {2 * in_channels}")
    if reads_variance(scheduler_config) and out_channels != 2 * in_channels:
        raise AGDError(f"{path}/scheduler/scheduler_config.json: variance_type",
                       f"{scheduler_config['variance_type']!r} samples with a learned variance, but the model "
                       f"predicts none ({path}/transformer/config.json: out_channels {out_channels} = in_channels)",
                       'set variance_type to "fixed_small" (or remove it), or use a model with '
                       f"out_channels {2 * in_channels}")


def check_variance_on_disk(path: str) -> None:
    """check_variance from the base's config files, without loading the model (`agd check`); a hub id
    or an unreadable file is left to the stage that loads the model."""
    try:
        model = json.loads((Path(path) / "transformer" / "config.json").read_text())
        scheduler = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
        in_channels, out_channels = int(model["in_channels"]), int(model.get("out_channels") or model["in_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    check_variance(path, in_channels, out_channels, scheduler if isinstance(scheduler, dict) else {})
