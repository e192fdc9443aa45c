"""The results as a reader sees them: a Markdown table and PNG figures, made from reports/ only.

Nothing here is typed by hand: `agd report` (a DVC stage after evaluate) renders whatever the last
`dvc repro` measured, stamped with the commit and the params that made it, and `agd report
--readme` copies the table into README.md between its results markers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from pathlib import Path

from pipeline.run import files

REPORTS = Path("reports")
BEGIN, END = "<!-- results:begin (agd report --readme) -->", "<!-- results:end -->"


def _load(name: str) -> dict:
    path = REPORTS / name
    return json.loads(path.read_text()) if path.exists() else {}


def _ci(d: dict, digits: int = 1) -> str:
    """{"value", "ci_low", "ci_high"} -> "76.7 [74.0, 79.9]"."""
    return f"{d['value']:.{digits}f} [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}]"


def _diff(d: dict, digits: int = 1) -> str:
    verdict = "**significant**" if d["significant"] else "not significant"
    return f"{d['value']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}], {verdict}"


def _ms(timed: dict) -> str:
    """A method's milliseconds per image, three significant figures (CPU tens of ms, GPU fractions)."""
    return f"{timed['seconds_per_image'] * 1e3:#.3g}"


def _scale(key: str) -> float:
    return float(key[1:].replace("_", "."))


def provenance() -> str:
    """Which code and params made the figures: the commit, "+changes" when files other than the
    results themselves (reports/, dvc.lock, README.md, which a repro and this command rewrite)
    differed from it, and a digest of params.yaml."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return ""

    rendered = os.environ.get("AGD_REPORT_COMMIT")  # scripts/experiment_report.sh: the experiment's own commit
    commit = rendered or git("rev-parse", "--short", "HEAD") or "no git"
    changed = "" if rendered else git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports",
                                      ":(exclude)dvc.lock", ":(exclude)README.md")
    params = Path("params.yaml")
    digest = hashlib.sha256(params.read_bytes()).hexdigest()[:12] if params.exists() else "none"
    return f"commit `{commit}{'+changes' if changed else ''}`, params.yaml sha256 `{digest}`"


def table() -> str:
    """Markdown: per scale AGD against CFG first, then each method's figures, timing, distillation."""
    metrics, quality, timing, train = _load("metrics.json"), _load("quality.json"), _load("timing.json"), _load("train.json")
    judge = any("judge_fd" in q.get("cfg", {}) for q in quality.values())
    # seconds only where they were timed interleaved (reports of older runs timed the sampling runs,
    # CFG's and AGD's in different stages under different load: no cost axis is drawn from those)
    timed = "step_seconds_per_image" in timing
    lines = ["| w | FID CFG | FID AGD | AGD - CFG (95 % paired) | KID AGD - CFG (x1e3) |"
             + (" judge FD AGD - CFG | accuracy CFG / AGD |" if judge else "")
             + " captured | cosine | gain |" + (" ms/image CFG / AGD (interleaved) |" if timed else ""),
             "|---|---|---|---|---|" + ("---|---|" if judge else "") + "---|---|---|" + ("---|" if timed else "")]
    for key in sorted(metrics, key=_scale):
        m, q, t = metrics[key], quality[key], timing.get(key, {})
        kid = {k: (v * 1e3 if isinstance(v, float) else v) for k, v in m["kid_diff"].items()}
        row = [f"{_scale(key):g}" + ("" if m.get("in_training_range", True) else " (outside training range)"),
               _ci(q["cfg"]["fid"]), _ci(q["agd"]["fid"]), _diff(m["fid_diff"]), _diff(kid, 2)]
        if judge:
            row += [_diff(m["judge_fd_diff"], 2), f"{q['cfg']['accuracy']:.3f} / {q['agd']['accuracy']:.3f}"]
        row += [f"{m.get('correction_captured', float('nan')):.3f}", f"{m.get('correction_cosine', float('nan')):.3f}",
                f"{m.get('correction_gain', float('nan')):.3f}"]
        if timed:
            row.append(f"{_ms(t['cfg'])} / {_ms(t['agd'])}" if t else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + trade_off(metrics, quality)
    unguided = quality.get("unguided", {})
    notes = []
    if unguided:
        notes.append(f"Unguided base (w = 1): FID {_ci(unguided['fid'])}"
                     + (f", accuracy {unguided['accuracy']:.3f}" if "accuracy" in unguided else "") + ".")
    if train:
        notes.append(f"Adapters: {train.get('parameters', 0):,} parameters ({train.get('percent_of_base', 0):.2f} % of "
                     f"the base), training loss {train.get('initial_loss')} -> {train.get('final_loss')} in "
                     f"{train.get('steps')} steps.")
    notes.append(f"Made by `dvc repro` from {provenance()}.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def teacher_table() -> str:
    """AGD against its own two-pass teacher where the rule is not plain CFG (evaluate's `teacher` rows),
    beside AGD against plain CFG: did distillation keep the rule's gain? "" for plain CFG."""
    metrics, quality = _load("metrics.json"), _load("quality.json")
    keys = [k for k in sorted(metrics, key=_scale) if "teacher" in metrics[k]]
    if not keys:
        return ""
    rule = metrics[keys[0]]["teacher"]["rule"]
    judge = "judge_fd_diff" in metrics[keys[0]]["teacher"]
    name, label = ("judge_fd", "judge FD") if judge else ("fid", "FID")
    settings = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "rule") or "no parameters"
    lines = [f"AGD distilled from the {rule['rule']} rule ({settings}) against that rule's two passes (its teacher) "
             "and plain CFG, "
             "95 % paired intervals (negative: AGD is better):", "",
             f"| w | {label} teacher / CFG / AGD | AGD - teacher | AGD - CFG | FID AGD - teacher |"
             + (" accuracy teacher / AGD |" if judge else ""), "|---|---|---|---|---|" + ("---|" if judge else "")]
    for key in keys:
        m, q = metrics[key], quality[key]
        row = [f"{_scale(key):g}", " / ".join(_ci(q[x][name], 2) for x in ("teacher", "cfg", "agd")),
               _diff(m["teacher"][f"{name}_diff"], 2), _diff(m[f"{name}_diff"], 2), _diff(m["teacher"]["fid_diff"])]
        if judge:
            row.append(f"{q['teacher']['accuracy']:.3f} / {q['agd']['accuracy']:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def negatives_table() -> str:
    """AGD with a negative condition against CFG with it (evaluate's `negatives`, adapters trained with
    negatives), same seeds, 95 % paired intervals; "" when there is none."""
    metrics = _load("metrics.json")
    keys = [k for k in sorted(metrics, key=_scale) if "negatives" in metrics[k]]
    if not keys:
        return ""
    lines = []
    for key in keys:
        n = metrics[key]["negatives"]
        held = n["held_out_with_negative"]
        drawn = "another class" if "negative_mass" in n else "a negative prompt"
        lines += [f"With a negative condition at w = {_scale(key):g} ({n['samples']} samples, each condition with "
                  f"{drawn} as its negative, the same seeds for every method"
                  + ("; negative mass: the judge's probability on the negative class):" if "negative_mass" in n
                     else "):"), ""]
        if "negative_mass" in n:
            mass, acc = n["negative_mass"], n["accuracy"]
            lines += ["| figure | CFG + negative | AGD + negative | AGD - CFG (95 % paired) | CFG / AGD without "
                      "negative | negative - none, CFG / AGD |", "|---|---|---|---|---|---|"]
            rows = [("negative mass", mass, 5), ("accuracy", acc, 3)]
            if "negative_logprob" in n:
                rows.insert(1, ("log negative mass (nats)", n["negative_logprob"], 2))
            for name, d, digits in rows:
                lines.append(f"| {name} | {_ci(d['cfg_negative'], digits)} | {_ci(d['agd_negative'], digits)} | "
                             f"{_diff(d['agd_minus_cfg'], digits)} | {_ci(d['cfg'], digits)} / {_ci(d['agd'], digits)} | "
                             f"{_diff(d['negative_minus_none']['cfg'], digits)} / "
                             f"{_diff(d['negative_minus_none']['agd'], digits)} |")
            lines.append("")
        moved = n["moved_by_negative_mse"]
        lines.append(f"Same-seed pixel MSE, AGD + negative against CFG + negative: {_ci(n['same_seed_mse'], 5)}; "
                     f"how far the negative moves each method's images: CFG {_ci(moved['cfg'], 5)}, AGD "
                     f"{_ci(moved['agd'], 5)}. Correction captured on held-out CFG trajectories with negatives: "
                     f"{held.get('correction_captured', float('nan')):.3f} (cosine "
                     f"{held.get('correction_cosine', float('nan')):.3f}, gain {held.get('correction_gain', float('nan')):.3f}); "
                     f"without a negative (the table above): {metrics[key].get('correction_captured', float('nan')):.3f}.")
    return "\n".join(lines) + "\n"


def trade_off(metrics: dict, quality: dict) -> list[str]:
    """Precision and recall per scale (judge features where there is a judge: every sample, not the
    Inception subset): guidance trades recall for precision, and this says which one AGD gives up."""
    prefix = "judge_" if any("judge_precision" in q.get("cfg", {}) for q in quality.values()) else ""
    keys = [k for k in sorted(metrics, key=_scale) if f"{prefix}precision" in quality[k].get("cfg", {})]
    if not keys:
        return []
    space = "classifier features" if prefix else "Inception features"
    lines = [f"| w | precision CFG / AGD ({space}) | AGD - CFG | recall CFG / AGD | AGD - CFG |",
             "|---|---|---|---|---|"]
    for key in keys:
        q, m = quality[key], metrics[key]
        row = [f"{_scale(key):g}"]
        for name in ("precision", "recall"):
            row += [f"{_ci(q['cfg'][prefix + name], 3)} / {_ci(q['agd'][prefix + name], 3)}",
                    _diff(m[f"{prefix}{name}_diff"], 3)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _rows(name: str) -> list[dict]:
    """A CSV report's rows; [] when it does not exist (like _load for the JSON ones)."""
    path = REPORTS / name
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_figure(fig, out: Path) -> None:
    """A figure written atomically (its format from the file's suffix), then closed."""
    with files.atomic(out) as tmp:
        fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)


def _pyplot():
    """matplotlib's pyplot on the file-only backend (stages run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distillation(out: Path) -> None:
    """Captured, cosine and gain per sampler step, one line per scale."""
    plt = _pyplot()
    rows = _rows("distillation.csv")
    scales = sorted({r["w"] for r in rows}, key=float)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
    for ax, name in zip(axes, ("captured", "cosine", "gain")):
        for w in scales:
            mine = [r for r in rows if r["w"] == w]
            ys = [float(r[name]) if r[name] else float("nan") for r in mine]
            ax.plot([int(r["step"]) for r in mine], ys, marker="o", ms=3, label=f"w = {w}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("sampler step (0 = noise)")
        ax.set_title(name)
    axes[0].legend()
    fig.suptitle("AGD against CFG on held-out CFG trajectories, per sampler step")
    save_figure(fig, out)


def plot_scales(out: Path) -> None:
    """FID of CFG and AGD (95 % intervals) and correction captured, against the guidance scale."""
    plt = _pyplot()
    metrics, quality = _load("metrics.json"), _load("quality.json")
    keys = sorted(metrics, key=_scale)
    ws = [_scale(k) for k in keys]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for i, method in enumerate(("cfg", "agd")):
        f = [quality[k][method]["fid"] for k in keys]
        offset = (i - 0.5) * 0.06 * (max(ws) - min(ws) or 1)
        ax.errorbar([w + offset for w in ws], [d["value"] for d in f],
                    yerr=[[max(d["value"] - d["ci_low"], 0) for d in f], [max(d["ci_high"] - d["value"], 0) for d in f]],
                    marker="o", capsize=3, label=method.upper())
    if "unguided" in quality:
        ax.axhline(quality["unguided"]["fid"]["value"], color="grey", ls="--", lw=0.8, label="unguided")
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel("FID (95 % interval)")
    ax.legend()
    for name in ("correction_captured", "correction_cosine", "correction_gain"):
        bx.plot(ws, [metrics[k].get(name, float("nan")) for k in keys], marker="o", label=name.split("_")[1])
    bx.axhline(1.0, color="grey", lw=0.8, ls="--")
    bx.set_xlabel("guidance scale w")
    bx.legend()
    fig.suptitle("AGD against CFG across guidance scales")
    save_figure(fig, out)


def update_readme(text: str, readme: Path = Path("README.md")) -> bool:
    """Replace the block between the results markers; False when README has no markers."""
    return update_block(text, readme, BEGIN, END)


def update_block(text: str, doc_path: Path, begin: str, end: str) -> bool:
    """Replace the block between two marker lines of a document; False when it has no markers."""
    doc = doc_path.read_text() if doc_path.exists() else ""
    if begin not in doc or end not in doc:
        return False
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    files.write_text(doc_path, head + begin + "\n" + text + end + tail)
    return True
