"""Batched greedy decoding with a KV cache and HF's repetition penalty, compiled once per shape bucket.

Prompts are left-padded to a power-of-two length and batches to a power-of-two size, so a whole
evaluation set costs a handful of compilations. The prefill and the decode loop (a `lax.while_loop`
that stops when every row has produced EOS) run inside one jitted function: no Python per token.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlit_jax.models import attention
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama, init_cache

MIN_PROMPT_BUCKET = 32


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def apply_repetition_penalty(logits, seen, penalty):
    """HF's rule: for every token already seen, a positive logit is divided by the penalty, a negative one
    multiplied by it."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens"))
def greedy_decode(params, input_ids, segment_ids, penalty, eos_ids, *, config: LlamaConfig, max_new_tokens: int):
    """input_ids/segment_ids [B, P], left-padded (segment 0 = pad). Returns new tokens [B, max_new_tokens]
    (-1 after a row's EOS) and the number of tokens generated per row (EOS included)."""
    model = Llama(config)
    batch, prompt_len = input_ids.shape
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    implementation = attention.choose(config.attention, config.dtype, config.head_dim)
    cache = init_cache(config, batch, attention.cache_length(prompt_len + max_new_tokens, implementation))
    logits, cache = model.apply({"params": params}, input_ids, positions, segment_ids, cache, last_only=True)
    rows = jnp.arange(batch)[:, None]
    nowhere = config.vocab_size  # an out-of-range index: scatters to it are dropped
    seen = jnp.zeros((batch, nowhere), bool).at[rows, jnp.where(segment_ids > 0, input_ids, nowhere)].set(
        True, mode="drop")

    def keep_going(state):
        step, _, _, _, _, done = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def step_fn(state):
        step, cache, logits, seen, tokens, done = state
        next_token = jnp.argmax(apply_repetition_penalty(logits[:, -1], seen, penalty), axis=-1)
        next_token = jnp.where(done, -1, next_token).astype(jnp.int32)
        tokens = tokens.at[:, step].set(next_token)
        seen = seen.at[jnp.arange(batch), jnp.where(done, nowhere, next_token)].set(True, mode="drop")
        done = done | jnp.isin(next_token, eos_ids)
        new_positions = (positions[:, -1] + 1 + step)[:, None]
        logits, cache = model.apply({"params": params}, jnp.maximum(next_token, 0)[:, None], new_positions,
                                    jnp.ones((batch, 1), jnp.int32), cache)
        return step + 1, cache, logits, seen, tokens, done

    tokens = jnp.full((batch, max_new_tokens), -1, jnp.int32)
    done = jnp.all(segment_ids == 0, axis=1)  # rows that only pad the batch to its bucket
    state = jax.lax.while_loop(keep_going, step_fn, (jnp.int32(0), cache, logits, seen, tokens, done))
    tokens = state[4]
    return tokens, jnp.sum(tokens >= 0, axis=1)


def left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int, pad_id: int):
    """[rows, length] ids and segment ids (1 on prompt tokens, 0 on padding)."""
    ids = np.full((rows, length), pad_id, np.int32)
    segments = np.zeros((rows, length), np.int32)
    for i, prompt in enumerate(prompts):
        if prompt:
            ids[i, -len(prompt):] = prompt
            segments[i, -len(prompt):] = 1
    return ids, segments


def batches_by_length(prompts: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of prompts in batches of similar length (longest first), to waste little padding."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def generate_ids(params, config: LlamaConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 repetition_penalty: float = 1.0, batch_size: int = 8, on_batch=None) -> list[list[int]]:
    """Greedy continuations (EOS stripped) of tokenized prompts, in the order given.

    `on_batch(indices, outputs)` is called after each batch, e.g. to write finished results at once.
    """
    if not config.eos_token_ids:
        raise ValueError("the model config names no EOS token; generation would never stop early")
    too_long = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens > config.max_position_embeddings]
    if too_long:
        raise ValueError(f"prompts {too_long[:5]} plus max_new_tokens={max_new_tokens} exceed the model's "
                         f"{config.max_position_embeddings} positions")
    pad_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_ids[0]
    eos = jnp.asarray(config.eos_token_ids, jnp.int32)
    results: list[list[int]] = [[] for _ in prompts]
    for indices in batches_by_length(prompts, batch_size):
        group = [prompts[i] for i in indices]
        length = bucket(max(len(p) for p in group), MIN_PROMPT_BUCKET)
        ids, segments = left_pad(group, length, bucket(len(group)), pad_id)
        tokens, counts = greedy_decode(params, ids, segments, jnp.float32(repetition_penalty), eos,
                                       config=config, max_new_tokens=max_new_tokens)
        tokens, counts = np.asarray(tokens), np.asarray(counts)
        outputs = []
        for row, i in enumerate(indices):
            out = tokens[row, :counts[row]].tolist()
            if out and out[-1] in config.eos_token_ids:
                out = out[:-1]
            results[i] = out
            outputs.append(out)
        if on_batch is not None:
            on_batch(indices, outputs)
    return results
