"""The decoding plan: the engine's programs (decode/engine.py: the prefill of a prompt chunk, a decoding step of
every slot) compiled for one device, their memory, and the HBM floor of a step (every weight and the KV
cache read once)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from xlit_jax import hardware
from xlit_jax.decode import engine
from xlit_jax.hardware import GiB
from xlit_jax.loader import load_config
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import param_shapes
from xlit_jax.plan.compiled import Compiled, fits_memory


@dataclasses.dataclass
class DecodePlan:
    target: str
    device_kind: str
    model: str
    attention_setting: str
    batch: int  # the engine's slots
    prompt_len: int
    new_tokens: int
    prefill: Compiled
    step: Compiled
    memory_bytes: float | None
    bandwidth: float | None
    weight_bytes: int
    cache_bytes: int  # the KV cache at its full length

    @property
    def peak_bytes(self) -> int:
        """The larger program's peak: both hold the engine's state (cache included), one at a time."""
        return max(self.prefill.peak_bytes, self.step.peak_bytes)

    @property
    def fits(self) -> bool | None:
        verdicts = [fits_memory(c, self.memory_bytes) for c in (self.prefill, self.step)]
        return False if False in verdicts else None if None in verdicts else True

    @property
    def floor_s_per_step(self) -> float | None:
        """The HBM floor of one decoding step: every weight and the whole cache read once (an upper bound on
        the cache read: early steps read less of it)."""
        return None if self.bandwidth is None else (self.weight_bytes + self.cache_bytes) / self.bandwidth

    def row(self) -> dict:
        floor = self.floor_s_per_step
        kernels = {k for c in (self.prefill, self.step) for k in c.attention.split(",") if k != "xla"}
        return {"target": self.target, "device_kind": self.device_kind, "model": self.model,
                "attention_setting": self.attention_setting, "batch": self.batch,
                "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
                "peak_gib": self.peak_bytes / GiB, "weights_gib": self.weight_bytes / GiB,
                "cache_gib": self.cache_bytes / GiB,
                "memory_gib": self.memory_bytes / GiB if self.memory_bytes else None, "fits": self.fits,
                "floor_ms_per_step": floor * 1e3 if floor else None,
                "floor_tokens_per_s": self.batch / floor if floor else None,
                "attention": ",".join(sorted(kernels)) or "xla",
                "compile_s": self.prefill.compile_s + self.step.compile_s}


def plan_decoding(source: str, device, batch: int, prompt_len: int, new_tokens: int, target: str = "attached",
                  attention: str = "auto") -> DecodePlan:
    """Compile the engine's prefill and decoding step for `batch` slots on one device, weights in bf16."""
    config = load_config(source, dtype="bfloat16", param_dtype="bfloat16")
    where = jax.sharding.SingleDeviceSharding(device)
    on_device = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=where)  # noqa: E731
    params = jax.tree_util.tree_map(lambda x: on_device(x.shape, x.dtype), param_shapes(config))
    with jax.set_mesh(jax.sharding.Mesh([device], ("data",))):  # traced for the target's attention
        lowered, state = engine.lower_programs(params, config, batch, prompt_len, new_tokens, on_device, attention)
        prefill, step = (Compiled.of(lowered[name], (params, state)) for name in ("prefill", "step"))
    memory, bandwidth = hardware.memory(device)
    return DecodePlan(target, device.device_kind, source.removeprefix("preset:"), attention, batch, prompt_len,
                      new_tokens, prefill, step, memory, bandwidth,
                      *decode_step_bytes(config, batch, prompt_len + new_tokens))


def decode_step_bytes(config: LlamaConfig, batch: int, cache_slots: int) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) a decoding step reads at most, in the config's compute dtype."""
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    cache = 2 * config.num_layers * batch * config.num_kv_heads * cache_slots * config.head_dim
    return config.num_params() * itemsize, cache * itemsize
