"""The compile-only targets: TPU slices from libtpu, GPU nodes from the CUDA plugin and a GpuTargetConfig
text proto shipped beside this module (gpu_targets/*.txtpb, read through importlib.resources)."""

from __future__ import annotations

import importlib.util
import os

from xlit_jax.errors import PlanError
from xlit_jax.resources import package_file

# Compile-only targets: name -> (platform, topology, (chips per host, chip config) for TPUs or the GPU
# target config). TPU slice names count TensorCores for v4/v5p (v5p-8 = 4 chips) and chips for v5e/v6e;
# v4 and v5p run "megacore": one device per chip, its two TensorCores together.
TARGETS = {
    "v4-8": ("tpu", "v4:2x2x1", ((2, 2, 1), "megacore")),
    "v5p-8": ("tpu", "v5p:2x2x1", ((2, 2, 1), "megacore")),
    "v5e-1": ("tpu", "v5e:1x1", ((1, 1, 1), "default")),
    "v5e-4": ("tpu", "v5e:2x2", ((2, 2, 1), "default")),
    "v5e-16": ("tpu", "v5e:4x4", ((2, 2, 1), "default")),
    "v6e-8": ("tpu", "v6e:2x4", ((2, 4, 1), "default")),
    "1xh100": ("cuda", "1x1x1", "h100_sxm_80gb"),
    "8xh100": ("cuda", "1x1x8", "h100_sxm_80gb"),
    "1xa100": ("cuda", "1x1x1", "a100_sxm_80gb"),
    "8xa100": ("cuda", "1x1x8", "a100_sxm_80gb"),
    "1xl4": ("cuda", "1x1x1", "l4_24gb"),  # the 24 GB class of GPU (RTX 4090, A10 and L4 alike in memory)
}


# The package that brings each compile-only backend, and the extra that installs it.
BACKENDS = {"tpu": ("libtpu", "aot-tpu"), "cuda": ("jax_plugins.xla_cuda12", "aot-gpu")}


def topology_devices(name: str) -> list:
    """The compile-only devices of a named target (TARGETS); needs JAX_PLATFORMS=cpu and the aot extras."""
    from jax.experimental import topologies

    if name not in TARGETS:
        raise PlanError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    platform, topology, detail = TARGETS[name]
    module, extra = BACKENDS[platform]
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise PlanError(f"target {name}: no compile-only {platform} backend; install it with "
                        f"pip install -e '.[{extra}]' and run with JAX_PLATFORMS=cpu")
    # Compiling needs no chip: let several processes (a test beside a long plan) load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if platform == "tpu":
        host_bounds, chip_config = detail
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", chip_config_name=chip_config,
                                            chips_per_host_bounds=host_bounds)
    else:
        spec = package_file("xlit_jax.plan", f"gpu_targets/{detail}.txtpb").read_text()
        desc = topologies.get_topology_desc(detail, "cuda", target_config=spec, topology=topology)
    return list(desc.devices)
