"""The teacher rule as a choice, through the real stages on the tiny project: trajectories record the
rule's output (APG's momentum carried along each trajectory), the store and the adapters carry the
rule, the interval's adapters are trained and run only inside the band, and evaluate compares AGD
with its own two-pass teacher beside plain CFG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.backends.loading import load_base
from pipeline.backends.schedulers import family_scheduler, noise_levels
from pipeline.data import shelf
from pipeline.data.loader import ShuffleBuffer
from pipeline.data.store import TrajectoryStore
from pipeline.guidance import rules
from pipeline.guidance.adapters import AdapterSet
from pipeline.guidance.sampling import nfe, plan_for
from tests.conftest import agd, set_params


def tiny_family(project):
    return load_base("mnist-dit", str(project / "models" / "base-mnist-dit"), "float32", "cpu", 0)


def band_around_steps(project, first: int, last: int) -> list[float]:
    """A sigma band (low, high] that holds exactly steps first..last of the tiny project's sampler."""
    sigmas = noise_levels(family_scheduler(tiny_family(project), "DDIMScheduler", 5))
    return [float(sigmas[last + 1] + sigmas[last]) / 2, float(sigmas[first] + sigmas[first - 1]) / 2]


def recomputed_targets(family, store, i: int, rule: rules.Rule) -> torch.Tensor:
    """Trajectory i's targets made again from its stored states: the rule run step by step."""
    traj, meta = store.read(i), store.meta()
    cond = family.condition_batch({"labels": meta["cond/labels"][i:i + 1]})
    w = torch.tensor(meta["w"][i:i + 1])
    sigmas = noise_levels(family_scheduler(family, "DDIMScheduler", len(meta["t"])))
    run, out = rule.run(), []
    with torch.no_grad():
        for step, t in enumerate(meta["t"]):
            x = torch.from_numpy(traj["x"][step:step + 1])
            tt = torch.tensor([t])
            action = rule.action(step, float(sigmas[step]))
            out.append(family.guide(*family.branches(x, tt, cond), w, run.combine) if action == rules.GUIDE
                       else family.forward(x, tt, cond))
    return torch.cat(out)


def test_the_interval_teacher_through_every_stage(project_copy):
    band = band_around_steps(project_copy, 1, 2)
    set_params(project_copy, **{"guidance.rule": "interval", "guidance.interval": band})
    plain_store = TrajectoryStore.open(project_copy / "data" / "trajectories.zarr")
    plain_targets = plain_store.read(0)["target"]
    agd(project_copy, "trajectories")
    store = TrajectoryStore.open(project_copy / "data" / "trajectories.zarr")
    assert store.attrs["guidance"] == {"rule": "interval", "low": band[0], "high": band[1]}
    assert store.attrs["guided_steps"] == [False, True, True, False, False]
    assert len(shelf.stores(project_copy / "data" / "trajectories.zarr")) == 1  # the plain store set aside
    family = tiny_family(project_copy)
    ours = store.read(0)["target"]
    np.testing.assert_allclose(ours, recomputed_targets(family, store, 0, rules.Interval(*band)).numpy(), atol=1e-5)
    # the first step (sigma above the band) is the conditional output, where plain CFG guided
    assert not np.allclose(ours[0], plain_targets[0], atol=1e-4)
    cond = family.condition_batch({"labels": store.meta()["cond/labels"][:1]})
    with torch.no_grad():
        unguided = family.forward(torch.from_numpy(store.read(0)["x"][1:2]), torch.tensor([store.meta()["t"][1]]), cond)
    assert not np.allclose(ours[1], unguided[0].numpy(), atol=1e-3)  # inside the band: guided

    # training draws its states from the guided steps only
    buffer = ShuffleBuffer(store, 256, 8, seed=0)
    drawn = {int(t) for t in buffer.next_batch()["t"]}
    assert drawn == {int(store.meta()["t"][1]), int(store.meta()["t"][2])}

    agd(project_copy, "train")
    saved = json.loads((project_copy / "models" / "adapters" / "adapters.json").read_text())
    assert saved["teacher"] == {"rule": "interval", "low": band[0], "high": band[1]}
    adapters = AdapterSet.load(project_copy / "models" / "adapters", family)
    assert adapters.teacher == rules.Interval(*band)
    assert plan_for(family, "DDIMScheduler", 5, "agd", rule=adapters.teacher) == ["cond", "agd", "agd", "cond", "cond"]

    agd(project_copy, "teacher")
    agd(project_copy, "evaluate")
    reports = project_copy / "reports"
    metrics, quality, timing = (json.loads((reports / f"{n}.json").read_text()) for n in ("metrics", "quality",
                                                                                         "timing"))
    for key in ("w3", "w6"):
        assert timing[key]["agd"]["nfe_per_image"] == 5  # one pass a step, the adapters only inside the band
        assert timing[key]["teacher"]["nfe_per_image"] == 2 * 2 + 3
        assert timing[key]["cfg"]["nfe_per_image"] == 10
        versus = metrics[key]["teacher"]
        assert versus["rule"]["rule"] == "interval"
        assert versus["fid_diff"]["ci_low"] <= versus["fid_diff"]["value"] <= versus["fid_diff"]["ci_high"]
        assert set(quality[key]) == {"cfg", "agd", "teacher"}
    agd(project_copy, "report")
    results = (reports / "results.md").read_text()
    assert f"AGD distilled from the interval rule (low {band[0]}, high {band[1]})" in results

    # nfe: AGD from the interval against the interval itself at equal steps, NFE and time
    set_params(project_copy, **{"nfe.num_samples": 6, "nfe.inception_samples": 6, "nfe.steps": [5],
                                "nfe.interval": band, "nfe.timing_rounds": 1})
    agd(project_copy, "nfe")
    summary = json.loads((reports / "nfe.json").read_text())["steps5"]
    assert summary["teacher"] == "interval" and "vs_teacher" not in summary  # the interval baseline is the teacher
    assert summary["agd_nfe"] == 5 and (summary["vs_interval"]["steps"], summary["vs_interval"]["nfe"]) == (5, 7)
    interval_nfe = {m: nfe(plan_for(family, "DDIMScheduler", m, "cfg", rule=rules.Interval(*band))) for m in range(1, 6)}
    equal = summary["vs_interval_equal_nfe"]
    assert equal["steps"] == max(m for m, cost in interval_nfe.items() if cost <= 5) and equal["nfe"] <= 5
    timed = summary["vs_interval_equal_time"]
    assert timed["seconds_per_image"] <= summary["agd_seconds"] or timed["steps"] == 1

    # agd report --experiments: the rendered experiment's row in the generated summary of docs/experiments.md
    import shutil

    rendered = project_copy / "reports" / "experiments" / "interval"
    rendered.mkdir(parents=True)
    for name in ("metrics.json", "quality.json", "nfe.json"):
        shutil.copy(reports / name, rendered / name)
    doc = project_copy / "docs" / "experiments.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text("before\n<!-- rules:begin (agd report --experiments) -->\nold\n<!-- rules:end -->\nafter\n")
    agd(project_copy, "report", "--experiments")
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("<!-- rules:end -->\nafter\n") and "\nold\n" not in text
    row = next(line for line in text.splitlines() if line.startswith("| [interval]"))
    assert f"`interval` (low {band[0]}, high {band[1]})" in row and "| 3 |" in row
    baselines = sum(k.startswith("vs_") for k in summary)
    assert "5 st: " in row and f"/{baselines} |" in row


def test_apg_momentum_runs_along_each_stored_trajectory(project_copy):
    set_params(project_copy, **{"guidance.rule": "apg", "guidance.apg_momentum": -0.5,
                                "guidance.apg_norm_threshold": 2.0})
    agd(project_copy, "trajectories")
    store = TrajectoryStore.open(project_copy / "data" / "trajectories.zarr")
    rule = rules.APG(eta=0.0, norm_threshold=2.0, momentum=-0.5)
    assert rules.from_identity(store.attrs["guidance"]) == rule and "guided_steps" not in store.attrs
    family = tiny_family(project_copy)
    for i in (0, 7):
        np.testing.assert_allclose(store.read(i)["target"], recomputed_targets(family, store, i, rule).numpy(),
                                   atol=1e-5)
    without = recomputed_targets(family, store, 0, rules.APG(eta=0.0, norm_threshold=2.0, momentum=0.0))
    assert not np.allclose(store.read(0)["target"][2:], without[2:].numpy(), atol=1e-4)  # momentum matters

    # a store of another rule is refused for training, not silently trained on
    set_params(project_copy, **{"guidance.rule": "rescale"})
    refused = agd(project_copy, "train", check=False)
    assert refused.returncode != 0 and "guidance rule" in refused.stderr
    agd(project_copy, "trajectories")  # rescale: a new store; the APG one set aside
    set_params(project_copy, **{"guidance.rule": "apg"})
    done = agd(project_copy, "trajectories")
    assert "took back" in done.stderr + done.stdout  # the APG store comes back, not re-collected


@pytest.mark.parametrize("rule", ["rescale", "cfg_zero_star"])
def test_other_rules_train_and_sample(project_copy, rule):
    changes = {"guidance.rule": rule}
    if rule == "cfg_zero_star":
        changes["guidance.zero_init_steps"] = 1
    set_params(project_copy, **changes)
    agd(project_copy, "trajectories")
    agd(project_copy, "train")
    family = tiny_family(project_copy)
    adapters = AdapterSet.load(project_copy / "models" / "adapters", family)
    assert adapters.teacher.name == rule
    plan = plan_for(family, "DDIMScheduler", 5, "agd", rule=adapters.teacher)
    assert plan == (["zero"] + ["agd"] * 4 if rule == "cfg_zero_star" else ["agd"] * 5)
    for guidance in ("agd", "cfg"):  # AGD under the rule, and the rule's own two passes
        out = project_copy / f"{guidance}.png"
        agd(project_copy, "sample", "--labels", "0,1,2", "-w", "3", "--guidance", guidance, "--out", str(out))
        assert out.stat().st_size > 0


def test_a_rule_without_guided_steps_and_forward_noised_are_refused(project_copy):
    set_params(project_copy, **{"guidance.rule": "interval", "guidance.interval": [1000.0, 2000.0]})
    refused = agd(project_copy, "trajectories", check=False)
    assert refused.returncode != 0 and "guidance.interval" in refused.stderr and "holds none" in refused.stderr
    set_params(project_copy, **{"guidance.rule": "apg", "trajectories.data": "forward_noised"})
    refused = agd(project_copy, "trajectories", check=False)
    assert refused.returncode != 0 and "guidance.rule" in refused.stderr
    set_params(project_copy, **{"guidance.rule": "cfg", "trajectories.data": "trajectories", "guidance.interval": [3.0, 1.0]})
    refused = agd(project_copy, "check", check=False)
    assert refused.returncode != 0 and "guidance.interval" in refused.stderr


def test_plan_counts_the_passes_of_the_interval_rule(project_copy):
    """agd plan under the interval: the teacher guides 2 of the 5 steps, AGD runs its adapters on those 2."""
    set_params(project_copy, **{"guidance.rule": "interval", "guidance.interval": band_around_steps(project_copy, 1, 2)})
    doc = json.loads(agd(project_copy, "plan", "--json").stdout)
    by_name = {s["name"]: s for s in doc["stages"]}
    assert by_name["trajectories"]["nfe"] == 20 * (2 * 2 + 3)
    passes = {(s, p["kind"], p["batch"]): p["calls"] for s in ("teacher", "evaluate") for p in by_name[s]["passes"]}
    # evaluate at w = 3 and 6, batches of 20: AGD on 2 steps, the conditional pass on 3, per scale
    assert passes[("evaluate", "agd", 20)] == 2 * 2 and passes[("evaluate", "cond", 20)] == 2 * 3
    # teacher: plain CFG (5 steps) and the interval (2 guided steps) per scale; unguided 5 + interval 3 + 3
    assert passes[("teacher", "cfg", 20)] == 2 * (5 + 2) and passes[("teacher", "cond", 20)] == 5 + 2 * 3
