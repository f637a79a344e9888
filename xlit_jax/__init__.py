"""xlit_jax: cross-lingual instruction tuning of LLaMA-family models in JAX/Flax."""

from xlit_jax.loader import Model, load

__all__ = ["Model", "load"]
