import logging

import pytest
import torch

from jobs.device import auto_precision, resolve_device, resolve_precision


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


@pytest.mark.parametrize(
    ("capability", "want"), [((7, 0), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")]
)
def test_auto_precision_on_a_gpu_is_bf16_from_ampere_on(monkeypatch, capability, want):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert auto_precision(torch.device("cuda", 0)) == want
    assert resolve_precision("auto", torch.device("cuda", 0)) == want
    assert resolve_precision("32-true", torch.device("cuda", 0)) == "32-true"  # an explicit choice is kept


def test_auto_precision_on_a_cpu_follows_its_bf16_units(monkeypatch):
    import jobs.device

    for native, want in [(True, "bf16-mixed"), (False, "32-true")]:
        monkeypatch.setattr(jobs.device, "cpu_has_native_bf16", lambda native=native: native)
        assert auto_precision(torch.device("cpu")) == want
