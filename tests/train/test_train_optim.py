"""The learning-rate schedules' values and the optimizer's update rule."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlit_jax.errors import InputError
from xlit_jax.train.optim import make_optimizer, make_schedule


def values(schedule, steps):
    return np.array([float(schedule(t)) for t in steps])


def test_inverse_sqrt_without_warmup_is_lr_over_sqrt_n():
    schedule = make_schedule("inverse_sqrt", 1e-4, max_steps=1000)
    np.testing.assert_allclose(values(schedule, [0, 3, 99, 9999]), [1e-4, 5e-5, 1e-5, 1e-6], rtol=1e-6)


def test_inverse_sqrt_with_warmup_rises_linearly_then_decays_from_lr():
    schedule = make_schedule("inverse_sqrt", 1e-4, max_steps=1000, warmup_steps=4)
    expected = [2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4 * np.sqrt(4 / 5), 1e-4 * np.sqrt(4 / 16)]
    np.testing.assert_allclose(values(schedule, [0, 1, 2, 3, 4, 15]), expected, rtol=1e-6)


def pasero_lr(t: int, lr: float, max_steps: int, min_lr: float, warmup: int) -> float:
    """naver/pasero's LRScheduler.get_lr at scheduler step t (init_lr 0), in Python floats as it computes."""
    if warmup == 0:
        value = lr - t * (lr - min_lr) / max_steps
    elif t < warmup:
        value = t * lr / warmup
    else:
        value = lr * math.sqrt(warmup / t)
    return max(value, min_lr)


@pytest.mark.parametrize("lr, max_steps, min_lr, warmup", [(1e-5, 1000, 1e-6, 0), (1e-4, 1000, 1e-5, 0),
                                                           (1e-3, 50, 0.0, 0), (1e-4, 300, 1e-5, 40),
                                                           (1e-3, 100, 0.0, 10)])
def test_pasero_is_the_released_schedulers_value_at_every_update(lr, max_steps, min_lr, warmup):
    """Each of max_steps updates (and past the end) against the formula of pasero's LRScheduler: update t
    (counting from 0) uses the scheduler's value at step t, as pasero steps its scheduler after each update."""
    steps = np.arange(max_steps + 20)
    got = values(make_schedule("pasero", lr, max_steps, min_lr, warmup), steps)
    np.testing.assert_allclose(got, [pasero_lr(t, lr, max_steps, min_lr, warmup) for t in steps], rtol=2e-6,
                               atol=1e-12)


def test_pasero_without_warmup_starts_at_lr_and_is_floored_at_min_lr():
    schedule = make_schedule("pasero", 1e-5, max_steps=10, min_lr=1e-6)
    np.testing.assert_allclose(values(schedule, [0, 4, 9, 10, 20]), [1e-5, 1e-5 - 3.6e-6, 1.9e-6, 1e-6, 1e-6],
                               rtol=1e-5)


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(InputError, match="unknown schedule"):
        make_schedule("linear", 1e-3, 10)
    with pytest.raises(InputError, match="max_steps=0 must be at least 1"):
        make_schedule("pasero", 1e-3, max_steps=0)


def test_weight_decay_is_decoupled_and_scaled_by_lr():
    """With a zero gradient Adam's step is zero, leaving p * (1 - lr * wd), as torch.optim.AdamW does."""
    tx = make_optimizer(lambda t: 0.01, weight_decay=0.1)
    params = {"w": jnp.array([1.0, -2.0])}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], [0.999, -1.998], rtol=1e-7)


def test_clipping_bounds_the_gradient_norm_before_adam():
    """Adam divides by the gradient's scale, so clipping shows in the second step's moments: a huge first
    gradient, clipped to norm 1, weighs no more than a unit one."""
    tx = make_optimizer(lambda t: 1.0, weight_decay=0.0, clip_norm=1.0)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.array([3e6, 4e6])}, state, params)
    updates, _ = tx.update({"w": jnp.array([0.0, 1.0])}, state, params)
    reference = make_optimizer(lambda t: 1.0, weight_decay=0.0, clip_norm=0.0)
    ref_state = reference.init(params)
    _, ref_state = reference.update({"w": jnp.array([0.6, 0.8])}, ref_state, params)
    ref_updates, _ = reference.update({"w": jnp.array([0.0, 1.0])}, ref_state, params)
    np.testing.assert_allclose(updates["w"], ref_updates["w"], rtol=1e-6)


def test_the_paper_grid_runs_the_released_schedule_and_the_papers_text_is_one_flag_away():
    from configs.experiments import paper
    from xlit_jax.train.optim import OptimSettings

    cfg = paper.get_config("llama2-7b,dolly-en,lora,1e-4")
    schedule, _ = OptimSettings.from_config(cfg).build()  # pasero's, warm-up 0: a linear decay to lr / 10
    got = values(schedule, np.arange(1000))
    np.testing.assert_allclose(got[[0, 999]], [1e-4, 1e-4 - 999 * 9e-5 / 1000], rtol=1e-6)
    assert abs(got.mean() / 1e-4 - 0.55) < 0.001  # the mean step the authors ran
    cfg.optim.schedule = "inverse_sqrt"  # --config.optim.schedule=inverse_sqrt: the paper's text, lr / sqrt(n)
    schedule, _ = OptimSettings.from_config(cfg).build()
    got = values(schedule, np.arange(1000))
    np.testing.assert_allclose(got[[0, 3, 99]], [1e-4, 5e-5, 1e-5], rtol=1e-6)
    assert abs(got.mean() / 1e-4 - 0.061) < 0.001
