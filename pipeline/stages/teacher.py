"""Stage `teacher`: the teacher's evaluation samples, which do not depend on the adapters: the
unguided base (1 NFE per step) and CFG (2 NFE per step) at every `evaluate.guidance_scales` (and,
when `guidance.rule` is not plain CFG, that rule's two-pass samples too), on the evaluation's
conditions and seeds, into the sample store data/teacher.zarr (per sample: Inception
features, the judge's features and class where there is one, small pixels for same-seed distances).

Its own stage so that an experiment that changes only the adapters (`dvc exp run -S train.lr=1e-4`)
re-samples AGD alone: at the paper's settings the teacher is two thirds or more of the evaluation's
work. Resumable per batch (pipeline.evaluation.sample_store); under `launch.nproc` the batches are
shared out over the processes, with the same store as one process makes.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.evaluation.samples import TEACHER_STORE, Generator, fill_store, load_base_for, teacher_methods
from pipeline.guidance import rules
from pipeline.run import devices, distributed, preflight
from pipeline.run.progress import log


def run(params: Params) -> None:
    p = params.evaluate
    world = distributed.world()
    preflight.writable(TEACHER_STORE, "teacher sample store", "folder")
    family, sampler = load_base_for(params, distributed.local_device(params.base.device))
    distributed.init(family.device)
    log(f"teacher: {family.spec.name} base on {devices.describe(family.device, family.dtype)}; unguided and CFG at "
        f"w = {', '.join(f'{w:g}' for w in p.guidance_scales)}; {p.num_samples} samples each with {sampler}, "
        f"{p.num_steps} steps" + (f"; rank {world.rank} of {world.size}" if world.size > 1 else ""))
    gen = Generator(family, None, p, sampler)
    fill_store(TEACHER_STORE, gen, teacher_methods(gen, p, rules.from_params(params.guidance)), "teacher", world=world)
    distributed.finish()
    if world.main:
        log(f"teacher: {TEACHER_STORE} complete")
