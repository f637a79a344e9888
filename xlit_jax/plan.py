"""Compile-only plans: will a training (or decoding) config fit a pod, and how fast would it run?

XLA compiles for accelerators that are not attached: with JAX_PLATFORMS=cpu, libtpu (`pip install
'.[aot-tpu]'`) gives compile-only TPU slices and the CUDA plugin (`'.[aot-gpu]'`) GPU nodes described by
a GpuTargetConfig (configs/targets/*.txtpb). We lower the real jitted train step (or greedy decoding) on
ShapeDtypeStructs that carry their shardings, so nothing is allocated, and read the compiler's own
memory analysis per device. Without a device there is no autotuning: argument sizes are exact, temp sizes
indicative.

FLOPs: the compiler's cost analysis counts the body of a scan (our layers, our micro-batches) once, and
the GPU compiler reports none. The FLOPs per step we print are the analytic model FLOPs
(`train_flops_per_token` x tokens); `hardware_flops` scales the compiler's count by the trip counts
(see `scaled_compiler_flops`), which adds what rematerialisation recomputes: a check that holds for
layouts with several micro-batches (docs/scaling.md says where it does not).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from xlit_jax import sharding
from xlit_jax.data import pipeline
from xlit_jax.models.config import LlamaConfig
from xlit_jax.train import metrics

GiB = 1 << 30
TARGETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "targets"
# The share of a device's memory a plan may fill: runtimes keep some for themselves, and temp sizes
# compiled without autotuning are estimates.
HEADROOM = 0.95

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
}
# The package that brings each compile-only backend, and the extra that installs it.
BACKENDS = {"tpu": ("libtpu", "aot-tpu"), "cuda": ("jax_plugins.xla_cuda12", "aot-gpu")}

# device_kind substring -> (memory per device in bytes, memory bandwidth in bytes/s); the first match wins.
# TPUs: the Cloud TPU system-architecture pages; H100/A100: the totalGlobalMem CUDA reports (as in
# configs/targets); H200: the datasheet's 141 GB. Bandwidths: the datasheets (DESIGN.md's table).
MEMORY = (
    ("TPU v6 lite", 32 * GiB, 1640e9), ("TPU v5 lite", 16 * GiB, 819e9), ("TPU v5", 95 * GiB, 2765e9),
    ("TPU v4", 32 * GiB, 1200e9), ("H200", 141e9, 4.8e12), ("H100", 84_978_434_048, 3.35e12),
    ("A100", 85_100_068_864, 2.039e12),
)

# Fused attention kernels as they appear in compiled HLO text: cuDNN's custom calls, the Pallas splash
# kernel (TPU), the Pallas GPU decode kernel (a Triton call traced under jit(gqa)); label None: the match.
ATTENTION_KERNELS = ((re.compile(r"__cudnn\$fmha\w*"), None), (re.compile(r"splash\w*"), None),
                     (re.compile(r"jit\(gqa\)[^\"]*pallas_call"), "pallas_gqa_decode"))


class PlanError(ValueError):
    """A target or layout that cannot be planned; the message says what to use instead."""


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
        spec = (TARGETS_DIR / f"{detail}.txtpb").read_text()
        desc = topologies.get_topology_desc(detail, "cuda", target_config=spec, topology=topology)
    return list(desc.devices)


def device_memory(device) -> tuple[float | None, float | None]:
    """(bytes of memory, bytes/s) of one device: the runtime's limit when attached, else the table."""
    try:
        stats = device.memory_stats() or {}
    except jax.errors.JaxRuntimeError:  # compile-only devices have no runtime
        stats = {}
    limit = stats.get("bytes_limit")
    for kind, size, bandwidth in MEMORY:
        if kind in device.device_kind:
            return float(limit or size), bandwidth
    return (float(limit) if limit else None), None


def device_peak_flops(device) -> float:
    """Dense bf16 peak FLOP/s of one device (train.metrics' table); on CPU the measured host rate."""
    if device.platform == "cpu":
        return metrics.measured_cpu_flops()
    return metrics.peak_flops_of(device.device_kind)


@dataclasses.dataclass
class Compiled:
    """What the compiler says about one executable, per device."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    peak_bytes: int
    compiler_flops: float | None  # scan bodies counted once; None where the backend does not say
    compile_s: float
    attention: str  # fused attention kernels found in the executable, or "xla"
    out_of_memory: str = ""  # the compiler's refusal: the TPU compiler rejects programs that overflow HBM

    @classmethod
    def of(cls, lowered, args) -> "Compiled":
        """Compile `lowered`, whose inputs are `args` (ShapeDtypeStructs with shardings)."""
        start = time.perf_counter()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return cls.refused(str(e), shard_bytes(args), time.perf_counter() - start)
        seconds = time.perf_counter() - start
        mem = compiled.memory_analysis()
        args, out, alias, temp = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                                  mem.temp_size_in_bytes)
        peak = getattr(mem, "peak_memory_in_bytes", 0)
        if peak < max(args, temp):  # not reported (or, on XLA:CPU, without the temp buffers): the sum
            peak = args + out - alias + temp
        cost = compiled.cost_analysis()
        flops = cost.get("flops") if cost else None
        return cls(args, out, alias, temp, peak, flops, seconds, fused_attention(compiled.as_text()))

    @classmethod
    def refused(cls, message: str, argument_bytes: int, seconds: float) -> "Compiled":
        """From an out-of-memory refusal such as "the total memory required for HLO temporaries (37.92G)
        exceeds available HBM (15.75G)": the temporaries on top of the (exactly known) arguments."""
        sizes = [float(n) * UNITS[u] for n, u in re.findall(r"\(([\d.]+)([KMGT])\)", message)]
        temp = int(sizes[0]) if sizes else 0
        first_line = message.strip().splitlines()[0]
        return cls(argument_bytes, 0, 0, temp, argument_bytes + temp, None, seconds, "-", first_line)


UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def shard_bytes(tree) -> int:
    """Bytes per device of a pytree of ShapeDtypeStructs with shardings (the largest shard of each)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def fused_attention(hlo_text: str) -> str:
    found = sorted({label or m for pattern, label in ATTENTION_KERNELS for m in pattern.findall(hlo_text)})
    return ",".join(found) or "xla"


def fits_memory(compiled: Compiled, memory_bytes: float | None) -> bool | None:
    if compiled.out_of_memory:
        return False
    return None if memory_bytes is None else compiled.peak_bytes <= HEADROOM * memory_bytes


@dataclasses.dataclass
class TrainPlan:
    target: str
    devices: int
    device_kind: str
    model: str
    method: str  # ft | lora
    attention_setting: str  # LlamaConfig.attention: what was asked for
    mesh: dict
    remat: str
    seq_len: int
    rows: int  # per micro-batch
    grad_accum: int
    compiled: Compiled
    memory_bytes: float | None  # per device
    bandwidth: float | None
    peak_flops: float  # per device
    model_flops: float  # per step, analytic
    hardware_flops: float | None  # per step, the compiler's count scaled by trip counts

    @property
    def tokens_per_step(self) -> int:
        return self.rows * self.grad_accum * self.seq_len

    @property
    def fits(self) -> bool | None:
        return fits_memory(self.compiled, self.memory_bytes)

    def step_seconds(self, mfu: float) -> float:
        return self.model_flops / (mfu * self.peak_flops * self.devices)

    def row(self, mfu: float, steps: int) -> dict:
        c = self.compiled
        return {"target": self.target, "devices": self.devices, "device_kind": self.device_kind,
                "model": self.model, "method": self.method, "attention_setting": self.attention_setting,
                "mesh": self.mesh, "remat": self.remat,
                "seq_len": self.seq_len, "rows": self.rows, "grad_accum": self.grad_accum,
                "argument_gib": c.argument_bytes / GiB, "temp_gib": c.temp_bytes / GiB,
                "peak_gib": c.peak_bytes / GiB,
                "memory_gib": self.memory_bytes / GiB if self.memory_bytes else None, "fits": self.fits,
                "out_of_memory": c.out_of_memory, "attention": c.attention, "compile_s": c.compile_s,
                "model_flops": self.model_flops,
                "hardware_flops": self.hardware_flops, "compiler_flops": c.compiler_flops, "mfu": mfu,
                "step_s": self.step_seconds(mfu), "hours": steps * self.step_seconds(mfu) / 3600}

    def describe(self, mfu: float, steps: int) -> str:
        c, r = self.compiled, self.row(mfu, steps)
        memory = (f"{size(c.peak_bytes)} of {size(self.memory_bytes)}" if self.memory_bytes
                  else f"{size(c.peak_bytes)} (no device memory figure for {self.device_kind})")
        verdict = {True: "fits", False: f"does NOT fit (over {HEADROOM:.0%} of the device memory)",
                   None: "fit unknown"}[self.fits]
        if c.out_of_memory:
            verdict = f"does NOT fit (the compiler: {c.out_of_memory})"
        hardware = (f", {self.hardware_flops:.3g} by the compiler's count scaled by the trip counts (with what "
                    "remat recomputes)" if self.hardware_flops else "")
        return "\n".join([
            f"plan: {self.model} {self.method} on {self.target} ({self.devices} x {self.device_kind}), "
            f"mesh {self.mesh}, remat {self.remat}",
            f"  batch: {self.grad_accum} micro-batches x {self.rows} rows x {self.seq_len} tokens "
            f"= {self.tokens_per_step} tokens per step",
            f"  memory per device: {memory}: {verdict} (arguments {size(c.argument_bytes)}, "
            f"temp {size(c.temp_bytes)})",
            f"  FLOPs per step: {self.model_flops:.3g} model (analytic 6N + attention){hardware}",
            f"  step time at {mfu:.0%} MFU: {r['step_s']:.3g} s; {steps} steps: {r['hours']:.3g} h",
            f"  attention: {c.attention}; compiled in {c.compile_s:.1f} s"])


def size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / (1 << 20):.1f} MiB"


def model_config(cfg, platform: str) -> LlamaConfig:
    """The experiment's model config for `platform`, reading no weights."""
    from xlit_jax.loader import load_config
    from xlit_jax.train.loop import lora_fields, model_overrides

    if not cfg.model.source:
        raise PlanError(f"set --config.model.source (for shapes alone: preset:NAME, e.g. preset:llama2-7b"
                        f"{' for ' + cfg.model.hub_name if cfg.model.hub_name else ''})")
    return load_config(cfg.model.source, **model_overrides(cfg, platform)).replace(**lora_fields(cfg))


def shapes_only(config: LlamaConfig) -> LlamaConfig:
    """The config to make or trace parameters with: they do not depend on the attention implementation,
    and a fused kernel cannot be traced off its target (nor inside a mesh at init's batch of 1)."""
    return config.replace(attention="xla")


def abstract_batch(cfg, mesh) -> dict:
    rows = pipeline.batch_size_for(cfg.data.tokens_per_batch, cfg.data.seq_len)
    shape = (cfg.data.grad_accum, rows, cfg.data.seq_len)
    spec = sharding.batch_sharding(mesh, leading=1)
    return {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32, sharding=spec)
            for k in pipeline.BATCH_KEYS}


def plan_training(cfg, devices, target: str = "attached", attention: str | None = None) -> TrainPlan:
    """Compile the experiment's train step for `devices` (attached or compile-only) without allocating;
    `attention` overrides the model's implementation (models/attention.py)."""
    from xlit_jax.train import step as step_lib
    from xlit_jax.train.loop import make_mesh, make_optimizer

    device = devices[0]
    config = model_config(cfg, device.platform)
    config = config.replace(attention=attention) if attention else config
    mesh = make_mesh(cfg, devices)
    schedule, tx = make_optimizer(cfg)
    state, shardings = step_lib.abstract_state(shapes_only(config), tx, mesh)
    step = step_lib.make_train_step(config, tx, schedule, mesh, shardings, cfg.train.seed)
    batch = abstract_batch(cfg, mesh)
    with sharding.activate(mesh):  # the step is traced for the target: its attention, its mesh
        compiled = Compiled.of(step.lower(state, batch), (state, batch))
    d = cfg.data
    rows = pipeline.batch_size_for(d.tokens_per_batch, d.seq_len)
    flops_per_token = metrics.train_flops_per_token(config, d.seq_len)
    memory, bandwidth = device_memory(device)
    return TrainPlan(
        target=target, devices=len(devices), device_kind=device.device_kind,
        model=cfg.model.source.removeprefix("preset:"), method="lora" if config.lora_rank else "ft",
        attention_setting=config.attention,
        mesh=dict(mesh.shape), remat=config.remat, seq_len=d.seq_len, rows=rows, grad_accum=d.grad_accum,
        compiled=compiled, memory_bytes=memory, bandwidth=bandwidth, peak_flops=device_peak_flops(device),
        model_flops=flops_per_token * rows * d.grad_accum * d.seq_len,
        hardware_flops=scaled_compiler_flops(compiled.compiler_flops, config, mesh, rows, d.seq_len,
                                             d.grad_accum))


def scaled_compiler_flops(flops: float | None, config: LlamaConfig, mesh, rows: int, seq_len: int,
                          grad_accum: int) -> float | None:
    """The compiler's FLOPs per device count one layer and one micro-batch: F = head + layer (+ the
    optimizer, negligible). Take the LM head's matmuls (forward, input gradient and, in full fine-tuning,
    weight gradient) analytically, scale the rest by the layers, then everything by the micro-batches and
    the devices."""
    if flops is None:
        return None
    devices = math.prod(mesh.shape.values())
    head_passes = 4.0 if config.lora_rank else 6.0
    head = head_passes * rows * seq_len * config.hidden_size * config.vocab_size / devices
    layer = max(flops - head, 0.0)
    return grad_accum * devices * (head + config.num_layers * layer)


def fit_suggestions(cfg):
    """Changes to try, smallest first, when a plan does not fit: (what to pass, the changed config)."""
    options = []
    order = ("none", "dots", "full")
    for remat in order[order.index(cfg.model.remat) + 1:]:
        options.append((f"--config.model.remat={remat}", {"model.remat": remat}))
    d = cfg.data
    rows = pipeline.batch_size_for(d.tokens_per_batch, d.seq_len)
    while rows > 1 and rows % 2 == 0:
        rows //= 2
        accum = d.grad_accum * (pipeline.batch_size_for(d.tokens_per_batch, d.seq_len) // rows)
        options.append((f"--config.data.tokens_per_batch={rows * d.seq_len} --config.data.grad_accum={accum}",
                        {"data.tokens_per_batch": rows * d.seq_len, "data.grad_accum": accum}))
    if cfg.mesh.data != 1:
        options.append(("--config.mesh.data=1 --config.mesh.fsdp=-1", {"mesh.data": 1, "mesh.fsdp": -1}))
    return options


def with_changes(cfg, changes: dict):
    new = cfg.copy_and_resolve_references()
    with new.unlocked():
        for key, value in changes.items():
            section, field = key.split(".")
            new[section][field] = value
    return new


def smallest_fitting_change(cfg, devices, target: str):
    """(flags, plan) for the first fitting config along the suggestions, applied cumulatively; None if none
    fits. Each try is a compilation (about a minute for a 7B model)."""
    current, flags = cfg, []
    for flag, changes in fit_suggestions(cfg):
        current, flags = with_changes(current, changes), flags + [flag]
        try:
            plan = plan_training(current, devices, target)
        except ValueError:  # e.g. fewer rows than batch shards: this layout cannot run on the mesh
            continue
        if plan.fits:
            return " ".join(flags), plan
    return None


@dataclasses.dataclass
class DecodePlan:
    target: str
    device_kind: str
    model: str
    attention_setting: str
    batch: int
    prompt_len: int
    new_tokens: int
    compiled: Compiled
    memory_bytes: float | None
    bandwidth: float | None
    weight_bytes: int
    cache_bytes: int  # the KV cache at its full length

    @property
    def fits(self) -> bool | None:
        return fits_memory(self.compiled, self.memory_bytes)

    @property
    def floor_s_per_step(self) -> float | None:
        """The HBM floor of one decoding step: every weight and the whole cache read once (an upper bound on
        the cache read: early steps read less of it)."""
        return None if self.bandwidth is None else (self.weight_bytes + self.cache_bytes) / self.bandwidth

    def row(self) -> dict:
        floor = self.floor_s_per_step
        return {"target": self.target, "device_kind": self.device_kind, "model": self.model,
                "attention_setting": self.attention_setting, "batch": self.batch,
                "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
                "peak_gib": self.compiled.peak_bytes / GiB, "weights_gib": self.weight_bytes / GiB,
                "cache_gib": self.cache_bytes / GiB,
                "memory_gib": self.memory_bytes / GiB if self.memory_bytes else None, "fits": self.fits,
                "floor_ms_per_step": floor * 1e3 if floor else None,
                "floor_tokens_per_s": self.batch / floor if floor else None,
                "attention": self.compiled.attention, "compile_s": self.compiled.compile_s}


def plan_decoding(source: str, device, batch: int, prompt_len: int, new_tokens: int, target: str = "attached",
                  attention: str = "auto") -> DecodePlan:
    """Compile greedy decoding (prefill + the whole decode loop) for one device, weights in bf16."""
    from xlit_jax.decode.generate import greedy_decode
    from xlit_jax.loader import load_config
    from xlit_jax.models.llama import param_shapes

    config = load_config(source, dtype="bfloat16", param_dtype="bfloat16", attention=attention)
    where = jax.sharding.SingleDeviceSharding(device)
    on_device = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=where)  # noqa: E731
    params = jax.tree_util.tree_map(lambda x: on_device(x.shape, x.dtype), param_shapes(shapes_only(config)))
    ids = on_device((batch, prompt_len), jnp.int32)
    args = (params, ids, ids, on_device((), jnp.float32), on_device((len(config.eos_token_ids),), jnp.int32))
    with jax.set_mesh(jax.sharding.Mesh([device], ("data",))):  # traced for the target's attention
        compiled = Compiled.of(greedy_decode.lower(*args, config=config, max_new_tokens=new_tokens), args)
    memory, bandwidth = device_memory(device)
    return DecodePlan(target, device.device_kind, source.removeprefix("preset:"), attention, batch, prompt_len,
                      new_tokens,
                      compiled, memory, bandwidth, *decode_step_bytes(config, batch, prompt_len + new_tokens))


def decode_step_bytes(config: LlamaConfig, batch: int, cache_slots: int) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) a decoding step reads at most, in the config's compute dtype."""
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    cache = 2 * config.num_layers * batch * config.num_kv_heads * cache_slots * config.head_dim
    return config.num_params() * itemsize, cache * itemsize
