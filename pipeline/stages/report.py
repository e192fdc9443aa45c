"""Stage `report`: reports/results.md and the PNG figures, from the other reports only."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.evaluation import report, report_experiments
from pipeline.run import files, preflight
from pipeline.run.errors import AGDError
from pipeline.run.progress import log

RESULTS = Path("reports/results.md")
DISTILLATION_PNG = Path("reports/distillation.png")
SCALES_PNG = Path("reports/scales.png")
SWEEP_PNG = Path("reports/sweep.png")
NFE_PNG = Path("reports/nfe.png")
SAMPLERS_PNG = Path("reports/samplers.png")
TRANSFER_PNG = Path("reports/transfer.png")
FIGURES = (DISTILLATION_PNG, SCALES_PNG, SWEEP_PNG, NFE_PNG, SAMPLERS_PNG, TRANSFER_PNG)


EXPERIMENTS = Path("reports/experiments")
EXPERIMENTS_DOC = Path("docs/experiments.md")  # its teacher-rule summary is generated, between these markers
RULES_BEGIN, RULES_END = "<!-- rules:begin (agd report --experiments) -->", "<!-- rules:end -->"


def experiments(params: Params) -> None:
    """reports/experiments/distillation.png: the per-step curve of the main run and of every rendered
    experiment (scripts/experiment_report.sh), for ablations that change what the adapters learn; and
    the summary of the teacher-rule experiments in docs/experiments.md (between its markers)."""
    folders = sorted(p for p in EXPERIMENTS.iterdir() if p.is_dir()) if EXPERIMENTS.exists() else []
    out = EXPERIMENTS / "distillation.png"
    preflight.writable(out, "figure", "file")
    report_experiments.plot_distillation_by_experiment(out, Path("reports/distillation.csv"), folders)
    log(f"report: {out} ({len(folders)} experiments)")
    summary = report_experiments.rules_summary(folders) or "(no rendered experiment distilled a rule other than cfg)\n"
    if report.update_block(summary, EXPERIMENTS_DOC, RULES_BEGIN, RULES_END):
        log(f"report: {EXPERIMENTS_DOC}: the teacher-rule experiments' summary updated")
    else:
        log(f"report: {EXPERIMENTS_DOC} has no {RULES_BEGIN} / {RULES_END} markers: no rule summary written")


def run(params: Params, readme: bool = False) -> None:
    preflight.writable_all([("results", RESULTS, "file")] + [("figure", f, "file") for f in FIGURES])
    sweep, nfe = report_experiments.sweep_table(), report_experiments.nfe_table()
    samplers, transfer = report_experiments.samplers_table(), report_experiments.transfer_table()
    own, negatives = report.teacher_table(), report.negatives_table()
    text = (report.table() + ("\n" + own if own else "") + ("\n" + negatives if negatives else "")
            + ("\nAcross guidance scales (the sweep stage):\n\n" + sweep if sweep else "")
            + ("\nAgainst the cheap-CFG baselines (the nfe stage). " + nfe if nfe else "")
            + ("\nUnder other samplers and step counts (the samplers stage):\n\n" + samplers if samplers else "")
            + ("\nApplied unchanged to a fine-tuned base (the transfer stage):\n\n" + transfer if transfer else ""))
    files.write_text(RESULTS, text)
    report.plot_distillation(DISTILLATION_PNG)
    report.plot_scales(SCALES_PNG)
    cond = params.conditions
    report_experiments.plot_sweep(SWEEP_PNG, (cond.w_min, cond.w_max))
    report_experiments.plot_nfe(NFE_PNG)
    report_experiments.plot_samplers(SAMPLERS_PNG)
    report_experiments.plot_transfer(TRANSFER_PNG)
    log(f"report: {RESULTS}, {', '.join(str(f) for f in FIGURES)}")
    if readme:
        if not report.update_readme(text):
            raise AGDError("README.md", "has no results markers", f"add the lines {report.BEGIN} and {report.END}")
        log("report: README.md results updated")
