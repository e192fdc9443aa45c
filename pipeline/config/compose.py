"""params.yaml from the conf/ tree, composed by Hydra exactly as `dvc exp run -S` composes it.

DVC (hydra.enabled in .dvc/config) rewrites params.yaml from conf/config.yaml plus the -S overrides
before an experiment runs; `agd preset` and the tests use this module to get the same bytes without
running an experiment.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.run.errors import AGDError

CONF = Path("conf")


def backends(conf: Path = CONF) -> list[str]:
    return sorted(p.stem for p in (conf / "backend").glob("*.yaml"))


def compose(overrides: list[str] | tuple[str, ...] = (), conf: Path = CONF) -> str:
    """The YAML text DVC would write to params.yaml for these Hydra overrides (e.g. backend=sdxl)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not (conf / "config.yaml").exists():
        raise AGDError(str(conf / "config.yaml"), "not found", "run from the project root, where conf/ lives")
    try:
        with initialize_config_dir(str(conf.resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        hint = f"backends: {', '.join(backends(conf))}" if any(o.startswith("backend=") for o in overrides) else \
            "check the override syntax (section.key=value) and conf/"
        raise AGDError(" ".join(overrides) or str(conf), str(err).splitlines()[0], hint) from None
    return OmegaConf.to_yaml(cfg)
