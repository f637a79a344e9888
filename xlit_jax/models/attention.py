"""Attention: one entry point, `attend`, with the implementation chosen by the `attention` setting.

The setting is the machine's choice, not the model's: it is an argument of the model (`Llama(config,
attention=...)`), of the train step and of the decoding functions, never a field of the LlamaConfig.

- `xla`: the reference. One einsum with fp32 scores [B, K, G, T, S]; runs everywhere and is the path
  checked token for token against HF on CPU.
- `cudnn` (NVIDIA GPUs, bf16/fp16): cuDNN flash attention through `jax.nn.dot_product_attention`.
  Decoding steps (one query per row over the KV cache) use the Pallas GPU split-K decode kernel instead,
  which reads only the filled slots of the cache.
- `splash` (TPUs): Pallas splash attention (causal mask, segment ids) under `shard_map` over the mesh's
  batch axes. Decoding steps use a length-aware XLA loop over chunks of the cache that stops at the last
  filled chunk; a prefill (several queries over a cache) uses the reference.
- `auto`: cudnn on NVIDIA GPUs in bf16/fp16, splash on TPUs, xla elsewhere; the choice is logged.

Shapes: q [B, T, H, D]; k, v [B, K, S, D] (the KV-cache layout); q_slots [T] (cache slots of the queries;
[B, T] when each row decodes at its own slot, as in the decoding engine);
q_segments [B, T]; k_segments [B, S]. Masking follows segment ids (0 = padding), see models/llama.py.
`window` (Mistral's sliding window, LlamaConfig.sliding_window) masks keys `window` or more slots before the
query, as transformers' Mistral does (a query sees itself and the window - 1 keys before it); every
implementation applies it (cuDNN in its mask, splash with a local mask, the decode kernels from a later start).

The fused kernels treat padding (segment 0) as one more segment: a padding query attends to earlier
padding keys instead of to nothing (a row with no visible key is NaN-prone in fused kernels). No real
token sees a padding key in either scheme, so outputs at real tokens agree with the reference; outputs at
padding positions differ and are never used (loss masks and decoding ignore them).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xlit_jax.errors import InputError
from xlit_jax.sharding import BATCH_AXES

ATTENTIONS = ("auto", "xla", "cudnn", "splash")
FUSED_DTYPES = ("bfloat16", "float16")
LANES = 128  # splash blocks are multiples of the TPU's 128 lanes
SPLASH_BLOCK = 512  # splash attention's block size (query and key), a multiple of LANES
DECODE_SPLITS = 16  # split-K parallelism of the GPU decode kernel
DECODE_CHUNK = 256  # cache slots per step of the length-aware XLA decode loop
CAUSAL_BLOCKS = 4  # most query blocks of the XLA path without a cache (later keys skipped, not masked)


# ---- choosing an implementation -------------------------------------------------------------------------

def _target_device():
    """The device kind the model is traced for: the current mesh's (which may be a compile-only topology),
    else the default backend's first device."""
    mesh = jax.sharding.get_abstract_mesh()
    return (None if mesh.empty else getattr(mesh, "abstract_device", None)) or jax.devices()[0]


def target_platform() -> str:
    """'cpu', 'gpu' (NVIDIA: 'gpu' in jax, 'cuda' in topologies) or 'tpu'."""
    platform = _target_device().platform
    return "gpu" if platform in ("gpu", "cuda") else platform


def _cudnn_head_dim_limit() -> int:
    """cuDNN flash attention takes head dims up to 256 on Hopper and later, 128 before."""
    capability = getattr(_target_device(), "compute_capability", "9.0")  # unknown (compile-only): Hopper
    return 256 if float(capability) >= 9.0 else 128


def cudnn_problem(dtype: str, head_dim: int, platform: str) -> str | None:
    """Why cuDNN attention cannot run this model here, or None."""
    if platform != "gpu":
        return f"cuDNN attention needs an NVIDIA GPU, and this run is on {platform}"
    if dtype not in FUSED_DTYPES:
        return f"cuDNN attention computes in {' or '.join(FUSED_DTYPES)} only, and dtype is {dtype}"
    limit = _cudnn_head_dim_limit()
    if head_dim % 8 or head_dim > limit:
        return f"cuDNN attention needs a head dim that is a multiple of 8 and <= {limit}, and it is {head_dim}"
    return None


def choose(attention: str, dtype: str, head_dim: int, platform: str | None = None) -> str:
    """The implementation to run: `attention` itself once checked, or what 'auto' picks (logged).

    A request that cannot run raises InputError naming the setting and what to use instead; this
    happens while tracing, before anything is compiled."""
    platform = platform or target_platform()
    if attention == "auto":
        return _auto(dtype, head_dim, platform)
    if attention == "cudnn":
        problem = cudnn_problem(dtype, head_dim, platform)
        if problem:
            raise InputError(f"attention=cudnn: {problem}; use attention=xla (or auto)")
    elif attention == "splash" and platform != "tpu":
        raise InputError(f"attention=splash: splash attention needs a TPU, and this run is on {platform}; "
                         "use attention=xla (or auto)")
    elif attention not in ATTENTIONS:
        raise InputError(f"attention={attention!r} is not one of {', '.join(ATTENTIONS)}")
    return attention


@functools.cache
def _auto(dtype: str, head_dim: int, platform: str) -> str:
    if platform == "tpu":
        choice, why = "splash", "on TPU"
    elif platform == "gpu" and not cudnn_problem(dtype, head_dim, platform):
        choice, why = "cudnn", f"on an NVIDIA GPU in {dtype}"
    else:
        choice = "xla"
        why = cudnn_problem(dtype, head_dim, platform) if platform == "gpu" else f"on {platform}"
    logging.info("attention=auto: %s (%s)", choice, why)
    return choice


# ---- masks ----------------------------------------------------------------------------------------------

def attention_mask(q_slots, q_segments, k_segments, window: int | None = None):
    """[B, T, S] booleans of the reference: causal by slot (within `window`), same segment, key not padding."""
    same = q_segments[:, :, None] == k_segments[:, None, :]
    return causal_mask(q_slots, k_segments.shape[1], window) & same & (k_segments != 0)[:, None, :]


def causal_mask(q_slots, length: int, window: int | None = None):
    """[1 or B, T, S]: key slot <= query slot, and with a `window` > query slot - window, for q_slots [T] or
    [B, T]. Slots count tokens: a packed row's segments and a decoding row's tokens are contiguous."""
    slots, q = jnp.arange(length), q_slots[..., None]
    causal = (slots <= q) & (slots > q - window) if window else slots <= q
    return causal if causal.ndim == 3 else causal[None]


def segment_mask(q_segments, k_segments):
    """[B, T, S] booleans of the fused kernels: same segment, padding (0) being a segment of its own."""
    return q_segments[:, :, None] == k_segments[:, None, :]


# ---- implementations ------------------------------------------------------------------------------------

def query_blocks(length: int) -> int:
    """How many causal query blocks `xla_attention` splits a cache-free call of `length` queries into: up to
    4 (5/8 of the score work; more blocks save little and compile more), none under 64 queries each."""
    return max(1, min(CAUSAL_BLOCKS, length // 64))


def xla_attention(q, k, v, q_slots, q_segments, k_segments, *, causal_blocks: int = 1, window: int | None = None):
    """The reference: fp32 scores and softmax, masked with the most negative fp32 (not -inf, so a row with
    no visible key averages instead of producing NaN).

    `causal_blocks` > 1 (only for queries at slots 0..T-1 over their own keys, as in training) splits the
    queries into that many blocks, each attending to the keys up to its end only: the later keys are masked
    for all its queries anyway, so the outputs are the same while the score work shrinks to (n+1)/2n.
    On CPU, 4 blocks make a SmolLM2 train step 5% (full FT) to 8% (LoRA) faster at 256 tokens a row."""
    if causal_blocks > 1:
        bounds = np.linspace(0, q.shape[1], causal_blocks + 1).astype(int)
        return jnp.concatenate([
            xla_attention(q[:, start:end], k[:, :, :end], v[:, :, :end], q_slots[start:end],
                          q_segments[:, start:end], k_segments[:, :end], window=window)
            for start, end in zip(bounds[:-1], bounds[1:])], axis=1)
    b, t, h, d = q.shape
    k_heads = k.shape[1]
    q = q.reshape(b, t, k_heads, h // k_heads, d)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(d).astype(np.float32)
    mask = attention_mask(q_slots, q_segments, k_segments, window)[:, None, None]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    # Output in [B, K, G, T, D], a plain batched matmul: asking for [B, T, K, G, D] directly made XLA:CPU
    # pick a slow non-library dot (the largest op of a decoding step).
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v.astype(q.dtype))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _pad_length(x, length: int, axis: int):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def cudnn_attention(q, k, v, q_slots, q_segments, k_segments, *, cached: bool, window: int | None = None,
                    implementation: str = "cudnn"):
    """cuDNN flash attention; GQA is native. `implementation='xla'` runs the same call through JAX's XLA
    version (tests on CPU).

    cuDNN has no segment ids: packed rows go in as a boolean mask, which JAX turns into a dense
    [B, 1, T, S] bias in the compute dtype that cuDNN reads block by block (8 MiB in bf16 for a 2,048-token
    row, per layer call; small next to the reference's fp32 scores, 32 MiB per head). Without a cache the
    causal part is cuDNN's own (`is_causal`, which skips masked blocks); with a cache the queries sit at
    slots q_slots, not at 0, and cuDNN's causal mask is aligned top-left, so causality goes into the
    explicit mask instead; so does a sliding window, in both cases (the mask is dense anyway)."""
    t = q.shape[1]
    k, v = k.swapaxes(1, 2).astype(q.dtype), v.swapaxes(1, 2).astype(q.dtype)  # [B, S, K, D]
    if cached:
        mask = segment_mask(q_segments, k_segments) & causal_mask(q_slots, k.shape[1], window)
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=implementation)
    if t % 2:  # cuDNN's backward pass with a bias needs even lengths: add one padding slot at the end
        q, k, v = (_pad_length(x, t + 1, 1) for x in (q, k, v))
        q_segments = k_segments = _pad_length(q_segments, t + 1, 1)
    mask = segment_mask(q_segments, k_segments)
    if window:
        mask &= causal_mask(jnp.arange(mask.shape[1]), mask.shape[2], window)
    mask = mask[:, None]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=implementation)
    return out[:, :t]


def _filled_slots(q_slots, k_segments, window: int | None = None):
    """[start, end) of each row's keys for a one-token decoding step: decoding rows are left-padded, so a
    row's keys are one contiguous run from its first filled slot (or the window's first) to the query's slot."""
    start = jnp.argmax(k_segments != 0, axis=1).astype(jnp.int32)
    end = jnp.broadcast_to(q_slots[..., 0] + 1, start.shape).astype(jnp.int32)
    return (jnp.maximum(start, end - window) if window else start), end


def decode_attention(q, k, v, q_slots, k_segments, *, window: int | None = None, interpret: bool = False):
    """One query per row over a KV cache with the Pallas GPU split-K kernel, which reads only the filled
    slots. The cache length must be one `cache_length` returns."""
    from jax.experimental.pallas.ops.gpu import decode_attention as kernel

    start, end = _filled_slots(q_slots, k_segments, window)
    out = kernel.gqa(q[:, 0], k.swapaxes(1, 2), v.swapaxes(1, 2), start_idx=start, kv_seq_len=end,
                     k_splits=DECODE_SPLITS, interpret=interpret)
    return out[:, None]


def chunked_decode_attention(q, k, v, q_slots, k_segments, window: int | None = None):
    """The same in XLA: an online softmax over DECODE_CHUNK-slot chunks of the cache, in a loop that stops
    after the chunk holding the query, so a step reads only the filled part of the cache. fp32 inside."""
    b, _, h, d = q.shape
    k_heads, dtype = k.shape[1], q.dtype
    q = q.reshape(b, k_heads, h // k_heads, d).astype(jnp.float32) / np.sqrt(d).astype(np.float32)
    start, end = _filled_slots(q_slots, k_segments, window)

    def step(i, carry):
        top, total, acc = carry  # running max, sum of exp, weighted values: [B, K, G], [B, K, G], [B, K, G, D]
        keys, values = (jax.lax.dynamic_slice_in_dim(x, i * DECODE_CHUNK, DECODE_CHUNK, axis=2) for x in (k, v))
        scores = jnp.einsum("bkgd,bkcd->bkgc", q, keys.astype(jnp.float32))
        slots = i * DECODE_CHUNK + jnp.arange(DECODE_CHUNK)
        visible = ((slots >= start[:, None]) & (slots < end[:, None]))[:, None, None]
        new_top = jnp.maximum(top, jnp.max(jnp.where(visible, scores, -jnp.inf), axis=-1))
        weights = jnp.where(visible, jnp.exp(scores - new_top[..., None]), 0.0)
        rescale = jnp.exp(top - new_top)
        return (new_top, total * rescale + weights.sum(-1),
                acc * rescale[..., None] + jnp.einsum("bkgc,bkcd->bkgd", weights, values.astype(jnp.float32)))

    zeros = jnp.zeros(q.shape[:-1], jnp.float32)
    init = (jnp.full(q.shape[:-1], jnp.finfo(jnp.float32).min), zeros, jnp.zeros(q.shape, jnp.float32))
    _, total, acc = jax.lax.fori_loop(0, (jnp.max(end) - 1) // DECODE_CHUNK + 1, step, init)
    return (acc / total[..., None]).reshape(b, 1, h, d).astype(dtype)


def cache_length(needed: int, attention: str) -> int:
    """KV-cache slots to allocate for `needed`, rounded up to what the decoding step takes: whole chunks
    for the length-aware XLA loop (splash); for the GPU decode kernel (cudnn), DECODE_SPLITS parts of a
    power-of-two length (>= 16) up to its block of 128."""
    if attention == "splash":
        return -(-needed // DECODE_CHUNK) * DECODE_CHUNK
    if attention != "cudnn":
        return needed
    smallest = 16 * DECODE_SPLITS
    if needed <= 128 * DECODE_SPLITS:
        return max(smallest, 1 << (needed - 1).bit_length())
    step = 128 * DECODE_SPLITS
    return -(-needed // step) * step


def _splash_kernel(heads: int, length: int, block: int, interpret: bool, window: int | None):
    """The kernel for one shape: causal, or local over the query and the window - 1 keys before it. Built anew
    in each trace: its mask tables become values of the trace that builds them, so a kernel kept across traces
    would leak them."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    shape = (length, length)
    one = masks.LocalMask(shape, (window - 1, 0), 0) if window else masks.CausalMask(shape)
    mask = masks.MultiHeadMask([one for _ in range(heads)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, segments, *, block: int = SPLASH_BLOCK, window: int | None = None,
                     interpret: bool = False):
    """Causal splash attention over packed rows (no cache: T = S). The length is padded to a multiple of
    the block (at most `block`, at least 128) with padding slots at the end, which no query before them
    sees. On a mesh it runs per device under shard_map: batch over the mesh's batch axes, heads over
    `tensor` when both head counts divide it."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    b, t, h, d = q.shape
    block = min(block, -(-t // LANES) * LANES)
    length = -(-t // block) * block
    q = _pad_length((q * (1.0 / math.sqrt(d))).astype(q.dtype).swapaxes(1, 2), length, 2)  # [B, H, T, D]
    k, v = (_pad_length(x.astype(q.dtype), length, 2) for x in (k, v))
    segments = _pad_length(segments, length, 1)

    def local(q, k, v, segments):
        kernel = _splash_kernel(q.shape[1], length, block, interpret, window)
        return jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(q=segments, kv=segments))

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        from jax.sharding import PartitionSpec as P

        batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
        tensor = mesh.shape.get("tensor", 1)
        heads = "tensor" if tensor > 1 and h % tensor == 0 and k.shape[1] % tensor == 0 else None
        qkv, seg = P(batch_axes, heads, None, None), P(batch_axes, None)
        local = jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv, check_vma=False)
    return local(q, k, v, segments).swapaxes(1, 2)[:, :t]


# ---- the entry point ------------------------------------------------------------------------------------

def attend(q, k, v, q_slots, q_segments, k_segments, *, attention: str, cached: bool, window: int | None = None):
    """Attention output [B, T, H, D] by the implementation `choose` returned. `cached`: k/v are a KV cache
    (decoding), so slots after the queries are unfilled. `window`: a sliding window (None: none)."""
    if cached and q.shape[1] == 1 and cache_length(k.shape[2], attention) == k.shape[2]:  # a decoding step
        if attention == "cudnn" and _is_power_of_two(q.shape[-1]):  # (Triton blocks are powers of two)
            return decode_attention(q, k, v, q_slots, k_segments, window=window)
        if attention == "splash":
            return chunked_decode_attention(q, k, v, q_slots, k_segments, window)
    if attention == "cudnn":
        return cudnn_attention(q, k, v, q_slots, q_segments, k_segments, cached=cached, window=window)
    if attention == "splash" and not cached:
        return splash_attention(q, k, v, q_segments, window=window)
    blocks = 1 if cached else query_blocks(q.shape[1])
    return xla_attention(q, k, v, q_slots, q_segments, k_segments, causal_blocks=blocks, window=window)


def _is_power_of_two(n: int) -> bool:
    return n & (n - 1) == 0
