"""Stage `transfer`: adapters trained on the base, applied unchanged to a model derived from it.

Does the guidance a set of adapters learnt survive when the base under them changes, and do wider
adapters carry it better (LongLive-Plug reports both for video models)? At our scale:

1. the derived model: the embedded base trained further on some digits only (`transfer.finetune_*`,
   the base's own loss and label drop, no EMA), saved with save_pretrained;
2. adapters of each width in `transfer.widths`, trained on the base's trajectory store with the
   train section's recipe for `transfer.adapter_steps` steps (heads: train.heads, fewer where the
   width is small, so each head keeps 8 units at least);
3. correction captured, cosine and gain at `transfer.guidance_scale` on held-out CFG trajectories of
   each model (the evaluate stage's conditions and seeds), the adapters attached to the base and,
   unchanged, to the derived model: `retained` is the share of the base's figure left.

Off by default (`transfer.finetune_steps: 0`); `dvc exp run -S transfer.finetune_steps=400`. Every
model it makes lies under transfer.output with the settings that made it: a re-run reuses what
matches and resumes unfinished adapter training from its checkpoint. Embedded default only (the
derived model needs the base's training images).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends import EMBEDDED
from pipeline.config import Params
from pipeline.evaluation import tables
from pipeline.run import files, preflight, runtime
from pipeline.run.errors import AGDError
from pipeline.run.progress import Tracker, log

if TYPE_CHECKING:
    from pipeline.backends.family import Family

# torch, diffusers and the training code are imported inside the functions that use them, so that
# the stage, off by default, returns at once in every `dvc repro`.

TABLE = Path("reports/transfer.csv")
SUMMARY = Path("reports/transfer.json")
COLUMNS = ["width", "parameters", "model", "captured", "cosine", "gain"]
RECIPE = "recipe.json"  # beside each model: the settings that made it (written last: its presence means done)


def _made_with(folder: Path, recipe: dict) -> bool:
    path = folder / RECIPE
    return path.exists() and json.loads(path.read_text()) == recipe


def derived_model(family: Family, base_params, pre, p, out: Path):
    """The base trained further on p.finetune_digits with the pretraining's loss (pre: the pretrain
    section), loaded as a family (made once per recipe)."""
    import torch

    from pipeline.backends import embedded
    from pipeline.backends.loading import load_base
    from pipeline.data import mnist

    recipe = {"base": family.fingerprint, "digits": p.finetune_digits, "steps": p.finetune_steps,
              "lr": p.finetune_lr, "batch_size": p.finetune_batch_size, "label_drop": pre.label_drop, "seed": pre.seed}
    if not _made_with(out, recipe):
        shutil.rmtree(out, ignore_errors=True)  # a derived model of other settings: made again
        images, labels = mnist.load_split(Path("data"), "train")
        keep = torch.from_numpy(labels).unsqueeze(1).eq(torch.tensor(p.finetune_digits)).any(1).numpy()
        x_all, y_all = mnist.to_model_space(images[keep]), torch.from_numpy(labels[keep])
        model = copy.deepcopy(family.denoiser).float().requires_grad_(True)
        scheduler = embedded.build_scheduler()
        weight = embedded.min_snr_weight(scheduler, pre.min_snr_gamma).to(family.device)
        opt = torch.optim.AdamW(model.parameters(), lr=p.finetune_lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(pre.seed)
        with Tracker(f"transfer: fine-tuning on digits {p.finetune_digits}", p.finetune_steps) as tracker:
            for _ in range(p.finetune_steps):
                loss = embedded.denoising_loss(model, scheduler, weight, x_all, y_all, p.finetune_batch_size,
                                               pre.label_drop, gen, family.device)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                tracker.advance(1, loss=loss.item())
        model.to("cpu").save_pretrained(out / "transformer")
        shutil.copytree(Path(base_params.path) / "scheduler", out / "scheduler")
        files.write_text(out / RECIPE, json.dumps(recipe) + "\n")
    return load_base(**base_params.replace(path=str(out)).model_dump())


def width_adapters(family: Family, store, train_p, p, width: int, out: Path):
    """Adapters of one width on the base's store (trained once per recipe, resumable)."""
    from pipeline.guidance.adapters import AdapterSet
    from pipeline.guidance.training import fit

    settings = train_p.replace(width=width, heads=max(1, min(train_p.heads, width // 8)), steps=p.adapter_steps,
                               checkpoint_every=min(train_p.checkpoint_every, p.adapter_steps))
    recipe = {"train": settings.model_dump(), "base": family.fingerprint, "store": store.attrs.get("conditions_sha256")}
    if _made_with(out, recipe):
        return AdapterSet.load(out, family)
    adapters, _, _ = fit(family, store, settings, out.with_suffix(".ckpt"), label=f"transfer: width {width}")
    adapters.save(out)
    files.write_text(out / RECIPE, json.dumps(recipe) + "\n")
    out.with_suffix(".ckpt").unlink(missing_ok=True)
    return adapters


def run(params: Params) -> None:
    base, traj, train_p, ev_p, p = params.base, params.trajectories, params.train, params.evaluate, params.transfer
    preflight.writable_all([("transfer table", TABLE, "file"), ("transfer summary", SUMMARY, "file"),
                            ("params.yaml: transfer.output", p.output, "folder")])
    if p.finetune_steps == 0:
        tables.write(TABLE, COLUMNS, [], SUMMARY, {})
        log("transfer: off (transfer.finetune_steps is 0); turn it on with `dvc exp run -S transfer.finetune_steps=400`")
        return
    if base.backend != EMBEDDED:
        raise AGDError("params.yaml: transfer.finetune_steps", f"the transfer study is built for the embedded default "
                       f"only, not {base.backend}: the derived model is trained on the base's own training images",
                       "set transfer.finetune_steps: 0")
    runtime.setup()
    from pipeline.backends.loading import load_base
    from pipeline.data.provenance import open_for_training
    from pipeline.evaluation import distill
    from pipeline.evaluation.samples import held_out
    from pipeline.guidance import rules

    family = load_base(**base.model_dump())
    out = Path(p.output)
    derived = derived_model(family, base, params.pretrain, p, out / "base-finetuned")
    store = open_for_training(family, traj.output, traj.scheduler, traj.num_steps,
                              rules.recorded(rules.from_params(params.guidance)))
    held_cond, held_seeds = held_out(family, ev_p)
    w = p.guidance_scale
    rows, summary = [], {}
    for width in p.widths:
        adapters = width_adapters(family, store, train_p, p, width, out / f"adapters-w{width}")
        n = adapters.num_parameters()
        figures = {}
        for name, model in (("base", family), ("derived", derived)):
            adapters.attach(model)  # the same weights on either model's blocks
            total, _ = distill.held_out(model, adapters, held_cond, held_seeds, w, traj.scheduler, traj.num_steps)
            figures[name] = {k.removeprefix("correction_"): v for k, v in total.items() if k != "correction_defined"}
            rows.append({"width": width, "parameters": n, "model": name, **figures[name]})
        adapters.detach()
        summary[f"width{width}"] = {"parameters": n, **figures,
                                    "retained": round(figures["derived"]["captured"] / figures["base"]["captured"], 4)}
        log(f"transfer: width {width} ({n:,} parameters) {summary[f'width{width}']}")
    tables.write(TABLE, COLUMNS, rows, SUMMARY, summary)
    log(f"transfer: wrote {TABLE}, {SUMMARY}")
