"""`agd plan`: every stage's work counted from the params as the stage does it, projected from a table of
per-pass times, and what an experiment re-runs.

Driven through the real CLI on the committed params and on each backend's params composed by `agd preset`.
The table is written here (the H200 anchor's format and names), so every projected figure can be checked
by hand; one test reads the real anchor where the checkout sits next to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.backends import get_spec
from pipeline.config import compose
from pipeline.plan import reruns, work
from pipeline.plan.timings import ANCHOR, GPUS
from tests.conftest import ROOT, TINY, agd

# A table in the anchor's format: one figure per line, in ms and GiB.
TABLE = [
    {"what": "device", "name": "NVIDIA H200"},
    {"what": "dit_xl2_step", "batch": 32, "single_ms": 20.0, "cfg_ms": 40.0},
    {"what": "dit_xl2_step", "batch": 64, "single_ms": 40.0, "cfg_ms": 80.0},
    {"what": "dit_xl2_agd_vs_cfg", "batch": 64, "agd_ms": 44.0, "cfg_ms": 80.0},
    {"what": "dit_xl2_train_b64", "base_dtype": "bfloat16", "autocast": True, "grad_ckpt": False, "batch": 64,
     "step_ms": 100.0, "peak_gib": 14.0},
    {"what": "dit_xl2_train_b64", "base_dtype": "float32", "autocast": False, "grad_ckpt": False, "batch": 64,
     "step_ms": 999.0, "peak_gib": 99.0},  # another setting: never chosen for the bf16 params
    {"what": "sdxl_graph_step", "batch": 1, "single_ms": 30.0, "cfg_ms": 45.0},
    {"what": "sdxl_graph_step", "batch": 4, "single_ms": 75.0, "cfg_ms": 140.0},
    {"what": "sdxl_step_agd_vs_cfg", "batch": 1, "agd_ms": 85.0, "cfg_ms": 110.0},
    {"what": "sdxl_adapter_train_step", "grad_ckpt": True, "batch": 1, "step_ms": 550.0, "peak_gib": 6.8},
    {"what": "sd21_train_b8", "base_dtype": "bfloat16", "autocast": True, "grad_ckpt": True, "batch": 8,
     "step_ms": 250.0, "peak_gib": 5.5},
]
ON_EVERYWHERE = ["check", "assets", "fid_ref", "conditions", "trajectories", "train", "teacher", "evaluate", "report"]
OFF_BY_DEFAULT = {"sweep", "nfe", "samplers", "transfer"}


def write_table(path: Path, rows: list[dict] = TABLE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """The committed params.yaml and conf/ tree, with the table where the anchor lies (../shared/data/)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(ROOT / "conf", root / "conf")
    shutil.copy2(ROOT / "params.yaml", root / "params.yaml")
    write_table(tmp_path / "shared" / "data" / "gpu-anchor-h200.jsonl")
    return root


def planned(project: Path, *args: str) -> dict:
    return json.loads(agd(project, "plan", "--json", *args).stdout)


def by_name(doc: dict) -> dict[str, dict]:
    return {s["name"]: s for s in doc["stages"]}


def expected_nfe(params) -> dict[str, int]:
    """The NFE of each sampling stage, from the params by the formulas of docs/scaling.md."""
    traj, ev = params.trajectories, params.evaluate
    spec = get_spec(params.base.backend)
    conditions = params.conditions.per_class * spec.num_classes if spec.condition == "class" \
        else params.conditions.num_captions
    scales = len(ev.guidance_scales)
    return {"trajectories": conditions * traj.num_steps * 2,
            "teacher": ev.num_samples * ev.num_steps * (1 + 2 * scales),
            # AGD at every scale, and per scale held-out CFG trajectories: CFG (2), conditional and AGD pass (1 each)
            "evaluate": ev.num_samples * ev.num_steps * scales + ev.held_out_trajectories * traj.num_steps * scales * 4}


def test_help_explains_the_command(project):
    text = agd(project, "plan", "--help").stdout
    for part in ("Project a full run", "--table", "--gpu", "--measure", "--json", "-S", "estimate"):
        assert part in text


@pytest.mark.parametrize("backend", compose.backends(ROOT / "conf"))
def test_every_backend_plans_its_stages_with_the_nfe_of_its_params(project, backend):
    agd(project, "preset", backend)
    params = config.load(project / "params.yaml")
    doc = planned(project)
    stages = by_name(doc)
    on = [s["name"] for s in doc["stages"] if s["on"]]
    mnist = ["prepare", "classifier"] if backend == "mnist" else []
    assert on == ON_EVERYWHERE[:2] + mnist + ON_EVERYWHERE[2:]
    assert {o["name"] for o in doc["off"]} == OFF_BY_DEFAULT | ({"prepare", "classifier"} - set(mnist))
    for name, nfe in expected_nfe(params).items():
        assert stages[name]["nfe"] == nfe, name
    assert stages["train"]["samples"] == params.train.steps * params.train.batch_size
    assert stages["train"]["nfe"] == 0 and stages["teacher"]["samples"] == \
        params.evaluate.num_samples * (1 + len(params.evaluate.guidance_scales))
    assert doc["total"]["nfe"] == sum(expected_nfe(params).values())
    # each stage takes Inception features of the first evaluate.inception_samples (0: all) of each of its sets
    ev = params.evaluate
    scored, scales = min(ev.inception_samples or ev.num_samples, ev.num_samples), len(ev.guidance_scales)
    assert (stages["teacher"]["images"], stages["evaluate"]["images"]) == (scored * (1 + scales), scored * scales)
    assert sum(p["calls"] * p["batch"] for p in stages["evaluate"]["passes"] if p["kind"] == "inception") == \
        scored * scales
    # the same params composed in memory (nothing written) give the same plan
    assert planned(project, "--backend", backend)["stages"] == doc["stages"]

    # every projected figure names the table it comes from; the embedded default has no rows in it
    source = doc["projection"]["source"]
    assert source == "../shared/data/gpu-anchor-h200.jsonl"
    projected = [s for s in doc["stages"] if s["seconds"] is not None]
    assert all(s["projected_from"] == source for s in projected)
    text = agd(project, "plan").stdout
    if backend == "mnist":
        assert projected == [] and doc["total"]["seconds"] is None
        assert "no table for this device" in text and "--measure" in text
    else:
        assert stages["train"]["seconds"] is not None and stages["train"]["peak_gib"] is not None
        assert f"Projection from {source}" in text and "projection" in text.lower()
        assert "Not in the table, so not in the total:" in text and "VAE decode" in doc["total"]["missing"]

    # `dvc exp run -S train.lr=1e-4`: the adapters and what reads them, never the teacher or the store
    e = doc["experiment"]
    assert e["command"] == "dvc exp run -S train.lr=1e-4"
    assert e["rerun_with_work"] == ["train", "evaluate"]
    assert "report" in e["rerun"] and {"teacher", "trajectories", "conditions", "fid_ref"} <= set(e["cached"])
    assert set(e["rerun_without_work"]) <= {"check", "report"} | OFF_BY_DEFAULT
    evaluate = next(s for s in e["stages"] if s["name"] == "evaluate")
    assert evaluate["nfe"] == expected_nfe(params)["evaluate"]  # AGD and held-out only: the teacher's is cached
    assert e["cached_nfe"] == expected_nfe(params)["trajectories"] + expected_nfe(params)["teacher"]


def test_the_experiment_stages_count_their_work_when_on(project):
    on = {"sweep.num_samples": 10, "nfe.num_samples": 10, "samplers.num_samples": 10, "transfer.finetune_steps": 5}
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in on.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = config.load(project / "params.yaml")
    stages = by_name(planned(project))
    assert all(stages[name]["on"] for name in OFF_BY_DEFAULT)
    ev, traj, h = params.evaluate, params.trajectories, params.evaluate.held_out_trajectories
    s = params.sweep
    assert stages["sweep"]["nfe"] == 10 * ev.num_steps * (1 + 3 * len(s.guidance_scales)) \
        + h * traj.num_steps * len(s.guidance_scales) * 4
    settings = params.samplers.parsed()
    assert stages["samplers"]["nfe"] == sum(10 * steps * 3 + h * steps * 4 for _, steps in settings)

    def reuse(n, share):  # one pass on the steps that reuse the last unconditional output, two elsewhere
        return sum(1 if i > 0 and int(i * share) > int((i - 1) * share) else 2 for i in range(n))

    p = params.nfe
    runs = {(mode, steps) for n in p.steps for mode, steps in
            (("cfg", n), ("agd", n), ("cfg", max(1, n // 2)), ("interval", n), ("reuse", n))}
    # no base here: the guidance interval's steps are counted as CFG's, an upper bound the stage says it is
    per_image = {"cfg": lambda n: 2 * n, "agd": lambda n: n, "interval": lambda n: 2 * n,
                 "reuse": lambda n: reuse(n, p.reuse)}
    assert stages["nfe"]["nfe"] == sum(10 * per_image[mode](steps) for mode, steps in runs)
    assert "upper bound" in stages["nfe"]["note"] and stages["nfe"]["samples"] == 10 * len(runs)
    t = params.transfer
    assert stages["transfer"]["nfe"] == len(t.widths) * 2 * h * traj.num_steps * 4


def test_projection_is_the_table_times_the_calls(project):
    doc = planned(project, "--backend", "dit-xl-2")
    stages = by_name(doc)
    # 4,000 trajectories in batches of 64: 62 full batches and one of 32, 50 DDIM steps each; a CFG pass over
    # 128 samples is cfg_ms at batch 64 (80 ms), over 64 samples the 40 ms single_ms and cfg_ms agree on
    assert stages["trajectories"]["seconds"] == pytest.approx((62 * 50 * 80 + 50 * 40) / 1000, abs=0.1)
    # the bf16 / autocast / no-checkpointing training row, not the float32 one
    assert stages["train"]["seconds"] == pytest.approx(5000 * 0.100, abs=0.1)
    assert stages["train"]["peak_gib"] == 14.0 and doc["total"]["peak_gib"] == 14.0
    agd_item = next(p for p in stages["evaluate"]["passes"] if p["kind"] == "agd" and p["batch"] == 64)
    assert agd_item["ms"] == 44.0 and "agd_ms" in agd_item["source"]
    # 10,000 samples in batches of 64: 156 full and one of 16, below the smallest measured batch (an upper bound)
    small = next(p for p in stages["teacher"]["passes"] if p["kind"] == "cond" and p["batch"] == 16)
    assert small["ms"] == 20.0 and "upper bound" in small["source"]
    assert doc["total"]["seconds"] == pytest.approx(sum(s["seconds"] or 0 for s in doc["stages"]), abs=1)
    assert not doc["total"]["complete"] and set(doc["total"]["missing"]) == {"VAE decode", "Inception"}

    scaled = planned(project, "--backend", "dit-xl-2", "--gpu", "4090")
    factor = GPUS["h200"][1] / GPUS["4090"][1]
    assert scaled["projection"]["scaled_to"]["factor"] == pytest.approx(factor, abs=1e-3)
    for a, b in zip(doc["stages"], scaled["stages"]):
        if a["seconds"] is not None:
            assert b["seconds"] == pytest.approx(a["seconds"] * factor, rel=1e-3)
    assert scaled["total"]["fits"] is True  # 14 GiB in 24 GB
    assert planned(project, "--backend", "dit-xl-2", "--gpu", "h200")["stages"] == doc["stages"]  # the table's own
    assert "an estimate" in agd(project, "plan", "--backend", "dit-xl-2", "--gpu", "4090").stdout


def test_a_pass_beyond_one_execution_mode_uses_the_other(project):
    """SDXL eager rows stop at batch 1; CUDA-graph rows reach batch 4: a CFG pass over 8 is taken from those,
    and AGD's eager pass scales as the base pass does."""
    stages = by_name(planned(project, "--backend", "sdxl"))
    cfg = next(p for p in stages["trajectories"]["passes"] if p["kind"] == "cfg")
    assert cfg["ms"] == 140.0 and "graph" in cfg["source"]
    agd_item = next(p for p in stages["evaluate"]["passes"] if p["kind"] == "agd" and p["batch"] == 4)
    assert agd_item["ms"] < 4 * 85.0 and "scaled as the base pass" in agd_item["source"]


def test_sd21_without_sampling_rows_says_so(project):
    doc = planned(project, "--backend", "sd21")
    assert by_name(doc)["train"]["seconds"] == pytest.approx(5000 * 0.25, abs=0.1)
    assert by_name(doc)["teacher"]["seconds"] is None
    assert {"CFG pass", "base pass", "AGD pass", "text encoder"} <= set(doc["total"]["missing"])


def test_without_any_table_the_work_is_still_counted(project):
    """No reports/gpu/ and no anchor beside the checkout (a fresh clone alone): `--gpu` still plans, no times."""
    (project.parent / "shared" / "data" / "gpu-anchor-h200.jsonl").unlink()
    doc = planned(project, "--gpu", "4090")
    assert by_name(doc)["trajectories"]["nfe"] == expected_nfe(config.load(project / "params.yaml"))["trajectories"]
    assert all(s["seconds"] is None for s in doc["stages"])


def test_other_experiments_rerun_what_reads_the_key(project):
    e = planned(project, "-S", "trajectories.num_steps=10")["experiment"]
    assert e["rerun_with_work"] == ["trajectories", "train", "evaluate"] and "teacher" in e["cached"]
    e = planned(project, "-S", "evaluate.num_samples=100")["experiment"]
    assert e["rerun_with_work"] == ["teacher", "evaluate"] and "train" in e["cached"]
    params = config.load(project / "params.yaml")
    evaluate = next(s for s in e["stages"] if s["name"] == "evaluate")
    scales, ev = len(params.evaluate.guidance_scales), params.evaluate
    assert evaluate["nfe"] == 100 * ev.num_steps * scales + ev.held_out_trajectories * params.trajectories.num_steps \
        * scales * 4
    done = agd(project, "plan", "-S", "train.nope=1", check=False)
    assert done.returncode == 2 and "SECTION.KEY=VALUE" in done.stderr


def test_dependencies_mirror_dvc_yaml():
    """plan's stages read the params dvc.yaml gives them and come after the stages whose outputs they
    depend on; so what it says an experiment re-runs is what DVC re-runs."""
    stages = {name: s.get("do", s) for name, s in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}
    assert set(stages) <= set(reruns.DEPENDS)
    made_by = {}
    for name, stage in stages.items():
        for out in stage.get("outs", []) + stage.get("metrics", []):
            made_by[next(iter(out)) if isinstance(out, dict) else out] = name
    for name, stage in stages.items():
        reads = {next(iter(p)) if isinstance(p, dict) else p for p in stage.get("params", [])}
        assert {"" if r == "params.yaml" else r for r in reads} == set(reruns.DEPENDS[name][0]), name
        after = {made_by[d] for d in stage["deps"] if d in made_by}
        assert after <= set(reruns.DEPENDS[name][1]), name
    rerun = set(reruns.reruns(work.stages(config.load(ROOT / "params.yaml")), ["train.lr"]))
    assert rerun == {"check", "train", "evaluate", "sweep", "nfe", "samplers", "transfer", "report"}
    # evaluate's own step timing re-runs evaluate (and the report of it), not the experiment stages
    timed = set(reruns.reruns(work.stages(config.load(ROOT / "params.yaml")), ["evaluate.timing_rounds"]))
    assert timed == {"check", "evaluate", "report"}


def test_tables_the_gpu_check_writes_come_first(project):
    """reports/gpu/*.jsonl before the anchor: benchmarks/gpu_smoke.py's lines (one per check, figures nested
    by backend; a --tiny run's are not real shapes and are skipped) and flat rows alike."""
    smoke = [
        {"check": "environment", "tiny": False, "gpu": "NVIDIA H100 80GB HBM3"},
        {"check": "training_memory", "tiny": False,
         "dit-xl-2": {"step_ms": 50.0, "peak_gib": 12.0,
                      "settings": {"batch_size": 64, "autocast": "bfloat16", "gradient_checkpointing": False}},
         "sdxl_checkpointing_off": {"step_ms": 300.0, "peak_gib": 12.2,
                                    "settings": {"batch_size": 1, "autocast": "bfloat16",
                                                 "gradient_checkpointing": False}}},
        {"check": "sampling_speed", "tiny": False,
         "dit-xl-2": {"batch": 64, "agd_ms_per_step": 45.0, "cfg_ms_per_step": 82.0}},
        {"check": "encoders", "tiny": False, "vae_decode_b4": {"seconds": 0.4, "peak_gib": 9.0},
         "inception": {"batch": 50, "seconds": 0.05, "peak_gib": 1.0}},
        {"check": "sampling_speed", "tiny": True, "dit-xl-2": {"batch": 64, "agd_ms_per_step": 1.0,
                                                             "cfg_ms_per_step": 1.0}},
        {"check": "dit_xl2_decode", "batch": 64, "ms": 640.0},  # a flat row beside them
    ]
    write_table(project / "reports" / "gpu" / "smoke.jsonl", smoke)
    doc = planned(project, "--backend", "dit-xl-2")
    stages = by_name(doc)
    assert doc["projection"]["source"] == "reports/gpu/smoke.jsonl"
    assert doc["projection"]["device"] == "NVIDIA H100 80GB HBM3"
    assert stages["train"]["seconds"] == pytest.approx(5000 * 0.050) and stages["train"]["peak_gib"] == 12.0
    agd_item = next(p for p in stages["evaluate"]["passes"] if p["kind"] == "agd" and p["batch"] == 64)
    assert agd_item["ms"] == 45.0
    assert {p["kind"]: p["ms"] for p in stages["teacher"]["passes"] if p["batch"] == 64}["decode"] == 640.0
    assert "Inception" not in doc["total"]["missing"] and "VAE decode" not in doc["total"]["missing"]
    assert planned(project, "--backend", "dit-xl-2", "--gpu", "4090")["projection"]["scaled_to"]["factor"] == \
        pytest.approx(989.5 / 165.2, abs=1e-3)

    mine = write_table(project / "mine.jsonl", TABLE[:3])
    assert planned(project, "--backend", "dit-xl-2", "--table", "mine.jsonl")["projection"]["source"] == "mine.jsonl"
    (project / "bad.jsonl").write_text('{"what": "device"}\nnot json\n')
    done = agd(project, "plan", "--table", "bad.jsonl", check=False)
    assert done.returncode == 2 and "bad.jsonl:2: not a JSON object" in done.stderr
    assert mine.exists()


def test_measure_times_the_embedded_default_here(tmp_path):
    """--measure times the passes this plan needs on this machine (the committed base, tiny batches):
    each stage gets a projection from it; Inception, whose weights this project lacks, is listed missing."""
    project = tmp_path / "project"
    project.mkdir()
    params = {**TINY, "base": {**TINY["base"], "path": str(ROOT / "models" / "base-mnist-dit"), "device": "cpu"},
              "train": {**TINY["train"], "batch_size": 8}, "evaluate": {**TINY["evaluate"], "batch_size": 10}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    doc = json.loads(agd(project, "plan", "--measure", "--json").stdout)
    assert doc["projection"]["source"].startswith("measured now on cpu") and doc["projection"]["rows"]
    stages = by_name(doc)
    for name in ("trajectories", "train", "teacher", "evaluate"):
        assert stages[name]["seconds"] > 0, name
    assert "Inception" in doc["total"]["missing"] and "Inception not measured" in doc["projection"]["device"]
    done = agd(project, "plan", "--measure", "--gpu", "4090", check=False)
    assert done.returncode == 2 and "not a GPU" in done.stderr


@pytest.mark.skipif(not (ROOT / ANCHOR).is_file(), reason="the H200 anchor is not beside this checkout")
def test_the_real_h200_anchor_reads():
    doc = planned(ROOT, "--backend", "dit-xl-2", "--table", str(ANCHOR))
    assert doc["projection"]["device"] == "NVIDIA H200" and doc["projection"]["rows_for_backend"]
    assert doc["total"]["seconds"] > 0 and doc["total"]["peak_gib"] > 0


def test_the_counts_plan_repeats_are_the_code_s():
    """plan stays light (no torch, no diffusers until --measure): the few constants it repeats must match."""
    from pipeline.backends import sd
    from pipeline.evaluation import samples

    assert work.TEXT_CHUNK == sd.ENCODE_CHUNK and work.INCEPTION_BATCH == samples.INCEPTION_BATCH


def test_measure_times_a_text_backend_s_encoders_and_vae(project):
    """A tiny SDXL-like base saved with save_pretrained: --measure times its text encoders and VAE too, so the
    projection misses only Inception (absent weights) and the judge-free stages have every figure."""
    from tests import tiny_models

    agd(project, "preset", "sdxl")
    base = tiny_models.save_sdxl_like(project / "models" / "sdxl")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["base"].update(path=str(base), device="cpu", dtype="float32")
    raw["conditions"]["num_captions"] = 4
    raw["trajectories"]["num_steps"] = 2
    raw["train"].update(steps=2, batch_size=1, autocast="none", gradient_checkpointing=False)
    raw["evaluate"].update(num_samples=4, num_steps=2, batch_size=2, held_out_trajectories=2)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    doc = json.loads(agd(project, "plan", "--measure", "--json").stdout)
    kinds = {r["what"] for r in doc["projection"]["rows"]}
    assert {"sdxl_step", "sdxl_train", "sdxl_decode", "sdxl_text"} <= kinds
    assert set(doc["total"]["missing"]) == {"Inception"}


def test_the_negatives_figures_are_planned_with_evaluate(project):
    """With conditions.negative_share > 0, evaluate also samples the negatives figures' four sets
    (CFG and AGD with and without the negative) and their held-out trajectories."""
    base = by_name(planned(project))["evaluate"]["nfe"]
    params = config.load(project / "params.yaml")
    ev, traj = params.evaluate, params.trajectories
    experiment = planned(project, "-S", "conditions.negative_share=0.5")["experiment"]
    with_negatives = by_name(experiment)["evaluate"]["nfe"]
    h = min(ev.held_out_trajectories, ev.negative_samples)
    assert with_negatives - base == ev.negative_samples * ev.num_steps * (2 + 1 + 2 + 1) + h * traj.num_steps * 4
