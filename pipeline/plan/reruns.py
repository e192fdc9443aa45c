"""What `dvc exp run -S KEY=VALUE` re-runs: each stage's params and the stages it reads from, as
dvc.yaml wires them (`DEPENDS`; evaluate split into teacher and evaluate, as pipeline.plan.work
counts them), and params.yaml's mapping with the changes applied as `-S` reads them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import yaml

from pipeline.config import SECTIONS
from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.plan.work import Stage

_BASE = ("base.backend", "base.path", "base.dtype", "base.cfg_channels")
_SAMPLING = ("sample.compile", *_BASE, "trajectories.scheduler")
_SCORED = ("check", "train", "fid_ref", "assets", "classifier")
# the evaluate keys the experiment stages read: every one but timing_rounds (evaluate's own timing)
_EVALUATED = tuple(f"evaluate.{k}" for k in ("guidance_scales", "default_scale", "num_samples", "scheduler", "num_steps",
                                            "batch_size", "inception_samples", "bootstrap", "held_out_trajectories",
                                            "captions_file", "seed"))
DEPENDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # stage: (params read, stages read from)
    "check": (("",), ()),  # every key; its output is a fixed marker, so it never makes others re-run
    "assets": ((), ("check",)),
    "prepare": (("prepare",), ("check",)),
    "classifier": (("classifier",), ("check", "prepare")),
    "fid_ref": (("fid_ref",), ("check", "prepare", "assets")),
    "conditions": (("base.backend", "conditions"), ("check",)),
    "trajectories": (("sample.compile", *_BASE, "trajectories", "guidance"), ("check", "conditions", "prepare")),
    "train": ((*_BASE, "trajectories.scheduler", "trajectories.num_steps", "train", "guidance"),
              ("check", "trajectories")),
    "teacher": ((*_SAMPLING, *(f"evaluate.{k}" for k in ("scheduler", "num_steps", "guidance_scales", "num_samples",
                                                           "batch_size", "inception_samples", "seed",
                                                           "captions_file")), "guidance"),
                ("check", "assets", "classifier")),
    "evaluate": ((*_SAMPLING, "trajectories.num_steps", "train.output", "conditions.w_min", "conditions.w_max",
                  "conditions.negatives_file", "evaluate", "guidance"), (*_SCORED, "teacher")),
    "sweep": ((*_SAMPLING, "trajectories.num_steps", "train.output", "conditions.w_min", "conditions.w_max",
               *_EVALUATED, "sweep"), _SCORED),
    "nfe": ((*_SAMPLING, "train.output", *_EVALUATED, "nfe"), _SCORED),
    "samplers": ((*_SAMPLING, "trajectories.num_steps", "train.output", *_EVALUATED, "samplers"), _SCORED),
    "transfer": (("base", "pretrain.label_drop", "pretrain.min_snr_gamma", "pretrain.seed", "trajectories", "train",
                  "guidance", "evaluate.seed", "evaluate.num_samples", "evaluate.held_out_trajectories", "transfer"),
                 ("check", "trajectories", "prepare")),
    "report": (("conditions.w_min", "conditions.w_max"), ("train", "evaluate", "sweep", "nfe", "samplers", "transfer")),
}
FIXED_OUTPUT = {"check"}


def _reads(prefixes: tuple[str, ...], key: str) -> bool:
    return any(p == "" or key == p or key.startswith(p + ".") for p in prefixes)


def reruns(plan: list[Stage], keys: list[str]) -> list[str]:
    """Stages `dvc exp run -S KEY=...` re-runs: those reading a changed key, and those reading a stage whose
    output changes (a stage that is off or whose output is fixed writes the same bytes again)."""
    on = {s.name: s.on for s in plan}
    changed, out = set(), []
    for name in (s.name for s in plan):
        reads, after = DEPENDS[name]
        if any(_reads(reads, k) for k in keys) or changed & set(after):
            out.append(name)
            if on[name] and name not in FIXED_OUTPUT:
                changed.add(name)
    return out


def _value(text: str):
    """A -S value as Hydra reads it: YAML, with 1e-4 a number (YAML 1.1 would keep it a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_changes(raw: dict, changes: list[str]) -> tuple[dict, list[str]]:
    """params.yaml's mapping with `section.key=value` overrides (values in YAML, as `dvc exp run -S`)."""
    raw, keys = copy.deepcopy(raw), []
    for change in changes:
        key, sep, value = change.partition("=")
        key = key.strip()
        section, _, name = key.partition(".")
        if not sep or section not in SECTIONS or name not in SECTIONS[section].model_fields:
            raise AGDError(f"agd plan -S {change}", "not a change of one params.yaml key",
                           "write SECTION.KEY=VALUE, e.g. -S train.lr=1e-4 (`agd keys` lists the keys)")
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][name] = _value(value)
        keys.append(key)
    return raw, keys
