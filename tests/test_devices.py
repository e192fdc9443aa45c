"""Device selection (`base.device`) and the stages saying where they run."""

from __future__ import annotations

import pytest
import torch

from pipeline.run.devices import resolve
from pipeline.run.errors import AGDError

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="auto picks the GPU where there is one")
def test_auto_is_the_cpu_without_a_gpu():
    assert resolve("auto") == torch.device("cpu")


def test_cpu_is_the_cpu():
    assert resolve("cpu") == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_one_clear_error(name):
    with pytest.raises(AGDError, match="torch sees no CUDA device") as err:
        resolve(name)
    assert "base.device" in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(AGDError, match="unknown device"):
        resolve(name)
