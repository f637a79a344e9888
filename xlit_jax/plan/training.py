"""The training plan: the experiment's real train step compiled for a target without allocating, its memory
per device against the device's, the model FLOPs per step and the time they take at a given MFU.

FLOPs: the compiler's cost analysis counts the body of a scan (our layers, our micro-batches) once, and
the GPU compiler reports none. The FLOPs per step we print are the analytic model FLOPs
(`train_flops_per_token` x tokens); `hardware_flops` scales the compiler's count by the trip counts
(see `scaled_compiler_flops`), which adds what rematerialisation recomputes: a check that holds for
layouts with several micro-batches (docs/scaling.md says where it does not).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from xlit_jax import hardware
from xlit_jax.data import pipeline
from xlit_jax.errors import PlanError
from xlit_jax.hardware import GiB
from xlit_jax.loader import load_config
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.lora import LoraConfig
from xlit_jax.plan.compiled import HEADROOM, Compiled, fits_memory, size
from xlit_jax.train import metrics
from xlit_jax.train import step as step_lib
from xlit_jax.train.loop import lora_config, mesh_for, model_overrides
from xlit_jax.train.optim import OptimSettings


@dataclasses.dataclass
class TrainPlan:
    target: str
    devices: int
    device_kind: str
    model: str
    method: str  # ft | lora | lora-FORMAT (a quantized base: lora.base_quantization)
    attention_setting: str  # the attention kernel setting: what was asked for
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


def model_config(cfg, platform: str) -> LlamaConfig:
    """The experiment's model config for `platform`, reading no weights."""
    if not cfg.model.source:
        raise PlanError(f"set --config.model.source (for shapes alone: preset:NAME, e.g. preset:llama2-7b"
                        f"{' for ' + cfg.model.hub_name if cfg.model.hub_name else ''})")
    return load_config(cfg.model.source, **model_overrides(cfg, platform))


def abstract_batch(cfg, train_step) -> dict:
    rows = pipeline.batch_size_for(cfg.data.tokens_per_batch, cfg.data.seq_len)
    shape = (cfg.data.grad_accum, rows, cfg.data.seq_len)
    spec = train_step.batch_sharding
    return {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32, sharding=spec)
            for k in pipeline.BATCH_KEYS}


def plan_training(cfg, devices, target: str = "attached", attention: str | None = None) -> TrainPlan:
    """Compile the experiment's train step for `devices` (attached or compile-only) without allocating;
    `attention` overrides the experiment's kernel setting (models/attention.py)."""
    device = devices[0]
    config, lora = model_config(cfg, device.platform), lora_config(cfg)
    attention = attention or cfg.model.attention
    mesh = mesh_for(cfg, devices)
    train_step = step_lib.build(config, OptimSettings.from_config(cfg), mesh, cfg.train.seed, lora, attention)
    batch = abstract_batch(cfg, train_step)
    compiled = Compiled.of(train_step.lower(batch), (train_step.abstract, batch))
    d = cfg.data
    rows = pipeline.batch_size_for(d.tokens_per_batch, d.seq_len)
    flops_per_token = metrics.train_flops_per_token(config, d.seq_len, lora)
    memory, bandwidth = hardware.memory(device)
    return TrainPlan(
        target=target, devices=len(devices), device_kind=device.device_kind,
        model=cfg.model.source.removeprefix("preset:"), method=method_name(lora),
        attention_setting=attention,
        mesh=dict(mesh.shape), remat=config.remat, seq_len=d.seq_len, rows=rows, grad_accum=d.grad_accum,
        compiled=compiled, memory_bytes=memory, bandwidth=bandwidth, peak_flops=hardware.peak_flops(device),
        model_flops=flops_per_token * rows * d.grad_accum * d.seq_len,
        hardware_flops=scaled_compiler_flops(compiled.compiler_flops, config, lora, mesh, rows, d.seq_len,
                                             d.grad_accum))


def method_name(lora: LoraConfig | None) -> str:
    if lora is None:
        return "ft"
    return "lora" if lora.base_quantization == "none" else f"lora-{lora.base_quantization}"


def scaled_compiler_flops(flops: float | None, config: LlamaConfig, lora: LoraConfig | None, mesh, rows: int,
                          seq_len: int, grad_accum: int) -> float | None:
    """The compiler's FLOPs per device count one layer and one micro-batch: F = head + layer (+ the
    optimizer, negligible). Take the LM head's matmuls (forward, input gradient and, in full fine-tuning,
    weight gradient) analytically, scale the rest by the layers, then everything by the micro-batches and
    the devices."""
    if flops is None:
        return None
    devices = math.prod(mesh.shape.values())
    head_passes = 6.0 if lora is None else 4.0
    head = head_passes * rows * seq_len * config.hidden_size * config.vocab_size / devices
    layer = max(flops - head, 0.0)
    return grad_accum * devices * (head + config.num_layers * layer)
