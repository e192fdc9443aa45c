"""The plan as a document: each stage's work (pipeline.plan.work) against a table of per-pass times and
memory (pipeline.backends.timings), giving every stage's and the whole run's projected seconds and peak
GiB, what the table lacks (listed, never filled in), and what an experiment (`-S KEY=VALUE`) re-runs
and costs. `agd plan` prints it or writes it as JSON; every figure in it is a projection that names
its source file.
"""

from __future__ import annotations

from pipeline.config import Params, from_mapping
from pipeline.plan.reruns import apply_changes, reruns
from pipeline.plan.timings import GIB_TO_GB, GPUS, Figure, Table, scaling
from pipeline.plan.work import Passes, Stage, stages

MISSING = {"cond": "base pass", "cfg": "CFG pass", "agd": "AGD pass", "train": "training step",
           "base_train": "base training step", "judge_train": "judge training step", "decode": "VAE decode",
           "inception": "Inception", "text": "text encoder"}


def merged(passes: list[Passes]) -> list[Passes]:
    """Work of one kind and batch size as one line (the calls summed, what they are for listed)."""
    groups: dict[tuple[str, int], list[Passes]] = {}
    for p in passes:
        groups.setdefault((p.kind, p.batch), []).append(p)
    return [Passes(kind, sum(p.calls for p in group), batch, ", ".join(dict.fromkeys(p.what for p in group if p.what)))
            for (kind, batch), group in groups.items()]


def project(params: Params, plan: list[Stage], table: Table | None, gpu: str | None) -> dict:
    """The plan as a document: every stage's work and, where the table has its passes, seconds and peak GiB."""
    target, factor, scaled = scaling(table, gpu)  # target: the card whose memory the peak is held against
    backend = params.base.backend
    curves = table.curves(params) if table is not None else None
    has_rows = table is not None and backend in table.backends()

    def figure(kind: str, n: int) -> Figure | None:
        return curves.figure(kind, n) if curves is not None else None

    doc_stages, missing_all = [], {}
    for s in plan:
        items, seconds, peaks, missing = [], 0.0, [], []
        for p in merged(s.passes):
            f = figure(p.kind, p.batch)
            item = {"kind": p.kind, "calls": p.calls, "batch": p.batch, "what": p.what, "nfe": p.nfe, "work": p.text()}
            if f is None:
                missing.append(MISSING[p.kind])
                item.update(ms=None, seconds=None, peak_gib=None, source=None)
            else:
                ms = f.ms * factor
                item.update(ms=round(ms, 3), seconds=round(p.calls * ms / 1000, 1), source=f.how,
                            peak_gib=None if f.peak_gib is None else round(f.peak_gib, 2), peak_bound=f.peak_bound)
                seconds += p.calls * ms / 1000
                if f.peak_gib is not None:
                    peaks.append((f.peak_gib, f.peak_bound))
            items.append(item)
        missing = sorted(set(missing))
        for m in missing:
            missing_all.setdefault(m, []).append(s.name)
        peak = max(peaks) if peaks else None
        held = sum(p.nfe for p in s.passes if p.what.startswith("held-out"))
        doc_stages.append({"name": s.name, "on": s.on, "nfe": s.nfe, "nfe_held_out": held, "samples": s.samples,
                           "samples_are": s.samples_are,
                           "images": s.images, "note": s.note, "passes": items,
                           "seconds": round(seconds, 1) if any(i["seconds"] is not None for i in items) else None,
                           "projected_from": table.source if any(i["seconds"] is not None for i in items) else None,
                           "peak_gib": None if peak is None else round(peak[0], 2),
                           "peak_bound": None if peak is None else peak[1], "missing": missing,
                           "peak_missing": bool(s.passes) and any(i["peak_gib"] is None for i in items)})
    on = [d for d in doc_stages if d["on"]]
    total = sum(d["seconds"] or 0 for d in on)
    peaks = [(d["peak_gib"], d["peak_bound"], d["name"]) for d in on if d["peak_gib"] is not None]
    peak = max(peaks) if peaks else None
    fits = None if target is None or peak is None else peak[0] * GIB_TO_GB <= GPUS[target][2]
    return {
        "params": {"backend": backend, "base_dtype": params.base.dtype, "sample_compile": params.sample.compile,
                   "launch_nproc": params.launch.nproc},
        "projection": None if table is None else {
            "label": "projection", "source": table.source, "device": table.device, "backends": table.backends(),
            "rows_for_backend": has_rows, "execution": curves.mode, "train_rows_for": curves.train_setting,
            "scaled_to": scaled, "memory_gb": None if target is None else GPUS[target][2]},
        "stages": doc_stages,
        "off": [{"name": d["name"], "note": d["note"]} for d in doc_stages if not d["on"]],
        "total": {"nfe": sum(d["nfe"] for d in on), "seconds": round(total, 1) if has_rows else None,
                  "hours": round(total / 3600, 2) if has_rows else None,
                  "complete": has_rows and not missing_all, "missing": missing_all,
                  "peak_gib": None if peak is None else peak[0], "peak_bound": None if peak is None else peak[1],
                  "peak_stage": None if peak is None else peak[2],
                  "peak_missing": [d["name"] for d in on if d["peak_missing"]], "fits": fits},
    }


def experiment(params_raw: dict, changes: list[str], table: Table | None, gpu: str | None) -> dict:
    raw, keys = apply_changes(params_raw, changes)
    params = from_mapping(raw)
    plan = stages(params)
    doc = project(params, plan, table, gpu)
    rerun = reruns(plan, keys)
    by_name = {d["name"]: d for d in doc["stages"]}
    work = [n for n in rerun if by_name[n]["on"] and by_name[n]["passes"]]
    seconds = [by_name[n]["seconds"] for n in work]
    return {"command": "dvc exp run " + " ".join(f"-S {c}" for c in changes), "rerun": rerun,
            "rerun_with_work": work, "rerun_without_work": [n for n in rerun if n not in work],
            "cached": [d["name"] for d in doc["stages"] if d["on"] and d["name"] not in rerun],
            "cached_nfe": sum(d["nfe"] for d in doc["stages"] if d["on"] and d["name"] not in rerun),
            "stages": [{"name": n, "nfe": by_name[n]["nfe"], "nfe_held_out": by_name[n]["nfe_held_out"],
                        "samples": by_name[n]["samples"],
                        "samples_are": by_name[n]["samples_are"], "seconds": by_name[n]["seconds"],
                        "missing": by_name[n]["missing"]} for n in work],
            "seconds": round(sum(s or 0 for s in seconds), 1) if doc["total"]["seconds"] is not None else None,
            "complete": not any(by_name[n]["missing"] for n in work)}
