"""Adapters: identity at init, only adapters train, w matters once trained, AGD moves towards CFG."""

import json
from pathlib import Path

import pytest
import torch

from pipeline.backends.loading import load_base
from pipeline.data.store import TrajectoryStore
from pipeline.guidance.adapters import AdapterSet
from pipeline.run.errors import AGDError


def _inputs(family, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *family.latent_shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    cond = {"labels": torch.randint(0, 10, (n,), generator=g)}
    return x, t, cond


VARIANTS = [("offset", {}), ("cross_attention", {}), ("cross_attention", {"mlp": 2, "w_gate": True})]


@pytest.mark.parametrize("architecture,extra", VARIANTS)
def test_identity_at_init(tiny_base, architecture, extra):
    family = load_base("mnist-dit", str(tiny_base))
    x, t, cond = _inputs(family)
    with torch.no_grad():
        plain = family.forward(x, t, cond)
        adapters = AdapterSet(family, architecture, width=16, heads=2, **extra).attach(family)
        for w in (1.0, 3.0, 7.5):
            out = adapters(family, x, t, cond, torch.full((len(x),), w))
            assert torch.equal(out, plain), f"untrained {architecture} adapters changed the output at w={w}"
    assert adapters.num_parameters() > 0
    assert adapters.summary()["percent_of_base"] > 0


@pytest.mark.parametrize("architecture,extra", VARIANTS)
def test_only_adapter_parameters_train(tiny_base, architecture, extra):
    family = load_base("mnist-dit", str(tiny_base))
    before = {k: v.clone() for k, v in family.denoiser.state_dict().items()}
    adapters = AdapterSet(family, architecture, width=16, heads=2, **extra).attach(family)
    opt = torch.optim.Adam(adapters.parameters(), lr=1e-2)
    x, t, cond = _inputs(family)
    w = torch.linspace(1, 5, len(x))
    target = family.forward(x, t, cond).detach() + 0.1 * w.view(-1, 1, 1, 1)  # output must depend on w
    losses = []
    for _ in range(40):
        loss = (adapters(family, x, t, cond, w) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in family.denoiser.state_dict().items())
    assert all(not p.requires_grad for p in family.denoiser.parameters())


def test_gated_adapters_are_the_base_at_w_1_and_save_their_variant(tiny_base, tmp_path):
    """With w_gate the correction is (w - 1) times the adapters' output: exactly the base at w = 1 even
    after training; the content path and the gate are saved with the adapters and loaded back."""
    family = load_base("mnist-dit", str(tiny_base))
    adapters = AdapterSet(family, "cross_attention", width=16, heads=2, mlp=2, w_gate=True).attach(family)
    with torch.no_grad():
        for p in adapters.parameters():  # as if trained: every output layer non-zero
            p.add_(0.05 * torch.randn_like(p))
        x, t, cond = _inputs(family)
        plain = family.forward(x, t, cond)
        at_one = adapters(family, x, t, cond, torch.ones(len(x)))
        at_three = adapters(family, x, t, cond, torch.full((len(x),), 3.0))
        assert torch.allclose(at_one, plain, atol=1e-6) and (at_three - plain).abs().max() > 1e-3
        adapters.save(tmp_path / "a")
        adapters.detach()
        loaded = AdapterSet.load(tmp_path / "a", family)
        assert loaded.config["mlp"] == 2 and loaded.config["w_gate"] is True
        assert torch.equal(loaded(family, x, t, cond, torch.full((len(x),), 3.0)), at_three)


def _format_1(folder: Path) -> None:
    """An adapter folder as the first format wrote it: no content path or gate fields, no header, no sha."""
    from safetensors.torch import load_file, save_file

    meta = json.loads((folder / "adapters.json").read_text())
    for key in ("mlp", "w_gate", "weights_sha256"):
        meta.pop(key)
    (folder / "adapters.json").write_text(json.dumps({**meta, "format_version": 1}))
    save_file(load_file(str(folder / "adapters.safetensors")), str(folder / "adapters.safetensors"))


def test_adapter_files_from_before_the_variants_still_load(tiny_base, tmp_path):
    """adapters.json of format 1, written before `mlp` and `w_gate` existed: the paper's adapter, no gate."""
    family = load_base("mnist-dit", str(tiny_base))
    AdapterSet(family, "cross_attention", width=16, heads=2).save(tmp_path / "old")
    _format_1(tmp_path / "old")
    loaded = AdapterSet.load(tmp_path / "old", family)
    assert loaded.config["mlp"] == 0 and loaded.config["w_gate"] is False


EDITS = [  # what a hand edit (or another file's metadata) does to adapters.json, and the line that names it
    ("heads", lambda m: m.update(heads=4), "heads: is 4, but the weights were written with 2"),
    ("w_gate removed", lambda m: m.pop("w_gate"), "w_gate: missing"),
    ("w_gate flipped", lambda m: m.update(w_gate=False), "w_gate: is False, but the weights were written with True"),
    ("targets", lambda m: m.update(targets=m["targets"][:1]), "targets: names other modules"),
    ("version as text", lambda m: m.update(format_version="2"), "format_version: must be an integer, got '2'"),
    ("unknown version", lambda m: m.update(format_version=7), "adapter format 7 is not one this version reads"),
    ("width", lambda m: m.update(width=32, heads=2), "width: is 32, but the weights were written with 16"),
    ("a float for an integer", lambda m: m.update(mlp=2.0), "mlp: expected int, got 2.0"),
]


@pytest.mark.parametrize("name, edit, words", EDITS, ids=[e[0] for e in EDITS])
def test_adapter_metadata_is_checked_not_trusted(tiny_base, tmp_path, name, edit, words):
    """Every field that changes what the adapters compute is required, typed and held to the weights'
    own header: an edited adapters.json is refused with the field named, never loaded as something else."""
    family = load_base("mnist-dit", str(tiny_base))
    folder = tmp_path / "adapters"
    AdapterSet(family, "cross_attention", width=16, heads=2, mlp=2, w_gate=True).save(folder)
    AdapterSet.load(folder, family)  # as written: it loads
    meta = json.loads((folder / "adapters.json").read_text())
    edit(meta)
    (folder / "adapters.json").write_text(json.dumps(meta))
    with pytest.raises(AGDError, match=words) as err:
        AdapterSet.load(folder, family)
    assert "adapters.json" in err.value.where and err.value.fix


def test_trained_adapters_depend_on_w_and_move_towards_cfg(tiny_project):
    family = load_base("mnist-dit", str(tiny_project / "models" / "base-mnist-dit"))
    adapters = AdapterSet.load(tiny_project / "models" / "adapters", family)
    store = TrajectoryStore.open(tiny_project / "data" / "trajectories.zarr")
    meta = store.meta()
    err_agd = err_base = 0.0
    with torch.no_grad():
        for i in range(len(store)):
            traj = store.read(i)
            x, target = torch.from_numpy(traj["x"]), torch.from_numpy(traj["target"])
            t = torch.from_numpy(meta["t"])
            cond = {"labels": torch.from_numpy(meta["cond/labels"][[i] * len(t)])}
            w = torch.full((len(t),), float(meta["w"][i]))
            err_agd += (adapters(family, x, t, cond, w) - target).pow(2).sum().item()
            err_base += (family.forward(x, t, cond) - target).pow(2).sum().item()
        x, t, cond = _inputs(family)
        low = adapters(family, x, t, cond, torch.full((len(x),), 1.5))
        high = adapters(family, x, t, cond, torch.full((len(x),), 4.5))
    assert err_agd < 0.9 * err_base, "one AGD pass is not closer to the stored CFG output than the plain base"
    assert (high - low).abs().max() > 1e-3, "trained adapters ignore w"


def test_adapters_refuse_another_base(tiny_project):
    family = load_base("mnist-dit", str(tiny_project / "models" / "base-mnist-dit"))
    family.fingerprint = "another-base"
    with pytest.raises(AGDError, match="made for base"):
        AdapterSet.load(tiny_project / "models" / "adapters", family)


# (architecture, extra): width 16 with 2 heads folds the value path (2 heads x 3 tokens <= 16), with 8
# heads it attends (24 > 16): both in-block paths of the fused adapters, with and without the
# content path and the gate.
FUSION = [("offset", {"heads": 2}), ("offset", {"heads": 2, "w_gate": True}),
          ("cross_attention", {"heads": 2}), ("cross_attention", {"heads": 2, "mlp": 2, "w_gate": True}),
          ("cross_attention", {"heads": 8}), ("cross_attention", {"heads": 8, "mlp": 2, "w_gate": True}),
          ("cross_attention", {"heads": 2, "w_gate": True})]


def _as_trained(adapters):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapters.parameters():  # every layer non-zero, output layers included
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("architecture,extra", FUSION)
def test_adapter_work_once_per_pass_equals_the_per_block_adapters(tiny_base, architecture, extra):
    """The grouped, hoisted path gives today's per-block outputs within 1e-5 relative, and the same
    parameter gradients; across a whole sample run, where what w and c decide is computed once."""
    from pipeline.guidance.sampling import sample

    family = load_base("mnist-dit", str(tiny_base))
    adapters = AdapterSet(family, architecture, width=16, **extra).attach(family)
    _as_trained(adapters)
    x, t, cond = _inputs(family)
    w = torch.linspace(1.0, 6.0, len(x))
    outputs, grads = {}, {}
    for fused in (True, False):
        adapters.fused = fused
        with torch.no_grad():
            outputs[fused] = adapters(family, x, t, cond, w)
        adapters.zero_grad()
        (adapters(family, x, t, cond, w) ** 2).mean().backward()
        adapters.release()
        grads[fused] = [p.grad.clone() for p in adapters.parameters()]
        run = sample(family, cond, list(range(len(x))), w, "DPMSolverMultistepScheduler", 4, mode="agd",
                     adapters=adapters)
        outputs[f"sample{fused}"] = run
    plain = family.forward(x, t, cond)
    assert (outputs[False] - plain).abs().max() > 1e-3, "the adapters as set up change nothing: no test"
    assert _relative(outputs[True], outputs[False]) < 1e-5
    assert _relative(outputs["sampleTrue"], outputs["sampleFalse"]) < 1e-5
    scale = max(g.abs().max().item() for g in grads[False])  # some are zero in exact arithmetic (key biases)
    for fused_grad, reference_grad in zip(grads[True], grads[False]):
        torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-4, atol=1e-6 * scale)


def test_stacked_adapter_weights_follow_training_steps(tiny_base):
    """The stacks cached for inference are rebuilt when an optimiser step changes the weights."""
    family = load_base("mnist-dit", str(tiny_base))
    adapters = AdapterSet(family, "cross_attention", width=16, heads=2, mlp=2, w_gate=True).attach(family)
    _as_trained(adapters)
    x, t, cond = _inputs(family)
    w = torch.full((len(x),), 3.0)
    with torch.no_grad():
        before = adapters(family, x, t, cond, w)
    opt = torch.optim.SGD(adapters.parameters(), lr=0.5)
    (adapters(family, x, t, cond, w) ** 2).mean().backward()
    adapters.release()
    opt.step()
    with torch.no_grad():
        after = adapters(family, x, t, cond, w)
        adapters.fused = False
        reference = adapters(family, x, t, cond, w)
    assert (after - before).abs().max() > 1e-4
    assert _relative(after, reference) < 1e-5
