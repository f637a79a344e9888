"""The LLaMA family in Flax: one definition for training, decoding, perf scripts and conversion.

Shapes: B batch, T query length, S key length (T, or the KV-cache length when decoding), H query heads,
K key/value heads (grouped-query attention: H = K * G), D head dim, E embed, F mlp, V vocab, L layers.

Attention masking is driven by segment ids: a query attends to a key when the key's slot is not later
than the query's (nor, with a sliding window, `sliding_window` or more slots earlier), both carry the same
segment id, and that id is not 0 (0 marks padding). Packed training sequences use ids 1, 2, 3...; a
left-padded decoding batch uses 0 for padding and 1 for text.

The model knows its shapes only: the attention kernel is the caller's choice (`Llama(config, attention=...)`,
models/attention.py), and a LoRA is applied to the model from outside (models/lora.py).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xlit_jax.models import attention, quantize
from xlit_jax.models.config import LlamaConfig

Cache = dict[str, jax.Array]  # k, v: [L, B, K, S, D]; segments: [B, S]; index: [] or [B] (next free slot)


def matmul(x, kernel):
    """x [..., in] @ kernel [in, out] as one 2-D matmul over the flattened leading axes. Its gradient for the
    kernel then contracts a single axis: contracting [B, T] jointly, XLA:CPU writes the activation gradients
    transposed in slow elementwise loops before a non-library dot (a train step 1.3x slower)."""
    return jnp.dot(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], kernel.shape[-1])


class Linear(nn.Module):
    """x [..., in] @ kernel [in, out] (+ bias [out] with `use_bias`: Qwen2's q, k, v): every projection of the
    model, named after its role (q, k, v, o, gate, up, down, lm_head), which is what a LoRA targets
    (models/lora.py). A kernel the params hold quantized (models/quantize.py) is multiplied as stored."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: Any
    param_dtype: Any
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        if quantize.format_of(self.variables.get("params", {})):
            y = quantize.matmul(x, self.variables["params"], self.dtype)
        else:
            init = nn.with_logical_partitioning(nn.initializers.normal(0.02), self.kernel_axes)
            kernel = self.param("kernel", init, (x.shape[-1], self.features), self.param_dtype)
            y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), self.kernel_axes[1:])
            y = y + self.param("bias", bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale * normed.astype(self.dtype)).astype(self.dtype)


def rope_frequencies(c: LlamaConfig):
    """The D/2 inverse frequencies theta^(-2i/D), float32, with Llama 3.x's scaling for rope_type="llama3"
    as HF computes it (modeling_rope_utils._compute_llama3_parameters): wavelengths past the original
    context / low_freq_factor are stretched by `rope_factor`, those under original / high_freq_factor kept,
    those between interpolated smoothly."""
    dim = c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if c.rope_type == "default":
        return inv_freq
    factor, low, high, original = (c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor,
                                   c.rope_original_max_positions)
    wavelen = 2 * np.pi / inv_freq
    scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return jnp.where(medium, smoothed, scaled)


def rotary_tables(positions, c: LlamaConfig):
    """(cos, sin) [B, T, 1, D] of the angles position * rope_frequencies(c), as HF LLaMA computes them.
    Computed once per forward pass and shared by every layer (per layer, the trigonometry cost as much as a
    matmul when decoding on CPU)."""
    angles = positions.astype(jnp.float32)[:, :, None] * rope_frequencies(c)  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles).astype(c.compute_dtype), jnp.sin(angles).astype(c.compute_dtype)


def rotary_embedding(x, rope):
    """Rotate pairs (i, i + D/2) of x [B, T, N, D] by the angles of `rope` = rotary_tables(...)."""
    cos, sin = rope
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin


def projection(c: LlamaConfig, features: int, axes: tuple[str, str], name: str, use_bias: bool = False) -> Linear:
    """A projection named after its role (q, k, v, o, gate, up, down)."""
    return Linear(features, axes, c.compute_dtype, c.weights_dtype, use_bias, name=name)


class Attention(nn.Module):
    config: LlamaConfig
    attention: str
    read_columns: int | None = None

    @nn.compact
    def __call__(self, x, rope, q_slots, q_segments, k_segments, cache, layer, cache_index):
        c = self.config
        b, t, _ = x.shape
        h, k_heads, d = c.num_heads, c.num_kv_heads, c.head_dim
        q = projection(c, h * d, ("embed", "heads"), "q", c.qkv_bias)(x).reshape(b, t, h, d)
        k = projection(c, k_heads * d, ("embed", "kv_heads"), "k", c.qkv_bias)(x).reshape(b, t, k_heads, d)
        v = projection(c, k_heads * d, ("embed", "kv_heads"), "v", c.qkv_bias)(x).reshape(b, t, k_heads, d)
        q = rotary_embedding(q, rope)
        k = rotary_embedding(k, rope).transpose(0, 2, 1, 3)  # [B, K, T, D]
        v = v.transpose(0, 2, 1, 3)
        if cache is not None:  # write this step's keys and values in place, then attend over the cache
            cache = {name: _write(cache[name], new, layer, cache_index) for name, new in (("k", k), ("v", v))}
            k, v = (cache[name][layer, :b, :, :self.read_columns] for name in ("k", "v"))
        implementation = attention.choose(self.attention, c.dtype, d)
        out = attention.attend(q, k, v, q_slots, q_segments, k_segments, attention=implementation,
                               cached=cache is not None, window=c.sliding_window).reshape(b, t, h * d)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads"))
        return projection(c, c.hidden_size, ("heads", "embed"), "o")(out), cache


def _write(cache, new, layer, index):
    """new [B, K, T, D] into cache [L, B, K, S, D] at slot `index`: one slot for all rows (index []), or
    one step per row at its own slot (index [B], T = 1: the decoding engine's slots)."""
    new = new.astype(cache.dtype)
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice(cache, new[None], (layer, 0, 0, index, 0))
    return cache.at[layer, jnp.arange(new.shape[0]), :, index].set(new[:, :, 0], mode="drop")


class MLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = projection(c, c.intermediate_size, ("embed", "mlp"), "gate")(x)
        up = projection(c, c.intermediate_size, ("embed", "mlp"), "up")(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return projection(c, c.hidden_size, ("mlp", "embed"), "down")(hidden)


class Block(nn.Module):
    """One pre-norm decoder layer; scanned over the layer axis by `Llama`.

    The KV cache of all layers rides in the scan's carry and each layer updates its own slice in place:
    passing per-layer slices in and out of the scan would copy the whole cache at every decoding step.
    """

    config: LlamaConfig
    attention: str
    read_columns: int | None = None

    @nn.compact
    def __call__(self, carry, layer, rope, q_slots, q_segments, k_segments, cache_index):
        h, cache = carry
        c = self.config
        norm = functools.partial(RMSNorm, c.rms_norm_eps, c.compute_dtype, c.weights_dtype)
        attn, cache = Attention(c, self.attention, self.read_columns, name="attn")(
            norm(name="attn_norm")(h), rope, q_slots, q_segments, k_segments, cache, layer, cache_index)
        h = h + attn
        h = h + MLP(c, name="mlp")(norm(name="mlp_norm")(h))
        return (nn.with_logical_constraint(h, ("batch", "length", "embed")), cache), None


def _remat(block_cls, policy: str):
    if policy == "none":
        return block_cls
    checkpoint_policy = None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return nn.remat(block_cls, policy=checkpoint_policy, prevent_cse=False)


class Llama(nn.Module):
    """input ids [B, T] -> logits [B, T, V] (float32), and the updated cache when one is given.

    `last_only` projects only the last position to the vocabulary ([B, 1, V]); `select` [B, C] only the
    positions it names ([B, C, V]): the LM head and its logits are a fifth of a forward pass's work when
    every position is projected, and scoring or decoding needs a few.

    `attention`: the kernel setting (models/attention.py), resolved for the platform the model is traced for.

    `read_columns` (with a cache): attend over the cache's first columns only, when every query sits before
    that column (the decoding engine's short slots): a step then reads that much of the cache, not all.
    A cache with more rows than the input ([L, S, K, M, D], S >= B) is read and written in its first B rows
    (the engine's first slots); its segments and index are then the first B rows' ([B, M], [B])."""

    config: LlamaConfig
    attention: str = "auto"
    read_columns: int | None = None

    @nn.compact
    def __call__(self, input_ids, positions=None, segment_ids=None, cache: Cache | None = None,
                 last_only: bool = False, select=None):
        c = self.config
        b, t = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        embed_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
        embedding = self.param("embed", embed_init, (c.vocab_size, c.hidden_size), c.weights_dtype)
        h = jnp.take(embedding, input_ids, axis=0).astype(c.compute_dtype)
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))

        if cache is None:
            cache_index, q_slots, k_segments, kv = 0, jnp.arange(t), segment_ids, None
        else:
            cache_index = cache["index"]
            q_slots = cache_index[..., None] + jnp.arange(t)  # [T], or [B, T] for per-row indices
            if cache_index.ndim == 0:
                k_segments = jax.lax.dynamic_update_slice_in_dim(cache["segments"], segment_ids, cache_index, 1)
            else:
                k_segments = cache["segments"].at[jnp.arange(b), cache_index].set(segment_ids[:, 0], mode="drop")
            kv = {"k": cache["k"], "v": cache["v"]}

        layers = nn.scan(
            _remat(Block, c.remat),
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c, self.attention, self.read_columns, name="layers")
        layer_ids = jnp.arange(c.num_layers, dtype=jnp.int32)
        rope = rotary_tables(positions, c)
        read_segments = k_segments if cache is None else k_segments[:, :self.read_columns]
        (h, kv), _ = layers((h, kv), layer_ids, rope, q_slots, segment_ids, read_segments, cache_index)

        if last_only:
            h = h[:, -1:]
        elif select is not None:
            h = jnp.take_along_axis(h, select[:, :, None], axis=1)
        h = RMSNorm(c.rms_norm_eps, c.compute_dtype, c.weights_dtype, name="final_norm")(h)
        if c.tie_embeddings:
            logits = matmul(h, embedding.astype(c.compute_dtype).T)
        else:
            logits = Linear(c.vocab_size, ("embed", "vocab"), c.compute_dtype, c.weights_dtype, name="lm_head")(h)
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        if cache is None:
            return logits, None
        return logits, {**kv, "segments": k_segments, "index": cache_index + t}


def init_cache(config: LlamaConfig, batch: int, length: int) -> Cache:
    shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
    return {
        "k": jnp.zeros(shape, config.compute_dtype),
        "v": jnp.zeros(shape, config.compute_dtype),
        "segments": jnp.zeros((batch, length), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def init_boxed(config: LlamaConfig, seed: int = 0) -> Any:
    """Random params with their partitioning boxes. Traced with the xla kernel: params do not depend on the
    kernel, and a fused one cannot be traced off its target (nor inside a mesh at init's batch of 1)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return Llama(config, attention="xla").init(jax.random.PRNGKey(seed), ids)["params"]


def init_params(config: LlamaConfig, seed: int = 0) -> Any:
    """Random params (normal 0.02, norms at 1), seeded, without partitioning boxes."""
    return nn.meta.unbox(jax.jit(init_boxed, static_argnums=(0, 1))(config, seed))


def param_shapes(config: LlamaConfig) -> Any:
    return nn.meta.unbox(jax.eval_shape(functools.partial(init_boxed, config, 0)))
