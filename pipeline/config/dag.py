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
from typing import TYPE_CHECKING

from pipeline.backends import EMBEDDED, get_spec, model_config
from pipeline.config.sections import DagParams
from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.config import Params

MNIST_DATA = "data/mnist.npz"
JUDGE = "models/judge"


def expected(params: Params) -> DagParams:
    """The `dag` section that matches the backend and the other sections."""
    base, fid_ref, cond, ev = params.base, params.fid_ref, params.conditions, params.evaluate
    spec = get_spec(base.backend)
    embedded = spec.name == EMBEDDED
    if not fid_ref.image_folder and not embedded:
        raise AGDError("params.yaml: fid_ref.image_folder", f"backend {spec.name} needs a folder of real images",
                       "set it to ImageNet train (DiT) or COCO-2017 val2017 (text backends)")
    if spec.condition == "text":
        conditions, evaluate = cond.captions_file, ev.captions_file
    else:
        conditions = model_config(base.path)
        evaluate = JUDGE if embedded else base.path
    return DagParams(mnist=["mnist"] if embedded else [], fid_ref=fid_ref.image_folder or MNIST_DATA,
                     conditions=conditions, evaluate=evaluate, train_images=MNIST_DATA if embedded else base.path,
                     negatives=cond.negatives_file)


def check(params: Params) -> None:
    """Stop when params.yaml's `dag` would wire DVC to other inputs than the stages read."""
    negatives = params.conditions.negatives_file
    if not Path(negatives).is_file():  # a dependency of conditions and evaluate for every backend
        raise AGDError(f"params.yaml: conditions.negatives_file {negatives}", "no such file (DVC tracks it as an "
                       "input of conditions and evaluate)", "restore conf/negatives.txt (it ships with the project) "
                       "or point the key at a text file of negative prompts, one per line")
    want, have = expected(params), params.dag
    for key in DagParams.model_fields:
        if getattr(have, key) != getattr(want, key):
            raise AGDError(f"params.yaml: dag.{key}", f"is {getattr(have, key)!r} but the {params.base.backend} "
                           f"settings need {getattr(want, key)!r} (DVC would track the wrong input)",
                           "compose params.yaml from conf/ (`agd preset NAME` or `dvc exp run -S ...`), "
                           f"or set dag.{key} to the expected value")
