"""Device mesh, the one table of logical-axis rules, shardings for params/optimizer state/batches, and
multi-host start-up.

The mesh has three axes: `data` (pure data parallelism: params replicated), `fsdp` (data parallelism
with params, gradients and optimizer state sharded over it, ZeRO-3 style) and `tensor` (Megatron-style
splitting of heads and MLP width). The batch is split over data x fsdp.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axes. Order matters: Flax gives each mesh axis to the first logical axis of an
# array that claims it, so activations [batch, length, embed] shard batch over data x fsdp and leave
# embed whole, while weights [vocab, embed] shard embed over fsdp.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("layers", None),
)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: list[int] | None = None) -> None:
    """Join a multi-process run. With no arguments JAX detects TPU pods and SLURM jobs by itself;
    elsewhere pass the coordinator (host:port of process 0), the process count and this process's id."""
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
    logging.info("process %d of %d: %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def mesh_shape(data: int = 1, fsdp: int = -1, tensor: int = 1, num_devices: int | None = None) -> tuple:
    """Resolve a -1 entry to the devices left over; the product must equal the device count."""
    num_devices = num_devices or jax.device_count()
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh data={data} fsdp={fsdp} tensor={tensor}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh data={data} fsdp={fsdp} tensor={tensor}: {num_devices} devices "
                             f"are not a multiple of {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh data={data} fsdp={fsdp} tensor={tensor} needs {math.prod(sizes)} devices, "
                         f"have {num_devices}")
    return tuple(sizes)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None, rows: int | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all); JAX places `tensor` (the chattiest axis) on
    neighbouring devices. Axis types are Auto, so shardings propagate through jit as GSPMD decides. `rows`,
    when given, is the rows of a micro-batch, which the batch shards must divide."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    mesh = jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
    if rows is not None and rows % batch_shards(mesh):
        raise ValueError(f"data.tokens_per_batch // data.seq_len = {rows} rows must be a multiple of "
                         f"data x fsdp = {batch_shards(mesh)}")
    return mesh


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Context for tracing model code: the mesh and the rules that `nn.with_logical_constraint` reads."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield


def _fit(spec: PartitionSpec, shape: tuple, mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide their dimension (e.g. 3 KV heads over tensor=2): that dimension
    is replicated instead of padded."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if dim % size == 0 else None)
    return PartitionSpec(*out)


def logical_shardings(logical_specs: Any, shapes: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of logical PartitionSpecs and matching shapes (arrays or ShapeDtypeStructs)."""
    mesh_specs = nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_RULES)
    return jax.tree_util.tree_map(
        lambda s, x: NamedSharding(mesh, _fit(s.spec, x.shape, mesh)), mesh_specs, shapes,
        is_leaf=lambda s: isinstance(s, NamedSharding))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def optimizer_shardings(tx: optax.GradientTransformation, param_shardings: Any, abstract_state: Any,
                        mesh: Mesh) -> Any:
    """Shard each param-shaped leaf of the optimizer state like its param; scalars (counts) replicate."""
    return optax.tree_map_params(tx, lambda _, s: s, abstract_state, param_shardings,
                                 transform_non_params=lambda _: replicated(mesh),
                                 is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """[*leading, B, L] arrays with B split over data x fsdp (leading axes, e.g. micro-batches, whole)."""
    return NamedSharding(mesh, PartitionSpec(*(None,) * leading, BATCH_AXES, None))


def batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def host_to_mesh(x, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds whole: each device copies its slice,
    whatever the mesh layout across processes."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: host_to_mesh(v, sharding) for k, v in batch.items()}


def to_host(x) -> np.ndarray:
    """A jax.Array's whole value on every process: one that spans other processes' devices (a multi-process
    mesh) is gathered, every process taking part."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
