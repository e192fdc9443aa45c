"""The experiment stages' sections of params.yaml (sweep, nfe, samplers, transfer): each is off by
default and turned on by one `dvc exp run -S ...`; their checks beyond types and choices."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import AGDError


@dataclass
class SweepParams:
    """CFG, AGD and the unguided base across guidance scales (the `sweep` stage); off by default."""

    guidance_scales: list[float] = field(default_factory=lambda: [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
    num_samples: int = 0  # per method and scale; 0: the sweep is off (about 18 minutes at 500 on 2 cores)
    inception_samples: int = 100  # Inception FID on the first N of them (0: all)


@dataclass
class NfeParams:
    """Quality against network evaluations (NFE) per image: CFG, AGD and the cheap-CFG baselines at
    each step count (the `nfe` stage); off by default."""

    guidance_scale: float = 3.0
    steps: list[int] = field(default_factory=lambda: [5, 8, 12, 25])  # sampler steps of each point
    interval: list[float] = field(default_factory=lambda: [0.3, 3.0])  # guidance interval: sigma in (low, high]
    reuse: float = 0.5  # share of steps that reuse the last unconditional output
    num_samples: int = 0  # per method and step count; 0: the stage is off
    inception_samples: int = 100  # Inception FID on the first N of them (0: all)


@dataclass
class SamplersParams:
    """The adapters under other samplers and step counts than their trajectories' (the `samplers` stage);
    off by default."""

    guidance_scale: float = 3.0
    settings: list[str] = field(default_factory=lambda: ["DDIMScheduler:50", "EulerDiscreteScheduler:10",
                                                         "DPMSolverMultistepScheduler:10",
                                                         "DPMSolverMultistepScheduler:50"])  # "Scheduler:steps"
    num_samples: int = 0  # per method and setting; 0: the stage is off
    inception_samples: int = 100  # Inception FID on the first N of them (0: all)


@dataclass
class TransferParams:
    """Adapters trained on the base, applied unchanged to a fine-tuned copy of it (the `transfer` stage);
    off by default. The embedded default only."""

    finetune_steps: int = 0  # the derived model: the base trained this many steps further; 0: the stage is off
    finetune_digits: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # on these digits only
    finetune_lr: float = 3e-4
    finetune_batch_size: int = 128
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # adapter widths compared
    adapter_steps: int = 500  # training steps of each width's adapters (the train section's recipe otherwise)
    guidance_scale: float = 3.0
    output: str = "models/transfer"


def parse_setting(text: str, where: str) -> tuple[str, int]:
    """"DDIMScheduler:50" -> ("DDIMScheduler", 50)."""
    name, _, steps = text.partition(":")
    if not name or not steps.strip().isdigit() or int(steps) <= 0:
        raise AGDError(where, f"expected \"SchedulerClass:steps\", got {text!r}", "write e.g. DDIMScheduler:50")
    return name.strip(), int(steps)


EXPERIMENT_SECTIONS: dict[str, type] = {
    "sweep": SweepParams,
    "nfe": NfeParams,
    "samplers": SamplersParams,
    "transfer": TransferParams,
}


def check_experiment(name: str, p, where: str) -> None:
    """Relations between an experiment section's values (where: "params.yaml: NAME")."""
    if name == "sweep":
        if p.num_samples < 0 or p.inception_samples < 0:
            raise AGDError(f"{where}.num_samples", "sample counts must not be negative", "use 0 (off) or e.g. 500")
        if any(w < 0 for w in p.guidance_scales):
            raise AGDError(f"{where}.guidance_scales", "guidance scales must not be negative", "use w >= 0")
    if name == "nfe":
        if p.num_samples < 0 or p.inception_samples < 0:
            raise AGDError(f"{where}.num_samples", "sample counts must not be negative", "use 0 (off) or e.g. 1000")
        if any(n <= 0 for n in p.steps):
            raise AGDError(f"{where}.steps", f"step counts must be positive, got {p.steps}", "use e.g. [5, 8, 12, 25]")
        if len(p.interval) != 2 or not 0 <= p.interval[0] < p.interval[1]:
            raise AGDError(f"{where}.interval", f"expected [low, high] with 0 <= low < high, got {p.interval}",
                           "use noise levels sigma, e.g. [0.3, 3.0]")
        if not 0 <= p.reuse < 1:
            raise AGDError(f"{where}.reuse", f"must be in [0, 1), got {p.reuse}", "use e.g. 0.5 (every other step)")
        if p.guidance_scale < 0:
            raise AGDError(f"{where}.guidance_scale", "must not be negative", "use w >= 0")
    if name == "samplers":
        if p.num_samples < 0 or p.inception_samples < 0:
            raise AGDError(f"{where}.num_samples", "sample counts must not be negative", "use 0 (off) or e.g. 500")
        for i, text in enumerate(p.settings):
            parse_setting(text, f"{where}.settings[{i}]")
    if name == "transfer":
        if p.finetune_steps < 0:
            raise AGDError(f"{where}.finetune_steps", f"must not be negative, got {p.finetune_steps}",
                           "use 0 (off) or e.g. 400")
        if not p.finetune_digits or any(not 0 <= d <= 9 for d in p.finetune_digits):
            raise AGDError(f"{where}.finetune_digits", f"expected digits 0-9, got {p.finetune_digits}",
                           "use e.g. [0, 1, 2, 3, 4]")
        if any(w <= 0 for w in p.widths):
            raise AGDError(f"{where}.widths", f"adapter widths must be positive, got {p.widths}", "use e.g. [16, 64]")
