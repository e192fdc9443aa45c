"""The conditions stage: a quick check keeps exactly the first trajectories of the full set."""

from __future__ import annotations

import json
import shutil

from tests.conftest import TINY, agd, set_params, write_params


def test_max_trajectories_keeps_the_first_of_the_full_set(tmp_path, tiny_base):
    write_params(tmp_path, TINY)
    shutil.copytree(tiny_base, tmp_path / "models/base-mnist-dit")  # its classes are what conditions draw
    agd(tmp_path, "conditions")
    full = json.loads((tmp_path / "data/conditions.json").read_text())
    set_params(tmp_path, **{"conditions.max_trajectories": 3})
    agd(tmp_path, "conditions")
    cut = json.loads((tmp_path / "data/conditions.json").read_text())
    assert len(full["items"]) == 20 and cut["items"] == full["items"][:3]
