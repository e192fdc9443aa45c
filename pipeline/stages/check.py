"""Stage `check`: validate params.yaml before `dvc repro` touches any output.

DVC deletes a stage's outputs before it runs the stage's command, so a params mistake caught
inside, say, `agd conditions` would come too late: the old output would already be gone. This
stage runs first (every other stage depends on its marker file) and fails before any of that.
The marker's content never changes, so passing this stage re-runs nothing downstream.

Beyond each key's own rules (pipeline.config, checked when params.yaml is loaded) it checks what
needs more than one section or a file: scheduler names and step counts against the base's scheduler,
captions files, the `dag` section against the backend, outputs that can be written, and that the
output paths dvc.yaml tracks are the ones params.yaml names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from pipeline.backends import get_spec
from pipeline.backends.schedulers import make_scheduler
from pipeline.backends.variance import check_variance_on_disk
from pipeline.config import Params, dag
from pipeline.data.captions import read_captions
from pipeline.run import distributed, files, preflight
from pipeline.run.errors import AGDError
from pipeline.run.progress import log

MARKER = Path("data/params.checked")
MARKER_TEXT = "params.yaml passed `agd check`\n"
DVC_YAML = Path("dvc.yaml")
# stage -> the param naming the output dvc.yaml must track for it
TRACKED_OUTPUTS = {"trajectories": "trajectories.output", "train": "train.output"}


def _scheduler_config(base_path: str) -> dict:
    """The base's scheduler config from disk, without loading the model ({}: a hub id, whose
    defaults the check then uses; the stage that loads the base checks again)."""
    try:
        return dict(json.loads((Path(base_path) / "scheduler" / "scheduler_config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _interpolate(text: str, params: dict) -> str:
    """dvc.yaml's ${section.key} references, resolved from params (as DVC's templating does)."""
    def value(match):
        section, _, key = match.group(1).partition(".")
        return str(params.get(section, {}).get(key, match.group(0)))
    return re.sub(r"\$\{([^}]+)\}", value, text)


def check_tracked_outputs(params: Params, dvc_yaml: Path = DVC_YAML) -> None:
    """The outputs dvc.yaml declares for the stages whose output path is a param are that path: else
    DVC would track (and delete, and restore) a path no stage writes."""
    if not dvc_yaml.exists():
        return
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    values = params.model_dump()
    for stage, key in TRACKED_OUTPUTS.items():
        outs = stages.get(stage, {}).get("outs", [])
        declared = {_interpolate(next(iter(o)) if isinstance(o, dict) else o, values) for o in outs}
        section, _, name = key.partition(".")
        wanted = values[section][name]
        if wanted not in declared:
            raise AGDError(f"{dvc_yaml}: stages.{stage}.outs", f"do not include {wanted!r}, which params.yaml's "
                           f"{key} names (they hold {sorted(declared)})",
                           f"declare the output as ${{{key}}} in dvc.yaml, or set {key} to the path it tracks")


def run(params: Params) -> None:
    base, traj, cond, ev = params.base, params.trajectories, params.conditions, params.evaluate
    spec = get_spec(base.backend)
    config = _scheduler_config(base.path)
    # The refusals the stages would make, made here, before DVC removes any output: every scheduler class
    # and step count a stage samples with, and the global batch against the process count.
    evaluation = "evaluate.scheduler" if ev.scheduler else "trajectories.scheduler"
    samplers = [(name, steps, f"samplers.settings[{i}]", f"samplers.settings[{i}]")
                for i, (name, steps) in enumerate(params.samplers.parsed())]
    nfe = [(ev.scheduler or traj.scheduler, steps, "nfe.steps", evaluation) for steps in params.nfe.steps]
    for name, steps, steps_key, name_key in [(traj.scheduler, traj.num_steps, "trajectories.num_steps",
                                              "trajectories.scheduler"),
                                             (ev.scheduler or traj.scheduler, ev.num_steps, "evaluate.num_steps",
                                              evaluation), *samplers, *nfe]:
        make_scheduler(name, config, steps, key=f"params.yaml: {steps_key}", name_key=f"params.yaml: {name_key}")
    distributed.check_split(params.train.batch_size, params.launch.nproc)
    if spec.family == "dit":
        check_variance_on_disk(base.path)  # a scheduler that wants a variance the model does not predict
    if spec.condition == "text":
        read_captions(Path(cond.captions_file))
        read_captions(Path(ev.captions_file))
    dag.check(params)  # dvc.yaml's inputs for this backend: after the captions, whose errors say more
    check_tracked_outputs(params)
    for key, path in (("trajectories.output", traj.output), ("train.output", params.train.output)):
        preflight.writable(path, f"params.yaml: {key}", "folder")
    preflight.writable(MARKER, "check marker")
    if not MARKER.exists() or MARKER.read_text() != MARKER_TEXT:
        files.write_text(MARKER, MARKER_TEXT)
    log(f"check: params.yaml is valid (backend {spec.name})")
