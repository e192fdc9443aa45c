"""Negative conditions as an adapter input: drawn per trajectory, CFG's unconditional branch in the
teacher, read by the adapters beside [w, t, c], and refused by adapters trained without them."""

import json

import numpy as np
import pytest
import torch

from pipeline.backends.family import split_negative
from pipeline.backends.loading import load_base
from pipeline.data import conditions
from pipeline.data.store import TrajectoryStore
from pipeline.guidance.adapters import AdapterSet
from pipeline.run.errors import AGDError
from tests.conftest import agd, copy_project, set_params
from tests.test_adapters import FUSION, _as_trained, _inputs, _relative


def _with_negative(cond, negative_labels):
    return {**cond, "negative_labels": negative_labels}


def test_draw_keeps_the_w_and_seeds_of_the_same_draw_without_negatives():
    """Negatives come from their own generator: the w and noise seeds are those of the plain document,
    so runs with and without negatives are paired; a negative class is never the item's own."""
    def items():
        return [{"label": int(c)} for c in np.repeat(np.arange(10), 40)]

    plain = conditions.draw("mnist-dit", "class", items(), 1.0, 5.0, np.random.default_rng(0))
    drawn = conditions.draw("mnist-dit", "class", items(), 1.0, 5.0, np.random.default_rng(0),
                            negatives={"share": 0.5, "seed": 0, "classes": 10})
    assert [(i["w"], i["seed"]) for i in plain["items"]] == [(i["w"], i["seed"]) for i in drawn["items"]]
    assert "negative" not in plain["items"][0] and "negatives" not in plain
    given = [i for i in drawn["items"] if i["negative"] is not None]
    assert 0.4 < len(given) / len(drawn["items"]) < 0.6
    assert drawn["negatives"]["given"] == len(given)
    assert all(i["negative"] != i["label"] and 0 <= i["negative"] < 10 for i in given)
    assert len({i["negative"] for i in given}) == 10  # every class serves as a negative
    texts = conditions.draw("sd21", "text", [{"caption": f"c{k}"} for k in range(50)], 1.0, 5.0,
                            np.random.default_rng(0), negatives={"share": 1.0, "seed": 0, "prompts": ["a", "b"]})
    assert {i["negative"] for i in texts["items"]} == {"a", "b"} and "prompts" not in texts["negatives"]


def test_negatives_file_errors_name_the_file(tmp_path):
    with pytest.raises(AGDError, match="no such file"):
        conditions.read_negatives(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(AGDError, match="holds no negative prompt"):
        conditions.read_negatives(tmp_path / "empty.txt")
    (tmp_path / "n.txt").write_text("blurry\n  # skip\nlowres, jpeg artifacts\n")
    assert conditions.read_negatives(tmp_path / "n.txt") == ["blurry", "lowres, jpeg artifacts"]


def test_the_unconditional_branch_is_the_negative(tiny_base):
    """CFG with a negative: its second branch is the model at the negative class; without one, the null."""
    family = load_base("mnist-dit", str(tiny_base))
    x, t, cond = _inputs(family)
    negative = (cond["labels"] + 3) % 10
    with torch.no_grad():
        own, null = family.branches(x, t, cond)
        own_n, neg = family.branches(x, t, _with_negative(cond, negative))
        assert torch.equal(own, own_n)
        torch.testing.assert_close(neg, family.forward(x, t, {"labels": negative}), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(null, family.forward(x, t, family.null_condition(cond)), rtol=1e-5, atol=1e-6)
    assert (neg - null).abs().max() > 1e-3
    # stored arrays: a row without a negative holds the null class, so one batch mixes both
    items = [{"label": 1, "negative": 7}, {"label": 2, "negative": None}]
    arrays = family.with_negatives(items, family.condition_arrays(items))
    assert arrays["negative_labels"].tolist() == [7, family.num_classes]
    assert split_negative(family.condition_batch(arrays))[1]["labels"].tolist() == [7, family.num_classes]


@pytest.mark.parametrize("architecture,extra", FUSION)
def test_fused_adapters_with_negatives_equal_the_per_block_reference(tiny_base, architecture, extra):
    family = load_base("mnist-dit", str(tiny_base))
    adapters = AdapterSet(family, architecture, width=16, negatives=True, **extra).attach(family)
    _as_trained(adapters)
    x, t, cond = _inputs(family)
    cond = _with_negative(cond, (cond["labels"] + 1) % 10)
    w = torch.linspace(1.5, 6.0, len(x))
    outputs = {}
    for fused in (True, False):
        adapters.fused = fused
        with torch.no_grad():
            outputs[fused] = adapters(family, x, t, cond, w)
    assert _relative(outputs[True], outputs[False]) < 1e-5
    with torch.no_grad():  # the negative is read: another negative gives another output
        other = adapters(family, x, t, _with_negative(cond, (cond["labels"] + 2) % 10), w)
    assert (other - outputs[False]).abs().max() > 1e-4


def test_a_set_with_negatives_starts_as_the_base_and_serves_without_one(tiny_base):
    """Untrained: exactly the base. Every layer but the negative projections is the set without negatives
    of the same seed. No negative given is the null condition as negative."""
    family = load_base("mnist-dit", str(tiny_base))
    x, t, cond = _inputs(family)
    w = torch.full((len(x),), 3.0)
    with_neg = AdapterSet(family, "cross_attention", width=16, heads=2, negatives=True).attach(family)
    with torch.no_grad():
        assert torch.equal(with_neg(family, x, t, cond, w), family.forward(x, t, cond))
    without = AdapterSet(family, "cross_attention", width=16, heads=2)
    plain_state = without.state_dict()
    for k, v in with_neg.state_dict().items():
        assert (k in plain_state and torch.equal(v, plain_state[k])) or ".n_proj." in k
    _as_trained(with_neg)
    null = family.null_condition(cond)["labels"]
    with torch.no_grad():
        torch.testing.assert_close(with_neg(family, x, t, cond, w),
                                   with_neg(family, x, t, _with_negative(cond, null), w), rtol=0, atol=0)


def test_adapters_trained_without_negatives_refuse_one(tiny_base):
    family = load_base("mnist-dit", str(tiny_base))
    adapters = AdapterSet(family, "cross_attention", width=16, heads=2).attach(family)
    x, t, cond = _inputs(family)
    with pytest.raises(AGDError, match="trained without negative conditions"):
        adapters(family, x, t, _with_negative(cond, cond["labels"]), torch.full((len(x),), 3.0))


def test_saved_negatives_load_and_are_checked(tiny_base, tmp_path):
    family = load_base("mnist-dit", str(tiny_base))
    adapters = AdapterSet(family, "cross_attention", width=16, heads=2, negatives=True)
    _as_trained(adapters)
    adapters.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "adapters.json").read_text())
    assert meta["negatives"] is True
    loaded = AdapterSet.load(tmp_path / "a", family)
    assert loaded.negatives and all(torch.equal(v, adapters.state_dict()[k]) for k, v in loaded.state_dict().items())
    AdapterSet(family, "cross_attention", width=16, heads=2).save(tmp_path / "b")
    assert "negatives" not in json.loads((tmp_path / "b" / "adapters.json").read_text())  # as files were
    assert not AdapterSet.load(tmp_path / "b", family).negatives
    plain_meta = json.loads((tmp_path / "b" / "adapters.json").read_text())
    (tmp_path / "b" / "adapters.json").write_text(json.dumps({**plain_meta, "negatives": False}))
    assert not AdapterSet.load(tmp_path / "b", family).negatives  # written out at its default: the same file
    meta.pop("negatives")  # an edited file: the weights' header still says negatives
    (tmp_path / "a" / "adapters.json").write_text(json.dumps(meta))
    with pytest.raises(AGDError, match="negatives"):
        AdapterSet.load(tmp_path / "a", family)


def test_trajectories_and_training_with_negatives(tmp_path, tiny_project):
    """Through the CLI: the conditions record negatives, the store keeps them beside the conditions and
    its targets are CFG with the negative as the unconditional branch; training reads them."""
    from pipeline.guidance.sampling import cfg_trajectory_arrays

    project = copy_project(tiny_project, tmp_path / "p")
    set_params(project, **{"conditions.negative_share": 0.5})
    agd(project, "conditions")
    doc = json.loads((project / "data/conditions.json").read_text())
    assert doc["negatives"]["share"] == 0.5 and 0 < doc["negatives"]["given"] < len(doc["items"])
    agd(project, "trajectories")
    store = TrajectoryStore.open(project / "data/trajectories.zarr")
    assert store.cond_names == ["labels", "negative_labels"]
    assert store.attrs["negatives"] == doc["negatives"]  # recorded beside the conditions' sha256
    negatives = store.meta()["cond/negative_labels"]
    family = load_base("mnist-dit", str(project / "models/base-mnist-dit"))
    expected = [i["negative"] if i["negative"] is not None else family.num_classes for i in doc["items"]]
    assert negatives.tolist() == expected
    rows = [r for r, i in enumerate(doc["items"]) if i["negative"] is not None][:2]
    meta = store.meta()
    cond = family.condition_batch({"labels": meta["cond/labels"][rows], "negative_labels": negatives[rows]})
    again = cfg_trajectory_arrays(family, cond, meta["seed"][rows], torch.from_numpy(meta["w"][rows]),
                                  "DDIMScheduler", 5)
    np.testing.assert_allclose(store.group["target"][rows], again["target"], rtol=1e-5, atol=1e-5)
    plain = cfg_trajectory_arrays(family, {"labels": cond["labels"]}, meta["seed"][rows],
                                  torch.from_numpy(meta["w"][rows]), "DDIMScheduler", 5)
    assert np.abs(plain["target"] - again["target"]).max() > 1e-3  # the negative changed the teacher
    agd(project, "train")
    saved = json.loads((project / "models/adapters/adapters.json").read_text())
    assert saved["negatives"] is True
    set_params(project, **{"evaluate.negative_samples": 20})
    agd(project, "evaluate")
    metrics = json.loads((project / "reports/metrics.json").read_text())
    neg = metrics["w3"]["negatives"]
    assert "negatives" not in metrics["w6"]  # the default scale only
    assert neg["samples"] == 20
    for name in ("negative_mass", "negative_logprob", "accuracy"):
        for method in ("cfg_negative", "agd_negative", "cfg", "agd"):
            figure = neg[name][method]
            assert figure["ci_low"] <= figure["value"] <= figure["ci_high"]
        assert {"value", "ci_low", "ci_high", "significant"} <= set(neg[name]["agd_minus_cfg"])
    assert neg["moved_by_negative_mse"]["cfg"]["value"] > 0 and neg["moved_by_negative_mse"]["agd"]["value"] > 0
    assert neg["held_out_with_negative"]["correction_defined"]
    agd(project, "report")
    results = (project / "reports/results.md").read_text()
    assert "With a negative condition at w = 3" in results and "negative mass" in results


def test_check_refuses_a_missing_negatives_file(project_copy):
    (project_copy / "conf" / "negatives.txt").unlink()
    done = agd(project_copy, "check", check=False)
    assert done.returncode == 2 and "conditions.negatives_file conf/negatives.txt" in done.stderr + done.stdout
    assert "no such file" in done.stderr + done.stdout
