"""Stage `report`: reports/results.md and the PNG figures, from the other reports only."""

from __future__ import annotations

from pathlib import Path

from pipeline import preflight, report
from pipeline.progress import log

RESULTS = Path("reports/results.md")
DISTILLATION_PNG = Path("reports/distillation.png")
SCALES_PNG = Path("reports/scales.png")


def run(readme: bool = False) -> None:
    preflight.writable_all([("results", RESULTS, "file"), ("figure", DISTILLATION_PNG, "file"),
                            ("figure", SCALES_PNG, "file")])
    text = report.table()
    RESULTS.write_text(text)
    report.plot_distillation(DISTILLATION_PNG)
    report.plot_scales(SCALES_PNG)
    log(f"report: {RESULTS}, {DISTILLATION_PNG}, {SCALES_PNG}")
    if readme:
        if not report.update_readme(text):
            from pipeline.errors import AGDError

            raise AGDError("README.md", "has no results markers", f"add the lines {report.BEGIN} and {report.END}")
        log("report: README.md results updated")
