"""Stage `nfe`: quality against cost. At each sampler step count N (`nfe.steps`), on the same
conditions and seeds:

    cfg             CFG, N steps                                     2N NFE per image
    agd             AGD, N steps                                      N NFE
    cfg_half_steps  CFG with half the steps (N // 2): AGD's NFE       2 (N // 2) NFE
    interval        CFG only while sigma lies in `nfe.interval`,      2 per guided step, 1 per other
                    the conditional branch alone elsewhere
    reuse           CFG reusing the last unconditional output on      2 per full step, 1 per reusing
                    a share `nfe.reuse` of the steps                  step

NFE is counted from the step plan each sampler runs (pipeline.guidance.sampling.step_plan), so a pass that is
spent counts, whether or not it changed the image. Off by default (`nfe.num_samples: 0`):

    dvc exp run -S nfe.num_samples=1000

Writes reports/nfe.csv (one row per method and step count: FID and judge FD with 95 % intervals,
accuracy, NFE and seconds per image: a DVC plot of quality against NFE) and reports/nfe.json (per N,
AGD minus each baseline, paired by seed and condition: `dvc metrics diff` reads it).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.evaluation import tables
from pipeline.run import preflight, runtime
from pipeline.run.progress import log

TABLE = Path("reports/nfe.csv")
SUMMARY = Path("reports/nfe.json")
COLUMNS = ["method", "steps", "nfe", "seconds_per_image", *tables.QUALITY_COLUMNS]
BASELINES = ("cfg", "cfg_half_steps", "interval", "reuse")


def runs(n: int) -> dict[str, tuple[str, int]]:
    """Method -> (sampling mode, sampler steps) at step count n."""
    return {"cfg": ("cfg", n), "agd": ("agd", n), "cfg_half_steps": ("cfg", max(1, n // 2)),
            "interval": ("interval", n), "reuse": ("reuse", n)}


def row(method: str, steps: int, samples, scores: dict) -> dict:
    return {"method": method, "steps": steps, "nfe": samples.nfe, "seconds_per_image": round(samples.seconds, 5),
            **tables.quality_cells(scores)}


def run(params: Params) -> None:
    ev_p, p = params.evaluate, params.nfe
    preflight.writable_all([("NFE table", TABLE, "file"), ("NFE summary", SUMMARY, "file")])
    if p.num_samples == 0:
        tables.write(TABLE, COLUMNS, [], SUMMARY, {})
        log("nfe: off (nfe.num_samples is 0); turn it on with `dvc exp run -S nfe.num_samples=1000`")
        return
    # heavy imports (torch, diffusers) only once the stage is on: off, it returns in a blink
    runtime.setup()
    from pipeline.evaluation.models import load_models
    from pipeline.evaluation.samples import Generator
    from pipeline.evaluation.scoring import Scorer
    from pipeline.guidance.sampling import Guidance

    family, adapters, sampler = load_models(params)
    settings = ev_p.replace(num_samples=p.num_samples, inception_samples=p.inception_samples)
    gen = Generator(family, adapters, settings, sampler)
    scorer = Scorer(gen.layout, settings, gen.cond_arrays.get("labels"))
    guidance = Guidance(interval=(p.interval[0], p.interval[1]), reuse=p.reuse)
    w = p.guidance_scale
    log(f"nfe: {sampler} at {p.steps} steps, w={w:g}: CFG, AGD, CFG at half the steps, guidance interval "
        f"{p.interval}, unconditional reuse on {p.reuse:.0%} of steps; {p.num_samples} samples each")
    done: dict[tuple[str, int], object] = {}  # (mode, steps) -> Samples: CFG at N // 2 may be another N's CFG

    def samples(mode: str, steps: int):
        if (mode, steps) not in done:
            done[mode, steps] = gen.run(mode, w, num_steps=steps, guidance=guidance, label=f"{mode} {steps} steps")
        return done[mode, steps]

    rows, summary = [], {}
    for n in p.steps:
        got = {method: samples(*how) for method, how in runs(n).items()}
        rows += [row(method, how[1], got[method], scorer.score(got[method])) for method, how in runs(n).items()]
        versus = {"agd_nfe": got["agd"].nfe}
        for method in BASELINES:
            versus[f"vs_{method}"] = {"nfe": got[method].nfe, **tables.versus(scorer.compare(got["agd"], got[method]))}
        summary[f"steps{n}"] = versus
        log(f"nfe: {n} steps {versus}")
    tables.write(TABLE, COLUMNS, rows, SUMMARY, summary)
    log(f"nfe: wrote {TABLE}, {SUMMARY}")
