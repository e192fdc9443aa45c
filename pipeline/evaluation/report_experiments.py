"""The experiments' tables and figures (sweep, NFE curve, samplers), from their reports only: the same
generator as the main results (pipeline.evaluation.report), so `agd report` renders them all."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.evaluation.report import REPORTS, _diff, _pyplot, _rows, _scale, save_figure


def _summary(path: Path) -> dict:
    """An experiment stage's JSON summary; {} when the stage is off or has not run."""
    return json.loads(path.read_text()) if path.exists() else {}


def _off(ax, note: str) -> None:
    """The figure of a stage that is off: how to turn it on, instead of empty axes."""
    ax.text(0.5, 0.5, note, ha="center", va="center")
    ax.set_axis_off()


def sweep_table(path: Path = REPORTS / "sweep.json") -> str:
    """AGD against CFG across the sweep's scales, or "" when the sweep is off."""
    summary = _summary(path)
    if not summary:
        return ""
    judge = any("judge_fd_diff" in m for m in summary.values())
    lines = ["| w | FID AGD - CFG (95 % paired) |" + (" judge FD AGD - CFG | accuracy gap |" if judge else "")
             + " captured | gain |", "|---|---|" + ("---|---|" if judge else "") + "---|---|"]
    for key in sorted(summary, key=_scale):
        m = summary[key]
        row = [f"{_scale(key):g}" + ("" if m["in_training_range"] else " (outside training range)"), _diff(m["fid_diff"])]
        if judge:
            row += [_diff(m["judge_fd_diff"], 2), f"{m.get('accuracy_gap', float('nan')):+.3f}"]
        row += [f"{m.get('correction_captured', float('nan')):.3f}", f"{m.get('correction_gain', float('nan')):.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(out: Path, w_range: tuple[float, float]) -> None:
    """FID of each method against w with 95 % intervals, the training range shaded; a note when off."""
    plt = _pyplot()
    rows = _rows("sweep.csv")
    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    if not rows:
        _off(ax, "sweep off: dvc exp run -S sweep.num_samples=500")
    else:
        ax.axvspan(*w_range, color="grey", alpha=0.12, label="training range of w")
        for method in ("cfg", "agd"):
            mine = [r for r in rows if r["method"] == method]
            ws, fid = [float(r["w"]) for r in mine], [float(r["fid"]) for r in mine]
            ax.errorbar(ws, fid, yerr=[[f - float(r["fid_low"]) for f, r in zip(fid, mine)],
                                       [float(r["fid_high"]) - f for f, r in zip(fid, mine)]],
                        marker="o", capsize=3, label=method.upper())
        unguided = [r for r in rows if r["method"] == "unguided"]
        if unguided:
            ax.axhline(float(unguided[0]["fid"]), color="grey", ls="--", lw=0.8, label="unguided")
        ax.set_xlabel("guidance scale w")
        ax.set_ylabel("FID (95 % interval)")
        ax.legend()
    fig.suptitle("CFG and AGD across guidance scales")
    save_figure(fig, out)


METHOD_LABELS = {"cfg": "CFG", "agd": "AGD", "cfg_half_steps": "CFG, half the steps",
                 "interval": "CFG on a guidance interval", "reuse": "CFG reusing the unconditional output",
                 "teacher": "the teacher rule (two passes)"}
# the equal-cost rows are points of their rule's curve: named in the tables, not drawn as curves
EQUAL_COST_LABELS = {"cfg_equal_time": "CFG at AGD's time", "interval_equal_nfe": "interval at AGD's NFE",
                     "interval_equal_time": "interval at AGD's time", "teacher_equal_nfe": "teacher at AGD's NFE",
                     "teacher_equal_time": "teacher at AGD's time"}


def nfe_table(path: Path = REPORTS / "nfe.json") -> str:
    """Per step count, AGD minus each baseline (paired), with each side's NFE; "" when the stage is off."""
    summary = _summary(path)
    if not summary:
        return ""
    first = next(iter(summary.values()))
    name = "judge_fd_diff" if "judge_fd_diff" in first["vs_cfg"] else "fid_diff"
    what = "judge feature distance" if name == "judge_fd_diff" else "FID"
    baselines = [k[3:] for k in first if k.startswith("vs_")]
    teacher = first.get("teacher", "cfg")
    lines = [f"AGD (distilled from the {teacher} rule) minus each baseline in {what} (95 % paired; negative: AGD is "
             "better), the baseline's steps and NFE per image in brackets:",
             "", "| steps | AGD NFE | " + " | ".join({**METHOD_LABELS, **EQUAL_COST_LABELS}.get(b, b) for b in baselines)
             + " |",
             "|---|---|" + "---|" * len(baselines)]
    for key in sorted(summary, key=lambda k: int(k[5:])):
        m = summary[key]
        cells = [f"{_diff(m['vs_' + b][name], 2)} ({_steps_nfe(m['vs_' + b])})" for b in baselines]
        lines.append(f"| {key[5:]} | {m['agd_nfe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _steps_nfe(versus: dict) -> str:
    """"12 st, 20" (summaries written before the steps were recorded: the NFE alone)."""
    return f"{versus['steps']} st, {versus['nfe']}" if "steps" in versus else str(versus["nfe"])


def plot_nfe(out: Path) -> None:
    """Quality against NFE per image and against seconds per image, one line per method, 95 % intervals."""
    plt = _pyplot()
    rows = _rows("nfe.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    if not rows:
        _off(axes[0], "nfe stage off: dvc exp run -S nfe.num_samples=1000")
        axes[1].set_axis_off()
    else:
        name = "judge_fd" if rows[0].get("judge_fd") else "fid"
        for method in METHOD_LABELS:
            # a rule's equal-cost rows are more points of its curve (one per step count)
            points = {int(r["steps"]): r for r in rows
                      if r["method"] == method or r["method"] in (f"{method}_equal_nfe", f"{method}_equal_time")}
            mine = sorted(points.values(), key=lambda r: int(r["nfe"]))
            if not mine:
                continue
            y = [float(r[name]) for r in mine]
            err = [[v - float(r[f"{name}_low"]) for v, r in zip(y, mine)],
                   [float(r[f"{name}_high"]) - v for v, r in zip(y, mine)]]
            style = {"lw": 2.2, "zorder": 3} if method == "agd" else {"lw": 1.0}
            ms = [1e3 * float(r["seconds_per_image"]) for r in mine]
            for ax, x in ((axes[0], [int(r["nfe"]) for r in mine]), (axes[1], ms)):
                ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, label=METHOD_LABELS[method], **style)
        label = "judge feature distance" if name == "judge_fd" else "FID"
        for ax, xlabel in zip(axes, ("NFE per image", "ms per image (interleaved timing, this run's machine)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{label} (95 % interval)")
        axes[0].legend(fontsize=8)
    fig.suptitle("Quality against cost: AGD and the cheap-CFG baselines")
    save_figure(fig, out)


def samplers_table(path: Path = REPORTS / "samplers.json") -> str:
    """AGD against CFG under each sampler setting; "" when the stage is off."""
    summary = _summary(path)
    if not summary:
        return ""
    judge = any("judge_fd_diff" in m for m in summary.values())
    lines = ["| sampler, steps | FID AGD - CFG (95 % paired) |" + (" judge FD AGD - CFG | accuracy gap |" if judge else "")
             + " captured | cosine | gain |", "|---|---|" + ("---|---|" if judge else "") + "---|---|---|"]
    for key, m in summary.items():
        row = [key.replace("_", ", ") + (" (trained on)" if m["trained_on"] else ""), _diff(m["fid_diff"])]
        if judge:
            row += [_diff(m["judge_fd_diff"], 2), f"{m.get('accuracy_gap', float('nan')):+.3f}"]
        row += [f"{m.get(f'correction_{k}', float('nan')):.3f}" for k in ("captured", "cosine", "gain")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_samplers(out: Path) -> None:
    """Quality of CFG and AGD per sampler setting, 95 % intervals."""
    plt = _pyplot()
    rows = _rows("samplers.csv")
    fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    if not rows:
        _off(ax, "samplers stage off: dvc exp run -S samplers.num_samples=500")
    else:
        name = "judge_fd" if rows[0].get("judge_fd") else "fid"
        settings = list(dict.fromkeys(r["setting"] for r in rows))
        for i, method in enumerate(("cfg", "agd")):
            mine = {r["setting"]: r for r in rows if r["method"] == method}
            y = [float(mine[s][name]) for s in settings]
            err = [[v - float(mine[s][f"{name}_low"]) for v, s in zip(y, settings)],
                   [float(mine[s][f"{name}_high"]) - v for v, s in zip(y, settings)]]
            ax.errorbar([k + (i - 0.5) * 0.15 for k in range(len(settings))], y, yerr=err, fmt="o", capsize=3,
                        label=method.upper())
        trained = [r["setting"] for r in rows if r["trained_on"] == "True"]
        ax.set_xticks(range(len(settings)),
                      [s.replace("_", "\n") + ("\n(trained on)" if s in trained else "") for s in settings])
        ax.set_ylabel(("judge feature distance" if name == "judge_fd" else "FID") + " (95 % interval)")
        ax.legend()
    fig.suptitle("CFG and AGD under other samplers and step counts")
    save_figure(fig, out)


def transfer_table(path: Path = REPORTS / "transfer.json") -> str:
    """Correction captured per adapter width, on the base and on the derived model; "" when off."""
    summary = _summary(path)
    if not summary:
        return ""
    lines = ["| adapter width | parameters | captured on the base | on the derived model | retained |"
             " cosine base / derived | gain base / derived |", "|---|---|---|---|---|---|---|"]
    for key in sorted(summary, key=lambda k: int(k[5:])):
        m = summary[key]
        b, d = m["base"], m["derived"]
        lines.append(f"| {key[5:]} | {m['parameters']:,} | {b['captured']:.3f} | {d['captured']:.3f} | "
                     f"{m['retained']:.3f} | {b['cosine']:.3f} / {d['cosine']:.3f} | {b['gain']:.3f} / {d['gain']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_transfer(out: Path) -> None:
    """Correction captured against adapter parameters, on the base and on the derived model."""
    plt = _pyplot()
    rows = _rows("transfer.csv")
    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    if not rows:
        _off(ax, "transfer stage off: dvc exp run -S transfer.finetune_steps=400")
    else:
        for model, label in (("base", "on the base they were trained on"), ("derived", "on the fine-tuned model")):
            mine = sorted((r for r in rows if r["model"] == model), key=lambda r: int(r["parameters"]))
            ax.plot([int(r["parameters"]) for r in mine], [float(r["captured"]) for r in mine], marker="o", label=label)
            for r in mine:
                ax.annotate(f"w{r['width']}", (int(r["parameters"]), float(r["captured"])), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_xlabel("adapter parameters")
        ax.set_ylabel("correction captured")
        ax.legend()
    fig.suptitle("Adapters applied unchanged to a fine-tuned base")
    save_figure(fig, out)


def plot_distillation_by_experiment(out: Path, main: Path, folders: list[Path], w: str = "3") -> None:
    """Correction captured per sampler step at one scale: the main run and each rendered experiment
    (reports/experiments/NAME/distillation.csv) as one line each; experiments whose curve is the main
    run's (they did not change the adapters: a sweep, the NFE curve) are left out."""
    import csv

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    for label, path in [("default (main)", main)] + [(f.name, f / "distillation.csv") for f in folders]:
        if not path.exists() or (path != main and main.exists() and path.read_text() == main.read_text()):
            continue
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["w"] == w and r["captured"]]
        if rows:
            ax.plot([int(r["step"]) for r in rows], [float(r["captured"]) for r in rows], marker="o", ms=3, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("sampler step (0 = noise)")
    ax.set_ylabel(f"correction captured, w = {w}")
    ax.legend(fontsize=8)
    fig.suptitle("Per-step distillation on held-out CFG trajectories, by experiment")
    save_figure(fig, out)


def _pareto(nfe: dict, judge: bool) -> str:
    """Per step count of an nfe run: against how many of its two-pass and cheap baselines AGD is
    significantly better ("8 st: 7/7"); "" when the experiment did not run the nfe stage."""
    name = "judge_fd_diff" if judge else "fid_diff"
    cells = []
    for key in sorted(nfe, key=lambda k: int(k[len("steps"):])):
        versus = [v[name] for k, v in nfe[key].items() if k.startswith("vs_") and name in v]
        cells.append(f"{key[len('steps'):]} st: {sum(d['ci_high'] < 0 for d in versus)}/{len(versus)}")
    return ", ".join(cells)


def rules_summary(folders: list[Path]) -> str:
    """One row per rendered experiment (and scale) whose AGD was distilled from a rule other than plain
    CFG: AGD against its own two-pass teacher and against plain CFG (the judge's feature distance where
    every experiment has a judge, FID otherwise; FID always beside it), and, where the experiment ran
    the nfe stage, against how many baselines AGD is significantly better at each step count. "" when
    no experiment distilled another rule."""
    found = []
    for folder in folders:  # each experiment's reports read once
        metrics, quality = _summary(folder / "metrics.json"), _summary(folder / "quality.json")
        found += [(folder, key, metrics[key], quality[key])
                  for key in sorted((k for k in metrics if "teacher" in metrics[k]), key=_scale)]
    if not found:
        return ""
    judge = all("judge_fd_diff" in m["teacher"] for _, _, m, _ in found)
    name, label = ("judge_fd", "judge FD") if judge else ("fid", "FID")
    lines = [f"| experiment | teacher rule | w | {label} teacher / CFG / AGD | {label} AGD - teacher | {label} AGD - CFG "
             "| FID AGD - teacher | FID AGD - CFG | nfe: AGD significantly better than |",
             "|---|---|---|---|---|---|---|---|---|"]
    for folder, key, m, q in found:
        rule = m["teacher"]["rule"]
        settings = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "rule")
        row = [f"[{folder.name}](../reports/experiments/{folder.name}/results.md)",
               f"`{rule['rule']}`" + (f" ({settings})" if settings else ""), f"{_scale(key):g}",
               " / ".join(f"{q[x][name]['value']:.2f}" for x in ("teacher", "cfg", "agd")),
               _diff(m["teacher"][f"{name}_diff"], 2), _diff(m[f"{name}_diff"], 2),
               _diff(m["teacher"]["fid_diff"]), _diff(m["fid_diff"]),
               _pareto(_summary(folder / "nfe.json"), judge) or "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
