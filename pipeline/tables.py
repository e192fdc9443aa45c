"""The experiment stages' outputs (sweep, nfe, samplers): a CSV of rows that DVC plots, and a JSON
summary that `dvc metrics diff` reads, written the same way by each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

QUALITY_COLUMNS = ["fid", "fid_low", "fid_high", "judge_fd", "judge_fd_low", "judge_fd_high", "accuracy"]


def quality_cells(scores: dict) -> dict:
    """One method's scores (Evaluation.score) as flat cells: each distance with its 95 % interval."""
    out = {"accuracy": scores.get("accuracy", "")}
    for name in ("fid", "judge_fd"):
        if name in scores:
            d = scores[name]
            out.update({name: d["value"], f"{name}_low": d["ci_low"], f"{name}_high": d["ci_high"]})
    return out


def versus(diffs: dict) -> dict:
    """The differences an experiment summary keeps from Evaluation.compare (FID and judge FD, paired)."""
    return {k: diffs[k] for k in ("fid_diff", "judge_fd_diff") if k in diffs}


def write(table: Path, columns: list[str], rows: list[dict], summary_path: Path, summary: dict) -> None:
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "w", newline="") as f:
        out = csv.DictWriter(f, columns, restval="")
        out.writeheader()
        out.writerows(rows)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
