"""Adam with decoupled weight decay, gradient clipping, and the two learning-rate schedules of the study.

Schedules are functions of t, the number of updates already applied (optax's count, pasero's scheduler
step); w is the warm-up steps, T the total steps:

  pasero (the authors' released code, naver/pasero optimization.LRScheduler, with init_lr 0):
      w = 0:   lr_t = lr - t * (lr - min_lr) / T        a linear decay from lr towards min_lr
      w > 0:   lr_t = lr * t / w            for t < w   a linear warm-up from 0
               lr_t = lr * sqrt(w / t)      after       then the inverse square root
      both floored at min_lr: lr_t = max(lr_t, min_lr)
  inverse_sqrt (the paper's text read literally, "inverse square root, no warm-up"), n = t + 1:
      lr_t = lr / sqrt(n) when w = 0,  lr * min(n / w, sqrt(w / n)) when w > 0; no floor.

The released configs of the paper set warm-up 0 and min_lr = lr / 10, so what the authors ran decays
linearly to lr / 10: over 1,000 updates its mean is 0.55 lr, against 0.06 lr for lr / sqrt(n).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import optax

from xlit_jax.errors import InputError

SCHEDULES = ("pasero", "inverse_sqrt")


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """The optimizer and its schedule. Defaults: the paper's released configs (as configs/experiments/base.py's
    `optim` section), which every perf script uses."""

    schedule: str = "pasero"
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 0
    max_steps: int = 1000
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    def __post_init__(self):
        _check_schedule(self.schedule, self.max_steps, self.warmup_steps)

    @classmethod
    def from_config(cls, cfg) -> "OptimSettings":
        """From an experiment config: its `optim` section and train.max_steps."""
        return cls(**cfg.optim.to_dict(), max_steps=cfg.train.max_steps)

    def build(self) -> tuple[Callable, optax.GradientTransformation]:
        """(the learning-rate schedule, the optimizer following it)."""
        schedule = make_schedule(self.schedule, self.lr, self.max_steps, self.min_lr, self.warmup_steps)
        return schedule, make_optimizer(schedule, self.b1, self.b2, self.eps, self.weight_decay, self.clip_norm)


def make_schedule(name: str, lr: float, max_steps: int, min_lr: float = 0.0,
                  warmup_steps: int = 0) -> Callable:
    """The learning rate as a jittable function of the update count t (see the module docstring)."""
    _check_schedule(name, max_steps, warmup_steps)
    w = warmup_steps

    def schedule(t):
        t = jnp.asarray(t, jnp.float32)
        if name == "inverse_sqrt":
            n = t + 1.0
            warm = jnp.minimum(n / w, 1.0) if w else 1.0
            return lr * jnp.minimum(warm, jnp.sqrt(max(w, 1) / n))
        if w == 0:
            return jnp.maximum(lr - t * (lr - min_lr) / max_steps, min_lr)
        after = lr * jnp.sqrt(w / jnp.maximum(t, 1.0))  # t >= w >= 1 where it is taken
        return jnp.maximum(jnp.where(t < w, lr * t / w, after), min_lr)

    return schedule


def depends_on_max_steps(name: str, warmup_steps: int) -> bool:
    """Whether the learning rate of every update depends on max_steps (pasero's linear decay)."""
    return name == "pasero" and warmup_steps == 0


def _check_schedule(name: str, max_steps: int, warmup_steps: int) -> None:
    if name not in SCHEDULES:
        raise InputError(f"unknown schedule {name!r}; choose from {SCHEDULES}")
    if max_steps < 1 or warmup_steps < 0:
        raise InputError(f"schedule: max_steps={max_steps} must be at least 1 and warmup_steps={warmup_steps} "
                         "at least 0")


def make_optimizer(schedule: Callable, b1: float = OptimSettings.b1, b2: float = OptimSettings.b2,
                   eps: float = OptimSettings.eps, weight_decay: float = OptimSettings.weight_decay,
                   clip_norm: float = OptimSettings.clip_norm) -> optax.GradientTransformation:
    """Clip the global gradient norm (when clip_norm > 0), then AdamW: p -= lr * (adam + wd * p), the same
    update as torch.optim.AdamW. Defaults: OptimSettings' (betas 0.9/0.95, weight decay 0.1)."""
    adam = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam
