"""The experiment stages' sections of params.yaml (sweep, nfe, samplers, transfer): each is off by
default and turned on by one `dvc exp run -S ...`."""

from __future__ import annotations

from pipeline.config.schema import Invalid, NonNegative, PositiveInt, Section, key
from pipeline.run.errors import AGDError


def parse_setting(text: str, where: str) -> tuple[str, int]:
    """"DDIMScheduler:50" -> ("DDIMScheduler", 50)."""
    name, _, steps = text.partition(":")
    if not name or not steps.strip().isdigit() or int(steps) <= 0:
        raise AGDError(where, f"expected \"SchedulerClass:steps\", got {text!r}", "write e.g. DDIMScheduler:50")
    return name.strip(), int(steps)


OFF = "0: the stage is off"


class SweepParams(Section):
    """CFG, AGD and the unguided base across guidance scales (the `sweep` stage); off by default."""

    guidance_scales: list[NonNegative] = key([1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0], "scales inside and outside the "
                                             "training range", min_length=1)
    num_samples: int = key(0, f"samples per method and scale; {OFF}", ge=0,
                           problem="sample counts must not be negative", fix="use 0 (off) or e.g. 500")
    inception_samples: int = key(100, "Inception FID on the first N of them; 0: all", ge=0,
                                 problem="sample counts must not be negative", fix="use 0 (all) or e.g. 100")


class NfeParams(Section):
    """Quality against network evaluations (NFE) per image: CFG, AGD and the cheap-CFG baselines at
    each step count (the `nfe` stage); off by default."""

    guidance_scale: float = key(3.0, "the one scale of every point", ge=0, fix="use w >= 0")
    steps: list[PositiveInt] = key([5, 8, 12, 25], "sampler steps of each point", min_length=1,
                                   problem="step counts must be positive, got {value}", fix="use e.g. [5, 8, 12, 25]")
    interval: list[float] = key([0.3, 3.0], "guidance interval: guide only while sigma lies in (low, high] "
                                "(Kynkaanniemi et al. 2024)")
    reuse: float = key(0.5, "share of steps that reuse the last unconditional output (FasterCache-style)", ge=0,
                       lt=1, fix="use e.g. 0.5 (every other step)")
    timing_rounds: int = key(3, "interleaved rounds timing each kind of step (the seconds axis); the fastest is kept",
                             ge=1, fix="use e.g. 3")
    num_samples: int = key(0, f"samples per method and step count; {OFF}", ge=0,
                           problem="sample counts must not be negative", fix="use 0 (off) or e.g. 1000")
    inception_samples: int = key(100, "Inception FID on the first N of them; 0: all", ge=0,
                                 problem="sample counts must not be negative", fix="use 0 (all) or e.g. 100")

    def check(self) -> None:
        if len(self.interval) != 2 or not 0 <= self.interval[0] < self.interval[1]:
            raise Invalid("interval", f"expected [low, high] with 0 <= low < high, got {self.interval}",
                          "use noise levels sigma, e.g. [0.3, 3.0]")


class SamplersParams(Section):
    """The adapters under other samplers and step counts than their trajectories' (the `samplers` stage);
    off by default."""

    guidance_scale: float = key(3.0, "the one scale of every setting", ge=0, fix="use w >= 0")
    settings: list[str] = key(["DDIMScheduler:50", "EulerDiscreteScheduler:10", "DPMSolverMultistepScheduler:10",
                               "DPMSolverMultistepScheduler:50"], "\"SchedulerClass:steps\" of each setting")
    num_samples: int = key(0, f"samples per method and setting; {OFF}", ge=0,
                           problem="sample counts must not be negative", fix="use 0 (off) or e.g. 500")
    inception_samples: int = key(100, "Inception FID on the first N of them; 0: all", ge=0,
                                 problem="sample counts must not be negative", fix="use 0 (all) or e.g. 100")

    def check(self) -> None:
        for i, text in enumerate(self.settings):
            try:
                parse_setting(text, "")
            except AGDError as err:
                raise Invalid(f"settings[{i}]", err.problem, err.fix) from None

    def parsed(self) -> list[tuple[str, int]]:
        return [parse_setting(s, f"samplers.settings[{i}]") for i, s in enumerate(self.settings)]


class TransferParams(Section):
    """Adapters trained on the base, applied unchanged to a fine-tuned copy of it (the `transfer` stage);
    off by default. The embedded default only."""

    finetune_steps: int = key(0, f"the derived model: the base trained this many steps further; {OFF}", ge=0,
                              fix="use 0 (off) or e.g. 400")
    finetune_digits: list[int] = key([0, 1, 2, 3, 4], "the derived model is trained on these digits only",
                                     min_length=1, problem="expected digits 0-9, got {value}",
                                     fix="use e.g. [0, 1, 2, 3, 4]")
    finetune_lr: float = key(3e-4, "learning rate of the fine-tuning", gt=0)
    finetune_batch_size: int = key(128, "digits per fine-tuning step", gt=0)
    widths: list[PositiveInt] = key([16, 32, 64, 128], "adapter widths compared", min_length=1,
                                    problem="adapter widths must be positive, got {value}", fix="use e.g. [16, 64]")
    adapter_steps: int = key(500, "training steps of each width's adapters (the train section's recipe otherwise)",
                             gt=0)
    guidance_scale: float = key(3.0, "the scale the correction is measured at", ge=0, fix="use w >= 0")
    output: str = key("models/transfer", "where the derived model and the adapters of each width lie")

    def check(self) -> None:
        if any(not 0 <= d <= 9 for d in self.finetune_digits):
            raise Invalid("finetune_digits", f"expected digits 0-9, got {self.finetune_digits}",
                          "use e.g. [0, 1, 2, 3, 4]")

