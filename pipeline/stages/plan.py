"""`agd plan`: the work of every stage of a run, and its projected wall time and peak memory.

For the params at hand (params.yaml, or `--backend NAME` composed from conf/ as `agd preset` would
write it) each stage that is on gets its work counted from the params, the way the stage does it
(pipeline.plan.work: calls x batch of each kind of pass, NFE, samples, images), and then projected
from a table of per-pass times and memory (JSON lines, pipeline.backends.timings): `--table FILE`;
else `--measure` (this machine, now: pipeline.plan.measure); else the newest reports/gpu/*.jsonl
(the project's GPU check); else ../shared/data/gpu-anchor-h200.jsonl (H200 figures at the real shapes).
A pass the table lacks (VAE decode, Inception, the text encoders in the H200 table) is listed as
missing, never filled in. `--gpu NAME` scales a GPU table by bf16 dense tensor throughput (an
estimate). Every time and memory figure printed is a projection, and says which file it came from
(pipeline.plan.projection).

Last, the experiment `dvc exp run -S train.lr=1e-4` (or `-S KEY=VALUE ...`): which stages re-run
(pipeline.plan.reruns: the dependencies mirror dvc.yaml, with evaluate split into teacher and
evaluate) and their work.

This module reads the params, picks the table, and prints the plan (rich) or writes it as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline import config
from pipeline.config import compose
from pipeline.plan.projection import experiment, project
from pipeline.plan.timings import GPUS, Table, default_table
from pipeline.plan.work import needs, stages
from pipeline.run.errors import AGDError

DEFAULT_CHANGE = "train.lr=1e-4"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _peak(value, bound) -> str:
    if value is None:
        return "-"
    return f"{'' if bound == '=' else bound + ' '}{value:.1f} GiB"


def render(doc: dict, where: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide tables, lines unbroken
        console = Console(width=200)

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False)

    proj, total, p = doc["projection"], doc["total"], doc["params"]
    say(f"agd plan: {where} (backend {p['backend']}, base {p['base_dtype']}, "
        f"sample.compile {str(p['sample_compile']).lower()})")
    if proj is None or not proj["rows_for_backend"]:
        held = f" ({proj['source']} holds {', '.join(proj['backends']) or 'none'})" if proj else ""
        say(f"no table for this device: no per-pass figures for {p['backend']}{held}; `agd plan --measure` times "
            "this machine's passes (under a minute for the embedded default), `--table FILE` reads others. The "
            "work below is exact; no time is projected.")
    else:
        scaled = proj["scaled_to"]
        say(f"Projection from {proj['source']} ({proj['device']}, {proj['execution']} passes as sample.compile is "
            f"{str(p['sample_compile']).lower()})"
            + (f", scaled to {scaled['gpu']}: x{scaled['factor']:g} ({scaled['basis']})" if scaled else "")
            + ". Every time and memory figure below is a projection, not a measurement of this run.")
    table = RichTable(show_lines=False)
    for col, justify in (("stage", "left"), ("work (calls x batch)", "left"), ("NFE", "right"), ("samples", "right"),
                         ("images", "right"), ("projected time", "right"), ("projected peak", "right"),
                         (f"from {Path(proj['source']).name}" if proj else "from", "left")):
        table.add_column(escape(col), justify=justify, overflow="fold")
    for s in (s for s in doc["stages"] if s["on"]):
        samples = f"{s['samples']:,} {s['samples_are']}" if s["samples"] else "-"
        images = f"{s['images']:,}" if s["images"] else "-"
        if not s["passes"]:
            table.add_row(s["name"], escape(s["note"] or "no model passes"), "-", samples, images, "-", "-", "")
            continue
        for i, item in enumerate(s["passes"]):
            table.add_row(s["name"] if i == 0 else "", escape(item["work"]), f"{item['nfe']:,}" if item["nfe"] else "-",
                          samples if i == 0 else "", images if i == 0 else "", duration(item["seconds"]),
                          _peak(item["peak_gib"], item.get("peak_bound")), escape(item["source"] or "not in the table"))
        if len(s["passes"]) > 1 or s["note"]:
            table.add_row("", f"[bold]{s['name']}[/bold]" + escape(f" ({s['note']})" if s["note"] else ""),
                          f"[bold]{s['nfe']:,}[/bold]" if s["nfe"] else "-", "", "",
                          f"[bold]{duration(s['seconds'])}[/bold]", _peak(s["peak_gib"], s["peak_bound"]), "")
        table.add_section()
    console.print(table)
    if p["launch_nproc"] > 1:
        say(f"launch.nproc is {p['launch_nproc']}: the times are one device's; trajectories, train, teacher and "
            f"evaluate share their work over {p['launch_nproc']} processes.")
    if doc["off"]:
        say("Off: " + "; ".join(f"{o['name']} {o['note']}" for o in doc["off"]))
    say(summary_line(doc))
    if total["missing"] and total["seconds"] is not None:
        say("Not in the table, so not in the total: " + "; ".join(
            f"{m} ({', '.join(names)})" for m, names in total["missing"].items()) + ".")
    e = doc["experiment"]
    say(f"\n{e['command']} re-runs {', '.join(e['rerun_with_work'])} (model work)"
        + (f" and {', '.join(e['rerun_without_work'])} (off, or no model passes)" if e["rerun_without_work"] else "")
        + f"; cached: {', '.join(e['cached']) or 'nothing'}.")
    for s in e["stages"]:
        line = f"  {s['name']}: NFE {s['nfe']:,}" if s["nfe"] else f"  {s['name']}: {s['samples']:,} {s['samples_are']}"
        if s["nfe_held_out"]:
            line += f" ({s['nfe'] - s['nfe_held_out']:,} sampling, {s['nfe_held_out']:,} held-out trajectories)"
        say(line + (f", projected {duration(s['seconds'])}" if s["seconds"] is not None else ""))
    if e["cached_nfe"]:
        say(f"  not repeated: NFE {e['cached_nfe']:,} of the cached stages")
    if e["seconds"] is not None:
        gaps = "" if e["complete"] else ", only the passes the table has"
        say(f"  projected re-run time {duration(e['seconds'])} (projection from {proj['source']}{gaps})")


def summary_line(doc: dict) -> str:
    total, proj = doc["total"], doc["projection"]
    if total["seconds"] is None:
        return f"Total: NFE {total['nfe']:,}; no projected time (no table for this device)."
    scaled = proj["scaled_to"]
    peak = _peak(total["peak_gib"], total["peak_bound"])
    peak_text = f"peak {peak} ({total['peak_stage']})" if total["peak_gib"] is not None else "peak not in the table"
    if total["peak_missing"] and total["peak_gib"] is not None:
        peak_text += f"; peaks of {', '.join(total['peak_missing'])} not in the table"
    fits = "" if total["fits"] is None else \
        f"; that peak {'fits' if total['fits'] else 'does NOT fit'} in the card's {proj['memory_gb']} GB"
    device = scaled["gpu"] if scaled else proj["device"]
    return (f"Projected total on {device}: {duration(total['seconds'])} "
            f"({'every pass' if total['complete'] else 'only the passes the table has'}), NFE {total['nfe']:,}, "
            f"{peak_text}{fits}. Projection from {proj['source']}" + (" (scaled: an estimate)." if scaled else "."))


def run(backend: str | None = None, table_file: Path | None = None, gpu: str | None = None, measure_now: bool = False,
        changes: list[str] | None = None, as_json: bool = False) -> None:
    if backend is not None:
        if backend not in compose.backends():
            raise AGDError(f"agd plan --backend {backend}", "unknown backend", f"use one of {', '.join(compose.backends())}")
        raw = yaml.safe_load(compose.compose([f"backend={backend}"]))
        where = f"conf/ composed for backend {backend} (as `agd preset {backend}` writes it)"
    else:
        raw = config.read()
        where = str(config.PARAMS_FILE)
    params = config.from_mapping(raw) if backend is not None else config.load()
    if gpu is not None and gpu not in GPUS:
        raise AGDError(f"agd plan --gpu {gpu}", "unknown GPU", f"use one of {', '.join(GPUS)}")
    plan = stages(params)
    if table_file is not None:
        table = Table.read(Path(table_file))
    elif measure_now:
        from pipeline.plan.measure import measure  # torch and the base: only when asked to time passes

        table = measure(params, needs(plan))
    else:
        table = default_table()
    doc = project(params, plan, table, gpu)
    doc["experiment"] = experiment(raw, changes or [DEFAULT_CHANGE], table, gpu)
    if measure_now and table_file is None:
        doc["projection"]["rows"] = table.rows
    if as_json:
        print(json.dumps(doc, indent=1))
    else:
        render(doc, where)
