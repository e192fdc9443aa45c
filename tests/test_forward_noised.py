"""The paper's ablation data: real training digits noised to the sampler's timesteps, CFG's output
there as the target, in the trajectory store's own format."""

from __future__ import annotations

import json

import numpy as np
import torch

from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler, noise_levels
from pipeline.data import forward_noised, mnist
from pipeline.data.store import TrajectoryStore
from tests.conftest import agd, set_params


def test_forward_noised_store_has_the_format_and_cfg_targets_at_noised_digits(project_copy, tiny_project,
                                                                               monkeypatch):
    set_params(project_copy, **{"trajectories.data": "forward_noised"})
    done = agd(project_copy, "trajectories")
    assert "set aside" in done.stderr  # the store of sampling trajectories is kept, not overwritten
    store = TrajectoryStore.open(project_copy / "data/trajectories.zarr")
    trajectories = TrajectoryStore.open(tiny_project / "data/trajectories.zarr")
    assert store.attrs["data"] == "forward_noised" and "data" not in trajectories.attrs
    for name in ("x", "target", "t", "w", "seed", "done"):  # same arrays, shapes, types and chunks
        a, b = store.group[name], trajectories.group[name]
        assert (a.shape, a.dtype, a.chunks) == (b.shape, b.dtype, b.chunks), name
    assert store.is_complete()

    monkeypatch.chdir(project_copy)
    family = load_base("mnist-dit", "models/base-mnist-dit")
    items = json.loads((project_copy / "data/conditions.json").read_text())["items"]
    x0 = torch.from_numpy(forward_noised.training_images(family, items[:3]))
    train_x, train_y = mnist.load_split(project_copy / "data", "train")
    for digit, item in zip(x0, items):  # a real training digit of the condition's class
        matches = np.flatnonzero((mnist.to_model_space(train_x) == digit).flatten(1).all(1).numpy())
        assert len(matches) and (train_y[matches] == item["label"]).all()
    sigmas = torch.as_tensor(noise_levels(family_scheduler(family, "DDIMScheduler", 5)), dtype=torch.float32)
    timesteps = store.group["t"][:]
    for i in range(3):
        row = store.read(i)
        x, target = torch.from_numpy(row["x"]), torch.from_numpy(row["target"])
        # the states are that digit plus Gaussian noise of the step's level, in the model's input scale
        noise = (x * torch.sqrt(1 + sigmas.view(-1, 1, 1, 1) ** 2) - x0[i]) / sigmas.view(-1, 1, 1, 1)
        assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.1
        label = torch.full((len(x),), items[i]["label"])
        out = family.guide(*family.branches(x, torch.from_numpy(timesteps), {"labels": label}),
                           torch.full((len(x),), items[i]["w"]))
        torch.testing.assert_close(target, out, rtol=1e-4, atol=1e-5)  # CFG's output at those states

    monkeypatch.chdir(tiny_project.parent)
    agd(project_copy, "train")  # training reads it like any store
    set_params(project_copy, **{"trajectories.data": "trajectories"})
    assert "took back the set-aside store" in agd(project_copy, "trajectories").stderr
