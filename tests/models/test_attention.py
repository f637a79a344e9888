"""Every attention kernel against the XLA reference, the choice of kernel, and decoding through the kernels.

On CPU the Pallas kernels (splash, the GPU decode kernel) run in interpret mode, and the cuDNN call runs
through JAX's XLA version of `jax.nn.dot_product_attention` with the same mask and arguments: what is
tested is everything we build around the kernels (layouts, masks, padding, GQA, slots of the cache).
On an NVIDIA GPU the tests marked `gpu` run the kernels themselves (cuDNN, the Pallas decode kernel
compiled by Triton) against the reference: `pytest -m gpu tests/models/test_attention.py`, as
scripts/accelerator_check.sh does; their fp32 cases are CPU-only (the kernels take bf16/fp16 there).

Tolerances: fp32 kernels differ from the reference by summation order only (online softmax, blocks):
1e-5 absolute on outputs of magnitude ~1. bf16 kernels against the fp32 reference: 3% of the largest
output (bf16 keeps 8 mantissa bits, ~0.4% per rounding, over a softmax and two matmuls).
"""

import functools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xlit_jax
from xlit_jax.errors import InputError
from xlit_jax.models import attention

from support import REPO, in_ci_only, run_with_devices

HEAD_DIM = 16
FP32_TOL = 1e-5
BF16_REL = 0.03  # fp16 (11 mantissa bits) is held to the same bound
ON_GPU = jax.default_backend() == "gpu"
CUDNN = "cudnn" if ON_GPU else "xla"  # jax.nn.dot_product_attention's implementation
INTERPRET = not ON_GPU  # the Pallas kernels


def cpu_only(*values):
    """A parameter set for the CPU stand-ins only: on a GPU the fused kernels take bf16/fp16 alone."""
    return pytest.param(*values, marks=pytest.mark.skipif(ON_GPU, reason="fp32: the fused kernels' CPU stand-in"))


def gpu_only(*values):
    """An fp16 parameter set of cuDNN: its XLA stand-in needs fp16 dots with fp32 sums, which XLA:CPU lacks."""
    return pytest.param(*values, marks=pytest.mark.skipif(not ON_GPU, reason="fp16 cuDNN: GPU only"))


def packed_segments(length: int) -> np.ndarray:
    """Rows of every kind: 3 packed segments then padding, left padding, fully padded, one whole segment."""
    rows = np.zeros((4, length), np.int32)
    a, b = length // 3, 2 * length // 3
    rows[0, :a], rows[0, a:b], rows[0, b:length - 5] = 1, 2, 3
    rows[1, 7:] = 1
    rows[3, :] = 1
    return rows


def random_qkv(heads: int, kv_heads: int, t: int, s: int, seed: int = 0):
    """q [B, T, H, D] and k, v [B, K, S, D], fp32."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (4, t, heads, HEAD_DIM))
    k = jax.random.normal(keys[1], (4, kv_heads, s, HEAD_DIM))
    v = jax.random.normal(keys[2], (4, kv_heads, s, HEAD_DIM))
    return q, k, v


def compare(kernel, q, k, v, q_segments, dtype, grads: bool):
    """Outputs at real (non-padding) queries, and gradients of a loss over them, of `kernel.under_test` in
    `dtype` against `kernel.reference` in fp32."""
    real = jnp.asarray(q_segments != 0)[:, :, None, None]
    cotangent = jax.random.normal(jax.random.PRNGKey(9), q.shape) * real

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * cotangent)

    cast = [x.astype(dtype) for x in (q, k, v)]
    got, want = jax.jit(kernel.under_test)(*cast), jax.jit(kernel.reference)(q, k, v)
    check(np.where(real, got.astype(jnp.float32), 0), np.where(real, want, 0), dtype)
    if grads:
        got_grads = jax.jit(jax.grad(functools.partial(loss, kernel.under_test), argnums=(0, 1, 2)))(*cast)
        want_grads = jax.jit(jax.grad(functools.partial(loss, kernel.reference), argnums=(0, 1, 2)))(q, k, v)
        for g, w in zip(got_grads, want_grads):
            check(g.astype(jnp.float32), w, dtype)


def check(got, want, dtype):
    got, want = np.asarray(got), np.asarray(want)
    if dtype == jnp.float32:
        np.testing.assert_allclose(got, want, atol=FP32_TOL, rtol=0)
    else:
        assert np.abs(got - want).max() <= BF16_REL * np.abs(want).max()


class Kernel(NamedTuple):
    under_test: Callable  # (q, k, v) -> out, in the dtype of its inputs
    reference: Callable  # (q, k, v) -> out by xla_attention


def no_cache(fn, segments, window=None):
    """A kernel and the reference over a batch without cache (T = S, slots 0..T-1)."""
    slots, segs = jnp.arange(segments.shape[1]), jnp.asarray(segments)
    return Kernel(lambda q, k, v: fn(q, k, v, slots, segs),
                  lambda q, k, v: attention.xla_attention(q, k, v, slots, segs, segs, window=window))


def test_the_sliding_window_shows_a_query_itself_and_the_window_minus_one_keys_before_it():
    """transformers' Mistral mask (masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window),
    within a segment."""
    mask = np.asarray(attention.attention_mask(jnp.arange(6), jnp.ones((1, 6), int), jnp.ones((1, 6), int), 3))[0]
    np.testing.assert_array_equal(mask, [[k <= q and q - k < 3 for k in range(6)] for q in range(6)])


# GQA (6 heads over 2) and plain multi-head (6 over 6) in fp32, bf16 and fp16; an odd length, which
# cuDNN's backward pass cannot take with a mask, is padded by one slot; a sliding window of 5.
@pytest.mark.gpu
@pytest.mark.parametrize("kv_heads, dtype, length, window", [
    cpu_only(2, jnp.float32, 24, None), (2, jnp.bfloat16, 24, None), gpu_only(2, jnp.float16, 24, None),
    (6, jnp.bfloat16, 24, None), cpu_only(6, jnp.float32, 25, None), gpu_only(6, jnp.float16, 25, None),
    cpu_only(2, jnp.float32, 25, 5), (2, jnp.bfloat16, 24, 5)])
def test_cudnn_packed_rows_match_reference(kv_heads, dtype, length, window):
    segments = packed_segments(length)
    kernel = no_cache(lambda q, k, v, slots, segs: attention.cudnn_attention(
        q, k, v, slots, segs, segs, cached=False, window=window, implementation=CUDNN), segments, window)
    compare(kernel, *random_qkv(6, kv_heads, length, length), segments, dtype, grads=True)


@pytest.mark.parametrize("kv_heads, dtype, window", [(2, jnp.float32, None), (6, jnp.bfloat16, None),
                                                     (2, jnp.float32, 20)])
def test_splash_packed_rows_match_reference(kv_heads, dtype, window):
    segments = packed_segments(128)
    kernel = no_cache(lambda q, k, v, slots, segs: attention.splash_attention(
        q, k, v, segs, block=128, window=window, interpret=True), segments, window)
    compare(kernel, *random_qkv(6, kv_heads, 128, 128, seed=1), segments, dtype, grads=True)


@pytest.mark.parametrize("blocks, length, window", [(4, 200, None), (3, 130, None), (4, 200, 30)])
def test_causal_query_blocks_change_no_output_or_gradient(blocks, length, window):
    """The reference split into query blocks that skip the keys after them (uneven blocks at 130 and 200)
    against the reference in one piece, over packed segments and padding, GQA; and with a sliding window."""
    segments = packed_segments(length)
    blocked = no_cache(lambda q, k, v, slots, segs: attention.xla_attention(
        q, k, v, slots, segs, segs, causal_blocks=blocks, window=window), segments, window)
    assert attention.query_blocks(length) == min(4, length // 64) > 1
    compare(blocked, *random_qkv(6, 2, length, length, seed=3), segments, jnp.float32, grads=True)


@pytest.mark.slow  # ~15 s: CI runs it, make test stays under 10 minutes
def test_splash_under_shard_map_on_a_mesh_and_a_length_off_the_block():
    """4 CPU devices, batch over data=2 and heads over tensor=2; length 100 is padded to the 128 block."""
    result = run_with_devices(textwrap.dedent("""
        import json, sys
        import jax, numpy as np
        sys.path[:0] = ["tests", "tests/models"]
        from test_attention import packed_segments, random_qkv
        from xlit_jax import sharding
        from xlit_jax.models import attention
        segments = jax.numpy.asarray(packed_segments(100))
        q, k, v = random_qkv(6, 2, 100, 100)
        want = attention.xla_attention(q, k, v, jax.numpy.arange(100), segments, segments)
        with sharding.activate(sharding.make_mesh(2, 1, 2)):
            got = jax.jit(lambda *a: attention.splash_attention(*a, interpret=True))(q, k, v, segments)
        error = np.where(np.asarray(segments != 0)[:, :, None, None], got - want, 0)
        print(json.dumps({"error": float(np.abs(error).max())}))
        """), devices=4)
    assert result["error"] <= FP32_TOL


def decoding_cache(prompt: int, filled: int, length: int):
    """Cache segments [B, S] of a left-padded decoding batch: prompts of different lengths (one row all
    padding), `filled - prompt` generated tokens after them, unfilled slots after that."""
    segments = np.zeros((4, length), np.int32)
    for row, start in enumerate([0, 5, prompt, 11]):
        segments[row, start:prompt] = 1
        segments[row, prompt:filled] = 1
    return segments


# a decoding step and a prefill (T != S, queries not at slot 0)
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, t, window", [(jnp.bfloat16, 1, None), cpu_only(jnp.float32, 16, None),
                                              gpu_only(jnp.float16, 16, None), (jnp.bfloat16, 16, None),
                                              cpu_only(jnp.float32, 16, 8), (jnp.bfloat16, 1, 8)])
def test_cudnn_with_cache_matches_reference(dtype, t, window):
    length, filled = 64, 40
    k_segments = jnp.asarray(decoding_cache(32, filled, length))
    slots = filled - t + jnp.arange(t)
    q_segments = k_segments[:, filled - t:filled]
    kernel = Kernel(
        lambda q, k, v: attention.cudnn_attention(q, k, v, slots, q_segments, k_segments, cached=True,
                                                  window=window, implementation=CUDNN),
        lambda q, k, v: attention.xla_attention(q, k, v, slots, q_segments, k_segments, window=window))
    compare(kernel, *random_qkv(6, 2, t, length, seed=3), np.asarray(q_segments), dtype, grads=False)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_heads, dtype, window", [cpu_only(2, jnp.float32, None), (2, jnp.bfloat16, None),
                                                     (6, jnp.float16, None), cpu_only(2, jnp.float32, 8),
                                                     (2, jnp.bfloat16, 8)])
def test_gpu_decode_kernel_reads_the_filled_slots_like_the_reference(kv_heads, dtype, window):
    length = attention.cache_length(40, "cudnn")
    filled = 40
    k_segments = jnp.asarray(decoding_cache(32, filled, length))
    slots = jnp.array([filled - 1])
    q_segments = k_segments[:, filled - 1:filled]
    q, k, v = random_qkv(6, kv_heads, 1, length, seed=4)
    k = k.at[:, :, filled:].set(1e4)  # garbage in unfilled slots must not matter
    kernel = Kernel(
        lambda q, k, v: attention.decode_attention(q, k, v, slots, k_segments, window=window, interpret=INTERPRET),
        lambda q, k, v: attention.xla_attention(q, k, v, slots, q_segments, k_segments, window=window))
    compare(kernel, q, k, v, np.asarray(q_segments), dtype, grads=False)


@pytest.mark.parametrize("dtype, window", [(jnp.float32, None), (jnp.bfloat16, None), (jnp.float32, 100)])
def test_length_aware_xla_decoding_matches_reference(dtype, window):
    filled, length = 200, attention.cache_length(300, "splash")  # 2 chunks of 256, the second unfilled
    k_segments = jnp.asarray(decoding_cache(190, filled, length))
    slots = jnp.array([filled - 1])
    q_segments = k_segments[:, filled - 1:filled]
    q, k, v = random_qkv(6, 2, 1, length, seed=5)
    k = k.at[:, :, filled:].set(1e4)  # garbage in unfilled slots of a chunk that is read must not matter
    unread = v.at[:, :, 256:].set(jnp.nan)  # a chunk that is read would turn the output into NaN
    kernel = Kernel(
        lambda q, k, v: attention.chunked_decode_attention(q, k, unread.astype(v.dtype), slots, k_segments, window),
        lambda q, k, v: attention.xla_attention(q, k, v, slots, q_segments, k_segments, window=window))
    compare(kernel, q, k, v, np.asarray(q_segments), dtype, grads=False)


def test_cache_lengths_fit_the_decoding_step():
    assert [attention.cache_length(n, "cudnn") for n in (1, 256, 300, 2048, 2049)] == [256, 256, 512, 2048, 4096]
    assert [attention.cache_length(n, "splash") for n in (1, 256, 300)] == [256, 256, 512]
    assert attention.cache_length(300, "xla") == 300


# ---- choosing a kernel ----------------------------------------------------------------------------------

def test_auto_picks_by_platform_and_dtype():
    assert attention.choose("auto", "float32", 64) == "xla"  # this CPU
    assert attention.choose("auto", "bfloat16", 64, platform="tpu") == "splash"
    assert attention.choose("auto", "bfloat16", 64, platform="gpu") == "cudnn"
    assert attention.choose("auto", "float32", 64, platform="gpu") == "xla"
    assert attention.choose("auto", "bfloat16", 12, platform="gpu") == "xla"


@pytest.mark.parametrize("request_, match", [
    (("cudnn", "bfloat16", 64), "attention=cudnn: cuDNN attention needs an NVIDIA GPU, and this run is on cpu; "
                                "use attention=xla"),
    (("splash", "bfloat16", 64), "attention=splash: splash attention needs a TPU, and this run is on cpu; "
                                 "use attention=xla"),
    (("cudnn", "float32", 64, "gpu"), "attention=cudnn: .* bfloat16 or float16 only, and dtype is float32"),
    (("cudnn", "bfloat16", 12, "gpu"), "attention=cudnn: .* multiple of 8 and <= 256, and it is 12"),
])
def test_bad_requests_name_the_setting_and_the_way_out(request_, match):
    with pytest.raises(InputError, match=match):
        attention.choose(*request_)


def test_a_model_refuses_a_kernel_this_machine_lacks_before_compiling():
    with pytest.raises(InputError, match="attention=cudnn"):
        xlit_jax.load("preset:tiny", attention="cudnn")
    model = xlit_jax.load("preset:tiny")
    cudnn = functools.partial(xlit_jax.Model, model.config, tokenizer=None, name="x", attention="cudnn")
    with pytest.raises(InputError, match="attention=cudnn"):  # raised while tracing: nothing compiled
        jax.jit(lambda p: cudnn(params=p).logits(np.ones((1, 4), np.int32))).trace(model.params)


def test_xlit_generate_reports_a_kernel_this_machine_lacks_in_one_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 1, "prompt": "hi"}\n')
    done = subprocess.run([sys.executable, "-m", "launch.generate", "--model=preset:tiny", "--attention=cudnn",
                           f"--prompts={prompts}", f"--out={tmp_path / 'out.jsonl'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "xlit-generate: attention=cudnn: cuDNN attention needs an NVIDIA GPU, and this run is on cpu; use "
        "attention=xla")


def test_bad_config_value_is_refused():
    with pytest.raises(ValueError, match="attention='flash' is not one of"):
        xlit_jax.load("preset:tiny", attention="flash")


# ---- decoding -------------------------------------------------------------------------------------------

NEW_TOKENS = 12  # as in test_generate.py: the same compiled programs serve both files


def tiny_prompts(n: int):
    rng = np.random.default_rng(0)
    return [rng.integers(3, 256, rng.integers(1, 32)).tolist() for _ in range(n)]


@pytest.mark.slow  # ~6 s: CI runs it; make test keeps the engine's slot tests (tests/decode/test_engine.py)
def test_same_tokens_with_1_3_and_16_slots():
    model = xlit_jax.load("preset:tiny", seed=2)
    prompts = tiny_prompts(16)
    outputs = [model.generate_ids(prompts, NEW_TOKENS, repetition_penalty=1.1, slots=n) for n in (1, 3, 16)]
    assert outputs[0] == outputs[1] == outputs[2]
    assert sum(len(o) for o in outputs[0]) > 16 * 5


def run_on_cpu_as(monkeypatch, kernel: str):
    """Make the model take the `kernel` path on this CPU: cuDNN's call through JAX's XLA version, the Pallas
    kernels interpreted. The config is unchanged, so jitted functions must be compiled again."""
    monkeypatch.setattr(attention, "choose", lambda *args, **kw: kernel)
    monkeypatch.setattr(attention, "cudnn_attention",
                        functools.partial(attention.cudnn_attention, implementation="xla"))
    monkeypatch.setattr(attention, "decode_attention",
                        functools.partial(attention.decode_attention, interpret=True))
    monkeypatch.setattr(attention, "splash_attention",
                        functools.partial(attention.splash_attention, interpret=True))
    jax.clear_caches()


@pytest.mark.parametrize("kernel, window", [
    ("cudnn", 8), *in_ci_only(("cudnn", None), ("splash", None), ("splash", 8))])
def test_decoding_through_the_accelerator_paths_gives_the_reference_tokens(monkeypatch, kernel, window):
    """The wiring of each accelerator path through a real decoding loop. cudnn: prefill with an explicit
    mask, decoding steps through the Pallas kernel over a cache rounded up for it. splash: prefill by the
    reference, decoding steps by the length-aware XLA loop. With a sliding window shorter than the prompts."""
    model = xlit_jax.load("preset:tiny", seed=3, sliding_window=window)
    prompts = tiny_prompts(3)
    want = model.generate_ids(prompts, NEW_TOKENS, repetition_penalty=1.1, slots=4)
    run_on_cpu_as(monkeypatch, kernel)
    try:
        assert model.generate_ids(prompts, NEW_TOKENS, repetition_penalty=1.1, slots=4) == want
    finally:
        jax.clear_caches()


@pytest.mark.gpu
@pytest.mark.slow  # its CPU stand-in ~20 s: CI runs it (and the GPU check, -m gpu)
def test_bfloat16_greedy_decoding_through_cudnn_agrees_with_xla(monkeypatch, record_property):
    """A small random LLaMA in bf16 (weights and compute), greedy, attention=cudnn (prefill by cuDNN,
    steps by the Pallas kernel) against attention=xla: the tokens each row shares before the first
    difference. Both paths round in bf16 at different places (~0.4% per rounding), so a token flips only
    where the top two logits lie within that noise; after a flip the row's rest differs. Expected: at
    least 3/4 of the tokens in agreeing prefixes (the CPU stand-ins: 186 of 192, 15 of 16 rows)."""
    xla = xlit_jax.load("preset:tiny", seed=3, dtype="bfloat16", param_dtype="bfloat16", attention="xla")
    prompts = tiny_prompts(16)
    want = xla.generate_ids(prompts, NEW_TOKENS, slots=16)
    if not ON_GPU:
        run_on_cpu_as(monkeypatch, "cudnn")
    try:
        cudnn = xlit_jax.Model(xla.config, xla.params, None, "bf16 cudnn", attention="cudnn")
        got = cudnn.generate_ids(prompts, NEW_TOKENS, slots=16)
    finally:
        jax.clear_caches()
    agree = sum(next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
                for g, w in zip(got, want))
    total = sum(map(len, want))
    for name, value in (("tokens", total), ("tokens_in_agreeing_prefixes", agree),
                        ("rows_identical", sum(g == w for g, w in zip(got, want))), ("rows", len(want))):
        record_property(name, value)
    assert total > 16 * 5 and agree >= 0.75 * total


@pytest.mark.manual  # (the kernels' own bf16 checks above are in the fast suite)
@pytest.mark.parametrize("kernel", ["cudnn", "splash"])
def test_bfloat16_inference_through_each_kernel_agrees_with_float32(monkeypatch, kernel):
    """The bf16 agreement check of test_model_parity.py through the fused paths, with bf16 weights as
    inference on accelerators loads them, on a left-padded batch."""
    fp32 = xlit_jax.load("preset:tiny", seed=4)
    ids = np.random.default_rng(1).integers(3, 256, (2, 20)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :6] = 0
    exact = fp32.logits(ids, mask)
    run_on_cpu_as(monkeypatch, kernel)
    try:
        config = fp32.config.replace(dtype="bfloat16", param_dtype="bfloat16")
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), fp32.params)
        approx = xlit_jax.Model(config, params, None, "bf16").logits(ids, mask)
    finally:
        jax.clear_caches()
    real = mask.astype(bool)
    assert 0 < np.abs(exact - approx)[real].max() <= 0.03 * np.abs(exact[real]).max()
