"""The train state and the jitted train step: k micro-batches accumulated by a scan, one optimizer update.

Only the trainable params are differentiated and optimized: all params in full fine-tuning, the LoRA adapters
in a LoRA run (a `LoraConfig` given to `build`, applied to the model by models/lora.py), whose frozen base
then has neither gradient buffers nor optimizer state. The frozen base is also kept in the compute dtype (bf16
on accelerators): it is never updated, so it needs no fp32 master copy, and every matmul casts it to that
dtype anyway. A 7B LoRA base takes 12.6 GiB instead of 25.1; what changes numerically is the RMSNorm scales
(and a tied embedding), rounded to bf16 as HF's bf16 models do.

`build` is the one place a train step (and its held-out loss, `evaluate`) is made: the loop, the compile-only
plans and the perf scripts all take a `TrainStep` from it (the functions below it are its parts; tests use
them to swap the optimizer). Its `attention` is the kernel this machine runs (models/attention.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xlit_jax import sharding
from xlit_jax.data.pipeline import BATCH_KEYS
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama, init_params
from xlit_jax.models.lora import LoraConfig, adapted, adapted_shapes, init_adapters, merge_params, split_lora
from xlit_jax.models.quantize import quantize_params, quantized_axes
from xlit_jax.train.optim import OptimSettings


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # trainable params
    frozen: Any  # params without gradients: the LoRA base, {} in full fine-tuning
    opt_state: Any

    def full_params(self):
        return merge_params(self.frozen, self.params)


def split_trainable(params, lora: LoraConfig | None) -> tuple[Any, Any]:
    """(trainable, frozen): the adapters and the base in a LoRA run, else (params, {})."""
    if lora is not None:
        base, adapters = split_lora(params)
        return adapters, base
    return params, {}


def freeze(config: LlamaConfig, frozen, lora: LoraConfig | None = None) -> Any:
    """The frozen params in the compute dtype, their kernels quantized as `lora.base_quantization` says
    (models/quantize.py), arrays or ShapeDtypeStructs."""
    stored = quantize_params(frozen, "none" if lora is None else lora.base_quantization)
    return jax.tree_util.tree_map(
        lambda x: x.astype(config.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, stored)


def state_shardings(config: LlamaConfig, tx: optax.GradientTransformation, mesh, params,
                    lora: LoraConfig | None = None) -> TrainState:
    """Shardings for every leaf of the TrainState built from `params` (arrays or ShapeDtypeStructs); a quantized
    base's codes and scales take their kernel's logical axes (models/quantize.py)."""
    trainable_axes, frozen_axes = split_trainable(nn.get_partition_spec(adapted_shapes(config, lora)), lora)
    trainable_shapes, frozen_shapes = split_trainable(params, lora)
    trainable = sharding.logical_shardings(trainable_axes, trainable_shapes, mesh)
    frozen_axes = quantized_axes(frozen_axes, "none" if lora is None else lora.base_quantization)
    frozen_shapes = jax.eval_shape(functools.partial(freeze, config, lora=lora), frozen_shapes)
    frozen = sharding.logical_shardings(frozen_axes, frozen_shapes, mesh)
    abstract_opt = jax.eval_shape(tx.init, trainable_shapes)
    opt = sharding.optimizer_shardings(tx, trainable, abstract_opt, mesh)
    return TrainState(step=sharding.replicated(mesh), params=trainable, frozen=frozen, opt_state=opt)


def abstract_state(config: LlamaConfig, tx: optax.GradientTransformation, mesh,
                   lora: LoraConfig | None = None) -> tuple[TrainState, TrainState]:
    """(the TrainState as ShapeDtypeStructs carrying their shardings, the shardings), allocating nothing: the
    target to restore a checkpoint into, or the input to compile a step for."""
    shapes = nn.meta.unbox(adapted_shapes(config, lora))
    shardings = state_shardings(config, tx, mesh, shapes, lora)
    trainable, frozen = split_trainable(shapes, lora)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=trainable,
                        frozen=jax.eval_shape(functools.partial(freeze, config, lora=lora), frozen),
                        opt_state=jax.eval_shape(tx.init, trainable))
    abstract = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      shapes, shardings)
    return abstract, shardings


def init_state(config: LlamaConfig, params, tx: optax.GradientTransformation, mesh,
               lora: LoraConfig | None = None) -> tuple[TrainState, TrainState]:
    """(state at step 0 on the mesh, its shardings) from host params, for any optimizer."""
    shardings = state_shardings(config, tx, mesh, params, lora)
    return _place(config, lora, params, tx, shardings), shardings


def _place(config: LlamaConfig, lora: LoraConfig | None, params, tx: optax.GradientTransformation,
           shardings: TrainState) -> TrainState:
    """The state at step 0 from host params, each leaf copied to its shards."""
    trainable, frozen = split_trainable(params, lora)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):  # quantized on the host, as it was loaded
        frozen = freeze(config, frozen, lora)
    trainable = jax.tree_util.tree_map(sharding.host_to_mesh, trainable, shardings.params)
    frozen = jax.tree_util.tree_map(sharding.host_to_mesh, frozen, shardings.frozen)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable)
    step = sharding.host_to_mesh(np.zeros((), np.int32), shardings.step)
    return TrainState(step, trainable, frozen, opt_state)


def token_losses(config: LlamaConfig, params, batch: dict, lora: LoraConfig | None = None, attention: str = "auto",
                 dropout_rng=None):
    """(sum of next-token NLL over loss-masked targets, number of such targets) for one [B, L] batch; with
    `dropout_rng`, the LoRA dropout applies."""
    with adapted(lora, deterministic=dropout_rng is None):
        logits, _ = Llama(config, attention).apply(
            {"params": params}, batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"],
            rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def _accumulate(config: LlamaConfig, lora: LoraConfig | None, attention: str, state: TrainState, batch: dict, key,
                grad_shardings):
    """Scan over the leading micro-batch axis: summed loss, summed gradients and the target-token count."""
    dropout = lora is not None and lora.dropout > 0

    def micro(carry, xs):
        grads, loss, tokens = carry
        mb, mb_key = xs

        def loss_fn(trainable):
            return token_losses(config, merge_params(state.frozen, trainable), mb, lora, attention,
                                mb_key if dropout else None)

        (mb_loss, mb_tokens), mb_grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree_util.tree_map(jnp.add, grads, mb_grads)
        grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
        return (grads, loss + mb_loss, tokens + mb_tokens), None

    k = batch["input_ids"].shape[0]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    carry = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, loss, tokens), _ = jax.lax.scan(micro, carry, (batch, jax.random.split(key, k)))
    return grads, loss, tokens


def train_step(config: LlamaConfig, lora: LoraConfig | None, attention: str, tx, schedule, seed: int, grad_shardings,
               state: TrainState, batch: dict):
    """One update from a batch of [k, B, L] arrays. The loss is the mean NLL over the response-token targets
    of all k micro-batches. A non-finite loss or gradient leaves the state unchanged and sets `finite` to 0."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    grads, loss_sum, tokens = _accumulate(config, lora, attention, state, batch, key, grad_shardings)
    denom = jnp.maximum(tokens, 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
    loss = loss_sum / denom
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "target_tokens": tokens,
               "finite": finite}
    return new, metrics


def eval_step(config: LlamaConfig, lora: LoraConfig | None, attention: str, state: TrainState, batch: dict):
    """The mean NLL over the response-token targets of [n, B, L] held-out batches, as `train_step` computes its
    loss (no dropout, no update): a scan over the leading axis."""
    params = state.full_params()

    def micro(carry, mb):
        loss, tokens = token_losses(config, params, mb, lora, attention)
        return (carry[0] + loss, carry[1] + tokens), None

    zero = jnp.zeros((), jnp.float32)
    (loss, tokens), _ = jax.lax.scan(micro, (zero, zero), batch)
    return {"loss": loss / jnp.maximum(tokens, 1.0), "target_tokens": tokens}


def make_train_step(config: LlamaConfig, tx, schedule, mesh, shardings: TrainState, seed: int = 0,
                    lora: LoraConfig | None = None, attention: str = "auto"):
    """The jitted step `(state, batch) -> (state, metrics)` with explicit in/out shardings; the input state
    is donated. Call it inside `sharding.activate(mesh)` so the model's logical constraints apply."""
    step = functools.partial(train_step, config, lora, attention, tx, schedule, seed, shardings.params)
    batch = {k: sharding.batch_sharding(mesh, leading=1) for k in BATCH_KEYS}
    return jax.jit(step, in_shardings=(shardings, batch), out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=0)


def make_eval_step(config: LlamaConfig, mesh, shardings: TrainState, lora: LoraConfig | None = None,
                   attention: str = "auto"):
    """The jitted `(state, batch) -> metrics` of `eval_step`, sharded like the train step; nothing donated."""
    batch = {k: sharding.batch_sharding(mesh, leading=1) for k in BATCH_KEYS}
    return jax.jit(functools.partial(eval_step, config, lora, attention), in_shardings=(shardings, batch),
                   out_shardings=sharding.replicated(mesh))


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A model's jitted train step on a mesh, with its optimizer and the layout of its state."""

    config: LlamaConfig
    lora: LoraConfig | None  # None: full fine-tuning
    attention: str  # the attention kernel setting (models/attention.py)
    mesh: jax.sharding.Mesh
    schedule: Callable
    tx: optax.GradientTransformation
    shardings: TrainState  # of every leaf of the state
    abstract: TrainState  # ShapeDtypeStructs carrying those shardings: a restore target, a plan's input
    step: Callable  # (state, [k, B, L] batch) -> (state, metrics); call it inside sharding.activate(mesh)
    evaluate: Callable  # (state, [n, B, L] held-out batch) -> {"loss", "target_tokens"}; the same way

    @property
    def batch_sharding(self):
        return sharding.batch_sharding(self.mesh, leading=1)

    def lower(self, batch):
        """The step lowered for the abstract state and `batch` (arrays or ShapeDtypeStructs), traced on the
        mesh (its attention kernel, its shardings)."""
        with sharding.activate(self.mesh):
            return self.step.lower(self.abstract, batch)

    def init(self, params) -> TrainState:
        """The state at step 0 from host params."""
        return _place(self.config, self.lora, params, self.tx, self.shardings)

    def init_on_device(self, seed: int = 0) -> TrainState:
        """The state at step 0 from random params made on the devices, nothing through the host (perf scripts
        of models too big for one device)."""
        config, lora, tx = self.config, self.lora, self.tx

        def fresh():
            params = init_params(config, seed)
            params = params if lora is None else merge_params(params, init_adapters(config, lora, seed))
            trainable, frozen = split_trainable(params, lora)
            return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen=freeze(config, frozen, lora),
                              opt_state=tx.init(trainable))

        return jax.jit(fresh, out_shardings=self.shardings)()


def build(config: LlamaConfig, settings: OptimSettings, mesh, seed: int = 0, lora: LoraConfig | None = None,
          attention: str = "auto") -> TrainStep:
    """The train step of `config` (with `lora`'s adapters, if any) on `mesh`, optimized as `settings` say and
    attending with the `attention` kernel; `seed` seeds dropout."""
    schedule, tx = settings.build()
    abstract, shardings = abstract_state(config, tx, mesh, lora)
    step = make_train_step(config, tx, schedule, mesh, shardings, seed, lora, attention)
    evaluate = make_eval_step(config, mesh, shardings, lora, attention)
    return TrainStep(config, lora, attention, mesh, schedule, tx, shardings, abstract, step, evaluate)
