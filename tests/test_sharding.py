"""Mesh construction, the logical-axis rules, and sharded training == single-device training.

Multi-device checks run in a subprocess with 8 fake CPU devices (the pytest process has one).
"""

import jax
import pytest

from xlit_jax import sharding

from support import run_with_devices


def test_mesh_shape_fills_in_minus_one_and_checks_the_product():
    assert sharding.mesh_shape(1, -1, 2, num_devices=8) == (1, 4, 2)
    assert sharding.mesh_shape(-1, 2, 1, num_devices=8) == (4, 2, 1)
    assert sharding.mesh_shape(1, -1, 1, num_devices=1) == (1, 1, 1)
    with pytest.raises(ValueError, match="at most one"):
        sharding.mesh_shape(-1, -1, 1, num_devices=8)
    with pytest.raises(ValueError, match="not a multiple"):
        sharding.mesh_shape(1, -1, 3, num_devices=8)
    with pytest.raises(ValueError, match="needs 4 devices"):
        sharding.mesh_shape(2, 2, 1, num_devices=8)


def test_one_device_mesh_replicates_everything():
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}
    assert sharding.batch_shards(mesh) == jax.device_count()


SHARDED_VS_SINGLE = r"""
import json, jax, numpy as np
from xlit_jax import sharding
from xlit_jax.models.llama import init_params
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.models.presets import get_preset
from xlit_jax.train import optim, step as step_lib

def batch(seed):
    rng = np.random.default_rng(seed)
    shape = (2, 8, 16)
    return {"input_ids": rng.integers(0, 256, shape).astype(np.int32),
            "targets": rng.integers(0, 256, shape).astype(np.int32),
            "loss_mask": (rng.random(shape) < 0.7).astype(np.float32),
            "segment_ids": np.ones(shape, np.int32),
            "positions": np.broadcast_to(np.arange(16), shape).astype(np.int32)}

def train(config, lora, params, mesh):
    schedule = optim.make_schedule("inverse_sqrt", 1e-3, 10)
    tx = optim.make_optimizer(schedule)
    state, shardings = step_lib.init_state(config, params, tx, mesh, lora)
    step = step_lib.make_train_step(config, tx, schedule, mesh, shardings, lora=lora)
    losses = []
    with sharding.activate(mesh):
        for seed in range(2):
            state, metrics = step(state, sharding.global_batch(batch(seed), sharding.batch_sharding(mesh, 1)))
            losses.append(float(metrics["loss"]))
    return losses, state

def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))

out = {}
base = get_preset("tiny")
lora = LoraConfig(rank=4, targets=("q", "k", "v", "o", "gate", "up", "down"))
cases = {"full": (None, init_params(base, 0), (1, 4, 2)),
         "lora": (lora, merge_params(init_params(base, 0), init_adapters(base, lora, 0)), (2, 2, 2))}
for name, (adapters, params, shape) in cases.items():
    single_losses, single = train(base, adapters, params, sharding.make_mesh(devices=jax.devices()[:1]))
    losses, state = train(base, adapters, params, sharding.make_mesh(*shape))
    kernel = state.full_params()["layers"]["mlp"]["up"]["kernel"]
    out[name] = {"single": single_losses, "sharded": losses,
                 "params_rel": max(rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(state.params),
                                                             jax.tree_util.tree_leaves(single.params))),
                 "kernel_spec": [a if a is None or isinstance(a, str) else list(a) for a in kernel.sharding.spec],
                 "kernel_shard": list(kernel.addressable_shards[0].data.shape), "kernel": list(kernel.shape)}
print(json.dumps(out))
"""


@pytest.mark.slow  # ~20 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_sharded_training_matches_single_device_on_8_devices():
    """fsdp 4 x tensor 2 (full fine-tuning) and data 2 x fsdp 2 x tensor 2 (LoRA): same losses and params
    as one device after two Adam steps, with the weights really split."""
    out = run_with_devices(SHARDED_VS_SINGLE)
    for case in ("full", "lora"):
        result = out[case]
        assert result["sharded"] == pytest.approx(result["single"], rel=1e-5)
        assert result["params_rel"] <= 1e-5
        assert result["kernel_spec"] == [None, "fsdp", "tensor"]
    full = out["full"]
    assert full["kernel_shard"] == [full["kernel"][0], full["kernel"][1] // 4, full["kernel"][2] // 2]
