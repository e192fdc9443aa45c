"""Stage `check`: validate params.yaml before `dvc repro` touches any output.

DVC deletes a stage's outputs before it runs the stage's command, so a params mistake caught
inside, say, `agd conditions` would come too late: the old output would already be gone. This
stage runs first (every other stage depends on its marker file) and fails before any of that.
The marker's content never changes, so passing this stage re-runs nothing downstream.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import load_all
from pipeline.progress import log

MARKER = Path("data/params.checked")
MARKER_TEXT = "params.yaml passed `agd check`\n"


def _scheduler_config(base_path: str) -> dict:
    """The base's scheduler config from disk, without loading the model ({}: a hub id, whose
    defaults the check then uses; the stage that loads the base checks again)."""
    try:
        return dict(json.loads((Path(base_path) / "scheduler" / "scheduler_config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def run() -> None:
    from pipeline import dag, preflight
    from pipeline.backends import get_spec
    from pipeline.captions import read_captions
    from pipeline.sampling import make_scheduler

    params = load_all()
    base, traj, cond, ev = params["base"], params["trajectories"], params["conditions"], params["evaluate"]
    spec = get_spec(base.backend)
    config = _scheduler_config(base.path)
    # The same checks the stages make when they build their samplers: scheduler class and step count.
    for section, name, steps in (("trajectories", traj.scheduler, traj.num_steps),
                                 ("evaluate", ev.scheduler or traj.scheduler, ev.num_steps)):
        make_scheduler(name, config, steps, key=f"params.yaml: {section}.num_steps")
    if spec.condition == "text":
        read_captions(Path(cond.captions_file))
        read_captions(Path(ev.captions_file))
    dag.check(params)  # dvc.yaml's inputs for this backend: after the captions, whose errors say more
    for key, path in (("trajectories.output", traj.output), ("train.output", params["train"].output)):
        preflight.writable(path, f"params.yaml: {key}", "folder")
    preflight.writable(MARKER, "check marker")
    if not MARKER.exists() or MARKER.read_text() != MARKER_TEXT:
        MARKER.write_text(MARKER_TEXT)
    log(f"check: params.yaml is valid (backend {spec.name})")
