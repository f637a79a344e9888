"""The decoding plan: greedy decoding (prefill + the whole loop) compiled for one device, its memory, and
the HBM floor of a step (every weight and the KV cache read once)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from xlit_jax import hardware
from xlit_jax.hardware import GiB
from xlit_jax.models.config import LlamaConfig
from xlit_jax.plan.compiled import Compiled, fits_memory


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

    config = load_config(source, dtype="bfloat16", param_dtype="bfloat16")
    where = jax.sharding.SingleDeviceSharding(device)
    on_device = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=where)  # noqa: E731
    params = jax.tree_util.tree_map(lambda x: on_device(x.shape, x.dtype), param_shapes(config))
    ids = on_device((batch, prompt_len), jnp.int32)
    args = (params, ids, ids, on_device((), jnp.float32), on_device((len(config.eos_token_ids),), jnp.int32))
    with jax.set_mesh(jax.sharding.Mesh([device], ("data",))):  # traced for the target's attention
        compiled = Compiled.of(greedy_decode.lower(*args, config=config, max_new_tokens=new_tokens,
                                                   attention=attention), args)
    memory, bandwidth = hardware.memory(device)
    return DecodePlan(target, device.device_kind, source.removeprefix("preset:"), attention, batch, prompt_len,
                      new_tokens,
                      compiled, memory, bandwidth, *decode_step_bytes(config, batch, prompt_len + new_tokens))


def decode_step_bytes(config: LlamaConfig, batch: int, cache_slots: int) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) a decoding step reads at most, in the config's compute dtype."""
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    cache = 2 * config.num_layers * batch * config.num_kv_heads * cache_slots * config.head_dim
    return config.num_params() * itemsize, cache * itemsize
