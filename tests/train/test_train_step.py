"""The jitted train step on the tiny preset, one CPU device: loss masking, accumulation, the NaN guard."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlit_jax import sharding
from xlit_jax.models.llama import Llama, init_params
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.models.presets import get_preset
from xlit_jax.train import optim
from xlit_jax.train import step as step_lib

CONFIG = get_preset("tiny")


def random_batch(k, rows, length=16, seed=0):
    """[k, rows, length] arrays: two packed segments per row, padding at the end, a random loss mask."""
    rng = np.random.default_rng(seed)
    shape = (k, rows, length)
    segments = np.where(np.arange(length) < 7, 1, np.where(np.arange(length) < length - 2, 2, 0))
    segment_ids = np.broadcast_to(segments, shape).astype(np.int32)
    positions = np.where(segments == 2, np.arange(length) - 7, np.arange(length))
    return {
        "input_ids": rng.integers(0, CONFIG.vocab_size, shape).astype(np.int32),
        "targets": rng.integers(0, CONFIG.vocab_size, shape).astype(np.int32),
        "loss_mask": ((rng.random(shape) < 0.6) & (segment_ids > 0)).astype(np.float32),
        "segment_ids": segment_ids,
        "positions": np.broadcast_to(np.where(segments == 0, 0, positions), shape).astype(np.int32),
    }


@functools.cache
def stepper(config=CONFIG, sgd=False, lora=None):
    """`run(params, batch) -> (state, metrics)`: one step from fresh state on one device, jitted once per
    config and LoRA. `sgd` swaps Adam for plain SGD (lr 1), whose update is the gradient itself."""
    schedule = optim.make_schedule("inverse_sqrt", 1.0 if sgd else 1e-3, 100)
    tx = optax.sgd(schedule) if sgd else optim.make_optimizer(schedule)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    _, shardings = step_lib.abstract_state(config, tx, mesh, lora)
    train_step = step_lib.make_train_step(config, tx, schedule, mesh, shardings, lora=lora)

    def run(params, batch):
        state, _ = step_lib.init_state(config, params, tx, mesh, lora)
        with sharding.activate(mesh):
            return train_step(state, batch)

    return run


def host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def test_loss_is_the_mean_nll_over_masked_targets_only():
    params = init_params(CONFIG, 0)
    batch = random_batch(1, 4)
    _, metrics = stepper(sgd=True)(params, batch)
    micro = {k: v[0] for k, v in batch.items()}
    logits, _ = Llama(CONFIG).apply({"params": params}, micro["input_ids"], positions=micro["positions"],
                                    segment_ids=micro["segment_ids"])
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), micro["targets"][..., None], -1)[..., 0]
    expected = (nll * micro["loss_mask"]).sum() / micro["loss_mask"].sum()
    assert float(metrics["target_tokens"]) == micro["loss_mask"].sum()
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-6)


def test_targets_outside_the_loss_mask_change_nothing():
    params = init_params(CONFIG, 0)
    batch = random_batch(1, 4)
    other = dict(batch, targets=np.where(batch["loss_mask"] > 0, batch["targets"], 7).astype(np.int32))
    assert (other["targets"] != batch["targets"]).any()
    state_a, metrics_a = stepper(sgd=True)(params, batch)
    state_b, metrics_b = stepper(sgd=True)(params, other)
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, host(state_a.params), host(state_b.params))


def test_k_micro_batches_equal_one_batch_k_times_the_size():
    """Same loss and gradient (SGD's update) whether 4 rows come as 2 micro-batches of 2 or one of 4."""
    params = init_params(CONFIG, 0)
    batch = random_batch(2, 2, seed=1)
    merged = {k: v.reshape(1, 4, *v.shape[2:]) for k, v in batch.items()}
    state_k, metrics_k = stepper(sgd=True)(params, batch)
    state_1, metrics_1 = stepper(sgd=True)(params, merged)
    np.testing.assert_allclose(float(metrics_k["loss"]), float(metrics_1["loss"]), rtol=1e-6)
    assert float(metrics_k["target_tokens"]) == batch["loss_mask"].sum()
    # SGD at lr 1: old - new is the gradient, to within an ulp of the params (hence atol).
    grads = lambda state: jax.tree_util.tree_map(lambda new, old: np.asarray(old) - np.asarray(new),  # noqa: E731
                                                 state.params, params)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-7),
                           grads(state_k), grads(state_1))


@pytest.mark.parametrize("remat", ["none", "full"])
def test_rematerialisation_changes_no_loss_or_gradient(remat):
    """The default policy (save the matmul outputs, recompute the rest: the fastest on CPU) against no and
    full recomputation: the same loss and SGD update, to within fp32 reassociation of fused ops."""
    params = init_params(CONFIG, 0)
    batch = random_batch(1, 4, seed=2)
    assert CONFIG.remat == "dots"
    state_dots, metrics_dots = stepper(sgd=True)(params, batch)
    state_other, metrics_other = stepper(CONFIG.replace(remat=remat), sgd=True)(params, batch)
    np.testing.assert_allclose(float(metrics_other["loss"]), float(metrics_dots["loss"]), rtol=1e-6)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                           host(state_other.params), host(state_dots.params))


def test_a_non_finite_loss_leaves_the_state_as_it_was():
    params = init_params(CONFIG, 0)
    params["layers"]["mlp"]["up"]["kernel"] = params["layers"]["mlp"]["up"]["kernel"].at[0, 0, 0].set(jnp.nan)
    state, metrics = stepper(sgd=True)(params, random_batch(1, 4))
    assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, host(state.params), host(params))


def test_lora_trains_the_adapters_only_with_no_state_for_the_base():
    """Also with dropout on the adapters' input: active in training, and the same mask on a rerun of the
    same step (keys come from the seed and the step number)."""
    lora = LoraConfig(rank=4, targets=("q", "v", "down"), dropout=0.5)
    base = init_params(CONFIG, 0)
    adapters = jax.tree_util.tree_map(lambda x: x + 0.1, init_adapters(CONFIG, lora, 1))  # B off zero: dropout shows
    params = merge_params(base, adapters)
    batch = random_batch(1, 2)
    state, metrics = stepper(lora=lora)(params, batch)
    _, again = stepper(lora=lora)(params, batch)
    assert bool(metrics["finite"]) and float(metrics["loss"]) == float(again["loss"])
    total, count = step_lib.token_losses(CONFIG, params, {k: v[0] for k, v in batch.items()}, lora)
    assert abs(float(metrics["loss"]) - float(total / count)) > 1e-4
    adapter_shapes = {p: x.shape for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    assert adapter_shapes and all(str(p[-1].key).startswith("lora_") for p in adapter_shapes)
    # Adam's moments mirror the adapters; nothing in the optimizer state is base-sized.
    opt_shapes = [x.shape for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim]
    assert sorted(opt_shapes) == sorted(list(adapter_shapes.values()) * 2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, host(state.frozen), host(base))
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(host(state.params)),
                                                      jax.tree_util.tree_leaves(host(adapters)))]
    assert all(moved)


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_mixed_precision_keeps_float32_master_weights_and_optimizer_state(dtype):
    config = CONFIG.replace(dtype=dtype)
    state, metrics = stepper(config)(init_params(config, 0), random_batch(1, 2))
    assert bool(metrics["finite"])
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.params)} == {np.dtype("float32")}
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim} == {np.dtype("float32")}


def test_a_bf16_lora_run_keeps_its_frozen_base_in_bf16_and_the_adapters_in_float32():
    """No fp32 master copy of weights that never change: half the base's memory; the abstract state (plans,
    checkpoint restores) says the same dtypes as the real one."""
    config, lora = CONFIG.replace(dtype="bfloat16"), LoraConfig(rank=4, targets=("q", "v"))
    params = merge_params(init_params(CONFIG, 0), init_adapters(config, lora, 1))
    state, metrics = stepper(config, lora=lora)(params, random_batch(1, 2))
    assert bool(metrics["finite"])
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.frozen)} == {np.dtype("bfloat16")}
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.params)} == {np.dtype("float32")}
    tx = optim.make_optimizer(optim.make_schedule("pasero", 1e-3, 10))
    abstract, _ = step_lib.abstract_state(config, tx, sharding.make_mesh(), lora)
    dtypes = lambda tree: [x.dtype for x in jax.tree_util.tree_leaves(tree)]  # noqa: E731
    assert dtypes(abstract.frozen) == dtypes(state.frozen) and dtypes(abstract.params) == dtypes(state.params)
