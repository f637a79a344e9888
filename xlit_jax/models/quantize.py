"""Weight-only quantization of the projections' kernels: a frozen LoRA base, or a model that only decodes.

A quantized kernel [..., in, out] (the leading axes are the scanned layers) is stored in the params tree in
place of its `kernel`, as two leaves beside it:

  int8   `kernel_int8`  int8 [..., in, out], `kernel_scale` [..., out]: per output channel, absmax / 127
  nf4    `kernel_nf4`   uint8 [..., in/2, out] (two 4-bit codes a byte, along `in`), `kernel_scale`
         [..., in/GROUP, out]: per group of GROUP inputs, absmax; the codes index QLoRA's NormalFloat values
  int4   `kernel_int4`  likewise, the codes indexing the 15 evenly spaced values -1, -6/7, ..., 1

The leaf's name says its format, so a params tree describes itself: `Linear` (models/llama.py) sees a
quantized kernel and computes through `matmul` below, which dequantizes inside the jitted program, one
layer's kernel at a time (int8: no dequantized copy at all, the scale multiplies the product). The
embedding, the LM head and the norms stay in the weights' dtype, as in QLoRA. The formats are measured in
docs/quantization.md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xlit_jax.errors import InputError

FORMATS = ("int8", "nf4", "int4")
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")  # the model's projections (models/llama.py): quantized
GROUP = 64  # inputs per scale of the 4-bit formats (QLoRA's block size)
SCALE = "kernel_scale"
# QLoRA's NF4 (bitsandbytes' create_normal_map): quantiles of a normal distribution, scaled to [-1, 1], with 0
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
INT4 = tuple(i / 7 for i in range(-7, 8)) + (1.0,)  # symmetric absmax: 15 levels (the 16th code repeats 1)
CODEBOOKS = {"nf4": NF4, "int4": INT4}


def check(fmt: str, what: str = "quantize") -> str:
    """`fmt` when it is 'none' or a format; else an InputError in one line naming the choices."""
    if fmt not in ("none", *FORMATS):
        raise InputError(f"{what}={fmt!r} is not a quantization format: choose none, {', '.join(FORMATS)}")
    return fmt


def kernel_name(fmt: str) -> str:
    return f"kernel_{fmt}"


def quantize(w, fmt: str) -> dict:
    """{kernel_FMT, kernel_scale} of a kernel [..., in, out] (array or ShapeDtypeStruct under eval_shape); a
    stack of layers one layer at a time, so that the temporaries are a layer's."""
    w = jnp.asarray(w)
    if w.ndim > 2:
        return jax.lax.map(lambda layer: quantize(layer, fmt), w)
    w = w.astype(jnp.float32)
    if fmt == "int8":
        scale = jnp.max(jnp.abs(w), axis=-2) / 127
        q = jnp.round(w / _nonzero(scale)[..., None, :])
        return {kernel_name(fmt): q.astype(jnp.int8), SCALE: scale}
    *lead, n_in, n_out = w.shape
    if n_in % GROUP:
        raise ValueError(f"{fmt}: a kernel with {n_in} inputs does not split into groups of {GROUP}")
    groups = w.reshape(*lead, n_in // GROUP, GROUP, n_out)
    scale = jnp.max(jnp.abs(groups), axis=-2)
    normed = (groups / _nonzero(scale)[..., None, :]).reshape(w.shape)
    codes = jnp.asarray(CODEBOOKS[fmt], jnp.float32)
    index = jnp.searchsorted((codes[1:] + codes[:-1]) / 2, normed).astype(jnp.uint8)  # the nearest code
    packed = (index[..., 0::2, :] << 4) | index[..., 1::2, :]
    return {kernel_name(fmt): packed, SCALE: scale}


def _nonzero(scale):
    return jnp.where(scale == 0, 1, scale)


def format_of(stored: dict) -> str | None:
    """The format of a projection's params ({kernel_FMT, kernel_scale, ...}), None when not quantized."""
    return next((fmt for fmt in FORMATS if kernel_name(fmt) in stored), None)


def dequantize(stored: dict, dtype=None):
    """The kernel [..., in, out] that `quantize` stored, in `dtype` (default: its scale's, the weights')."""
    fmt, dtype = format_of(stored), dtype or stored[SCALE].dtype
    q, scale = stored[kernel_name(fmt)], stored[SCALE].astype(jnp.float32)
    if fmt == "int8":
        return (q.astype(jnp.float32) * scale[..., None, :]).astype(dtype)
    *lead, half, n_out = q.shape
    index = jnp.stack([q >> 4, q & 15], axis=-2).reshape(*lead, 2 * half, n_out)
    values = jnp.asarray(CODEBOOKS[fmt], jnp.float32)[index]
    groups = values.reshape(*lead, 2 * half // GROUP, GROUP, n_out) * scale[..., None, :]
    return groups.reshape(*lead, 2 * half, n_out).astype(dtype)


def matmul(x, stored: dict, dtype):
    """x [..., in] @ the quantized kernel, in `dtype`. int8 multiplies the int8 kernel directly (XLA reads
    one byte a weight) and scales the product per output; the 4-bit formats dequantize this kernel first."""
    flat = x.reshape(-1, x.shape[-1]).astype(dtype)
    if format_of(stored) == "int8":
        product = jax.lax.dot_general(flat, stored["kernel_int8"], (((1,), (0,)), ((), ())),
                                      preferred_element_type=dtype)
        out = product * stored[SCALE].astype(dtype)
    else:
        out = jnp.dot(flat, dequantize(stored, dtype))
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _map_projections(params, fn) -> dict:
    """`params` with each projection's own leaves {name: leaf} replaced by fn(those leaves)."""
    flat = traverse_util.flatten_dict(params)
    modules: dict[tuple, dict] = {}
    for path, leaf in flat.items():
        if len(path) >= 2 and path[-2] in PROJECTIONS:
            modules.setdefault(path[:-1], {})[path[-1]] = leaf
    for module, leaves in modules.items():
        for name in leaves:
            del flat[module + (name,)]
        flat.update({module + (name,): leaf for name, leaf in fn(leaves).items()})
    return traverse_util.unflatten_dict(flat)


def quantize_params(params, fmt: str) -> dict:
    """`params` with every projection's kernel quantized to `fmt` ('none': unchanged); adapters untouched."""
    if check(fmt) == "none":
        return params

    def one(leaves):
        kernel = leaves.pop("kernel", None)
        return leaves if kernel is None else {**leaves, **quantize(kernel, fmt)}

    return _map_projections(params, one)


def dequantize_params(params, dtype=None) -> dict:
    """The inverse of `quantize_params` (up to its rounding): every quantized kernel back as `kernel`, in
    `dtype` (default: its scale's)."""
    def one(leaves):
        if format_of(leaves) is None:
            return leaves
        kernel = dequantize(leaves, dtype)
        return {"kernel": kernel, **{k: v for k, v in leaves.items() if k not in (SCALE, *map(kernel_name, FORMATS))}}

    return _map_projections(params, one)


def quantized_axes(axes, fmt: str) -> dict:
    """The logical axes (PartitionSpecs) of `quantize_params(params, fmt)` from those of `params`: the codes
    keep their kernel's axes (packed 4-bit halves `in`, groups divide it); int8's scale has the output axis."""
    if fmt == "none":
        return axes

    def one(leaves):
        spec = leaves.pop("kernel", None)
        if spec is None:
            return leaves
        scale = spec if fmt in CODEBOOKS else jax.sharding.PartitionSpec(*spec[:-2], spec[-1])
        return {**leaves, kernel_name(fmt): spec, SCALE: scale}

    return _map_projections(axes, one)


def nbytes(params) -> int:
    """Bytes of a params tree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(params))
