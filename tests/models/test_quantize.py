"""Quantized projections (models/quantize.py): round-trip error bounds per format, the model on quantized kernels
against the same model on their dequantized values, a LoRA step on a quantized base against the same step on the
dequantized base (fp32), shardings of the codes and scales, SmolLM2's logits, and one-line refusals."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import xlit_jax
from configs.experiments import tiny_ft, tiny_lora
from xlit_jax import sharding
from xlit_jax.errors import InputError, UserError, WeightsError
from xlit_jax.io.checkpoints import load_for_inference
from xlit_jax.models import quantize
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.models.presets import get_preset
from xlit_jax.perf import twin, workloads
from xlit_jax.train import optim
from xlit_jax.train import step as step_lib
from xlit_jax.train.loop import lora_config, train
from xlit_jax.train.record import check_resume, save_experiment

from support import COMPARED, in_ci_only, left_padded, run_with_devices, tiny_config, write_chats

CONFIG = get_preset("tiny")
IDS = np.array([[5, 17, 3, 99, 42, 7, 200, 1], [9, 9, 130, 4, 66, 250, 31, 2]])


def gaussian(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32) * 0.02


# The largest gap between neighbouring codes of each 4-bit codebook, over 2: the most a weight can move, in
# units of its group's absmax
HALF_GAP = {fmt: float(np.max(np.diff(codes))) / 2 for fmt, codes in quantize.CODEBOOKS.items()}
# whole-model cases: the 4-bit formats' in CI only; every format's round trip is in make test
MODEL_FORMATS = ["int8", *in_ci_only(*[(fmt,) for fmt in quantize.FORMATS[1:]])]


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


@pytest.mark.parametrize("fmt", MODEL_FORMATS)
def test_the_model_on_quantized_kernels_is_the_model_on_their_dequantized_values(fmt):
    quantized = xlit_jax.load("preset:tiny", quantize=fmt)
    q = quantized.params["layers"]["attn"]["q"]
    assert set(q) == {f"kernel_{fmt}", "kernel_scale"} and "kernel" in quantized.params["lm_head"]
    dequantized = xlit_jax.load("preset:tiny")
    same_model(quantized, dequantized, fmt)


def test_a_projection_with_a_bias_keeps_it_beside_its_codes():
    """Qwen2's q, k, v biases: the bias stays as it was, added to the quantized product."""
    quantized = xlit_jax.load("preset:tiny", quantize="nf4", qkv_bias=True)
    assert set(quantized.params["layers"]["attn"]["k"]) == {"kernel_nf4", "kernel_scale", "bias"}
    quantized.params["layers"]["attn"]["k"]["bias"] += 0.5  # zero at init: make it count
    same_model(quantized, xlit_jax.load("preset:tiny", qkv_bias=True), "nf4")


def same_model(quantized, dequantized, fmt):
    """`quantized`'s logits and greedy tokens are those of `dequantized` given its kernels dequantized."""
    dequantized.params = quantize.dequantize_params(quantized.params)
    assert quantize.nbytes(quantized.params) < quantize.nbytes(dequantized.params)
    ours, theirs = quantized.logits(IDS), dequantized.logits(IDS)
    if fmt == "int8":  # the scale multiplies the product instead of the kernel: fp32 rounding apart
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    else:  # the same kernel, dequantized inside the program
        np.testing.assert_array_equal(ours, theirs)
    assert quantized.generate_ids([[1, 2, 3]], max_new_tokens=6) == dequantized.generate_ids([[1, 2, 3]], 6)


def one_step(params, lora: LoraConfig):
    """(state, metrics) of one Adam step (lr 1e-3) from `params` on a fixed batch of 2 micro-batches, one device."""
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    train_step = step_lib.build(CONFIG, optim.OptimSettings(lr=1e-3, min_lr=1e-4), mesh, lora=lora)
    batch = workloads.train_batch(CONFIG.vocab_size, 2, 16, leading=(2,))
    with sharding.activate(mesh):
        return train_step.step(train_step.init(params), batch)


@pytest.mark.parametrize("fmt", MODEL_FORMATS)
def test_a_lora_step_on_a_quantized_base_is_the_step_on_the_dequantized_base(fmt):
    params = xlit_jax.load("preset:tiny").params
    adapters = init_adapters(CONFIG, LoraConfig(rank=4), 0)
    adapters = jax.tree_util.tree_map(lambda x: x + 0.01, adapters)  # B nonzero: every adapter in the loss
    dequantized = quantize.dequantize_params(quantize.quantize_params(params, fmt))
    state, metrics = one_step(merge_params(params, adapters), LoraConfig(rank=4, base_quantization=fmt))
    reference, reference_metrics = one_step(merge_params(dequantized, adapters), LoraConfig(rank=4))
    assert set(state.frozen["layers"]["mlp"]["up"]) == {f"kernel_{fmt}", "kernel_scale"}
    # 4-bit: the same kernel, dequantized inside the program, so the same step bit for bit. int8 scales the
    # product instead of the kernel: fp32 rounding apart, which Adam's update of a coordinate whose gradient
    # is near zero (g / sqrt(g^2)) turns into up to a few percent of the learning rate (1e-3).
    exact = fmt != "int8"
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics[key], reference_metrics[key], rtol=0 if exact else 1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0 if exact else 1e-4),
                           state.params, reference.params)


def test_codes_and_scales_are_sharded_like_their_kernel():
    """On a (data, fsdp, tensor) mesh of one device every logical axis keeps its mesh axis: the codes take
    their kernel's, int8's per-channel scale the output axis, a 4-bit group scale both."""

    from xlit_jax import sharding

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    for fmt, scale in (("int8", P(None, "tensor")), ("nf4", P(None, "fsdp", "tensor"))):
        _, shardings = step_lib.abstract_state(CONFIG, optax.sgd(1.0), mesh, LoraConfig(rank=4, base_quantization=fmt))
        q = shardings.frozen["layers"]["attn"]["q"]
        assert q[f"kernel_{fmt}"].spec == P(None, "fsdp", "tensor") and q["kernel_scale"].spec == scale
        assert shardings.frozen["layers"]["mlp"]["down"]["kernel_scale"].spec[-1] == "fsdp"


def test_an_unknown_format_and_a_quantized_full_fine_tune_are_one_line():
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


@pytest.mark.slow  # ~9 s: CI runs it; make test keeps the tiny model's (the model on its dequantized kernels)
def test_smollm2_quantized_logits_stay_near_float32(smollm2):
    """SmolLM2-135M's real weights (logits of magnitude ~30): int8 moves them by 0.19 on average and keeps
    the argmax at 94% of positions (measured: max 1.30); nf4 moves them ten times more (docs/quantization.md)."""
    prompts = ["The capital of France is", "Bonjour, je m'appelle", "Привет! Как дела?", "O Brasil é um país"]
    ids, mask = left_padded([smollm2.encode(p) for p in prompts])
    reference = smollm2.logits(ids, mask)
    on = mask == 1
    for fmt, (max_bound, mean_bound, agree) in {"int8": (2.0, 0.3, 0.9), "nf4": (30.0, 3.0, 0.5)}.items():
        model = xlit_jax.load("smollm2-135m", quantize=fmt)
        logits = model.logits(ids, mask)
        diff = np.abs(logits - reference)[on]
        same = (logits.argmax(-1) == reference.argmax(-1))[on].mean()
        assert diff.max() < max_bound and diff.mean() < mean_bound and same >= agree, (fmt, diff.max(), same)


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.en.jsonl")


def quantized_lora(chats, **changes):
    return tiny_config(chats, **{"lora.rank": 4, "lora.base_quantization": "nf4", **changes})


@pytest.fixture(scope="module")
def quantized_run(chats, tmp_path_factory):
    """An uninterrupted LoRA run on an nf4 base, exporting merged HF weights and the PEFT adapters."""
    workdir = tmp_path_factory.mktemp("qlora")
    train(quantized_lora(chats, **{"train.export_hf": True, "train.export_peft": True}), str(workdir))
    return workdir


def rows(workdir):
    return [{k: r[k] for k in COMPARED} for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow  # ~13 s: CI runs it; make test keeps the bf16 base's (test_train_loop.py)
def test_a_quantized_base_is_saved_once_resumes_bitwise_and_exports_dequantized(quantized_run, chats, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(quantized_run, workdir)
    assert json.loads((workdir / "model" / "lora.json").read_text())["base_quantization"] == "nf4"
    assert (workdir / "frozen").is_dir() and "kernel_nf4" in (workdir / "frozen" / "_METADATA").read_text()
    shutil.rmtree(workdir / "checkpoints" / "8")
    shutil.rmtree(workdir / "checkpoints" / "6")  # so the resumed run trains steps 5 to 8 again
    train(quantized_lora(chats), str(workdir))
    assert rows(workdir) == rows(quantized_run)
    config, params, _ = load_for_inference(workdir)  # the base dequantized, the adapters merged: a plain model
    assert "kernel" in params["layers"]["attn"]["q"] and "lora_a" not in params["layers"]["attn"]["q"]
    exported = xlit_jax.load(quantized_run / "export" / "hf")
    assert config == exported.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, exported.params)
    assert json.loads((quantized_run / "export" / "peft" / "adapter_config.json").read_text())["r"] == 4


@pytest.mark.slow  # CI runs it; make test keeps the unquantized base's rebuild (test_train_loop.py)
def test_a_damaged_quantized_base_is_rebuilt_quantized_on_resume(quantized_run, chats, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(quantized_run, workdir)
    data = sorted((workdir / "frozen").rglob("d/*"))[0]
    with open(data, "r+b") as f:  # still valid arrays: only the checksums tell
        f.seek(data.stat().st_size // 2)
        f.write(b"\x7f" * 16)
    with pytest.raises(WeightsError, match="the LoRA base cannot be restored"):
        load_for_inference(workdir)
    shutil.rmtree(workdir / "checkpoints" / "8")
    with caplog.at_level("WARNING"):
        train(quantized_lora(chats), str(workdir))
    assert any("rebuilt it from" in r.getMessage() for r in caplog.records)
    assert rows(workdir) == rows(quantized_run)
    jax.tree_util.tree_map(np.testing.assert_array_equal, load_for_inference(workdir)[1],
                           load_for_inference(quantized_run)[1])


def test_resuming_with_another_base_quantization_is_refused_in_one_line(tmp_path):
    save_experiment(quantized_lora(tmp_path / "chats.jsonl"), tmp_path)
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    check_resume(quantized_lora(tmp_path / "chats.jsonl"), tmp_path)
    other = quantized_lora(tmp_path / "chats.jsonl", **{"lora.base_quantization": "int8"})
    with pytest.raises(UserError, match='^.*: was trained with other settings: lora.base_quantization "nf4" -> '
                                        '"int8"; '):
        check_resume(other, tmp_path)


SHARDED_QUANTIZED = r"""
import json, jax, numpy as np
from xlit_jax import sharding
from xlit_jax.perf import workloads
from xlit_jax.models.llama import init_params
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.models.presets import get_preset
from xlit_jax.train import optim, step as step_lib

config = get_preset("tiny")
out = {}
for fmt in ("int8", "nf4"):
    lora = LoraConfig(rank=4, base_quantization=fmt)
    params = merge_params(init_params(config, 0), init_adapters(config, lora, 0))
    batch = workloads.train_batch(config.vocab_size, 8, 16, leading=(2,))
    losses = {}
    meshes = {"single": sharding.make_mesh(devices=jax.devices()[:1]), "sharded": sharding.make_mesh(2, 2, 2)}
    for name, mesh in meshes.items():
        train_step = step_lib.build(config, optim.OptimSettings(lr=1e-3, min_lr=1e-4), mesh, lora=lora)
        state = train_step.init(params)
        with sharding.activate(mesh):
            for _ in range(2):
                state, metrics = train_step.step(state, sharding.global_batch(batch, train_step.batch_sharding))
        losses[name] = float(metrics["loss"])
    codes = state.frozen["layers"]["mlp"]["up"][f"kernel_{fmt}"]
    out[fmt] = {**losses, "codes": list(codes.shape), "shard": list(codes.addressable_shards[0].data.shape)}
print(json.dumps(out))
"""


@pytest.mark.slow  # ~30 s in a subprocess with 8 CPU devices
def test_a_quantized_base_shards_its_codes_and_trains_as_on_one_device():
    out = run_with_devices(SHARDED_QUANTIZED)
    for fmt in ("int8", "nf4"):
        assert out[fmt]["sharded"] == pytest.approx(out[fmt]["single"], rel=1e-5)
        layers, rows, columns = out[fmt]["codes"]  # [L, embed (fsdp), mlp (tensor)]
        assert out[fmt]["shard"] == [layers, rows // 2, columns // 2]
