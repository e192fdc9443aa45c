"""The whole pipeline, tiny, through the real CLI: every stage's outputs and what users read."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.data.store import TrajectoryStore
from tests.conftest import agd, dvc, set_params

COMMANDS = ["check", "assets", "prepare", "pretrain", "classifier", "fid-ref", "conditions", "trajectories", "train",
            "evaluate", "sweep", "nfe", "samplers", "transfer", "report", "verify", "stores", "sample", "export", "preset",
            "keys"]


def test_every_command_has_help(tmp_path):
    top = agd(tmp_path, "--help").stdout
    for command in COMMANDS:
        assert command in top
        assert "Usage" in agd(tmp_path, command, "--help").stdout


def test_store_contents_and_attributes(tiny_project):
    store = TrajectoryStore.open(tiny_project / "data" / "trajectories.zarr")
    a = store.attrs
    assert len(store) == 20 and store.is_complete()
    assert store.group["x"].shape == (20, 5, 1, 16, 16)
    assert store.group["target"].shape == (20, 5, 1, 16, 16)
    assert a["scheduler"] == "DDIMScheduler" and a["num_steps"] == 5 and a["w_range"] == [1.0, 5.0]
    assert a["base"]["backend"] == "mnist-dit" and len(a["base"]["fingerprint"]) == 32
    assert a["format_version"] == 1 and a["package_version"]
    assert a["scheduler_config"]["beta_schedule"] == "squaredcos_cap_v2"
    meta = store.meta()
    assert sorted(np.bincount(meta["cond/labels"]).tolist()) == [2] * 10
    assert ((meta["w"] >= 1.0) & (meta["w"] <= 5.0)).all()
    assert len(set(meta["seed"].tolist())) == 20
    conditions = json.loads((tiny_project / "data" / "conditions.json").read_text())
    assert [i["seed"] for i in conditions["items"]] == meta["seed"].tolist()


def test_training_lowered_the_loss_and_reports_size(tiny_project):
    report = json.loads((tiny_project / "reports" / "train.json").read_text())
    assert report["final_loss"] < report["initial_loss"]
    assert report["parameters"] > 0 and 0 < report["percent_of_base"] < 100
    adapters = json.loads((tiny_project / "models" / "adapters" / "adapters.json").read_text())
    assert adapters["architecture"] == "cross_attention"
    assert adapters["base"]["fingerprint"] == TrajectoryStore.open(
        tiny_project / "data" / "trajectories.zarr").attrs["base"]["fingerprint"]
    live = tiny_project / "reports" / "train_live" / "plots" / "metrics" / "loss.tsv"
    assert len(live.read_text().splitlines()) > 2  # dvclive logged the loss curve


def test_metrics_line_up_agd_against_cfg(tiny_project):
    reports = tiny_project / "reports"
    m, q, timing = (json.loads((reports / f"{name}.json").read_text()) for name in ("metrics", "quality", "timing"))
    assert set(m) == {"w3", "w6"} and set(q) == set(timing) - {"step_seconds_per_image"} == {"unguided", "w3", "w6"}
    # seconds come from each kind of step timed interleaved, summed over the method's 5 steps: CFG's and
    # AGD's under the same load (not from their sampling runs, timed in different stages)
    step = timing["step_seconds_per_image"]
    assert min(step["cfg"], step["agd"], step["cond"]) > 0 and step["zero"] == 0  # (tiny batches: launch-bound)
    assert timing["unguided"]["seconds_per_image"] == pytest.approx(5 * step["cond"], rel=1e-3)
    assert timing["unguided"]["run_seconds_per_image"] > 0
    for key in ("w3", "w6"):
        assert timing[key]["cfg"]["nfe_per_image"] == 2 * timing[key]["agd"]["nfe_per_image"] == 10
        assert timing[key]["cfg"]["seconds_per_image"] == pytest.approx(5 * step["cfg"], rel=1e-3)
        assert timing[key]["agd"]["seconds_per_image"] == pytest.approx(5 * step["agd"], rel=1e-3)
        assert timing[key]["time_ratio"] == pytest.approx(step["agd"] / step["cfg"], rel=1e-3)
        for method in (q[key]["cfg"], q[key]["agd"]):
            for name in ("fid", "kid", "judge_fd"):  # each distance with its interval around it
                assert method[name]["ci_low"] <= method[name]["value"] <= method[name]["ci_high"]
            assert 0 <= method["accuracy"] <= 1
            for name in ("precision", "recall", "judge_precision", "judge_recall"):  # shares, with intervals
                assert 0 <= method[name]["ci_low"] <= method[name]["value"] <= method[name]["ci_high"] <= 1
        versus = m[key]
        assert versus["fid_diff"]["value"] == pytest.approx(q[key]["agd"]["fid"]["value"] - q[key]["cfg"]["fid"]["value"],
                                                            abs=2e-4)
        for name in ("fid_diff", "kid_diff", "judge_fd_diff", "precision_diff", "recall_diff", "judge_recall_diff"):
            diff = versus[name]
            assert diff["significant"] == (diff["ci_low"] > 0 or diff["ci_high"] < 0)
        assert versus["correction_defined"] and versus["correction_captured"] <= 1 and versus["correction_gain"] > 0
        assert versus["same_seed_mse"] >= 0 and versus["same_seed_judge_distance"] >= 0
        assert versus["in_training_range"] == (key == "w3")
    grid = Image.open(reports / "samples.png")
    assert grid.width > 2 * grid.height  # CFG block | AGD block side by side


def test_distillation_table_has_one_row_per_sampler_step(tiny_project):
    lines = (tiny_project / "reports" / "distillation.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header == ["w", "step", "t", "captured", "cosine", "gain"]
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [r["w"] for r in rows] == ["3"] * 5 + ["6"] * 5  # every evaluate.guidance_scales, in order
    for w in ("3", "6"):
        mine = [r for r in rows if r["w"] == w]
        assert [int(r["step"]) for r in mine] == list(range(5))  # trajectories.num_steps of the tiny project
        assert all(float(r["captured"]) <= 1 and -1 <= float(r["cosine"]) <= 1 for r in mine)
        assert [float(r["t"]) for r in mine] == sorted((float(r["t"]) for r in mine), reverse=True)


def test_dvc_plots_draw_one_distillation_line_per_scale(dvc_project):
    """`dvc plots show` on the real dvc.yaml: the per-scale template colours by w, for any scale list."""
    done = dvc(dvc_project, "plots", "show", "--json")  # every plot dvc.yaml defines, as `dvc plots show` draws
    assert done.returncode == 0, done.stderr
    plot = json.loads(done.stdout)["data"]["reports/distillation.csv"][0]["content"]
    assert plot["encoding"]["color"]["field"] == "w" and plot["encoding"]["y"]["field"] == "captured"
    values = plot["data"]["values"]
    assert {v["w"] for v in values} == {"3", "6"} and len(values) == 10


def test_sweep_is_off_by_default_and_compares_methods_across_scales(tiny_project, project_copy):
    reports = project_copy / "reports"
    assert (tiny_project / "reports" / "sweep.csv").read_text().startswith("method,w,")  # off: a header only
    assert json.loads((tiny_project / "reports" / "sweep.json").read_text()) == {}
    set_params(project_copy, **{"sweep.num_samples": 6, "sweep.inception_samples": 6,
                                "sweep.guidance_scales": [2.0, 6.0]})
    agd(project_copy, "sweep")
    agd(project_copy, "report")
    lines = (reports / "sweep.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [(r["method"], r["w"]) for r in rows] == [("unguided", "1"), ("cfg", "2"), ("agd", "2"), ("cfg", "6"),
                                                     ("agd", "6")]
    assert all(float(r["fid_low"]) <= float(r["fid"]) <= float(r["fid_high"]) for r in rows)
    summary = json.loads((reports / "sweep.json").read_text())
    assert set(summary) == {"w2", "w6"}
    assert summary["w2"]["in_training_range"] and not summary["w6"]["in_training_range"]  # conditions: w in [1, 5]
    for m in summary.values():
        diff = m["fid_diff"]
        assert diff["ci_low"] <= diff["value"] <= diff["ci_high"] and "correction_captured" in m
    assert "Across guidance scales" in (reports / "results.md").read_text()
    assert Image.open(reports / "sweep.png").width > 100


def test_nfe_stage_counts_each_baselines_passes(tiny_project, project_copy):
    reports = project_copy / "reports"
    assert json.loads((tiny_project / "reports" / "nfe.json").read_text()) == {}  # off by default
    # DDIM 5 steps, sigma of its steps: about 8.1, 2.2, 1.0, 0.43, 0.08; the band (0.3, 3.0] guides 3 of them
    set_params(project_copy, **{"nfe.num_samples": 6, "nfe.inception_samples": 6, "nfe.steps": [2, 5],
                                "nfe.interval": [0.3, 3.0], "nfe.reuse": 0.5})
    agd(project_copy, "nfe")
    agd(project_copy, "report")
    lines = (reports / "nfe.csv").read_text().splitlines()
    rows = {(r["method"], int(r["steps"])): r for r in (dict(zip(lines[0].split(","), line.split(",")))
                                                        for line in lines[1:])}
    nfe = {key: int(r["nfe"]) for key, r in rows.items()}
    assert nfe[("cfg", 5)] == 10 and nfe[("agd", 5)] == 5 and nfe[("cfg_half_steps", 2)] == 4
    assert nfe[("interval", 5)] == 2 * 3 + 2  # guided steps cost two passes, the others one
    assert nfe[("reuse", 5)] == 10 - 2  # steps 2 and 4 reuse the unconditional output of the step before
    assert nfe[("cfg", 2)] == 4 and nfe[("agd", 2)] == 2 and nfe[("cfg_half_steps", 1)] == 2
    assert all(float(r["fid_low"]) <= float(r["fid"]) <= float(r["fid_high"]) for r in rows.values())
    summary = json.loads((reports / "nfe.json").read_text())
    assert set(summary) == {"steps2", "steps5"} and summary["steps5"]["agd_nfe"] == 5
    assert summary["steps5"]["vs_interval"]["nfe"] == 8 and summary["steps5"]["vs_cfg_half_steps"]["nfe"] == 4
    # CFG at half of 5 steps is the run of CFG at 2 steps: the same figures
    assert rows[("cfg_half_steps", 2)]["fid"] == rows[("cfg", 2)]["fid"]
    # seconds are the sum of each step's interleaved cost: CFG's time is linear in its steps, and the
    # CFG at AGD's time takes the most steps that fit in AGD's seconds
    seconds = {key: float(r["seconds_per_image"]) for key, r in rows.items()}
    per_cfg_step = seconds[("cfg", 5)] / 5
    assert seconds[("cfg", 2)] == pytest.approx(2 * per_cfg_step, rel=1e-3) and per_cfg_step > 0
    for n in (2, 5):
        timed = summary[f"steps{n}"]["vs_cfg_equal_time"]
        assert timed["steps"] == n or (timed["steps"] + 1) * per_cfg_step > summary[f"steps{n}"]["agd_seconds"]
        assert timed["steps"] == 1 or timed["seconds_per_image"] <= summary[f"steps{n}"]["agd_seconds"]
        assert summary[f"steps{n}"]["vs_interval_equal_nfe"]["nfe"] <= n
    assert "Against the cheap-CFG baselines" in (reports / "results.md").read_text()
    assert Image.open(reports / "nfe.png").width > 100


def test_samplers_stage_compares_agd_and_cfg_under_each_sampler(tiny_project, project_copy):
    reports = project_copy / "reports"
    assert json.loads((tiny_project / "reports" / "samplers.json").read_text()) == {}  # off by default
    set_params(project_copy, **{"samplers.num_samples": 6, "samplers.inception_samples": 6,
                                "samplers.settings": ["DDIMScheduler:5", "EulerDiscreteScheduler:3"]})
    agd(project_copy, "samplers")
    agd(project_copy, "report")
    lines = (reports / "samplers.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [(r["setting"], r["method"], r["trained_on"]) for r in rows] == [
        ("DDIM_5", "cfg", "True"), ("DDIM_5", "agd", "True"), ("Euler_3", "cfg", "False"), ("Euler_3", "agd", "False")]
    summary = json.loads((reports / "samplers.json").read_text())
    # under the trajectories' own sampler, captured is the evaluate stage's figure (same held-out trajectories)
    metrics = json.loads((tiny_project / "reports" / "metrics.json").read_text())
    assert summary["DDIM_5"]["correction_captured"] == metrics["w3"]["correction_captured"]
    assert summary["Euler_3"]["correction_captured"] != summary["DDIM_5"]["correction_captured"]
    for m in summary.values():
        assert m["fid_diff"]["ci_low"] <= m["fid_diff"]["value"] <= m["fid_diff"]["ci_high"]
    assert "Under other samplers" in (reports / "results.md").read_text()
    set_params(project_copy, **{"samplers.settings": ["DDIMScheduler:5", "NoSuchScheduler:3"]})
    done = agd(project_copy, "samplers", check=False)
    assert done.returncode == 2 and "not a diffusers scheduler class" in done.stderr


def test_transfer_stage_applies_base_adapters_to_a_fine_tuned_copy(tiny_project, project_copy):
    reports = project_copy / "reports"
    assert json.loads((tiny_project / "reports" / "transfer.json").read_text()) == {}  # off by default
    set_params(project_copy, **{"transfer.finetune_steps": 5, "transfer.widths": [8, 16],
                                "transfer.adapter_steps": 10})
    first = agd(project_copy, "transfer")
    assert "fine-tuning on digits [0, 1, 2, 3, 4]" in first.stderr
    summary = json.loads((reports / "transfer.json").read_text())
    assert list(summary) == ["width8", "width16"]
    assert summary["width8"]["parameters"] < summary["width16"]["parameters"]
    for m in summary.values():
        assert m["retained"] == round(m["derived"]["captured"] / m["base"]["captured"], 4)
        assert m["derived"]["captured"] != m["base"]["captured"]  # another model under the same adapters
    derived = project_copy / "models/transfer/base-finetuned"
    from pipeline.backends.loading import load_base

    base = tiny_project / "models/base-mnist-dit"
    assert load_base("mnist-dit", str(derived)).fingerprint != load_base("mnist-dit", str(base)).fingerprint
    again = agd(project_copy, "transfer")  # everything it made is reused: same figures, nothing trained
    assert "fine-tuning" not in again.stderr and "width 8: cross_attention" not in again.stderr
    assert json.loads((reports / "transfer.json").read_text()) == summary
    agd(project_copy, "report")
    assert "Applied unchanged to a fine-tuned base" in (reports / "results.md").read_text()
    assert Image.open(reports / "transfer.png").width > 100


def test_sample_command(tiny_project, tmp_path):
    out = tmp_path / "row.png"
    done = agd(tiny_project, "sample", "--labels", "0,1,2", "-w", "3", "--out", str(out))
    assert "3 images" in done.stdout
    image = Image.open(out)
    assert image.size == (48, 16)
    bad = agd(tiny_project, "sample", "--labels", "0,12", check=False)
    assert bad.returncode == 2 and "--labels" in bad.stderr


def test_report_renders_results_from_the_reports(project_copy):
    (project_copy / "README.md").write_text("# x\n<!-- results:begin (agd report --readme) -->\nold\n"
                                            "<!-- results:end -->\nafter\n")
    agd(project_copy, "report", "--readme")
    results = (project_copy / "reports/results.md").read_text()
    metrics = json.loads((project_copy / "reports/metrics.json").read_text())
    tables = [[line for line in block.splitlines() if line.startswith(("| 3 ", "| 6 "))]
              for block in results.split("\n\n")]
    rows, trade_off = tables[0], tables[1]  # AGD against CFG; then precision and recall
    assert len(rows) == 2 and "(outside training range)" in rows[1]
    assert f"{metrics['w3']['fid_diff']['value']:+.1f}" in rows[0]  # the figure, not a typed one
    assert len(trade_off) == 2 and f"{metrics['w3']['judge_recall_diff']['value']:+.3f}" in trade_off[0]
    assert "Made by `dvc repro` from commit" in results
    timing = json.loads((project_copy / "reports/timing.json").read_text())
    assert "ms/image CFG / AGD (interleaved)" in results
    ms = [f"{timing['w3'][m]['seconds_per_image'] * 1e3:#.3g}" for m in ("cfg", "agd")]
    assert f"| {ms[0]} / {ms[1]} |" in rows[0]  # the measured figures (equal where noise makes them so)
    assert timing["w3"]["cfg"]["nfe_per_image"] == 2 * timing["w3"]["agd"]["nfe_per_image"]
    readme = (project_copy / "README.md").read_text()
    assert "old" not in readme and results in readme and readme.endswith("<!-- results:end -->\nafter\n")
    for png in ("distillation.png", "scales.png"):
        assert Image.open(project_copy / "reports" / png).width > 400
    # a run whose seconds were timed inside its sampling runs (before interleaved timing) shows no seconds;
    # an experiment rendered outside the repository names the commit its script hands over
    del timing["step_seconds_per_image"]
    (project_copy / "reports/timing.json").write_text(json.dumps(timing))
    agd(project_copy, "report", env={"AGD_REPORT_COMMIT": "abc1234 (experiment x)"})
    results = (project_copy / "reports/results.md").read_text()
    assert "s/image" not in results and "from commit `abc1234 (experiment x)`, params.yaml" in results


def test_evaluate_without_step_timing(project_copy):
    """evaluate.timing_rounds 0 (a base too slow to time on its device): no seconds are drawn from
    anything but the runs' own wall time, and the results table shows none."""
    set_params(project_copy, **{"evaluate.timing_rounds": 0})
    agd(project_copy, "evaluate")
    timing = json.loads((project_copy / "reports/timing.json").read_text())
    assert "step_seconds_per_image" not in timing and "time_ratio" not in timing["w3"]
    assert "seconds_per_image" not in timing["w3"]["agd"] and timing["w3"]["agd"]["run_seconds_per_image"] > 0
    assert timing["w3"]["cfg"]["nfe_per_image"] == 10
    agd(project_copy, "report")
    assert "ms/image" not in (project_copy / "reports/results.md").read_text()
