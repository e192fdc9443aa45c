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
from pipeline.errors import AGDError
from pipeline.progress import log

MARKER = Path("data/params.checked")
MARKER_TEXT = "params.yaml passed `agd check`\n"


def _train_timesteps(base_path: str) -> int | None:
    config = Path(base_path) / "scheduler" / "scheduler_config.json"
    try:
        return int(json.loads(config.read_text()).get("num_train_timesteps", 1000))
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # no local scheduler config: the stage that loads the base reports it


def run() -> None:
    import diffusers

    from pipeline import preflight
    from pipeline.backends import get_spec
    from pipeline.captions import read_captions

    params = load_all()
    base, traj, cond, ev = params["base"], params["trajectories"], params["conditions"], params["evaluate"]
    spec = get_spec(base.backend)
    scheduler = getattr(diffusers, traj.scheduler, None)
    if not (isinstance(scheduler, type) and issubclass(scheduler, diffusers.SchedulerMixin)):
        raise AGDError(f"params.yaml: trajectories.scheduler {traj.scheduler!r}", "not a diffusers scheduler class",
                       "use e.g. DDIMScheduler, EulerDiscreteScheduler or DPMSolverMultistepScheduler")
    limit = _train_timesteps(base.path)
    for key, steps in (("trajectories.num_steps", traj.num_steps), ("evaluate.num_steps", ev.num_steps)):
        if limit is not None and steps > limit:
            raise AGDError(f"params.yaml: {key}", f"{steps} sampler steps, but the base model has {limit} "
                           "training timesteps", f"use at most {limit} steps")
    if spec.condition == "text":
        read_captions(Path(cond.captions_file))
        read_captions(Path(ev.captions_file))
    for key, path in (("trajectories.output", traj.output), ("train.output", params["train"].output)):
        preflight.writable(path, f"params.yaml: {key}", "folder")
    preflight.writable(MARKER, "check marker")
    if not MARKER.exists() or MARKER.read_text() != MARKER_TEXT:
        MARKER.write_text(MARKER_TEXT)
    log(f"check: params.yaml is valid (backend {spec.name})")
