"""Batched log-likelihood of (context, continuation) pairs: the scoring behind multiple-choice benchmarks.

Each pair becomes one causal-LM input, (context + continuation)[:-1], whose logits at the continuation's
positions give its summed log-probability and whether greedy decoding would have produced it. Pairs that
share that input (e.g. one MMLU question with the one-token continuations " A" ... " D") are computed once,
as lm-evaluation-harness's request grouping does. Inputs are right-padded to power-of-two length buckets and
every batch to one power-of-two size, so an evaluation compiles one program per length bucket. Only the
continuation's positions are projected to the vocabulary (the LM head and a 49k-way log-softmax at every
position were half of a batch's time on CPU, docs/benchmarks.md). No decoding, no KV cache.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlit_jax.decode.generate import MIN_PROMPT_BUCKET, batches_by_length, bucket
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama


def split_boundary(context: str, continuation: str) -> tuple[str, str]:
    """The harness's token-boundary rule: trailing whitespace of the context moves to the continuation, so
    "Answer: " + "A" is scored as "Answer:" + " A" (how a tokenizer that glues spaces to words sees it)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as the harness makes them: the whole text is tokenized once and the
    continuation is what follows the context's own tokens (no special tokens added)."""
    context, continuation = split_boundary(context, continuation)
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    return context_ids, whole[len(context_ids):]


@functools.partial(jax.jit, static_argnames="config")
def _score(params, input_ids, mask, select, targets, *, config: LlamaConfig):
    """input_ids/mask [B, T] right-padded; select [B, C]: the positions whose next token is scored (the
    last C of each row); targets [B, K, C]: for each of K continuations sharing a row, the token expected
    at each selected position (-1 where not scored). Only the selected positions are projected to the
    vocabulary. Returns summed log-probs and greedy flags [B, K]."""
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, _ = Llama(config).apply({"params": params}, input_ids, positions, mask, select=select)
    logp = jax.nn.log_softmax(logits, axis=-1)  # [B, C, V]
    greedy = jnp.argmax(logp, axis=-1)  # [B, C]
    scored = targets >= 0
    safe = jnp.maximum(targets, 0)
    picked = jax.vmap(lambda lp, t: jnp.take_along_axis(lp, t.T, axis=-1).T)(logp, safe)
    total = jnp.sum(jnp.where(scored, picked, 0.0), axis=-1)
    is_greedy = jnp.all(~scored | (greedy[:, None, :] == safe), axis=-1)
    return total, is_greedy


def loglikelihood_ids(params, config: LlamaConfig, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                      batch_size: int = 8, on_batch=None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), continuation is greedy) per (context ids, continuation ids),
    in the order given. An empty context is conditioned on the first EOS id, as the harness does with its
    end-of-text token. `on_batch(indices, results)` sees the pairs of each finished batch."""
    for i, (_, continuation) in enumerate(pairs):
        if not continuation:
            raise ValueError(f"pair {i}: empty continuation (nothing to score)")
    prefix = [config.eos_token_ids[0]] if config.eos_token_ids else [0]
    inputs: dict[tuple[int, ...], list[int]] = {}  # shared input ids -> indices of the pairs scored on it
    for i, (context, continuation) in enumerate(pairs):
        whole = list(context or prefix) + list(continuation)
        if len(whole) - 1 > config.max_position_embeddings:
            raise ValueError(f"pair {i}: {len(whole) - 1} tokens exceed the model's "
                             f"{config.max_position_embeddings} positions")
        inputs.setdefault(tuple(whole[:-1]), []).append(i)
    rows = list(inputs)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    n = min(bucket(len(rows)), bucket(batch_size))  # the last batch too: one batch size, one compilation less
    for indices in batches_by_length(rows, batch_size):
        length = bucket(max(len(rows[r]) for r in indices), MIN_PROMPT_BUCKET)
        width = bucket(max(len(inputs[rows[r]]) for r in indices))
        scored = bucket(max(len(pairs[i][1]) for r in indices for i in inputs[rows[r]]))
        ids = np.zeros((n, length), np.int32)
        mask = np.zeros((n, length), np.int32)
        select = np.zeros((n, scored), np.int32)
        targets = np.full((n, width, scored), -1, np.int32)
        for b, r in enumerate(indices):
            row = rows[r]
            ids[b, :len(row)], mask[b, :len(row)] = row, 1
            select[b] = np.maximum(np.arange(len(row) - scored, len(row)), 0)  # the row's last positions
            for k, i in enumerate(inputs[row]):
                continuation = pairs[i][1]
                targets[b, k, scored - len(continuation):] = continuation
        total, is_greedy = (np.asarray(a) for a in _score(params, ids, mask, select, targets, config=config))
        finished = []
        for b, r in enumerate(indices):
            for k, i in enumerate(inputs[rows[r]]):
                results[i] = (float(total[b, k]), bool(is_greedy[b, k]))
                finished.append(i)
        if on_batch is not None:
            on_batch(finished, [results[i] for i in finished])
    return results
