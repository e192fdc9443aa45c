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


TOO_OLD = ("CUDA initialization: The NVIDIA driver on your system is too old (found version 11040). Please update "
           "your GPU driver by downloading and installing a new version from the URL: http://www.nvidia.com/Download/"
           "index.aspx Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled "
           "with your version of the CUDA driver. (Triggered internally at /pytorch/c10/cuda/CUDAFunctions.cpp:119.)")


@pytest.fixture
def driver_too_old(monkeypatch):
    """torch as a CUDA build meets an old driver: is_available() is False with its warning."""
    import warnings

    def is_available():
        warnings.warn(TOO_OLD, UserWarning)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_auto_with_a_driver_too_old_warns_once_and_runs_on_the_cpu(driver_too_old, capsys):
    assert resolve("auto") == torch.device("cpu")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: params.yaml: base.device auto runs on the CPU"), lines
    assert "a CUDA 13.0 build) cannot use the GPU: The NVIDIA driver on your system is too old" in lines[0]
    assert "Fix: install the torch build for the CUDA version your driver supports" in lines[0]


def test_cuda_with_a_driver_too_old_stops_with_the_cause(driver_too_old):
    with pytest.raises(AGDError, match="driver on your system is too old") as err:
        resolve("cuda")
    assert "base.device: cuda requested" in str(err.value) and "pip install torch --index-url" in str(err.value)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(AGDError, match="unknown device"):
        resolve(name)
