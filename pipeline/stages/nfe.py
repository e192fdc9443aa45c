"""Stage `nfe`: quality against cost. At each sampler step count N (`nfe.steps`), on the same
conditions and seeds, AGD at N steps (N NFE; its adapters' teacher rule decides where they run:
an interval's adapters only inside its band) against:

    cfg                  CFG, N steps                                          2N NFE per image
    cfg_half_steps       CFG with half the steps (N // 2): AGD's NFE           2 (N // 2)
    cfg_equal_time       CFG at the most steps that take no longer than AGD's N
    interval             CFG only while sigma lies in `nfe.interval`, the      2 per guided step,
                         conditional branch alone elsewhere (N steps)          1 per other
    interval_equal_nfe   the interval at the most steps within AGD's NFE
    interval_equal_time  the interval at the most steps within AGD's time
    reuse                CFG reusing the last unconditional output on a        2 per full step,
                         share `nfe.reuse` of the steps                        1 per reusing step
    teacher, teacher_equal_nfe, teacher_equal_time
                         the adapters' own teacher rule (two passes), when it is neither plain CFG
                         nor the interval above (then `interval` is the teacher)

NFE is counted from the step plan each sampler runs (pipeline.guidance.sampling.step_plan), so a pass
that is spent counts, whether or not it changed the image. Seconds come from interleaved timing
(pipeline.evaluation.cost: each kind of step timed in `nfe.timing_rounds` rounds, round-robin, before sampling), never
from the sampling runs themselves, which share the machine with the scorer and each other. Off by
default (`nfe.num_samples: 0`):

    dvc exp run -S nfe.num_samples=1000

Writes reports/nfe.csv (one row per method and step count: FID and judge FD with 95 % intervals,
accuracy, NFE and seconds per image: a DVC plot of quality against cost) and reports/nfe.json (per N,
AGD minus each baseline, paired by seed and condition, with each side's NFE, steps and seconds:
`dvc metrics diff` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params
from pipeline.evaluation import tables
from pipeline.guidance import rules
from pipeline.run import preflight, runtime
from pipeline.run.progress import log

TABLE = Path("reports/nfe.csv")
SUMMARY = Path("reports/nfe.json")
COLUMNS = ["method", "steps", "nfe", "seconds_per_image", *tables.QUALITY_COLUMNS]


@dataclass(frozen=True)
class Run:
    """One sampler run: its mode ("cfg", "agd", "reuse"), its steps and, for "cfg", its rule."""

    mode: str
    steps: int
    rule: rules.Rule = rules.PLAIN


def two_pass_rules(teacher: rules.Rule, band: tuple[float, float]) -> dict[str, rules.Rule]:
    """The two-pass rules AGD is compared with at equal steps, NFE and time: plain CFG, the interval
    and, when it is neither, the adapters' own teacher."""
    out = {"cfg": rules.PLAIN, "interval": rules.Interval(*band)}
    if teacher not in out.values():
        out["teacher"] = teacher
    return out


def runs(n: int, teacher: rules.Rule, band: tuple[float, float], nfe_of, seconds_of) -> dict[str, Run]:
    """Method -> run at step count n. nfe_of(run) and seconds_of(run) give a run's cost per image;
    a baseline "at equal NFE / time" takes the most steps (at least 1) whose cost is within AGD's."""
    agd = Run("agd", n)
    out = {"agd": agd}
    for name, rule in two_pass_rules(teacher, band).items():
        out[name] = Run("cfg", n, rule)
        candidates = [Run("cfg", m, rule) for m in range(1, n + 1)]
        if name == "cfg":
            out["cfg_half_steps"] = Run("cfg", max(1, n // 2))
        else:
            out[f"{name}_equal_nfe"] = max((r for r in candidates if nfe_of(r) <= nfe_of(agd)),
                                           key=lambda r: r.steps, default=candidates[0])
        out[f"{name}_equal_time"] = max((r for r in candidates if seconds_of(r) <= seconds_of(agd)),
                                        key=lambda r: r.steps, default=candidates[0])
    out["reuse"] = Run("reuse", n)
    return out


def run(params: Params) -> None:
    ev_p, p = params.evaluate, params.nfe
    preflight.writable_all([("NFE table", TABLE, "file"), ("NFE summary", SUMMARY, "file")])
    if p.num_samples == 0:
        tables.write(TABLE, COLUMNS, [], SUMMARY, {})
        log("nfe: off (nfe.num_samples is 0); turn it on with `dvc exp run -S nfe.num_samples=1000`")
        return
    # heavy imports (torch, diffusers) only once the stage is on: off, it returns in a blink
    runtime.setup()
    from pipeline.evaluation import cost
    from pipeline.evaluation.models import load_models
    from pipeline.evaluation.samples import Generator
    from pipeline.evaluation.scoring import Scorer
    from pipeline.guidance.sampling import Guidance, nfe, plan_for

    family, adapters, sampler = load_models(params)
    settings = ev_p.replace(num_samples=p.num_samples, inception_samples=p.inception_samples)
    gen = Generator(family, adapters, settings, sampler)
    scorer = Scorer(gen.layout, settings, gen.cond_arrays.get("labels"))
    guidance = Guidance(reuse=p.reuse)
    band, w, teacher = (p.interval[0], p.interval[1]), p.guidance_scale, adapters.teacher
    per_action = cost.stage_action_seconds("nfe", family, adapters, gen.cond_arrays,
                                           min(settings.batch_size, p.num_samples), w, sampler, p.timing_rounds)

    def plan(r: Run) -> list[str]:
        return plan_for(family, sampler, r.steps, r.mode, guidance, teacher if r.mode == "agd" else r.rule)

    def nfe_of(r: Run) -> int:
        return nfe(plan(r))

    def seconds_of(r: Run) -> float:
        return cost.plan_seconds(plan(r), per_action)

    log(f"nfe: {sampler} at {p.steps} steps, w={w:g}, AGD distilled from {teacher.name}: CFG, its half steps and "
        f"equal time, guidance interval {p.interval} (at equal NFE and time), unconditional reuse on "
        f"{p.reuse:.0%} of steps{'' if 'teacher' not in two_pass_rules(teacher, band) else ', the teacher rule'}; "
        f"{p.num_samples} samples each")
    done: dict[Run, object] = {}  # one set per distinct run: CFG at N // 2 may be another N's CFG

    def samples(r: Run, method: str):
        if r not in done:
            done[r] = gen.run(r.mode, w, num_steps=r.steps, guidance=guidance, rule=r.rule,
                              label=f"{method} {r.steps} steps")
        return done[r]

    def cells(r: Run) -> dict:
        return {"nfe": nfe_of(r), "steps": r.steps, "seconds_per_image": cost.figures(seconds_of(r))}

    rows, summary = [], {}
    for n in p.steps:
        methods = runs(n, teacher, band, nfe_of, seconds_of)
        got = {method: samples(r, method) for method, r in methods.items()}
        rows += [{"method": method, **cells(r), **tables.quality_cells(scorer.score(got[method]))}
                 for method, r in methods.items()]
        versus = {"agd_nfe": nfe_of(methods["agd"]), "agd_seconds": cost.figures(seconds_of(methods["agd"])),
                  "teacher": teacher.name}
        for method, r in methods.items():
            if method != "agd":
                versus[f"vs_{method}"] = {**cells(r), **tables.versus(scorer.compare(got["agd"], got[method]))}
        summary[f"steps{n}"] = versus
        log(f"nfe: {n} steps {versus}")
    tables.write(TABLE, COLUMNS, rows, SUMMARY, summary)
    log(f"nfe: wrote {TABLE}, {SUMMARY}")
