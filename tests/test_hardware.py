"""The device table: each device_kind as JAX reports it finds its own row, and no other's."""

import pytest

from xlit_jax import hardware


@pytest.mark.parametrize("device_kind, row", [
    ("TPU v5 lite", "TPU v5 lite"), ("TPU v5", "TPU v5"), ("TPU v6 lite", "TPU v6 lite"), ("TPU v4", "TPU v4"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", None), ("cpu", None)])
def test_each_device_kind_finds_its_row(device_kind, row):
    found = hardware.spec(device_kind)
    assert (found.kind if found else None) == row
