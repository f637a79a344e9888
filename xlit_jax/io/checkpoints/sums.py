"""Checksums of array data, saved beside each checkpoint and checked on restore. Orbax keeps none, so
without them bytes overwritten inside a compressed chunk would restore without an error."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}  # a leaf's bits by its item size


@jax.jit
def _leaf_sums(leaves: list) -> list:
    """Per leaf, the sum of its bits weighted by position, mod 2**32: integer arithmetic, so the same
    however the leaf is sharded and on every platform."""
    def weighted(x):
        bits = jax.lax.bitcast_convert_type(x, UNSIGNED[x.dtype.itemsize]).astype(jnp.uint32)
        # the flat index of each element, built in place: a reshape of a sharded leaf could move it
        index = functools.reduce(lambda flat, d: flat * x.shape[d] + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d),
                                 range(x.ndim), jnp.zeros(x.shape, jnp.uint32))
        return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)

    return [weighted(x) for x in leaves]


def checksums(tree: Any) -> dict[str, int]:
    """{leaf path: checksum} of a tree of arrays (every process calls it: a collective on a mesh)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    values = _leaf_sums([x for _, x in leaves])
    return {jax.tree_util.keystr(path): int(v) for (path, _), v in zip(leaves, values, strict=True)}


def first_mismatch(tree: Any, saved: dict[str, int] | None, where: Path) -> str | None:
    """'FILE: REASON' for the first leaf whose checksum differs from the saved one; None when all agree
    or nothing was saved (a checkpoint from before checksums)."""
    if saved is None:
        return None
    for path, value in checksums(tree).items():
        if saved.get(path) != value:
            return f"{where}: {path} does not match its checksum (the data changed after it was saved)"
    return None
