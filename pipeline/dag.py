"""Which stages a backend has and what each reads: the `dag` section of params.yaml, checked.

dvc.yaml is one file for every backend, but DVC's templating cannot drop a dependency or a stage
by a condition. So each backend's conf file names its inputs in `dag` (strings that dvc.yaml
interpolates, and a list that is empty where the MNIST stages do not exist), and `agd check`
compares them with what the rest of params.yaml implies. A hand-edited params.yaml whose `dag`
no longer matches (say, a new fid_ref.image_folder) would make DVC miss a changed input; the
check stops that run with the line to fix.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.backends import get_spec
from pipeline.config import DagParams
from pipeline.errors import AGDError

MNIST_DATA = "data/mnist.npz"
JUDGE = "models/judge"


def model_config(base_path: str) -> str:
    """The class-conditional base's transformer config: where its class count lives."""
    return f"{base_path}/transformer/config.json"


def expected(params: dict) -> DagParams:
    """The `dag` section that matches the backend and the other sections."""
    base, fid_ref, cond, ev = params["base"], params["fid_ref"], params["conditions"], params["evaluate"]
    spec = get_spec(base.backend)
    embedded = spec.name == "mnist-dit"
    if not fid_ref.image_folder and not embedded:
        raise AGDError("params.yaml: fid_ref.image_folder", f"backend {spec.name} needs a folder of real images",
                       "set it to ImageNet train (DiT) or COCO-2017 val2017 (text backends)")
    if spec.condition == "text":
        conditions, evaluate = cond.captions_file, ev.captions_file
    else:
        conditions = model_config(base.path)
        evaluate = JUDGE if embedded else base.path
    return DagParams(mnist=["mnist"] if embedded else [], fid_ref=fid_ref.image_folder or MNIST_DATA,
                     conditions=conditions, evaluate=evaluate, train_images=MNIST_DATA if embedded else base.path)


def check(params: dict) -> None:
    """Stop when params.yaml's `dag` would wire DVC to other inputs than the stages read."""
    want, have = expected(params), params["dag"]
    for key in ("mnist", "fid_ref", "conditions", "evaluate", "train_images"):
        if getattr(have, key) != getattr(want, key):
            raise AGDError(f"params.yaml: dag.{key}", f"is {getattr(have, key)!r} but the {params['base'].backend} "
                           f"settings need {getattr(want, key)!r} (DVC would track the wrong input)",
                           "compose params.yaml from conf/ (`agd preset NAME` or `dvc exp run -S ...`), "
                           f"or set dag.{key} to the expected value")


def class_count(base_path: str) -> int:
    """Classes of a class-conditional base, from its config on disk (conditions are drawn from them)."""
    import json

    path = Path(model_config(base_path))
    try:
        return int(json.loads(path.read_text())["num_embeds_ada_norm"])
    except (OSError, ValueError, KeyError, TypeError):
        raise AGDError(str(path), "no class count (num_embeds_ada_norm) readable",
                       "point base.path at a class-conditional diffusers DiT folder") from None
