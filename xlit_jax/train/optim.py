"""Adam with decoupled weight decay, gradient clipping, and the two learning-rate schedules of the study.

Schedules are functions of t, the number of updates already applied (optax's count); n = t + 1 is the
1-based index of the update being made, w the warm-up steps, T the total steps:

  inverse_sqrt (the paper's text):   lr_n = lr / sqrt(n)                      when w = 0
                                     lr_n = lr * min(n / w, sqrt(w / n))      when w > 0
  linear (the released code, w = 0): lr_n = lr * n / w                        for n <= w
                                     lr_n = lr + (min_lr - lr) * (n - w) / (T - w)   after
                                     so the last update (n = T) uses min_lr.

The released code's warm-up branch (w > 0: linear warm-up, then lr * sqrt(w / n)) is `inverse_sqrt`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import optax

SCHEDULES = ("inverse_sqrt", "linear")


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """The optimizer and its schedule. Defaults: the paper's released configs (as configs/experiments/base.py's
    `optim` section), which every benchmark uses."""

    schedule: str = "linear"
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
        n = jnp.asarray(t, jnp.float32) + 1.0
        warm = jnp.minimum(n / w, 1.0) if w else 1.0
        if name == "inverse_sqrt":
            return lr * jnp.minimum(warm, jnp.sqrt(max(w, 1) / n))
        decay = jnp.clip((n - w) / (max_steps - w), 0.0, 1.0)
        return jnp.where(n <= w, lr * warm, lr + (min_lr - lr) * decay)

    return schedule


def _check_schedule(name: str, max_steps: int, warmup_steps: int) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {SCHEDULES}")
    if name == "linear" and max_steps <= warmup_steps:
        raise ValueError(f"linear schedule: max_steps={max_steps} must exceed warmup_steps={warmup_steps}")


def make_optimizer(schedule: Callable, b1: float = OptimSettings.b1, b2: float = OptimSettings.b2,
                   eps: float = OptimSettings.eps, weight_decay: float = OptimSettings.weight_decay,
                   clip_norm: float = OptimSettings.clip_norm) -> optax.GradientTransformation:
    """Clip the global gradient norm (when clip_norm > 0), then AdamW: p -= lr * (adam + wd * p), the same
    update as torch.optim.AdamW. Defaults: OptimSettings' (betas 0.9/0.95, weight decay 0.1)."""
    adam = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam
