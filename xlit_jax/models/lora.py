"""LoRA, a transformation of the model chosen by the training config: each targeted projection y = x W
becomes y = x W + (alpha / r) * dropout(x) A B, with A [in, r] and B [r, out] (B starting at zero) stored
beside its kernel as `lora_a` and `lora_b`.

The model knows nothing of it (models/llama.py). `adapted(lora)` applies it from outside, by Flax method
interception on the projections it names, as Tunix applies LoRA to a model by module path (levanter's
`loraize` swaps the layers instead): at init it creates the adapters, at apply it reads them from the
params tree. The rest are transformations of the params tree: the split between adapters (what a LoRA run
trains) and base and back, and folding the adapters into the kernels (`merge_lora`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Linear, init_boxed, matmul
from xlit_jax.models.quantize import PROJECTIONS, check, dequantize_params

LORA_PARAMS = ("lora_a", "lora_b")
LORA_TARGETS = PROJECTIONS  # every projection a LoRA can adapt (models/llama.py)
# LoRA defaults, their one home (LoraConfig and configs/experiments/base.py read them). The paper's text names
# LoRA and no setting of it; the released code (naver/pasero: its config
# examples/zero-shot-transfer-inst-tuning/config/config_llama13b2_dolly_en_lora.yaml, and pasero's own
# defaults for what that config leaves out) gives the rest.
LORA_RANK = 16  # the paper's LoRA runs: the released config's lora_rank: 16
LORA_ALPHA = 32.0  # our choice (2 x rank, scale 2); pasero's default is 8 (scale 0.5): lora.alpha=8 restores it
LORA_DROPOUT = 0.0  # as released: pasero has no LoRA dropout
LORA_DEFAULT_TARGETS = LORA_TARGETS  # as released: pasero adapts every linear of a layer (q, k, v, o, fc1-3)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """The adapters of a LoRA run (the training config's `lora` section); no LoRA is None, not rank 0."""

    rank: int = LORA_RANK
    alpha: float = LORA_ALPHA
    dropout: float = LORA_DROPOUT
    targets: tuple[str, ...] = LORA_DEFAULT_TARGETS
    base_quantization: str = "none"  # the frozen base's kernels: none | int8 | nf4 | int4 (models/quantize.py)

    def __post_init__(self):
        problems = []
        try:
            check(self.base_quantization, "base_quantization")
        except ValueError as e:
            problems.append(str(e))
        if self.rank < 1:
            problems.append(f"rank={self.rank} is not positive")
        unknown = set(self.targets) - set(LORA_TARGETS)
        if unknown:
            problems.append(f"unknown targets {sorted(unknown)}; choose from {LORA_TARGETS}")
        if problems:
            raise ValueError("invalid LoraConfig: " + "; ".join(problems))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def adapted(lora: LoraConfig | None, deterministic: bool = True):
    """A context in which the model's targeted projections add their adapters' delta (nothing for None).
    It acts while the model is traced: enter it inside the jitted function, with `lora` among its static
    arguments. `deterministic=False` applies the dropout (the apply then needs a 'dropout' rng)."""
    if lora is None:
        return contextlib.nullcontext()

    def add_delta(call, args, kwargs, context):
        y = call(*args, **kwargs)
        module = context.module
        if isinstance(module, Linear) and context.method_name == "__call__" and module.name in lora.targets:
            y = y + _delta(module, lora, *args, deterministic=deterministic)
        return y

    return nn.intercept_methods(add_delta)


def _delta(linear: Linear, lora: LoraConfig, x, deterministic: bool):
    """(alpha / r) * dropout(x) A B, the adapters being params of `linear` (it is inside its call)."""
    in_axis, out_axis = linear.kernel_axes
    a_init = nn.with_logical_partitioning(nn.initializers.he_uniform(), (in_axis, None))
    b_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, out_axis))
    a = linear.param("lora_a", a_init, (x.shape[-1], lora.rank), linear.param_dtype)
    b = linear.param("lora_b", b_init, (lora.rank, linear.features), linear.param_dtype)
    if lora.dropout and not deterministic:
        x = nn.Dropout(lora.dropout, parent=linear)(x, deterministic=False)
    low = matmul(x.astype(linear.dtype), a.astype(linear.dtype))
    return matmul(low, b.astype(linear.dtype)) * lora.scale


def _init_adapted(config: LlamaConfig, lora: LoraConfig | None, seed: int = 0) -> Any:
    """The model's random params with `lora`'s adapters, boxed as `llama.init_boxed` returns them. The
    adapters are the same whether or not the base is made with them: a param's seed is its path's."""
    with adapted(lora):
        return init_boxed(config, seed)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def init_adapters(config: LlamaConfig, lora: LoraConfig, seed: int = 0) -> Any:
    """Fresh adapters (A random, B zero) for `lora`'s targets, without materialising the base (jit drops
    the unused base initialisers)."""
    return split_lora(nn.meta.unbox(_init_adapted(config, lora, seed)))[1]


def adapted_shapes(config: LlamaConfig, lora: LoraConfig | None) -> Any:
    """Every param, the adapters too, as ShapeDtypeStructs in their partitioning boxes, allocating nothing:
    `nn.meta.unbox` gives the plain tree, `nn.get_partition_spec` the logical axes."""
    return jax.eval_shape(functools.partial(_init_adapted, config, lora))


def split_lora(params) -> tuple[Any, Any]:
    """(base, adapters): two disjoint pytrees whose union is `params`."""
    flat = traverse_util.flatten_dict(params)
    base = {k: v for k, v in flat.items() if k[-1] not in LORA_PARAMS}
    lora = {k: v for k, v in flat.items() if k[-1] in LORA_PARAMS}
    return traverse_util.unflatten_dict(base), traverse_util.unflatten_dict(lora)


def merge_params(base, lora) -> Any:
    """The inverse of `split_lora`."""
    flat = {**traverse_util.flatten_dict(base), **traverse_util.flatten_dict(lora)}
    return traverse_util.unflatten_dict(flat)


def merge_lora(params, lora: LoraConfig) -> Any:
    """Fold every adapter into its kernel (W + alpha/r * A B) and drop the adapters; a quantized kernel is
    dequantized first (to its scale's dtype, the base's)."""
    flat = traverse_util.flatten_dict(dequantize_params(params))
    out = {}
    for key, value in flat.items():
        if key[-1] in LORA_PARAMS:
            continue
        if key[-1] == "kernel" and key[:-1] + ("lora_a",) in flat:
            a, b = flat[key[:-1] + ("lora_a",)], flat[key[:-1] + ("lora_b",)]
            delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32)) * lora.scale
            value = (value.astype(jnp.float32) + delta).astype(value.dtype)
        out[key] = value
    return traverse_util.unflatten_dict(out)
