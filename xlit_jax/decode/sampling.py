"""Choosing the next token from the logits: HF's repetition penalty, then argmax or seeded nucleus sampling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """One prompt's sampling: temperature 0 is greedy; otherwise nucleus (top-p) sampling, reproducible
    from `seed` whatever else is decoded beside it."""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def apply_repetition_penalty(logits, seen, penalty):
    """HF's rule: for every token already seen, a positive logit is divided by the penalty, a negative one
    multiplied by it."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def choose_next(logits, sampling, step):
    """The next token per row from its (penalized) logits [B, V]: argmax when `sampling` is None or a row's
    temperature is 0; else a draw from the smallest set of top tokens holding `top_p` of the tempered
    probability, with the row's key folded with its step (so a row's draws do not depend on its
    neighbours). `sampling` is (temperature [B], top_p [B], PRNG keys [B, 2]); `step` [B] or one number."""
    greedy = jnp.argmax(logits, axis=-1)
    if sampling is None:
        return greedy
    temperature, top_p, keys = sampling
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    descending = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    inside = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1)  # the top token is always inside
    kept = jnp.where(inside, descending, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    nucleus = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    draw = jax.vmap(lambda key, row, at: jax.random.categorical(jax.random.fold_in(key, at), row))
    return jnp.where(temperature > 0, draw(keys, nucleus, jnp.broadcast_to(step, temperature.shape)), greedy)
