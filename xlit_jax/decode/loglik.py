"""Batched log-likelihood of (context, continuation) pairs: the scoring behind multiple-choice benchmarks.

Each pair becomes one causal-LM input, (context + continuation)[:-1], whose logits at the continuation's
positions give its summed log-probability and whether greedy decoding would have produced it. Pairs that
share that input (e.g. one MMLU question with the one-token continuations " A" ... " D") are computed once,
as lm-evaluation-harness's request grouping does. Inputs are packed into rows of a few widths (see
`loglikelihood_ids`), so an evaluation compiles one program per width. Only the continuation's positions are
projected to the vocabulary (the LM head and a 49k-way log-softmax at every position were half of a
batch's time on CPU, docs/performance.md). No decoding, no KV cache (`token_logprobs_ids`, the server's
echo scoring, keeps one for the last tokens of sequences that share the rest).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlit_jax.decode.buckets import MIN_PROMPT_BUCKET, bucket
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama, init_cache
from xlit_jax.models.lora import LoraConfig, adapted
from xlit_jax.sharding import to_host

PACK_WIDTH = 512  # tokens per packed row, for inputs up to that long: wider packs attend over more masked keys


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


@functools.partial(jax.jit, static_argnames=("config", "attention", "lora"))
def _score(params, input_ids, segments, positions, select, targets, *, config: LlamaConfig, attention: str,
           lora: LoraConfig | None = None):
    """Packs input_ids/segments/positions [B, L] (segment r + 1 = the pack's row r, 0 = padding);
    select [B, R * C]: the positions whose next token is scored, the last C of each of R rows; targets
    [B, R, K, C]: for each of K continuations sharing a row, the token expected at each selected position
    (-1 where not scored). Only the selected positions are projected to the vocabulary. Returns summed
    log-probs and greedy flags [B, R, K]. `lora`: the params hold these adapters, unmerged."""
    b, rows, k, c = targets.shape
    with adapted(lora):
        logits, _ = Llama(config, attention).apply({"params": params}, input_ids, positions, segments, select=select)
    logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, rows, c, -1)  # [B, R, C, V]
    greedy = jnp.argmax(logp, axis=-1)  # [B, R, C]
    scored = targets >= 0
    safe = jnp.maximum(targets, 0)
    picked = jnp.take_along_axis(logp[:, :, None], safe[..., None], axis=-1)[..., 0]  # [B, R, K, C]
    total = jnp.sum(jnp.where(scored, picked, 0.0), axis=-1)
    is_greedy = jnp.all(~scored | (greedy[:, :, None, :] == safe), axis=-1)
    return total, is_greedy


def pack(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Row indices in packs of at most `width` tokens, first fit by decreasing length."""
    packs: list[list[int]] = []
    room: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        fit = next((p for p, free in enumerate(room) if free >= lengths[row]), None)
        if fit is None:
            packs.append([])
            room.append(width)
            fit = len(packs) - 1
        packs[fit].append(row)
        room[fit] -= lengths[row]
    return packs


def pack_arrays(packs: list[list[int]], sequences, n: int, width: int):
    """ids, segments and positions [n, width] of `packs` (lists of indices into `sequences`, each pack's
    sequences one after another as segments 1, 2, ... with positions from 0), and where each one went:
    (pack, segment - 1, index, first column) in order."""
    ids, segments, positions = (np.zeros((n, width), np.int32) for _ in range(3))
    placed = []
    for b, members in enumerate(packs):
        offset = 0
        for r, row in enumerate(members):
            tokens, end = sequences[row], offset + len(sequences[row])
            ids[b, offset:end], segments[b, offset:end] = tokens, r + 1
            positions[b, offset:end] = np.arange(len(tokens))
            placed.append((b, r, row, offset))
            offset = end
    return ids, segments, positions, placed


def loglikelihood_ids(params, config: LlamaConfig, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                      batch_size: int = 8, on_batch=None, attention: str = "auto",
                      lora: LoraConfig | None = None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), continuation is greedy) per (context ids, continuation ids),
    in the order given. An empty context is conditioned on the first EOS id, as the harness does with its
    end-of-text token. `on_batch(indices, results)` sees the pairs of each finished batch; `attention` is the
    kernel setting (models/attention.py); `lora`: the params hold these adapters, unmerged (a LoRA run's state).

    Inputs are packed several to a row of PACK_WIDTH tokens, each its own segment with positions from 0, so
    an input attends only to itself and nothing is padded but the packs' ends; `batch_size` packs a call.
    Longer inputs are packed at their power-of-two width, fewer packs a call: one compilation per width
    class, and attention (its cost grows with the square of the width) stays near what the inputs need."""
    for i, (_, continuation) in enumerate(pairs):
        if not continuation:
            raise ValueError(f"pair {i}: empty continuation (nothing to score)")
    prefix = [config.eos_token_ids[0]] if config.eos_token_ids else [0]
    inputs: dict[tuple[int, ...], list[int]] = {}  # shared input ids -> indices of the pairs scored on it
    for i, (context, continuation) in enumerate(pairs):
        whole = list(context or prefix) + list(continuation)
        if len(whole) - 1 > config.max_positions:
            raise ValueError(f"pair {i}: {len(whole) - 1} tokens exceed the model's "
                             f"{config.max_positions} positions")
        inputs.setdefault(tuple(whole[:-1]), []).append(i)
    rows = list(inputs)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    if not rows:
        return results
    sharing = bucket(max(map(len, inputs.values())))
    scored = bucket(max(len(c) for _, c in pairs))
    classes: dict[int, list[int]] = {}  # pack width -> the rows packed at it
    for r, tokens in enumerate(rows):
        classes.setdefault(max(PACK_WIDTH, bucket(len(tokens))), []).append(r)
    def score(packs: list[list[int]], n: int, width: int, per_pack: int) -> list[int]:
        """One `_score` call on `packs` (lists of row indices) padded to n; fills `results` and returns the
        pairs it finished."""
        ids, segments, positions, placed = pack_arrays(packs, rows, n, width)
        select = np.zeros((n, per_pack * scored), np.int32)
        targets = np.full((n, per_pack, sharing, scored), -1, np.int32)
        for b, r, row, offset in placed:
            end = offset + len(rows[row])
            select[b, r * scored:(r + 1) * scored] = np.maximum(np.arange(end - scored, end), offset)
            for k, i in enumerate(inputs[rows[row]]):
                targets[b, r, k, scored - len(pairs[i][1]):] = pairs[i][1]
        # to_host: params on a multi-process mesh (a pod's training state) give arrays spanning the processes
        total, is_greedy = (to_host(a) for a in _score(params, ids, segments, positions, select, targets,
                                                         config=config, attention=attention, lora=lora))
        finished = []
        for b, members in enumerate(packs):
            for r, row in enumerate(members):
                for k, i in enumerate(inputs[rows[row]]):
                    results[i] = (float(total[b, r, k]), bool(is_greedy[b, r, k]))
                    finished.append(i)
        return finished

    for width, members in sorted(classes.items()):
        packs = [[members[i] for i in p] for p in pack([len(rows[r]) for r in members], width)]
        per_pack = bucket(max(map(len, packs)))
        n = min(bucket(len(packs)), max(1, bucket(batch_size) * PACK_WIDTH // width))  # ~ batch_size x PACK_WIDTH
        for start in range(0, len(packs), n):
            finished = score(packs[start:start + n], n, width, per_pack)
            if on_batch is not None:
                on_batch(finished, [results[i] for i in finished])
    return results


# Logits of every position of a call, at most (4 bytes each): token_logprobs_ids projects whole packs to the
# vocabulary, so a call takes fewer packs than loglikelihood_ids's (256 MiB: 2 packs of 512 tokens at 49k tokens).
SCORE_LOGIT_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class TokenScores:
    """One sequence of n tokens scored position by position: `logprobs` [n - 1], log p(token i | tokens before
    it) for i = 1..n-1; `top_ids`, `top_logprobs` [n, k]: at each position the k likeliest next tokens, most
    likely first (at the last position: the tokens that would follow the sequence)."""

    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray


@functools.partial(jax.jit, static_argnames=("config", "attention", "top_k"))
def _token_scores(params, input_ids, segments, positions, targets, last_ids, last_segments, last_positions, *,
                  config: LlamaConfig, attention: str, top_k: int):
    """Packs input_ids/segments/positions [B, L] as in `_score`, of the sequences' prefixes (all but their last
    token); targets [B, L, S]: the tokens that follow each position in its segment (-1: none), several at a
    prefix's last position (the last tokens of the S sequences sharing it). last_ids/_segments/_positions
    [S, B, R]: those last tokens, the s-th of each prefix of a pack (segment r + 1, 0: none). The prefixes go
    through the model once, filling a KV cache; then each s-th last token goes in one step at the same cache
    slots (each attending to its own prefix only, overwriting the step before). Returns the targets' log-probs
    [B, L, S] (0 where none), the top_k log-probs and ids at every prefix position [B, L, top_k] (from the
    same array: a target that is the argmax has exactly the top log-prob) and after each last token
    [S, B, R, top_k]."""
    b, width = input_ids.shape
    model = Llama(config, attention)
    cache = init_cache(config, b, width + last_ids.shape[-1])
    logits, cache = model.apply({"params": params}, input_ids, positions, segments, cache=cache)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, jnp.maximum(targets, 0), axis=-1)
    top_logprobs, top_ids = jax.lax.top_k(logp, top_k)

    def after(step):  # one last token per prefix, written at slots width.. over the previous step's
        ids, step_segments, step_positions = step
        step_logits, _ = model.apply({"params": params}, ids, step_positions, step_segments,
                                     cache={**cache, "index": jnp.asarray(width, jnp.int32)})
        return jax.lax.top_k(jax.nn.log_softmax(step_logits.astype(jnp.float32), axis=-1), top_k)

    after_logprobs, after_ids = jax.lax.map(after, (last_ids, last_segments, last_positions))
    return jnp.where(targets >= 0, picked, 0.0), top_logprobs, top_ids, after_logprobs, after_ids


def token_logprobs_ids(params, config: LlamaConfig, sequences: Sequence[Sequence[int]], top_k: int = 1,
                       attention: str = "auto", logit_bytes: int = SCORE_LOGIT_BYTES) -> list[TokenScores]:
    """Every token's log-prob given the tokens before it, and the `top_k` likeliest tokens at every position,
    per sequence (in order): the prompt log-probs of an OpenAI `echo` request, one forward pass, no sampling.

    The same computation as `loglikelihood_ids` (fp32 log-softmax over the model's logits, inputs packed
    several to a row of PACK_WIDTH tokens, each its own segment with positions from 0, longer ones at their
    power-of-two width), so the sum of a continuation's token log-probs here is its log-likelihood there, up
    to float rounding. Sequences that differ only in their last token share one pass over the rest (the
    harness sends a multiple-choice question's context once per choice): only their last tokens go through
    the model one by one, over its KV cache. Every prefix position is projected to the vocabulary: a call
    takes as many packs as `logit_bytes` of logits allow. `top_k` is rounded up to a power of two for the
    compiled program (a few programs), and cut back in the result."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: at least 1")
    for i, tokens in enumerate(sequences):
        if not tokens:
            raise ValueError(f"sequence {i} is empty")
        if len(tokens) > config.max_positions:
            raise ValueError(f"sequence {i}: {len(tokens)} tokens exceed the model's "
                             f"{config.max_positions} positions")
    prefixes: dict[tuple[int, ...], list[int]] = {}  # all but the last token -> the sequences ending it
    for i, tokens in enumerate(sequences):
        prefixes.setdefault(tuple(tokens[:-1]), []).append(i)
    rows = list(prefixes)
    sharing = bucket(max(map(len, prefixes.values())))
    compiled_k = min(bucket(top_k), config.vocab_size)
    classes: dict[int, list[int]] = {}
    for r, tokens in enumerate(rows):
        classes.setdefault(max(PACK_WIDTH, bucket(len(tokens))), []).append(r)
    results: list[TokenScores | None] = [None] * len(sequences)
    for width, members in sorted(classes.items()):
        # a server's request holds a few prompts: fewer tokens than a pack are packed at their power of two
        width = min(width, bucket(sum(len(rows[r]) for r in members), MIN_PROMPT_BUCKET))
        packs = [[members[i] for i in p] for p in pack([len(rows[r]) for r in members], width)]
        per_pack = bucket(max(map(len, packs)))
        fits = max(1, logit_bytes // (width * config.vocab_size * 4))
        n = min(bucket(len(packs)), 1 << (fits.bit_length() - 1))
        for start in range(0, len(packs), n):
            _score_prefixes(params, config, sequences, rows, prefixes, packs[start:start + n],
                            (n, width, per_pack, sharing, compiled_k), attention, top_k, results)
    return results


def _score_prefixes(params, config, sequences, rows, prefixes, batch, shape, attention, top_k, results) -> None:
    """One `_token_scores` call on `batch` (packs of indices into `rows`, the prefixes) of `shape` (packs,
    width, prefixes a pack, sequences a prefix, compiled top k); fills `results` for their sequences."""
    n, width, per_pack, sharing, compiled_k = shape
    ids, segments, positions, placed = pack_arrays(batch, rows, n, width)
    targets = np.full((n, width, sharing), -1, np.int32)
    last = np.zeros((3, sharing, n, per_pack), np.int32)  # ids, segments, positions of the last tokens
    for b, r, row, offset in placed:
        prefix, end = rows[row], offset + len(rows[row])
        if prefix:  # an empty one (a one-token sequence) has no position: its token is scored in the step only
            targets[b, offset:end - 1, 0] = prefix[1:]
            targets[b, end - 1, :len(prefixes[prefix])] = [sequences[i][-1] for i in prefixes[prefix]]
        for s, i in enumerate(prefixes[prefix]):
            last[:, s, b, r] = sequences[i][-1], r + 1, len(prefix)
    picked, top_logprobs, top_ids, after_logprobs, after_ids = (np.asarray(a) for a in _token_scores(
        params, ids, segments, positions, targets, *last, config=config, attention=attention, top_k=compiled_k))
    for b, r, row, offset in placed:
        end = offset + len(rows[row])
        for s, i in enumerate(prefixes[rows[row]]):
            logprobs = np.concatenate([picked[b, offset:end - 1, 0], picked[b, end - 1:end, s]])[:end - offset]
            results[i] = TokenScores(
                logprobs, np.concatenate([top_ids[b, offset:end, :top_k], after_ids[s, b, r:r + 1, :top_k]]),
                np.concatenate([top_logprobs[b, offset:end, :top_k], after_logprobs[s, b, r:r + 1, :top_k]]))
