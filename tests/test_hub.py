"""Adapters by Hub id, offline, from a local Hugging Face cache the test lays out as the Hub does."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from pipeline.guidance import hub
from pipeline.run.errors import AGDError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache: Path, repo: str, files: dict[str, bytes], revision: str = "main", commit: str = COMMIT) -> Path:
    """A model repository in huggingface_hub's cache layout: refs/<revision> -> snapshots/<commit>/files."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    for name, data in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root / "snapshots" / commit


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_local_paths_resolve_as_they_are(tmp_path):
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "adapters.safetensors").write_bytes(b"x")
    assert hub.resolve(folder) == folder
    assert hub.resolve(folder / "adapters.safetensors") == folder
    with pytest.raises(AGDError, match="no such folder or file, and not a Hub repository id"):
        hub.resolve(tmp_path / "missing")


def test_a_hub_id_resolves_offline_from_the_cache(offline_cache):
    files = {"adapters.safetensors": b"w", "adapters.json": b"{}", "sdxl/adapters.safetensors": b"v",
             "sdxl/adapters.json": b"{}"}
    snapshot = cached_repo(offline_cache, "org/agd-test", files)
    assert hub.resolve("org/agd-test") == snapshot
    assert hub.resolve("org/agd-test", subfolder="sdxl") == snapshot / "sdxl"
    cached_repo(offline_cache, "org/agd-test", {"adapters.safetensors": b"old"}, revision="v1",
                commit="f" * 40)
    assert (hub.resolve("org/agd-test", revision="v1") / "adapters.safetensors").read_bytes() == b"old"


def test_a_hub_id_without_network_or_cache_is_one_clear_error(offline_cache):
    with pytest.raises(AGDError) as err:
        hub.resolve("org/not-cached")
    assert "not in the local Hugging Face cache" in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)
    assert "huggingface-cli download org/not-cached" in err.value.fix
    cached_repo(offline_cache, "org/other", {"README.md": b"card"})
    with pytest.raises(AGDError, match="has no adapters.safetensors"):
        hub.resolve("org/other")
    shutil.rmtree(offline_cache)


def test_enable_agd_by_hub_id_equals_the_local_folder(tmp_path, offline_cache):
    """The real StableDiffusionPipeline with adapters from a cached Hub repo (subfolder, pinned
    revision): the same latents as from the local folder."""
    import diffusers
    import torch

    from pipeline.backends.loading import load_base
    from pipeline.backends.schedulers import seeded_generators
    from pipeline.guidance.adapters import AdapterSet
    from pipeline.guidance.diffusers_agd import enable_agd
    from tests import tiny_models

    base = tiny_models.save_sd2_like(tmp_path / "base")
    adapters = AdapterSet(load_base("sd21", str(base)), w_gate=True)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(0.05)
    adapters.save(tmp_path / "adapters")
    files = {f"sd2/{f.name}": f.read_bytes() for f in (tmp_path / "adapters").iterdir()}
    cached_repo(offline_cache, "org/agd-sd2", files, revision="v1")

    def latents(ref, **kwargs):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(base))
        pipe.set_progress_bar_config(disable=True)
        enable_agd(pipe, ref, **kwargs)
        return pipe(["a cat"], guidance_scale=4.0, num_inference_steps=3, generator=seeded_generators([3]),
                    output_type="latent").images

    assert torch.equal(latents("org/agd-sd2", subfolder="sd2", revision="v1"), latents(tmp_path / "adapters"))


def test_agd_sample_takes_a_hub_id(tmp_path, offline_cache, tiny_base, monkeypatch):
    """`agd sample --adapters org/name --revision` on the embedded default: the same row as the folder."""
    import numpy as np
    import yaml
    from PIL import Image
    from typer.testing import CliRunner

    from pipeline.backends.loading import load_base
    from pipeline.cli import app
    from pipeline.guidance.adapters import AdapterSet

    AdapterSet(load_base("mnist-dit", str(tiny_base)), width=16, heads=2).save(tmp_path / "adapters")
    cached_repo(offline_cache, "org/agd-mnist", {f.name: f.read_bytes() for f in (tmp_path / "adapters").iterdir()},
                revision="v2")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"base": {"path": str(tiny_base)}}))
    monkeypatch.chdir(tmp_path)
    rows = {}
    for name, flags in (("local", ["--adapters", str(tmp_path / "adapters")]),
                        ("hub", ["--adapters", "org/agd-mnist", "--revision", "v2"])):
        done = CliRunner().invoke(app, ["sample", "--labels", "1,2", "--steps", "3", *flags, "--out", f"{name}.png"])
        assert done.exit_code == 0, done.output
        rows[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert np.array_equal(rows["local"], rows["hub"])
    missing = CliRunner().invoke(app, ["sample", "--labels", "1", "--adapters", "org/absent"])
    assert missing.exit_code == 2 and "not in the local Hugging Face cache" in missing.output


def test_the_weights_file_alone_is_a_complete_adapter_set(tiny_base, tmp_path):
    """One file: the header holds what adapters.json holds, so the file loads alone (exported, from the
    Hub); the two-file layout still loads, and a weights file of before one-file adapters is refused
    without its adapters.json."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from pipeline.backends.loading import load_base
    from pipeline.guidance.adapters import AdapterSet, read_meta

    family = load_base("mnist-dit", str(tiny_base))
    adapters = AdapterSet(family, width=16, heads=2, w_gate=True, negatives=True)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(0.01)
    adapters.save(tmp_path / "two")
    two = read_meta(tmp_path / "two")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "adapters.safetensors").write_bytes((tmp_path / "two" / "adapters.safetensors").read_bytes())
    one = read_meta(tmp_path / "one")
    assert one == {k: v for k, v in two.items() if k != "weights_sha256"}
    loaded = AdapterSet.load(tmp_path / "one", family)
    assert loaded.negatives and loaded.config == adapters.config
    assert all(torch.equal(v, adapters.state_dict()[k]) for k, v in loaded.state_dict().items())
    old = tmp_path / "old"
    old.mkdir()
    header = json.loads(json.dumps({"agd_adapters": json.dumps({k: two[k] for k in (
        "architecture", "width", "heads", "fourier_features", "seed", "mlp", "w_gate", "negatives", "targets")},
        sort_keys=True)}))
    save_file(load_file(str(tmp_path / "two" / "adapters.safetensors")), str(old / "adapters.safetensors"), header)
    with pytest.raises(AGDError, match="holds no metadata"):
        AdapterSet.load(old, family)


def test_agd_export_writes_a_publishable_folder_and_pushes_it(project_copy, tmp_path, monkeypatch):
    """The one weights file (it loads alone, equal to the trained set) and a generated model card with
    the Hub's front matter and the evaluation's figures; --push hands the folder to huggingface_hub."""
    import torch
    import yaml
    from huggingface_hub import HfApi

    from pipeline.backends.loading import load_base
    from pipeline.guidance.adapters import AdapterSet
    from tests.conftest import agd

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    agd(project_copy, "export", str(tmp_path / "out"), "--push", "org/agd-mnist")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapters.safetensors"]
    family = load_base("mnist-dit", str(project_copy / "models/base-mnist-dit"))
    alone = AdapterSet.load(out, family)
    trained = AdapterSet.load(project_copy / "models/adapters", family)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in alone.state_dict().items())
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "diffusers" and "agd" in front["tags"] and "mnist-dit" in front["tags"]
    assert "base_model" not in front  # a local base: no Hub id to name
    assert "w in [1, 5]" in text and "| teacher | cfg |" in text and "% of the base" in text
    metrics = yaml.safe_load((project_copy / "reports/metrics.json").read_text())
    fid = metrics["w3"]["fid_diff"]
    assert f"| 3 | {fid['value']:+.1f} [{fid['ci_low']:+.1f}, {fid['ci_high']:+.1f}]" in text  # generated
    assert calls[0][:2] == ("create", "org/agd-mnist")
    assert calls[1][1]["repo_id"] == "org/agd-mnist" and calls[1][1]["folder_path"] == str(out)
    bad = agd(project_copy, "export", str(tmp_path / "o2"), "--push", "not a repo", check=False)
    assert bad.returncode == 2 and "is not a Hub repository id" in bad.stderr + bad.stdout


def test_the_one_file_is_byte_identical_across_processes(tiny_base, tmp_path):
    """Saving the same adapters in two processes gives the same bytes (DVC hashes the file; safetensors
    keeps its header in a hash map, so only one header entry keeps its order fixed)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import sys; from pipeline.backends.loading import load_base; "
              "from pipeline.guidance.adapters import AdapterSet; "
              "AdapterSet(load_base('mnist-dit', sys.argv[1]), width=16, heads=2, negatives=True).save(sys.argv[2])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tiny_base), str(tmp_path / name)], check=True, cwd=ROOT,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert (tmp_path / "a/adapters.safetensors").read_bytes() == (tmp_path / "b/adapters.safetensors").read_bytes()
