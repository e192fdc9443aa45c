"""The base and the trained adapters, as every stage that samples AGD loads them (the teacher,
which runs no adapters, loads the base alone: pipeline.evaluation.samples.load_base_for)."""

from __future__ import annotations

from pathlib import Path

from pipeline.backends.family import Family
from pipeline.evaluation.samples import load_base_for
from pipeline.guidance.adapters import AdapterSet


def load_models(params, device: str | None = None) -> tuple[Family, AdapterSet, str]:
    """The base set up for the evaluation sampler, the trained adapters, and the sampler's name.
    params: pipeline.config.Params (base, sample, trajectories, train and evaluate are read)."""
    family, sampler = load_base_for(params, device)
    return family, AdapterSet.load(Path(params.train.output), family), sampler
