"""Stage `samplers`: the trained adapters under other samplers and step counts than the trajectories
they were trained on, each against CFG under the same sampler (same conditions and seeds).

Per setting of `samplers.settings` ("SchedulerClass:steps"): FID and (embedded default) the judge's
feature distance with 95 % paired intervals, class accuracy, and how much of CFG's correction AGD
captures on fresh held-out CFG trajectories of that sampler. Off by default
(`samplers.num_samples: 0`):

    dvc exp run -S samplers.num_samples=500

Writes reports/samplers.csv (one row per setting and method: a DVC plot) and reports/samplers.json
(per setting, AGD against CFG: `dvc metrics diff` reads it). Whether collecting on a denser or a
stochastic grid makes adapters robust across samplers is an experiment on top (docs/experiments.md):

    dvc exp run -S trajectories.scheduler=EulerAncestralDiscreteScheduler -S trajectories.num_steps=50 \\
        -S evaluate.scheduler=DPMSolverMultistepScheduler -S samplers.num_samples=500
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.evaluation import tables
from pipeline.run import preflight, runtime
from pipeline.run.progress import log

TABLE = Path("reports/samplers.csv")
SUMMARY = Path("reports/samplers.json")
COLUMNS = ["setting", "scheduler", "steps", "method", "trained_on", *tables.QUALITY_COLUMNS]


def setting_key(scheduler: str, steps: int) -> str:
    """"DDIMScheduler", 50 -> "DDIM_50": short keys for tables and `dvc metrics diff`."""
    return f"{scheduler.removesuffix('Scheduler').removesuffix('Discrete')}_{steps}"


def run(params: Params) -> None:
    traj, ev_p, p = params.trajectories, params.evaluate, params.samplers
    preflight.writable_all([("samplers table", TABLE, "file"), ("samplers summary", SUMMARY, "file")])
    if p.num_samples == 0:
        tables.write(TABLE, COLUMNS, [], SUMMARY, {})
        log("samplers: off (samplers.num_samples is 0); turn it on with `dvc exp run -S samplers.num_samples=500`")
        return
    # heavy imports (torch, diffusers) only once the stage is on: off, it returns in a blink
    runtime.setup()
    from pipeline.backends.schedulers import family_scheduler
    from pipeline.evaluation import distill
    from pipeline.evaluation.models import load_models
    from pipeline.evaluation.samples import Generator, held_out
    from pipeline.evaluation.scoring import Scorer

    family, adapters, sampler = load_models(params)
    settings = p.parsed()
    for i, (name, steps) in enumerate(settings):  # every setting refused now, not after an hour of sampling
        key = f"params.yaml: samplers.settings[{i}]"
        family_scheduler(family, name, steps, key=key, name_key=key)
    ev_settings = ev_p.replace(num_samples=p.num_samples, inception_samples=p.inception_samples)
    held_cond, held_seeds = held_out(family, ev_p)  # the evaluate stage's held-out conditions and seeds
    gen = Generator(family, adapters, ev_settings, sampler)
    scorer = Scorer(gen.layout, ev_settings, gen.cond_arrays.get("labels"))
    w = p.guidance_scale
    log(f"samplers: adapters trained on {traj.scheduler} {traj.num_steps} steps; CFG and AGD at w={w:g} under "
        f"{', '.join(p.settings)}; {p.num_samples} samples each")
    rows, summary = [], {}
    for name, steps in settings:
        key, trained_on = setting_key(name, steps), (name, steps) == (traj.scheduler, traj.num_steps)
        got = {m: gen.run(m, w, scheduler=name, num_steps=steps, label=f"{m} {key}") for m in ("cfg", "agd")}
        scores = {m: scorer.score(s) for m, s in got.items()}
        rows += [{"setting": key, "scheduler": name, "steps": steps, "method": m, "trained_on": trained_on,
                  **tables.quality_cells(scores[m])} for m in got]
        total, _ = distill.held_out(family, adapters, held_cond, held_seeds, w, name, steps)
        summary[key] = {**tables.versus(scorer.compare(got["agd"], got["cfg"])),
                        **{k: v for k, v in total.items() if k != "correction_defined"}, "trained_on": trained_on}
        if "accuracy" in scores["cfg"]:
            summary[key]["accuracy_gap"] = round(scores["agd"]["accuracy"] - scores["cfg"]["accuracy"], 4)
        log(f"samplers: {key} {summary[key]}")
    tables.write(TABLE, COLUMNS, rows, SUMMARY, summary)
    log(f"samplers: wrote {TABLE}, {SUMMARY}")
