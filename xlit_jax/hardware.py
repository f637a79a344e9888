"""What each accelerator can do: peak dense bf16 FLOP/s, memory and memory bandwidth per device, with the
source of each number. MFU (train.metrics), the compile-only plans (plan/) and the decoding HBM floor
(perf.accelerator) all read this one table. On CPU the peak is a measured fp32 matmul rate instead."""

from __future__ import annotations

import dataclasses
import functools
import re
import time

import jax
import jax.numpy as jnp

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    kind: str  # words of jax's device_kind ("L4" is not "L40S"); the first matching row of DEVICES wins
    peak_flops: float  # dense bf16 FLOP/s per device
    memory_bytes: float | None  # per device
    bandwidth: float | None  # memory bytes/s per device
    source: str


CLOUD_TPU = "cloud.google.com/tpu/docs/system-architecture-tpu-vm"
# TPU v4 and v5p count one device per chip (megacore); memory is per chip. H100/A100 memory is the
# totalGlobalMem CUDA reports for the 80 GB parts, L4's what nvidia-smi reports (the figures in
# plan/gpu_targets/*.txtpb).
DEVICES = (
    DeviceSpec("TPU v6 lite", 918e12, 32 * GiB, 1640e9, f"{CLOUD_TPU} (v6e)"),
    DeviceSpec("TPU v5 lite", 197e12, 16 * GiB, 819e9, f"{CLOUD_TPU} (v5e)"),
    DeviceSpec("TPU v5", 459e12, 95 * GiB, 2765e9, f"{CLOUD_TPU} (v5p)"),
    DeviceSpec("TPU v4", 275e12, 32 * GiB, 1200e9, f"{CLOUD_TPU} (v4)"),
    DeviceSpec("TPU v3", 123e12, None, None, f"{CLOUD_TPU} (v3)"),
    DeviceSpec("H200", 989e12, 141e9, 4.8e12, "NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
    DeviceSpec("H100 PCIe", 756e12, 84_978_434_048, 2.0e12, "NVIDIA H100 Tensor Core GPU datasheet (PCIe)"),
    DeviceSpec("H100", 989e12, 84_978_434_048, 3.35e12, "NVIDIA H100 Tensor Core GPU datasheet (SXM)"),
    DeviceSpec("A100", 312e12, 85_100_068_864, 2.039e12, "NVIDIA A100 Tensor Core GPU datasheet (SXM 80 GB)"),
    DeviceSpec("L4", 121e12, 24_152_899_584, 300e9, "NVIDIA L4 Tensor Core GPU datasheet; memory: the 23,034 MiB "
               "nvidia-smi reports"),
)


def spec(device_kind: str) -> DeviceSpec | None:
    return next((s for s in DEVICES if re.search(rf"\b{re.escape(s.kind)}\b", device_kind)), None)


def peak_flops(device) -> float:
    """Peak FLOP/s of one device: the table's dense bf16 figure; on CPU the measured host rate."""
    if device.platform == "cpu":
        return measured_cpu_flops()
    found = spec(device.device_kind)
    if found is None:
        raise ValueError(f"no peak FLOP/s known for {device.device_kind!r}; pass the peak as a flag")
    return found.peak_flops


def memory(device) -> tuple[float | None, float | None]:
    """(bytes of memory, bytes/s) of one device: the runtime's limit when attached, else the table's."""
    try:
        stats = device.memory_stats() or {}
    except jax.errors.JaxRuntimeError:  # compile-only devices have no runtime
        stats = {}
    limit = stats.get("bytes_limit")
    found = spec(device.device_kind)
    size = limit or (found.memory_bytes if found else None)
    return (float(size) if size else None), (found.bandwidth if found else None)


@functools.cache
def measured_cpu_flops(size: int = 1024, repeats: int = 8) -> float:
    """The host's fp32 matmul rate: the best of `repeats` timed [size, size] products."""
    x = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best
