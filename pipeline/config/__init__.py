"""params.yaml, read and validated once per command: one typed section per stage, one line per key.

    params = config.load()          # every section checked; a mistake anywhere is one error line
    params.train.lr, params.base.backend

The keys are declared in `sections` (the main pipeline) and `experiments` (the experiment stages);
`schema` says how. The CLI loads params once and hands the stage plain typed values; nothing below
the stages reads params.yaml.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.config.experiments import NfeParams, SamplersParams, SweepParams, TransferParams
from pipeline.config.schema import Invalid, Section, explain
from pipeline.config.sections import (
    BaseParams,
    ClassifierParams,
    ConditionsParams,
    DagParams,
    EvaluateParams,
    FidRefParams,
    GuidanceParams,
    LaunchParams,
    PrepareParams,
    PretrainParams,
    SampleParams,
    TrainParams,
    TrajectoriesParams,
)
from pipeline.run.errors import AGDError

PARAMS_FILE = Path("params.yaml")


class Params(BaseModel):
    """Every section of params.yaml, validated."""

    model_config = ConfigDict(frozen=True)

    dag: DagParams = DagParams()
    base: BaseParams = BaseParams()
    prepare: PrepareParams = PrepareParams()
    classifier: ClassifierParams = ClassifierParams()
    fid_ref: FidRefParams = FidRefParams()
    pretrain: PretrainParams = PretrainParams()
    conditions: ConditionsParams = ConditionsParams()
    sample: SampleParams = SampleParams()
    launch: LaunchParams = LaunchParams()
    guidance: GuidanceParams = GuidanceParams()
    trajectories: TrajectoriesParams = TrajectoriesParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    sweep: SweepParams = SweepParams()
    nfe: NfeParams = NfeParams()
    samplers: SamplersParams = SamplersParams()
    transfer: TransferParams = TransferParams()


SECTIONS: dict[str, type[Section]] = {name: field.annotation for name, field in Params.model_fields.items()}
for _name, _section in SECTIONS.items():
    _section.name = _name  # what error lines call it


def read(path: Path = PARAMS_FILE) -> dict:
    """params.yaml as a mapping of sections, refused unless it is one (of known sections)."""
    path = Path(path)
    if not path.exists():
        raise AGDError(str(path), "file not found", "run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise AGDError(str(path), f"not valid YAML{at}", "correct the YAML syntax") from None
    if raw is None:
        raise AGDError(str(path), "is empty", "compose it from conf/ with `agd preset mnist` (or another backend)")
    if not isinstance(raw, dict):
        raise AGDError(str(path), "top level is not a mapping of sections", f"use sections {', '.join(SECTIONS)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise AGDError(f"{path}: {unknown[0]}", "unknown section", f"remove it or use one of {', '.join(SECTIONS)}")
    return raw


def parse_section(name: str, raw, file: str = str(PARAMS_FILE)) -> Section:
    """One section's mapping validated (None, an empty section: every default)."""
    cls = SECTIONS[name]
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise AGDError(f"{file}: {name}", "section is not a mapping", "write key: value pairs under it")
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise explain(err.errors()[0], cls, name, raw, file) from None
    except Invalid as err:
        raise AGDError(f"{file}: {name}.{err.key}", err.problem, err.fix) from None


def load(path: Path = PARAMS_FILE) -> Params:
    """Every section of params.yaml validated (a mistake in any is reported, whichever stage runs)."""
    raw = read(path)
    return Params.model_construct(**{name: parse_section(name, raw.get(name), str(path)) for name in SECTIONS})


def from_mapping(raw: dict) -> Params:
    """Params from a mapping of sections (missing sections and keys: the defaults)."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise AGDError(unknown[0], "unknown section", f"use one of {', '.join(SECTIONS)}")
    return Params.model_construct(**{name: parse_section(name, raw.get(name), "params") for name in SECTIONS})


__all__ = ["PARAMS_FILE", "Params", "SECTIONS", "Section", "from_mapping", "load", "parse_section", "read",
           "BaseParams", "ClassifierParams", "ConditionsParams", "DagParams", "EvaluateParams", "FidRefParams", "GuidanceParams",
           "LaunchParams", "NfeParams", "PrepareParams", "PretrainParams", "SampleParams", "SamplersParams",
           "SweepParams", "TrainParams", "TrajectoriesParams", "TransferParams"]
