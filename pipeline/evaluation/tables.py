"""The experiment stages' outputs (sweep, nfe, samplers): a CSV of rows that DVC plots, and a JSON
summary that `dvc metrics diff` reads, written the same way by each."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.run import files

QUALITY_COLUMNS = ["fid", "fid_low", "fid_high", "judge_fd", "judge_fd_low", "judge_fd_high", "accuracy"]


def scale_key(w: float) -> str:
    """3.0 -> "w3", 1.5 -> "w1_5": keys without dots keep `dvc metrics diff` readable."""
    return "w" + (f"{w:g}").replace(".", "_")


def quality_cells(scores: dict) -> dict:
    """One method's scores (Scorer.score) as flat cells: each distance with its 95 % interval."""
    out = {"accuracy": scores.get("accuracy", "")}
    for name in ("fid", "judge_fd"):
        if name in scores:
            d = scores[name]
            out.update({name: d["value"], f"{name}_low": d["ci_low"], f"{name}_high": d["ci_high"]})
    return out


def versus(diffs: dict) -> dict:
    """The differences an experiment summary keeps from Scorer.compare (FID and judge FD, paired)."""
    return {k: diffs[k] for k in ("fid_diff", "judge_fd_diff") if k in diffs}


def write(table: Path, columns: list[str], rows: list[dict], summary_path: Path, summary: dict) -> None:
    with files.atomic(table) as tmp, open(tmp, "w", newline="") as f:
        out = csv.DictWriter(f, columns, restval="")
        out.writeheader()
        out.writerows(rows)
    files.write_json(summary_path, summary)
