import pytest

from galaxy_assets.defs.resources import ComputeResource
from galaxy_assets.runtime import RuntimeConfigError


def test_compute_resource_cpu():
    import torch

    res = ComputeResource(device="cpu", dtype="float32", batch_size=32)
    assert res.torch_device() == "cpu"
    assert res.torch_dtype() is torch.float32
    assert res.batch_size == 32


def test_compute_resource_rejects_unknown():
    with pytest.raises(RuntimeConfigError):
        ComputeResource(device="quantum").torch_device()
