"""Stage `sweep`: CFG, AGD and the unguided base across guidance scales, inside and outside the
range the adapters were trained on. Off by default (`sweep.num_samples: 0`), because at 500
samples per method and scale it took 18 minutes on 2 CPU cores (shared with a test run); turn it on with

    dvc exp run -S sweep.num_samples=500

Per scale, with the evaluation's machinery (same conditions and seeds for every method, paired
bootstrap intervals): FID (Inception, first `sweep.inception_samples`), the judge's feature
distance and class accuracy where there is a judge, and how much of CFG's correction AGD captures
on held-out trajectories. Writes reports/sweep.csv (one row per method and scale: a DVC plot) and
reports/sweep.json (AGD against CFG per scale: `dvc metrics diff` reads it); `agd report` draws
reports/sweep.png with the training range shaded.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

from pipeline import distill, preflight
from pipeline.config import load_section
from pipeline.evaluation import Evaluation, held_out, load_models
from pipeline.progress import log
from pipeline.stages.evaluate import scale_key

TABLE = Path("reports/sweep.csv")
SUMMARY = Path("reports/sweep.json")
COLUMNS = ["method", "w", "in_training_range", "fid", "fid_low", "fid_high", "judge_fd", "judge_fd_low",
           "judge_fd_high", "accuracy"]


def row(method: str, w: float, in_range: bool, scores: dict) -> dict:
    out = {"method": method, "w": f"{w:g}", "in_training_range": in_range, "accuracy": scores.get("accuracy", "")}
    for name in ("fid", "judge_fd"):
        if name in scores:
            d = scores[name]
            out.update({name: d["value"], f"{name}_low": d["ci_low"], f"{name}_high": d["ci_high"]})
    return out


def write(rows: list[dict], summary: dict) -> None:
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    with open(TABLE, "w", newline="") as f:
        out = csv.DictWriter(f, COLUMNS, restval="")
        out.writeheader()
        out.writerows(rows)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")


def run() -> None:
    base, traj, train_p, cond_p, ev_p, p = (load_section(s) for s in ("base", "trajectories", "train", "conditions",
                                                                        "evaluate", "sweep"))
    preflight.writable_all([("sweep table", TABLE, "file"), ("sweep summary", SUMMARY, "file")])
    if p.num_samples == 0:
        write([], {})
        log("sweep: off (sweep.num_samples is 0); turn it on with `dvc exp run -S sweep.num_samples=500`")
        return
    family, adapters, sampler = load_models(base, traj, train_p, ev_p)
    settings = replace(ev_p, num_samples=p.num_samples, inception_samples=p.inception_samples,
                       guidance_scales=p.guidance_scales, default_scale=p.guidance_scales[0])
    held_cond, held_seeds = held_out(family, ev_p)  # the evaluate stage's held-out trajectories
    ev = Evaluation(family, adapters, settings, sampler)  # (frees text encoders: after held_out)
    log(f"sweep: {len(p.guidance_scales)} scales x (CFG, AGD) + unguided, {p.num_samples} samples each")
    rows = [row("unguided", 1.0, True, ev.score(ev.run("cond", 1.0)))]
    summary = {}
    for w in p.guidance_scales:
        in_range = bool(cond_p.w_min <= w <= cond_p.w_max)
        cfg, agd = ev.run("cfg", w), ev.run("agd", w)
        rows += [row("cfg", w, in_range, ev.score(cfg)), row("agd", w, in_range, ev.score(agd))]
        versus = {k: v for k, v in ev.compare(agd, cfg).items() if k in ("fid_diff", "judge_fd_diff")}
        if rows[-1]["accuracy"] != "":  # a judge exists
            versus["accuracy_gap"] = round(rows[-1]["accuracy"] - rows[-2]["accuracy"], 4)
        total, _ = distill.held_out(family, adapters, held_cond, held_seeds, w, traj.scheduler, traj.num_steps)
        versus.update({k: v for k, v in total.items() if k != "correction_defined"}, in_training_range=in_range)
        summary[scale_key(w)] = versus
        log(f"sweep: w={w:g} {versus}")
    write(rows, summary)
    log(f"sweep: wrote {TABLE}, {SUMMARY}")
