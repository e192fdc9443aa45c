"""The evaluation's samples: generated with the same seeds and conditions for every method, batch by
batch, and turned at once into what scoring needs (pipeline.evaluation.sample_store), so that no
image set is ever held whole and a stored set resumes where a killed stage stopped.

Two feature spaces:
- Inception-v3 (clean-fid, pinned weights): FID, KID, precision and recall, comparable with the
  real backends and the literature; costly on a CPU, so on the first `evaluate.inception_samples`.
- the digit classifier's penultimate features (the embedded default only, where the judge exists):
  cheap, so on all `evaluate.num_samples`; the figure with the tightest interval on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.backends import EMBEDDED
from pipeline.backends.family import Family
from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler
from pipeline.data.provenance import jsonable
from pipeline.evaluation import fid, judge
from pipeline.evaluation.sample_store import Layout, MemorySet, SampleStore, batch_arrays
from pipeline.guidance.rules import PLAIN, Rule, recorded
from pipeline.guidance.sampling import Guidance, nfe, plan_for, sample
from pipeline.run.distributed import World
from pipeline.run.errors import AGDError
from pipeline.run.progress import Tracker

if TYPE_CHECKING:  # the teacher runs no adapters: their code is not its dependency
    from pipeline.guidance.adapters import AdapterSet

INCEPTION_BATCH = 50  # images per Inception call (clean-fid's default)
TEACHER_STORE = Path("data/teacher.zarr")  # stage teacher: the unguided base and CFG
EVALUATION_STORE = Path("data/evaluation.zarr")  # stage evaluate: AGD


def load_base_for(params, device: str | None = None) -> tuple[Family, str]:
    """The frozen base, set up for the evaluation sampler (refused when it cannot take
    `evaluate.num_steps`), and the sampler's name. params: pipeline.config.Params."""
    base = params.base.model_dump()
    family = load_base(**{**base, "device": device or base["device"]})
    if params.sample.compile:
        family.compile()
    sampler = params.evaluate.scheduler or params.trajectories.scheduler
    family_scheduler(family, sampler, params.evaluate.num_steps, key="params.yaml: evaluate.num_steps")
    return family, sampler


def items(family: Family, p) -> list[dict]:
    """The evaluation's conditions: classes in turn, or captions drawn from evaluate.captions_file."""
    n = p.num_samples
    if family.spec.condition == "class":
        return [{"label": int(i % family.spec.num_classes)} for i in range(n)]
    from pipeline.data.captions import sample_captions

    rng = np.random.default_rng(p.seed)
    return [{"caption": c} for c in sample_captions(Path(p.captions_file), n, rng)]


def held_out(family: Family, p, arrays: dict | None = None) -> tuple[dict, np.ndarray]:
    """Conditions and seeds of the held-out CFG trajectories: evaluation conditions (`arrays`, the
    evaluation's encoded conditions, when already at hand), with seeds no sample or training
    trajectory uses."""
    arrays = family.condition_arrays(items(family, p)) if arrays is None else arrays
    count = len(next(iter(arrays.values())))
    n = p.held_out_trajectories
    rows = np.random.default_rng(p.seed + 1).choice(count, n, replace=count < n)
    return family.condition_batch({k: v[rows] for k, v in arrays.items()}), 10**9 + p.seed + np.arange(n)


@dataclass
class Method:
    """How one set of samples is made: the sampling mode at a scale, under a sampler."""

    mode: str
    w: float
    scheduler: str
    num_steps: int
    guidance: Guidance = Guidance()
    label: str = ""
    rule: Rule = PLAIN  # the teacher rule of mode "cfg" (AGD runs under its adapters' own)

    @property
    def name(self) -> str:
        """The set's name in a sample store: 'cfg/w3', 'unguided/w1'."""
        return f"{self.label or self.mode}/w{self.w:g}"


class Samples:
    """One method's samples at one scale, as scoring reads them: per-sample features (small) and the
    set they were read from (pixels and the grid images, read in blocks when needed)."""

    def __init__(self, source, nfe: int):
        layout = source.layout
        self.source, self.nfe, self.count = source, nfe, layout.count
        self.features = {"inception": source.read("inception")}
        self.pred = None
        if layout.judge_dim:
            self.features["judge"] = source.read("judge")
            self.pred = source.read("pred")
        self.seconds = float(source.read("seconds").sum()) / layout.count  # per image
        self.scored: dict = {}  # distance name -> pipeline.evaluation.quality.Scored


class Generator:
    """Generates the evaluation's samples of any method, batch by batch, into a set."""

    def __init__(self, family: Family, adapters: AdapterSet | None, p, scheduler: str):
        self.family, self.adapters, self.p, self.scheduler = family, adapters, p, scheduler
        self.seeds = p.seed + np.arange(p.num_samples)
        self.items = items(family, p)
        self.cond_arrays = family.condition_arrays(self.items)  # on the host; a batch's rows go to the device
        family.release_text_encoders()
        self.judge = None
        if family.spec.name == EMBEDDED:  # the only backend with a judge of its classes
            self.judge = judge.load(judge.WEIGHTS).to(family.device)
        self.extractor = fid.InceptionFeatures(fid.WEIGHTS).to(family.device)
        n = len(self.seeds)
        self.layout = Layout(n, p.batch_size, min(p.inception_samples or n, n), family.image_shape,
                             judge_dim=128 if self.judge is not None else 0)

    def method(self, mode: str, w: float, scheduler: str | None = None, num_steps: int | None = None,
               guidance: Guidance = Guidance(), label: str = "", rule: Rule = PLAIN) -> Method:
        """A method with the evaluation's sampler and step count unless told otherwise."""
        return Method(mode, w, scheduler or self.scheduler, num_steps or self.p.num_steps, guidance, label, rule)

    def rule_of(self, m: Method) -> Rule:
        """The rule a method's steps follow: AGD's adapters' teacher, else the method's own."""
        return self.adapters.teacher if m.mode == "agd" else m.rule

    def cost(self, m: Method) -> int:
        return nfe(plan_for(self.family, m.scheduler, m.num_steps, m.mode, m.guidance, self.rule_of(m)))

    def settings(self, m: Method, adapters_sha256: str | None = None) -> dict:
        """What decides a set's content: kept with the set, compared when a stage resumes it."""
        scheduler = family_scheduler(self.family, m.scheduler, m.num_steps)
        conditions = hashlib.sha256(json.dumps(self.items, sort_keys=True).encode()).hexdigest()[:32]
        out = {"base": self.family.content_identity(), "dtype": str(self.family.dtype).removeprefix("torch."),
               "mode": m.mode, "w": m.w, "scheduler": m.scheduler, "scheduler_config": jsonable(scheduler.config),
               "num_steps": m.num_steps, "seed": self.p.seed, "conditions_sha256": conditions,
               "guidance": {"interval": list(m.guidance.interval) if m.guidance.interval else None,
                            "reuse": m.guidance.reuse},
               "nfe_per_image": self.cost(m)}
        if recorded(self.rule_of(m)) is not None:  # plain CFG is not recorded: earlier sets keep their identity
            out["rule"] = recorded(self.rule_of(m))
        if adapters_sha256 is not None:
            out["adapters_sha256"] = adapters_sha256
        return out

    def fill(self, target, m: Method, world: World = World(), stage: str = "evaluate") -> int:
        """Generate the batches of `target` not finished yet (this rank's share: every world.size-th
        batch, so each sample is made in the batch one process makes it in); returns how many."""
        done = target.done()
        own = list(range(self.layout.batches))[world.rank::world.size]
        todo = [b for b in own if not done[b]]
        label = f"{stage} {m.label or m.mode} w={m.w:g}" + (f" (rank {world.rank})" if world.size > 1 else "")
        finished = sum(len(self.layout.rows(b)) for b in own if done[b])
        with Tracker(label, sum(len(self.layout.rows(b)) for b in own), start=finished) as tracker:
            for b in todo:
                target.write(b, self.batch(b, m))
                tracker.advance(len(self.layout.rows(b)))
        return len(todo)

    def batch(self, b: int, m: Method) -> dict[str, np.ndarray]:
        """Batch b of method m: sampled, decoded and reduced to what the set keeps."""
        idx = list(self.layout.rows(b))
        cond = self.family.condition_batch({k: v[idx] for k, v in self.cond_arrays.items()})
        t0 = time.perf_counter()
        x = sample(self.family, cond, self.seeds[idx], torch.full((len(idx),), m.w), m.scheduler, m.num_steps,
                   mode=m.mode, adapters=self.adapters, guidance=m.guidance, rule=m.rule)
        seconds = time.perf_counter() - t0
        images = self.family.decode(x).cpu().numpy()
        del x
        features = {}
        inception_rows = [i for i in idx if i < self.layout.inception]
        if inception_rows:
            features["inception"] = fid.image_features(images[: len(inception_rows)], self.extractor,
                                                       batch_size=INCEPTION_BATCH, device=self.family.device)
        if self.judge is not None:
            digits = self._digits(images)
            features["judge"] = judge.features(self.judge, digits).cpu().numpy()
            features["pred"] = judge.predict(self.judge, digits).cpu().numpy().astype(np.int64)
        return batch_arrays(self.layout, b, images, features, seconds)

    def _digits(self, images: np.ndarray) -> torch.Tensor:
        from pipeline.data import mnist

        return mnist.to_model_space(torch.from_numpy(images[..., 0])).to(self.family.device)

    def run(self, mode: str, w: float, scheduler: str | None = None, num_steps: int | None = None,
            guidance: Guidance = Guidance(), label: str | None = None, rule: Rule = PLAIN) -> Samples:
        """All samples of one method in memory (features and small pixels only): the experiment stages."""
        m = self.method(mode, w, scheduler, num_steps, guidance, label or "", rule)
        target = MemorySet(self.layout)
        self.fill(target, m)
        return Samples(target, self.cost(m))


def teacher_methods(gen: Generator, p, rule: Rule = PLAIN) -> list[Method]:
    """The teacher's sets: the unguided base, plain CFG at every evaluated scale (p: the evaluate section)
    and, when the teacher rule is another, that rule's two-pass samples at every scale ("teacher/w3")."""
    plain = [gen.method("cond", 1.0, label="unguided")] + [gen.method("cfg", w) for w in p.guidance_scales]
    return plain + ([] if rule == PLAIN else [teacher_method(gen, w, rule) for w in p.guidance_scales])


def teacher_method(gen: Generator, w: float, rule: Rule) -> Method:
    """The two-pass samples of the teacher rule AGD distils (plain CFG: the `cfg` set itself)."""
    return gen.method("cfg", w) if rule == PLAIN else gen.method("cfg", w, label="teacher", rule=rule)


def fill_store(path: Path, gen: Generator, methods: list[Method], stage: str, adapters_sha256: str | None = None,
               world: World = World()) -> SampleStore:
    """Every method's set in the sample store at `path`, made or finished: rank 0 (or the only process)
    keeps the finished batches of sets made with these settings, remakes sets made with others and
    removes the sets no method asks for; then every rank generates its share of the unfinished batches."""
    from pipeline.data.store import StoreLock
    from pipeline.run import distributed
    from pipeline.run.progress import log

    with StoreLock(path, world.rank):
        if world.main:
            store = SampleStore(path)
            orphans = store.remove_partial_writes()
            if orphans:
                log(f"{stage}: removed {orphans} temporary files of interrupted chunk writes in {path}")
            for gone in store.keep_only([m.name for m in methods]):
                log(f"{stage}: removed the set {gone} of {path}: the params no longer ask for it")
            for m in methods:
                target, what = store.prepare(m.name, gen.layout, gen.settings(m, adapters_sha256))
                finished = int(target.done().sum())
                log(f"{stage}: {path}/{m.name}: {what}; {finished}/{gen.layout.batches} batches finished")
        distributed.barrier()  # the other ranks open the sets rank 0 has made ready
        store = SampleStore(path)
        for m in methods:
            gen.fill(store.open(m.name, gen.layout), m, world, stage)
        distributed.barrier()
    return store


def read_set(store: SampleStore, gen: Generator, m: Method, maker: str, adapters_sha256: str | None = None) -> Samples:
    """A finished set made with the settings in use, as scoring reads it; refused otherwise, naming
    the stage (`maker`) that makes it."""
    if m.name not in store.names():
        raise AGDError(f"{store.path}/{m.name}", "no such sample set", f"run `agd {maker}` (dvc repro) first")
    target = store.open(m.name, gen.layout)
    expected = json.loads(json.dumps({**gen.settings(m, adapters_sha256), "layout": gen.layout.describe()}))
    changed = sorted(k for k in set(expected) | set(target.attrs) if expected.get(k) != target.attrs.get(k))
    if changed:
        raise AGDError(f"{store.path}/{m.name}", f"made with other {', '.join(changed)} than params.yaml asks for",
                       f"run `agd {maker}` (dvc repro) first")
    done = target.done()
    if not done.all():
        raise AGDError(f"{store.path}/{m.name}", f"{int((~done).sum())} of {len(done)} batches unfinished",
                       f"run `agd {maker}` again: it resumes")
    return Samples(target, target.attrs["nfe_per_image"])
