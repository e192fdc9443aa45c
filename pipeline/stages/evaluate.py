"""Stage `evaluate`: AGD (1 NFE per step) against CFG (2 NFE per step) on the same conditions and noise.

AGD's samples go into the sample store data/evaluation.zarr, batch by batch (a killed run resumes;
under `launch.nproc` the batches are shared out over the processes); CFG's and the unguided base's
come from the `teacher` stage's store, which does not depend on the adapters.

Per guidance scale, written so that `dvc metrics diff` reads the answer first:
- reports/metrics.json: AGD against CFG. Paired differences of FID, KID and (embedded default)
  the classifier-feature distance, each with a 95 % interval and `significant`; class-accuracy
  gap; how much of CFG's correction AGD's pass captures on fresh held-out CFG trajectories
  (captured, cosine, gain); how close AGD's images are to CFG's, seed by seed.
- reports/quality.json: each method's own figures with intervals (and the unguided base).
- reports/timing.json: NFE and seconds per image (they change on every run; kept apart). The seconds
  come from each kind of step timed interleaved (pipeline.evaluation.cost, `evaluate.timing_rounds`
  rounds) and the method's step plan, so CFG's and AGD's are measured under the same load;
  `run_seconds_per_image` is the wall time of the sampling run itself, timed in another stage for
  the teacher's sets, so only a rough figure.
- with adapters trained with negative conditions, metrics.json's default scale also holds `negatives`:
  AGD with a negative against CFG with it (pipeline.evaluation.negatives).
- reports/distillation.csv: captured, cosine and gain per scale and sampler step (a DVC plot).
- reports/samples.png: CFG | AGD at the default scale, same seeds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.config import Params
from pipeline.evaluation import cost, distill, negatives
from pipeline.evaluation.models import load_models
from pipeline.evaluation.sample_store import SampleStore
from pipeline.evaluation.samples import EVALUATION_STORE, TEACHER_STORE, Generator, fill_store, held_out, read_set, teacher_method
from pipeline.evaluation.samples import teacher_methods as teacher_sets
from pipeline.evaluation.scoring import Scorer, same_seed_mse
from pipeline.evaluation.tables import scale_key
from pipeline.guidance import rules
from pipeline.guidance.rules import PLAIN
from pipeline.guidance.sampling import plan_for
from pipeline.run import devices, distributed, files, preflight
from pipeline.run.errors import AGDError
from pipeline.run.progress import log

METRICS = Path("reports/metrics.json")
QUALITY = Path("reports/quality.json")
TIMING = Path("reports/timing.json")
DISTILLATION = Path("reports/distillation.csv")
GRID = Path("reports/samples.png")


def grid(left: np.ndarray, right: np.ndarray, columns: int = 10, rows: int = 4) -> np.ndarray:
    """CFG samples left, AGD samples right (same seeds and conditions), a white gap between; small
    images (MNIST's 28 px) enlarged to about 84 px."""
    zoom = max(1, 84 // left.shape[1])
    def tile(images):
        images = images[: columns * rows]
        n, h, w, c = images.shape
        r = -(-n // columns)
        images = np.concatenate([images, np.zeros((r * columns - n, h, w, c), np.uint8)])
        out = images.reshape(r, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(r * h, columns * w, c)
        return out.repeat(zoom, 0).repeat(zoom, 1)

    a, b = tile(left), tile(right)
    gap = np.full((a.shape[0], 4 * zoom, a.shape[2]), 255, np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def write_table(path: Path, tables: dict[float, list[dict]]) -> None:
    """One row per guidance scale and sampler step (long format: any list of scales gives the same
    columns, and dvc.yaml's plot draws one line per value of `w`)."""
    with files.atomic(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.DictWriter(f, ["w", "step", "t", "captured", "cosine", "gain"])
        out.writeheader()
        for w, rows in tables.items():
            for row in rows:
                out.writerow({"w": f"{w:g}", "step": row["step"], "t": row["t"],
                              **{m: row.get(m, "") for m in ("captured", "cosine", "gain")}})


def step_seconds(family, adapters, gen: Generator, p, sampler: str):
    """Seconds per image of one step of each kind (two passes, an AGD pass, a conditional pass), timed
    interleaved on a batch of the evaluation's size, and (mode, rule) -> seconds per image of the
    evaluation's sampler under that plan: the sum of its steps."""
    per_action = cost.stage_action_seconds("evaluate", family, adapters, gen.cond_arrays,
                                           min(p.batch_size, p.num_samples), p.default_scale, sampler, p.timing_rounds)
    return per_action, lambda mode, rule: cost.plan_seconds(plan_for(family, sampler, p.num_steps, mode, rule=rule),
                                                          per_action)


def run(params: Params) -> None:
    from PIL import Image

    from pipeline.guidance.adapters import saved

    traj, cond_p, p = params.trajectories, params.conditions, params.evaluate
    world = distributed.world()
    outputs = [METRICS, QUALITY, TIMING, DISTILLATION, GRID]
    if world.main:
        preflight.writable_all([(f"evaluate output {o.name}", o, "file") for o in outputs])
    teacher = SampleStore(TEACHER_STORE, create=False, maker="teacher")  # before hours of AGD sampling
    family, adapters, sampler = load_models(params, distributed.local_device(params.base.device))
    distributed.init(family.device)
    log(f"evaluate: {family.spec.name} base on {devices.describe(family.device, family.dtype)}; samples with "
        f"{sampler}, {p.num_steps} steps; distillation on {traj.scheduler} trajectories of {traj.num_steps} steps"
        + (f"; rank {world.rank} of {world.size}" if world.size > 1 else ""))
    gen = Generator(family, adapters, p, sampler)
    adapters_sha256 = saved.read_meta(Path(params.train.output))["weights_sha256"]
    rule = rules.from_params(params.guidance)
    if adapters.teacher != rule:
        raise AGDError(f"{params.train.output}: teacher", f"the adapters were trained from {adapters.teacher.identity()}"
                       f", params.yaml's guidance section names {rule.identity()}",
                       "re-run `agd trajectories` and `agd train` (dvc repro) for this rule")
    if world.main:  # the teacher's sets are checked before AGD's sampling starts
        for m in teacher_sets(gen, p, rule):
            read_set(teacher, gen, m, "teacher")
    agd_methods = {w: gen.method("agd", w) for w in p.guidance_scales}
    store = fill_store(EVALUATION_STORE, gen, list(agd_methods.values()), "evaluate", adapters_sha256, world)
    distributed.finish()
    if not world.main:
        return
    scorer = Scorer(gen.layout, p, gen.cond_arrays.get("labels"))
    held_cond, held_seeds = held_out(family, p, gen.cond_arrays)
    unguided = read_set(teacher, gen, teacher_sets(gen, p)[0], "teacher")
    quality = {"unguided": scorer.score(unguided)}
    per_step, seconds = step_seconds(family, adapters, gen, p, sampler) if p.timing_rounds else ({}, None)

    def timed(samples, mode: str, rule_of: rules.Rule) -> dict:
        return {**({"seconds_per_image": cost.figures(seconds(mode, rule_of))} if seconds else {}),
                "nfe_per_image": samples.nfe, "run_seconds_per_image": round(samples.seconds, 5)}

    timing = {**({"step_seconds_per_image": {a: cost.figures(v) for a, v in per_step.items()}} if per_step else {}),
              "unguided": timed(unguided, "cond", PLAIN)}
    metrics, tables = {}, {}
    for w, agd_method in agd_methods.items():
        key = scale_key(w)
        cfg = read_set(teacher, gen, gen.method("cfg", w), "teacher")
        own = read_set(teacher, gen, teacher_method(gen, w, rule), "teacher")  # cfg itself for plain CFG
        agd = read_set(store, gen, agd_method, "evaluate", adapters_sha256)
        summary, tables[w] = distill.held_out(family, adapters, held_cond, held_seeds, w, traj.scheduler,
                                                traj.num_steps)
        quality[key] = {"cfg": scorer.score(cfg), "agd": scorer.score(agd)}
        timing[key] = {"cfg": timed(cfg, "cfg", PLAIN), "agd": timed(agd, "agd", adapters.teacher)}
        if seconds:
            timing[key]["time_ratio"] = round(timing[key]["agd"]["seconds_per_image"]
                                              / timing[key]["cfg"]["seconds_per_image"], 4)
        versus = scorer.compare(agd, cfg)
        versus["same_seed_mse_unguided"] = same_seed_mse(unguided, cfg)  # how far CFG moved
        versus["fid_ratio"] = round(quality[key]["agd"]["fid"]["value"] / quality[key]["cfg"]["fid"]["value"], 4)
        if "accuracy" in quality[key]["cfg"]:
            versus["accuracy_gap"] = round(quality[key]["agd"]["accuracy"] - quality[key]["cfg"]["accuracy"], 4)
        versus.update(summary, in_training_range=bool(cond_p.w_min <= w <= cond_p.w_max))
        if rule != PLAIN:  # AGD against the two-pass rule it distils, beside plain CFG
            quality[key]["teacher"] = scorer.score(own)
            versus["teacher"] = {"rule": rule.identity(), **scorer.compare(agd, own)}
            timing[key]["teacher"] = timed(own, "cfg", rule)
        if adapters.negatives and p.negative_samples and w == p.default_scale:
            versus["negatives"] = negatives.figures(gen, p, w, rule, cond_p.negatives_file, traj.scheduler,
                                                    traj.num_steps)
        metrics[key] = versus
        log(f"evaluate: w={w:g} {versus}")
        if w == p.default_scale:
            image = grid(own.source.read("grid"), agd.source.read("grid"))  # AGD beside what it distils
            with files.atomic(GRID) as tmp:
                Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp)
    for path, doc in ((METRICS, metrics), (QUALITY, quality), (TIMING, timing)):
        files.write_json(path, doc)
    write_table(DISTILLATION, tables)
    log(f"evaluate: wrote {', '.join(str(o) for o in outputs)}")
