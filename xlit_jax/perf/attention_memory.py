"""Compiled memory of one attention call at a model's training shapes, per implementation this machine
can compile (the others are listed with the reason `attention.choose` gives).

    python -m xlit_jax.perf.attention_memory --preset=llama2-7b --rows=2 --seq_len=2048

Nothing runs: each implementation is compiled for the forward pass and for forward + backward (the
gradients of q, k, v), and XLA's memory analysis is printed (temp = scratch the call needs beyond its
arguments and outputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from xlit_jax.errors import InputError
from xlit_jax.io.files import markdown_table
from xlit_jax.models import attention
from xlit_jax.models.attention import ATTENTIONS
from xlit_jax.models.presets import get_preset

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "llama2-7b", "model shape (heads, KV heads, head dim)")
flags.DEFINE_integer("rows", 2, "rows per micro-batch (the paper: 4,096 tokens = 2 rows of 2,048)")
flags.DEFINE_integer("seq_len", 2048, "tokens per row")
flags.DEFINE_string("dtype", "bfloat16", "compute dtype")


def attention_memory(implementation: str, rows: int, seq_len: int, heads: int, kv_heads: int, head_dim: int,
                     dtype) -> dict[str, int]:
    """{"forward": temp bytes, "forward+backward": temp bytes} of one compiled call."""
    q = jax.ShapeDtypeStruct((rows, seq_len, heads, head_dim), dtype)
    kv = jax.ShapeDtypeStruct((rows, kv_heads, seq_len, head_dim), dtype)
    segments = jax.ShapeDtypeStruct((rows, seq_len), jnp.int32)

    def forward(q, k, v, segments):
        return attention.attend(q, k, v, jnp.arange(seq_len), segments, segments, attention=implementation,
                                cached=False)

    def loss(q, k, v, segments):
        return forward(q, k, v, segments).astype(jnp.float32).sum()

    programs = {"forward": forward, "forward+backward": jax.grad(loss, argnums=(0, 1, 2))}
    return {name: jax.jit(fn).lower(q, kv, kv, segments).compile().memory_analysis().temp_size_in_bytes
            for name, fn in programs.items()}


def main(argv):
    del argv
    config = get_preset(FLAGS.preset)
    print(f"{FLAGS.preset}: {config.num_heads} heads, {config.num_kv_heads} KV heads, head dim {config.head_dim}; "
          f"{FLAGS.rows} rows x {FLAGS.seq_len} tokens, {FLAGS.dtype}, on {jax.devices()[0].device_kind}")
    rows = []
    for name in ATTENTIONS[1:]:
        try:
            implementation = attention.choose(name, FLAGS.dtype, config.head_dim)
        except InputError as e:
            rows.append([name, f"not compiled here: {str(e).split(': ', 1)[1].split(';')[0]}", ""])
            continue
        temp = attention_memory(implementation, FLAGS.rows, FLAGS.seq_len, config.num_heads, config.num_kv_heads,
                                config.head_dim, jnp.dtype(FLAGS.dtype))
        rows.append([name, f"{temp['forward'] / 2**20:,.0f} MiB", f"{temp['forward+backward'] / 2**20:,.0f} MiB"])
    print(markdown_table(["attention", "forward temp", "forward + backward temp"], rows))


if __name__ == "__main__":
    app.run(main)
