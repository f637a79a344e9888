"""Quantized projections (models/quantize.py): round-trip error bounds per format, the model on quantized kernels
against the same model on their dequantized values, a LoRA step on a quantized base against the same step on the
dequantized base (fp32), shardings of the codes and scales, SmolLM2's logits, and one-line refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import xlit_jax
from xlit_jax.errors import InputError
from xlit_jax.models import quantize
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.models.presets import get_preset
from xlit_jax.train import step as step_lib

from test_train_step import random_batch, stepper

CONFIG = get_preset("tiny")
IDS = np.array([[5, 17, 3, 99, 42, 7, 200, 1], [9, 9, 130, 4, 66, 250, 31, 2]])


def gaussian(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32) * 0.02


# The largest gap between neighbouring codes of each 4-bit codebook, over 2: the most a weight can move, in
# units of its group's absmax
HALF_GAP = {fmt: float(np.max(np.diff(codes))) / 2 for fmt, codes in quantize.CODEBOOKS.items()}


@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_round_trip_error_is_bounded_by_half_a_step_and_requantizing_is_exact(fmt):
    w = gaussian((3, 256, 96))  # three layers, as the scanned params hold them
    stored = quantize.quantize(w, fmt)
    back = quantize.dequantize(stored)
    assert back.shape == w.shape and back.dtype == jnp.float32
    error = np.abs(np.asarray(back - w))
    if fmt == "int8":  # per output channel: at most half a step (the scale, absmax / 127)
        bound = np.asarray(stored["kernel_scale"])[:, None, :] / 2
        assert stored["kernel_int8"].dtype == jnp.int8 and stored["kernel_scale"].shape == (3, 96)
    else:  # two codes a byte, a scale per group of 64 inputs
        assert stored[f"kernel_{fmt}"].shape == (3, 128, 96) and stored[f"kernel_{fmt}"].dtype == jnp.uint8
        assert stored["kernel_scale"].shape == (3, 256 // quantize.GROUP, 96)
        bound = np.repeat(np.asarray(stored["kernel_scale"]), quantize.GROUP, axis=1) * HALF_GAP[fmt]
    assert np.all(error <= bound * (1 + 1e-5) + 1e-9)
    relative = float(jnp.linalg.norm(back - w) / jnp.linalg.norm(w))
    assert relative < {"int8": 0.01, "nf4": 0.1, "int4": 0.12}[fmt]
    again = quantize.quantize(back, fmt)  # the dequantized values are codes times the same scales
    np.testing.assert_array_equal(again[f"kernel_{fmt}"], stored[f"kernel_{fmt}"])


def test_a_zero_kernel_and_a_kernel_that_does_not_split_into_groups():
    for fmt in quantize.FORMATS:
        np.testing.assert_array_equal(quantize.dequantize(quantize.quantize(jnp.zeros((64, 8)), fmt)), 0)
    with pytest.raises(ValueError, match="^nf4: a kernel with 96 inputs does not split into groups of 64$"):
        quantize.quantize(jnp.zeros((96, 8)), "nf4")


@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_the_model_on_quantized_kernels_is_the_model_on_their_dequantized_values(fmt):
    quantized = xlit_jax.load("preset:tiny", quantize=fmt)
    q = quantized.params["layers"]["attn"]["q"]
    assert set(q) == {f"kernel_{fmt}", "kernel_scale"} and "kernel" in quantized.params["lm_head"]
    dequantized = xlit_jax.load("preset:tiny")
    dequantized.params = quantize.dequantize_params(quantized.params)
    assert quantize.nbytes(quantized.params) < quantize.nbytes(dequantized.params)
    ours, theirs = quantized.logits(IDS), dequantized.logits(IDS)
    if fmt == "int8":  # the scale multiplies the product instead of the kernel: fp32 rounding apart
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    else:  # the same kernel, dequantized inside the program
        np.testing.assert_array_equal(ours, theirs)
    assert quantized.generate_ids([[1, 2, 3]], max_new_tokens=6) == dequantized.generate_ids([[1, 2, 3]], 6)


@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_a_lora_step_on_a_quantized_base_is_the_step_on_the_dequantized_base(fmt):
    params = xlit_jax.load("preset:tiny").params
    lora = LoraConfig(rank=4, base_quantization=fmt)
    adapters = init_adapters(CONFIG, LoraConfig(rank=4), 0)
    adapters = jax.tree_util.tree_map(lambda x: x + 0.01, adapters)  # B nonzero: every adapter in the loss
    dequantized = quantize.dequantize_params(quantize.quantize_params(params, fmt))
    batch = random_batch(2, 2)
    state, metrics = stepper(lora=lora)(merge_params(params, adapters), batch)
    reference, reference_metrics = stepper(lora=LoraConfig(rank=4))(merge_params(dequantized, adapters), batch)
    assert set(state.frozen["layers"]["mlp"]["up"]) == {f"kernel_{fmt}", "kernel_scale"}
    tolerance = {"rtol": 2e-5, "atol": 1e-7} if fmt == "int8" else {"rtol": 0, "atol": 0}
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics[key], reference_metrics[key], **tolerance)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **tolerance), state.params, reference.params)


def test_codes_and_scales_are_sharded_like_their_kernel():
    """On a (data, fsdp, tensor) mesh of one device every logical axis keeps its mesh axis: the codes take
    their kernel's, int8's per-channel scale the output axis, a 4-bit group scale both."""
    import optax

    from xlit_jax import sharding

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    for fmt, scale in (("int8", P(None, "tensor")), ("nf4", P(None, "fsdp", "tensor"))):
        _, shardings = step_lib.abstract_state(CONFIG, optax.sgd(1.0), mesh, LoraConfig(rank=4, base_quantization=fmt))
        q = shardings.frozen["layers"]["attn"]["q"]
        assert q[f"kernel_{fmt}"].spec == P(None, "fsdp", "tensor") and q["kernel_scale"].spec == scale
        assert shardings.frozen["layers"]["mlp"]["down"]["kernel_scale"].spec[-1] == "fsdp"


def test_an_unknown_format_and_a_quantized_full_fine_tune_are_one_line(tmp_path):
    from configs.experiments import tiny_ft, tiny_lora

    from xlit_jax.bench import twin
    from xlit_jax.train.loop import lora_config

    with pytest.raises(InputError, match="^quantize='int9' is not a quantization format: choose none, int8, nf4, "
                                         "int4$"):
        xlit_jax.load("preset:tiny", quantize="int9")
    cfg = tiny_lora.get_config()
    cfg.lora.base_quantization = "nf5"
    with pytest.raises(InputError, match="^lora.base_quantization='nf5' is not a quantization format"):
        lora_config(cfg)
    cfg = tiny_ft.get_config()
    cfg.lora.base_quantization = "int8"
    with pytest.raises(InputError, match=r"^lora.base_quantization=int8 quantizes a LoRA run's frozen base: full "
                                         r"fine-tuning \(lora.rank=0\) trains every weight$"):
        lora_config(cfg)
    cfg = tiny_lora.get_config()
    cfg.lora.base_quantization = "nf4"
    with pytest.raises(InputError, match=r"^lora.base_quantization=nf4: the reference \(peft\) cannot run a "
                                         "quantized base"):
        twin.check(cfg)
    with pytest.raises(ValueError, match="base_quantization='x' is not a quantization format"):
        LoraConfig(base_quantization="x")


def test_smollm2_quantized_logits_stay_near_float32(smollm2):
    """SmolLM2-135M's real weights: int8 moves the logits by a few hundredths (magnitude ~30) and keeps the
    greedy choice at nearly every position; the 4-bit formats move them more (docs/quantization.md)."""
    prompts = ["The capital of France is", "Bonjour, je m'appelle", "Привет! Как дела?", "O Brasil é um país"]
    from support import left_padded

    ids, mask = left_padded([smollm2.encode(p) for p in prompts])
    reference = smollm2.logits(ids, mask)
    on = mask == 1
    for fmt, (max_bound, mean_bound, agree) in {"int8": (1.0, 0.05, 0.95), "nf4": (6.0, 0.6, 0.7)}.items():
        model = xlit_jax.load("smollm2-135m", quantize=fmt)
        logits = model.logits(ids, mask)
        diff = np.abs(logits - reference)[on]
        same = (logits.argmax(-1) == reference.argmax(-1))[on].mean()
        assert diff.max() < max_bound and diff.mean() < mean_bound and same >= agree, (fmt, diff.max(), same)
