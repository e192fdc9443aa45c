"""Checks a stage makes before its long work: can it write its outputs, is the base the right model.

A stage that trains for an hour and then cannot save, or that fails deep inside diffusers on a
folder holding another model, wastes the user's time; these checks turn both into one line at
start-up that names the key or file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pipeline.run.errors import AGDError


def writable(path: str | Path, key: str, kind: str = "file") -> Path:
    """`path` can be written as a `kind` ("file" or "folder"): its parent folder accepts new files
    (created if missing) and nothing of the other kind stands in the way."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise AGDError(f"{key} {path}", "is a folder, but a file is written there", "remove the folder or change the path")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise AGDError(f"{key} {path}", "is a file, but a folder is written there", "remove the file or change the path")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".agd-write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise AGDError(f"{key} {path}", f"cannot be written ({reason}: {err.filename or parent})",
                       "point it at a writable folder (a path under an existing file, a read-only disk or a "
                       "missing mount cannot hold outputs)") from None
    return path


def writable_all(outputs: list[tuple[str, str | Path, str]]) -> None:
    """Check every (key, path, kind) before a stage starts."""
    for key, path, kind in outputs:
        writable(path, key, kind)


def model_class(path: str, subfolder: str, expected: tuple[str, ...], backend: str) -> None:
    """A local base folder's `subfolder/config.json` names one of the classes the backend loads.

    Hub ids are not checked here (their config is not on disk); from_pretrained reports those.
    """
    config = Path(path) / subfolder / "config.json"
    if not Path(path).is_dir():
        return
    if not config.exists():
        raise AGDError(str(config), "not found", f"base.path must be a diffusers folder with {subfolder}/ "
                       f"(save_pretrained layout) for backend {backend}")
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError):
        raise AGDError(str(config), "not a JSON model config", "download or save the model again") from None
    if name not in expected:
        raise AGDError(str(config), f"holds a {name}, backend {backend} expects {' or '.join(expected)}",
                       "point base.path at a model of that backend, or set base.backend to the model's backend")
