"""`agd export`: trained adapters as a folder to publish, the way LoRAs travel: the one weights file
(its header holds the whole metadata) and a model card (README.md with the Hub's front matter) that
states the base, teacher, scale range, adapter size and the evaluation figures, generated from the
adapters' metadata, params.yaml and reports/, never typed. `--push org/name` uploads the folder with
huggingface_hub. Not a DVC stage."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Params
from pipeline.guidance import hub
from pipeline.guidance.adapters import saved
from pipeline.run import files
from pipeline.run.errors import AGDError
from pipeline.run.progress import log

CARD = "README.md"


def _figures(reports: Path) -> list[str]:
    """The evaluation's AGD-against-CFG rows from reports/metrics.json (and timing.json), if there."""
    metrics_file = reports / "metrics.json"
    if not metrics_file.exists():
        return ["No evaluation figures: `reports/metrics.json` was not there when these adapters were exported."]
    metrics = json.loads(metrics_file.read_text())
    timing = json.loads((reports / "timing.json").read_text()) if (reports / "timing.json").exists() else {}
    lines = ["| w | FID AGD - CFG (95 % paired) | judge FD AGD - CFG | correction captured | ms/image CFG / AGD |",
             "|---|---|---|---|---|"]
    for key, m in metrics.items():
        def diff(name, digits=1):
            d = m.get(name)
            if not d:
                return "-"
            sig = "significant" if d["significant"] else "not significant"
            return f"{d['value']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}], {sig}"
        t = timing.get(key, {})
        ms = (f"{1e3 * t['cfg']['seconds_per_image']:#.3g} / {1e3 * t['agd']['seconds_per_image']:#.3g}"
              if "seconds_per_image" in t.get("cfg", {}) else "-")
        lines.append(f"| {key[1:].replace('_', '.')} | {diff('fid_diff')} | {diff('judge_fd_diff', 2)} | "
                     f"{m.get('correction_captured', '-')} | {ms} |")
    return lines


def card(meta: dict, params: Params, reports: Path) -> str:
    """The model card: front matter the Hub reads, then what the adapters are and how they did."""
    base = meta.get("base", {})
    backend, base_path = base.get("backend", "?"), str(base.get("path", ""))
    teacher = meta.get("teacher", {"rule": "cfg"})
    front = ["---"]
    if hub.looks_like_repo_id(base_path) and not Path(base_path).exists():  # a Hub id, not a local folder
        front.append(f"base_model: {base_path}")
    front += ["library_name: diffusers", "tags:", "- agd", "- adapter-guidance-distillation",
              "- classifier-free-guidance", f"- {backend}", "---", ""]
    rule = ", ".join(f"{k} {v}" for k, v in teacher.items() if k != "rule")
    cond = params.conditions
    body = [f"# AGD adapters for {backend}", "",
            "Adapter Guidance Distillation: small adapters on a frozen base that take the guidance scale as an "
            "input, so that one denoiser pass per step reproduces the teacher's two-pass guidance.", "",
            "| | |", "|---|---|",
            f"| base | {backend}, `{base_path}` (weights fingerprint `{base.get('fingerprint', '?')}`) |",
            f"| teacher | {teacher.get('rule', 'cfg')}{f' ({rule})' if rule else ''} |",
            f"| guidance scales trained | w in [{cond.w_min:g}, {cond.w_max:g}] |",
            f"| adapters | {meta.get('architecture')}, width {meta.get('width')}, {meta.get('heads')} heads, on "
            f"{meta.get('modules')} modules: {meta.get('parameters', 0):,} parameters "
            f"({meta.get('percent_of_base', 0):.2f} % of the base) |",
            f"| negative conditions | {'read (trained with negatives)' if meta.get('negatives') else 'no'} |", "",
            "## Evaluation", "", *_figures(reports), "",
            "## Use", "", "```python", "from pipeline.guidance.diffusers_agd import enable_agd",
            "pipe = enable_agd(pipe, \"ORG/NAME\")  # this repository; the pipeline of the base above",
            "image = pipe(\"a prompt\", guidance_scale=5.0).images[0]  # one denoiser pass per step", "```", "",
            "Licence: not set by `agd export`; add the one that the base's licence and yours allow.", ""]
    return "\n".join(front + body)


def run(params: Params, out: Path, adapters: str | None = None, push: str | None = None,
        reports: Path = Path("reports")) -> None:
    source = hub.resolve(adapters or params.train.output)
    meta = saved.read_meta(source)
    weights = source / saved.WEIGHTS
    if saved.header_meta(weights) is None:
        raise AGDError(str(weights), "holds no metadata in its header (written before one-file adapters)",
                       "re-run `agd train` (dvc repro), then export again")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_bytes(out / saved.WEIGHTS, weights.read_bytes())
    files.write_text(out / CARD, card(meta, params, reports))
    log(f"export: {out / saved.WEIGHTS} and its model card {out / CARD}")
    if push:
        if not hub.looks_like_repo_id(push):
            raise AGDError("--push", f"{push!r} is not a Hub repository id", "write org/name")
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=push, repo_type="model",
                          commit_message="AGD adapters (agd export)")
        log(f"export: pushed {out} to https://huggingface.co/{push}")
