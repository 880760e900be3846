import logging

import pytest
import torch

from jobs.device import resolve_device


def test_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1", "CUDA"])
def test_cuda_falls_back_to_cpu_with_a_warning(name, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_device(name) == torch.device("cpu")
    assert "falling back to CPU" in caplog.text


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="cuda, cuda:N, cpu"):
        resolve_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_when_present():
    assert resolve_device("cuda").type == "cuda"
