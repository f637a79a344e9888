"""The learning-rate schedules' values and the optimizer's update rule."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def test_linear_decays_from_lr_to_min_lr_at_the_last_step_and_stays():
    schedule = make_schedule("linear", 1e-5, max_steps=10, min_lr=1e-6)
    got = values(schedule, [0, 4, 9, 20])
    np.testing.assert_allclose(got, [1e-5 - 0.9e-6, 1e-5 - 4.5e-6, 1e-6, 1e-6], rtol=1e-5)


def test_linear_with_warmup_peaks_at_the_end_of_warmup():
    schedule = make_schedule("linear", 1e-3, max_steps=12, min_lr=0.0, warmup_steps=2)
    np.testing.assert_allclose(values(schedule, [0, 1, 6, 11]), [5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("cosine", 1e-3, 10)
    with pytest.raises(ValueError, match="must exceed"):
        make_schedule("linear", 1e-3, max_steps=5, warmup_steps=5)


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


def test_the_paper_grid_uses_the_papers_schedule_and_the_released_one_is_one_flag_away():
    from configs.experiments import paper
    from xlit_jax.train.optim import OptimSettings

    cfg = paper.get_config("llama2-7b,dolly-en,lora,1e-4")
    schedule, _ = OptimSettings.from_config(cfg).build()  # the paper's text: inverse square root, no warm-up
    np.testing.assert_allclose(values(schedule, [0, 3, 99]), [1e-4, 5e-5, 1e-5], rtol=1e-6)
    cfg.optim.schedule = "linear"  # --config.optim.schedule=linear: the released code's decay to lr / 10
    schedule, _ = OptimSettings.from_config(cfg).build()
    np.testing.assert_allclose(values(schedule, [0, 999]), [1e-4 - 9e-5 / 1000, 1e-5], rtol=1e-6)
