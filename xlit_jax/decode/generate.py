"""Batched greedy decoding with a KV cache and HF's repetition penalty, compiled once per shape bucket.

Prompts are left-padded to a length bucket (32, 48, 64, 96, ...) and batches to a power-of-two size, so a
whole evaluation set costs a handful of compilations. The prefill and the decode loop (a `lax.while_loop`
that stops when every row has produced EOS) run inside one jitted function: no Python per token.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlit_jax.models import attention
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama, init_cache
from xlit_jax.models.lora import LoraConfig, adapted

MIN_PROMPT_BUCKET = 32


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def prompt_bucket(n: int) -> int:
    """The smallest of 32, 48, 64, 96, 128, 192, ... (powers of two and 1.5x them) >= n: a batch's prompts
    are padded by at most a third instead of up to half, for twice the compilations. At batch 64 the
    prefill of power-of-two buckets was mostly padding (docs/benchmarks.md)."""
    power = bucket(n, MIN_PROMPT_BUCKET)
    three_quarters = power * 3 // 4
    return three_quarters if n <= three_quarters and three_quarters >= MIN_PROMPT_BUCKET else power


def apply_repetition_penalty(logits, seen, penalty):
    """HF's rule: for every token already seen, a positive logit is divided by the penalty, a negative one
    multiplied by it."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """One prompt's sampling: temperature 0 is greedy; otherwise nucleus (top-p) sampling, reproducible
    from `seed` whatever else is decoded in the same batch."""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def sampling_rows(settings: Sequence[Sampling], rows: int):
    """(temperature [rows], top_p [rows], PRNG keys [rows, 2]) for a batch; padding rows are greedy."""
    settings = list(settings) + [Sampling()] * (rows - len(settings))
    keys = jnp.stack([jax.random.PRNGKey(s.seed) for s in settings])
    return (jnp.asarray([s.temperature for s in settings], jnp.float32),
            jnp.asarray([s.top_p for s in settings], jnp.float32), keys)


def choose_next(logits, sampling, step):
    """The next token per row from its (penalized) logits [B, V]: argmax when `sampling` is None or a row's
    temperature is 0; else a draw from the smallest set of top tokens holding `top_p` of the tempered
    probability, with the row's key folded with the step (so a row's draws do not depend on its batch).
    `step` is one number, or one per row (the engine's slots are at different steps)."""
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


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "attention", "lora"))
def greedy_decode(params, input_ids, segment_ids, penalty, eos_ids, sampling=None, *, config: LlamaConfig,
                  max_new_tokens: int, attention: str = "auto", lora: LoraConfig | None = None):
    """input_ids/segment_ids [B, P], left-padded (segment 0 = pad). Returns new tokens [B, max_new_tokens]
    (-1 after a row's EOS) and the number of tokens generated per row (EOS included). `sampling`
    (from `sampling_rows`) samples rows whose temperature is > 0; None decodes greedily. `lora`: the params
    hold these adapters, unmerged (a LoRA run's probes)."""
    with adapted(lora):
        return _greedy_decode(params, input_ids, segment_ids, penalty, eos_ids, sampling, config, max_new_tokens,
                              attention)


def _greedy_decode(params, input_ids, segment_ids, penalty, eos_ids, sampling, config: LlamaConfig,
                   max_new_tokens: int, setting: str):
    """greedy_decode's body; `setting` is its `attention`."""
    implementation = attention.choose(setting, config.dtype, config.head_dim)
    model = Llama(config, implementation)
    batch, prompt_len = input_ids.shape
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
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
        next_token = choose_next(apply_repetition_penalty(logits[:, -1], seen, penalty), sampling, step)
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
                 repetition_penalty: float = 1.0, batch_size: int = 8, on_batch=None,
                 sampling: Sequence[Sampling] | None = None, attention: str = "auto",
                 lora: LoraConfig | None = None) -> list[list[int]]:
    """Greedy continuations (EOS stripped) of tokenized prompts, in the order given; `sampling`, one per
    prompt, samples those whose temperature is > 0. `attention` and `lora` as `greedy_decode` takes them.

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
        length = prompt_bucket(max(len(p) for p in group))
        ids, segments = left_pad(group, length, bucket(len(group)), pad_id)
        sampled = sampling is not None and any(sampling[i].temperature > 0 for i in indices)
        rows = sampling_rows([sampling[i] for i in indices], len(ids)) if sampled else None
        tokens, counts = greedy_decode(params, ids, segments, jnp.float32(repetition_penalty), eos, rows,
                                       config=config, max_new_tokens=max_new_tokens, attention=attention, lora=lora)
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
