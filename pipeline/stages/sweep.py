"""Stage `sweep`: CFG, AGD and the unguided base across guidance scales, inside and outside the
range the adapters were trained on. Off by default (`sweep.num_samples: 0`), because it
samples every method at every scale; turn it on with

    dvc exp run -S sweep.num_samples=500

Per scale, with the evaluation's machinery (same conditions and seeds for every method, paired
bootstrap intervals): FID (Inception, first `sweep.inception_samples`), the judge's feature
distance and class accuracy where there is a judge, and how much of CFG's correction AGD captures
on held-out trajectories. Writes reports/sweep.csv (one row per method and scale: a DVC plot) and
reports/sweep.json (AGD against CFG per scale: `dvc metrics diff` reads it); `agd report` draws
reports/sweep.png with the training range shaded.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.evaluation import tables
from pipeline.run import preflight, runtime
from pipeline.run.progress import log

TABLE = Path("reports/sweep.csv")
SUMMARY = Path("reports/sweep.json")
COLUMNS = ["method", "w", "in_training_range", *tables.QUALITY_COLUMNS]


def row(method: str, w: float, in_range: bool, scores: dict) -> dict:
    return {"method": method, "w": f"{w:g}", "in_training_range": in_range, **tables.quality_cells(scores)}


def run(params: Params) -> None:
    traj, cond_p, ev_p, p = params.trajectories, params.conditions, params.evaluate, params.sweep
    preflight.writable_all([("sweep table", TABLE, "file"), ("sweep summary", SUMMARY, "file")])
    if p.num_samples == 0:
        tables.write(TABLE, COLUMNS, [], SUMMARY, {})
        log("sweep: off (sweep.num_samples is 0); turn it on with `dvc exp run -S sweep.num_samples=500`")
        return
    # heavy imports (torch, diffusers) only once the stage is on: off, it returns in a blink
    runtime.setup()
    from pipeline.evaluation import distill
    from pipeline.evaluation.models import load_models
    from pipeline.evaluation.samples import Generator, held_out
    from pipeline.evaluation.scoring import Scorer

    family, adapters, sampler = load_models(params)
    settings = ev_p.replace(num_samples=p.num_samples, inception_samples=p.inception_samples,
                            guidance_scales=p.guidance_scales, default_scale=p.guidance_scales[0])
    held_cond, held_seeds = held_out(family, ev_p)  # the evaluate stage's held-out trajectories
    gen = Generator(family, adapters, settings, sampler)  # (frees text encoders: after held_out)
    scorer = Scorer(gen.layout, settings, gen.cond_arrays.get("labels"))
    log(f"sweep: {len(p.guidance_scales)} scales x (CFG, AGD) + unguided, {p.num_samples} samples each")
    rows = [row("unguided", 1.0, True, scorer.score(gen.run("cond", 1.0)))]
    summary = {}
    for w in p.guidance_scales:
        in_range = bool(cond_p.w_min <= w <= cond_p.w_max)
        cfg, agd = gen.run("cfg", w), gen.run("agd", w)
        rows += [row("cfg", w, in_range, scorer.score(cfg)), row("agd", w, in_range, scorer.score(agd))]
        versus = tables.versus(scorer.compare(agd, cfg))
        if rows[-1]["accuracy"] != "":  # a judge exists
            versus["accuracy_gap"] = round(rows[-1]["accuracy"] - rows[-2]["accuracy"], 4)
        total, _ = distill.held_out(family, adapters, held_cond, held_seeds, w, traj.scheduler, traj.num_steps)
        versus.update({k: v for k, v in total.items() if k != "correction_defined"}, in_training_range=in_range)
        summary[tables.scale_key(w)] = versus
        log(f"sweep: w={w:g} {versus}")
    tables.write(TABLE, COLUMNS, rows, SUMMARY, summary)
    log(f"sweep: wrote {TABLE}, {SUMMARY}")
