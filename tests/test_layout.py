"""The house: wings that import only downward, no cycles, stages as leaves, and DVC stage dependencies
that cover every line of code a stage runs, so a cached result is never stale."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re

import pytest
import yaml

from tests import layout
from tests.conftest import ROOT, agd, dvc


def _dvc_stages() -> dict:
    return {name: stage.get("do", stage) for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}


def test_no_import_cycles():
    assert layout.cycles() == []


def test_wings_import_only_from_themselves_and_the_wings_they_build_on():
    assert set(layout.WINGS[:-1]) == {p.name for p in layout.PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    upward = [(a, b) for a, b in layout.edges() if layout.rank(a) < layout.rank(b)]
    assert upward == [], "a module imports from a wing that builds on its own"


def test_stages_are_leaves():
    between = [(a, b) for a, b in layout.edges() if a.startswith("pipeline.stages.") and b.startswith("pipeline.stages.")]
    assert between == []


def test_every_dvc_stage_is_an_agd_command():
    commands = layout.cli_commands()
    for name, stage in _dvc_stages().items():
        command = stage["cmd"].split()
        assert command[0] == "agd" and command[1] in commands, name


@pytest.mark.parametrize("name", list(_dvc_stages()))
def test_stage_depends_on_all_the_code_it_runs(name):
    """Every module `agd <stage>` imports (its closure, function-level imports included) is covered by a
    dependency of the stage in dvc.yaml, and no code dependency names what the stage does not run."""
    stage = _dvc_stages()[name]
    code = {str(layout.modules()[m].relative_to(ROOT)) for m in layout.stage_code(stage["cmd"].split()[1])}
    deps = [d.rstrip("/") for d in stage["deps"] if d.startswith("pipeline")]
    for dep in deps:
        assert (ROOT / dep).exists(), f"{name}: dvc.yaml depends on {dep}, which does not exist"

    def covered(path):
        return any(path == d or path.startswith(d + "/") for d in deps)

    missing = sorted(f for f in code if not covered(f))
    assert missing == [], f"stage {name} runs {missing} but does not depend on them in dvc.yaml"
    unused = [d for d in deps if not any(f == d or f.startswith(d + "/") for f in code)]
    assert unused == [], f"stage {name} depends on {unused}, which it never imports"


def test_the_closure_follows_function_level_imports():
    """The closure sees the lazy imports inside functions (the experiment stages import the evaluation
    only once they are on), and the package __init__ of every module it imports."""
    code = layout.stage_code("sweep")
    assert "pipeline.evaluation.samples" in code and "pipeline.backends.dit" in code
    assert "pipeline.guidance.adapters" in code  # a package whose __init__ re-exports the adapters
    assert "pipeline.stages.train" not in code  # the CLI names every stage; only its own runs


def test_output_paths_in_dvc_yaml_are_the_params():
    for name, key in (("trajectories", "trajectories.output"), ("train", "train.output")):
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in _dvc_stages()[name]["outs"]]
        assert "${" + key + "}" in outs, f"dvc.yaml's {name} stage does not track ${{{key}}}"


def test_check_refuses_dvc_yaml_tracking_another_path(project_copy):
    text = (ROOT / "dvc.yaml").read_text().replace("      - ${train.output}\n      - reports/train_live",
                                                   "      - models/other-adapters\n      - reports/train_live")
    (project_copy / "dvc.yaml").write_text(text)
    done = agd(project_copy, "check", check=False)
    assert done.returncode == 2
    assert "dvc.yaml: stages.train.outs: do not include 'models/adapters'" in done.stderr
    assert "${train.output}" in done.stderr


def test_editing_a_module_train_runs_makes_train_stale(dvc_project):
    """The promise the cache rests on: change code a stage runs and `dvc status` says the stage changed
    (here the DiT family's adapter inputs, which decide what the adapters learn)."""
    assert "up to date" in dvc(dvc_project, "status", "train").stdout
    dit = dvc_project / "pipeline/backends/dit.py"
    dit.write_text(dit.read_text().replace("def adapter_time(self, t):", "def adapter_time(self, t):  # edited"))
    status = dvc(dvc_project, "status").stdout
    assert re.search(r"^train:\s*\n\s+changed deps:\s*\n\s+modified:\s+pipeline/backends", status, re.M), status
    assert "evaluate:" in status and "trajectories:" in status  # every stage that loads the family
    assert "report:" not in status  # which never does


def test_benchmarks_import_what_the_package_has():
    """The benchmark scripts are not run by the suite; their imports of the package still resolve."""
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                        f"{script.name}: {node.module} has no {alias.name}"
