"""Continuous batching: a decoding engine of S slots that stay busy, as vLLM's and JetStream's do.

The device state holds S slots: a KV cache [L, S, K, M, D] (M columns per slot, each slot writing at its
own column), and per slot its next position, the number of tokens generated, the seen-token mask of the
repetition penalty, its sampling settings and PRNG key, and the logits of its next token. Two jitted
programs update it in place (the state is donated):

- `_prefill` writes one chunk of one prompt into one slot. A prompt is split into chunks of at most
  `prefill_chunk` tokens; the first is left-padded to a length bucket, so a prompt compiles one of a few
  chunk shapes and activations are bounded by the chunk, not the prompt. A long prompt's chunks are
  interleaved with decoding chunks of the other slots.
- `_decode` advances every live slot by up to `steps` tokens inside one call (a `while_loop` that stops
  early when no slot is live), so the host is off the per-token path. It computes the first R slots only,
  R the power of two that holds the last live one: a step's cost grows with its rows, so as a run drains,
  requests left in the last slots move to free first ones (`_move`, a fraction of a step) and the last
  few requests cost a few rows, not S.

Neither reads the whole cache: a decoding step attends over its first W columns, W the length bucket
(256, 384, 512, 768, ...) of the longest live slot, and a prefill reads and writes its slot's columns up to
its chunk's end, bucketed the same way. A step's cost grows with the columns it reads (on CPU ~0.13 ms
per column at 16 slots, docs/performance.md), so short slots do not pay for the cache's full width.

Between calls the host loop (`Engine.run_once`) frees the slots of finished or cancelled requests and
admits waiting prompts into them, first slots first. A slot's columns before its query are all rewritten
by its own request (prefill from column 0, then one column per step) and later columns are masked by
causality, so nothing of a slot's previous request is ever read. Compilations: one per chunk shape and
width read, one decoding program per rows and width read (twice that when some request samples), all
bounded by the buckets (decode/buckets.py).

Greedy output equals HF's `generate` (tests/decode/test_generate.py); a sampled request draws from its own key
folded with its own step (decode/sampling.py), so a seed gives the same tokens whatever else runs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlit_jax.decode.buckets import bucket, prompt_bucket
from xlit_jax.decode.sampling import Sampling, apply_repetition_penalty, choose_next
from xlit_jax.errors import InputError
from xlit_jax.models import attention as kernels  # `attention` names the kernel setting here
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama, init_cache
from xlit_jax.models.lora import LoraConfig, adapted
from xlit_jax.sharding import to_host

PREFILL_CHUNK = 256  # prompt tokens per prefill call at most
DECODE_STEPS = 1  # decoding steps per call: the fastest on CPU of 1, 4 and 8 (docs/performance.md)
MIN_READ = 256  # cache columns a call reads at least: narrower reads save little and each compiles


@dataclasses.dataclass(eq=False)
class Request:
    """One prompt through the engine. `on_update(request)` is called on the engine's thread after each
    decoding call that added tokens to it, and once more when it finishes. Set `cancelled` from any thread
    to free its slot at the next call."""

    prompt: Sequence[int]
    max_new_tokens: int
    repetition_penalty: float = 1.0
    sampling: Sampling = Sampling()
    on_update: Callable[[Request], None] | None = None
    output: list[int] = dataclasses.field(default_factory=list)  # generated ids, EOS stripped
    finish_reason: str | None = None  # "stop" (EOS) or "length" once finished; None while running
    stop_token: int | None = None  # the EOS id that ended it (stripped from `output`)
    cancelled: bool = False


@dataclasses.dataclass
class _Slot:
    request: Request
    chunks: list[tuple[np.ndarray, np.ndarray, int, int]]  # (ids, segments, first column, tokens before)
    decoding: bool = False
    filled: int = 0  # cache columns written (the slot's cache index)


def chunk_plan(prompt: Sequence[int], chunk: int, pad_id: int) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """A prompt as prefill chunks: the first holds what is left over by whole chunks, left-padded to its
    length bucket (at most `chunk`), then whole chunks. Each is (ids, segments, first column, tokens before)."""
    first = len(prompt) - chunk * ((len(prompt) - 1) // chunk)
    width = min(prompt_bucket(first), chunk)
    ids, segments = np.full(width, pad_id, np.int32), np.zeros(width, np.int32)
    ids[width - first:], segments[width - first:] = prompt[:first], 1
    plan = [(ids, segments, 0, 0)]
    for start in range(first, len(prompt), chunk):
        plan.append((np.asarray(prompt[start:start + chunk], np.int32), np.ones(chunk, np.int32),
                     width + start - first, start))
    return plan


def columns(prompt_len: int, chunk: int) -> int:
    """Cache columns a prompt fills (its first chunk's padding included)."""
    first = prompt_len - chunk * ((prompt_len - 1) // chunk)
    return min(prompt_bucket(first), chunk) + prompt_len - first


def init_state(config: LlamaConfig, slots: int, max_len: int) -> dict:
    cache = init_cache(config, slots, max_len)
    cache["index"] = jnp.zeros(slots, jnp.int32)
    zeros = lambda: jnp.zeros(slots, jnp.int32)  # noqa: E731 - distinct buffers, as each is donated
    return {"cache": cache, "logits": jnp.zeros((slots, config.vocab_size), jnp.float32),
            "seen": jnp.zeros((slots, config.vocab_size), bool), "position": zeros(), "step": zeros(),
            "max_new": zeros(), "penalty": jnp.ones(slots, jnp.float32), "temperature": jnp.zeros(slots, jnp.float32),
            "top_p": jnp.ones(slots, jnp.float32), "keys": jnp.zeros((slots, 2), jnp.uint32)}


@functools.partial(jax.jit, static_argnames=("config", "attention", "lora", "width"), donate_argnums=1)
def _prefill(params, state, slot, ids, segments, start, before, settings, *, config: LlamaConfig, attention: str,
             lora: LoraConfig | None, width: int):
    """Chunk ids/segments [C] of the prompt in `slot`, at columns [start, start + C) <= `width`; `before`
    prompt tokens precede it. Only the slot's first `width` columns are read and written. The first chunk
    (start 0) clears the slot's segments and seen tokens. `settings` (max_new, penalty, temperature, top_p,
    key) are the request's."""
    cache, first = state["cache"], start == 0
    corner = (0, slot, 0, 0, 0)
    layers, _, heads, _, head_dim = cache["k"].shape  # v's too
    sub = {name: jax.lax.dynamic_slice(cache[name], corner, (layers, 1, heads, width, head_dim)) for name in ("k", "v")}
    segments_window = jax.lax.dynamic_slice(cache["segments"], (slot, 0), (1, width))
    sub |= {"segments": jnp.where(first, 0, segments_window), "index": start}
    positions = before + jnp.maximum(jnp.cumsum(segments) - 1, 0)
    with adapted(lora):
        logits, sub = Llama(config, attention).apply({"params": params}, ids[None], positions[None], segments[None],
                                                     sub, last_only=True)
    cache = {**{name: jax.lax.dynamic_update_slice(cache[name], sub[name], corner) for name in ("k", "v")},
             "segments": jax.lax.dynamic_update_slice(cache["segments"], sub["segments"], (slot, 0)),
             "index": cache["index"].at[slot].set(sub["index"])}
    seen = jnp.where(first, False, state["seen"][slot])
    seen = seen.at[jnp.where(segments > 0, ids, config.vocab_size)].set(True, mode="drop")
    max_new, penalty, temperature, top_p, key = settings
    values = {"logits": logits[0, -1], "seen": seen, "position": before + jnp.sum(segments), "step": 0,
              "max_new": max_new, "penalty": penalty, "temperature": temperature, "top_p": top_p, "keys": key}
    return {"cache": cache, **{name: state[name].at[slot].set(value) for name, value in values.items()}}


@functools.partial(jax.jit, static_argnames=("config", "attention", "lora", "steps", "sampled", "width", "rows"),
                   donate_argnums=1)
def _decode(params, state, live, eos_ids, *, config: LlamaConfig, attention: str, lora: LoraConfig | None, steps: int,
            sampled: bool, width: int, rows: int):
    """Up to `steps` tokens for every slot where `live` [rows]; a slot stops at EOS or its max_new. Only the
    first `rows` slots are computed (every live slot is among them) and attention reads the first `width`
    columns of the cache, which hold every live slot's tokens to the last step. Returns the state, the tokens
    [rows, steps] (-1 where a slot made none) and which slots are still live."""
    model = Llama(config, attention, read_columns=width)
    indices = jnp.arange(rows)
    cache = state["cache"]
    head = {name: value[:rows] for name, value in state.items() if name != "cache"}
    head["cache"] = {**cache, "segments": cache["segments"][:rows], "index": cache["index"][:rows]}

    def keep_going(carry):
        i, _, live, _ = carry
        return (i < steps) & jnp.any(live)

    def one_step(carry):
        i, s, live, tokens = carry
        logits = apply_repetition_penalty(s["logits"], s["seen"], s["penalty"][:, None])
        sampling = (s["temperature"], s["top_p"], s["keys"]) if sampled else None
        token = jnp.where(live, choose_next(logits, sampling, s["step"]), -1).astype(jnp.int32)
        step = s["step"] + live
        new_logits, cache = model.apply({"params": params}, jnp.maximum(token, 0)[:, None], s["position"][:, None],
                                        live[:, None].astype(jnp.int32), s["cache"])
        s = {**s, "cache": {**cache, "index": s["cache"]["index"] + live}, "step": step,
             "logits": jnp.where(live[:, None], new_logits[:, 0], s["logits"]), "position": s["position"] + live,
             "seen": s["seen"].at[indices, jnp.where(live, token, config.vocab_size)].set(True, mode="drop")}
        finished = jnp.isin(token, eos_ids) | (step >= s["max_new"])
        return i + 1, s, live & ~finished, tokens.at[:, i].set(token)

    tokens = jnp.full((rows, steps), -1, jnp.int32)
    with adapted(lora):
        _, head, live, tokens = jax.lax.while_loop(keep_going, one_step, (jnp.int32(0), head, live, tokens))
    done = {name: state[name].at[:rows].set(head[name]) for name in head if name != "cache"}
    done["cache"] = {**head["cache"], **{name: cache[name].at[:rows].set(head["cache"][name])
                                         for name in ("segments", "index")}}
    return done, tokens, live


@functools.partial(jax.jit, donate_argnums=0)
def _move(state, source, target):
    """Slot `source` (its cache rows, settings and logits) into slot `target`."""
    cache = state["cache"]
    moved = {name: value.at[target].set(value[source]) for name, value in state.items() if name != "cache"}
    moved["cache"] = {name: cache[name].at[:, target].set(cache[name][:, source]) for name in ("k", "v")}
    moved["cache"] |= {name: cache[name].at[target].set(cache[name][source]) for name in ("segments", "index")}
    return moved


class Engine:
    """S slots over one model; `submit` requests, then call `run_once` (or `run`) from one thread. `attention`
    is the kernel setting (models/attention.py); `lora`: the params hold these adapters, unmerged (a LoRA run's
    probes). `shrink=False` decodes every slot over the whole cache in every call: one decoding program, for a
    caller that must not compile again after its first run (a training run's probes)."""

    def __init__(self, params, config: LlamaConfig, *, attention: str = "auto", lora: LoraConfig | None = None,
                 slots: int = 16, max_len: int | None = None, prefill_chunk: int = PREFILL_CHUNK,
                 steps: int = DECODE_STEPS, shrink: bool = True):
        if not config.eos_token_ids:
            raise ValueError("the model config names no EOS token; generation would never stop early")
        if slots < 1:  # no slot would ever take a request: run() would wait forever
            raise ValueError(f"an engine needs at least 1 slot, not {slots}")
        self.params, self.config, self.lora, self.chunk, self.steps = params, config, lora, prefill_chunk, steps
        self.shrink = shrink
        self.implementation = kernels.choose(attention, config.dtype, config.head_dim)
        self.max_len = kernels.cache_length(max_len or default_max_len(config, prefill_chunk), self.implementation)
        self.state = init_state(config, slots, self.max_len)
        self.slots: list[_Slot | None] = [None] * slots
        self.waiting: collections.deque[Request] = collections.deque()
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_ids[0]
        self.eos = jnp.asarray(config.eos_token_ids, jnp.int32)
        self._eos = set(config.eos_token_ids)

    def problem(self, prompt_len: int, max_new_tokens: int) -> str | None:
        """Why a request cannot run here ("exceeds ..." or "does not fit ..."), or None."""
        positions = self.config.max_positions
        if prompt_len + max_new_tokens > positions:
            return f"exceeds the model's {positions} positions"
        if columns(prompt_len, self.chunk) + max_new_tokens > self.max_len:
            return f"does not fit a slot of {self.max_len} cache columns"
        return None

    def submit(self, request: Request) -> None:
        if not request.prompt or request.max_new_tokens < 1:
            raise ValueError("a request needs a prompt and max_new_tokens >= 1")
        problem = self.problem(len(request.prompt), request.max_new_tokens)
        if problem:
            raise ValueError(f"a prompt of {len(request.prompt)} tokens plus max_new_tokens="
                             f"{request.max_new_tokens} {problem}")
        self.waiting.append(request)

    def busy(self) -> bool:
        return bool(self.waiting) or any(slot is not None for slot in self.slots)

    def run(self) -> None:
        while self.busy():
            self.run_once()

    def run_once(self) -> None:
        """Free cancelled slots, admit waiting requests, prefill up to one chunk's worth of prompt tokens
        (always at least one chunk), then one decoding call over the live slots."""
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.request.cancelled:
                self.slots[i] = None
        while self.waiting and None in self.slots:
            request = self.waiting.popleft()
            if not request.cancelled:
                self.slots[self.slots.index(None)] = _Slot(request, chunk_plan(request.prompt, self.chunk, self.pad_id))
        self._prefill_some()
        self._decode_live()

    def _prefill_some(self) -> None:
        budget = self.chunk
        for i, slot in enumerate(self.slots):
            while slot is not None and slot.chunks and (budget == self.chunk or len(slot.chunks[0][0]) <= budget):
                ids, segments, start, before = slot.chunks.pop(0)
                budget -= len(ids)
                request = slot.request
                settings = (request.max_new_tokens, jnp.float32(request.repetition_penalty),
                            jnp.float32(request.sampling.temperature), jnp.float32(request.sampling.top_p),
                            jax.random.PRNGKey(request.sampling.seed))
                slot.filled = start + len(ids)
                self.state = _prefill(self.params, self.state, i, ids, segments, start, before, settings,
                                      config=self.config, attention=self.implementation, lora=self.lora,
                                      width=self._width(slot.filled))
                slot.decoding = not slot.chunks

    def _decode_live(self) -> None:
        live = np.asarray([s is not None and s.decoding for s in self.slots])
        if not live.any():
            return
        rows = self._rows(int(np.flatnonzero(live)[-1]) + 1)
        decoding = [s for s in self.slots if s is not None and s.decoding]
        sampled = any(s.request.sampling.temperature > 0 for s in decoding)
        width = self._width(max(s.filled for s in decoding) + self.steps) if self.shrink else self.max_len
        self.state, tokens, still = _decode(self.params, self.state, live[:rows], self.eos, config=self.config,
                                            attention=self.implementation, lora=self.lora, steps=self.steps,
                                            sampled=sampled, width=width, rows=rows)
        tokens, still = to_host(tokens), to_host(still)  # a multi-process mesh's (a pod's probes) gathered
        for i in np.flatnonzero(live):
            request = self.slots[i].request
            new = [int(t) for t in tokens[i] if t >= 0]
            self.slots[i].filled += len(new)
            if not still[i]:
                request.finish_reason = "stop" if new and new[-1] in self._eos else "length"
                request.stop_token = new[-1] if request.finish_reason == "stop" else None
                new = new[:-1] if request.finish_reason == "stop" else new
                self.slots[i] = None
            request.output.extend(new)
            if request.on_update is not None:
                request.on_update(request)
        self._compact()

    def _rows(self, needed: int) -> int:
        """The slots a decoding call computes for the first `needed`: a power of two (a few programs), at
        most all of them. A step's cost grows with its rows, so idle slots past the last live one cost
        nothing."""
        return min(bucket(needed), len(self.slots)) if self.shrink else len(self.slots)

    def _compact(self) -> None:
        """Move requests from the last slots into free first ones when that lets decoding calls compute fewer
        rows (as the last requests of a run finish): copying a slot costs a fraction of one step."""
        taken = [i for i, slot in enumerate(self.slots) if slot is not None]
        if not taken or self._rows(len(taken)) >= self._rows(taken[-1] + 1):
            return
        rows = self._rows(len(taken))
        for source in (i for i in taken if i >= rows):
            target = self.slots.index(None)
            self.state = _move(self.state, source, target)
            self.slots[target], self.slots[source] = self.slots[source], None

    def _width(self, needed: int) -> int:
        """The cache columns a call reads for `needed`: at least MIN_READ, rounded up to a length bucket so
        that a run compiles a few widths, and at most the whole cache."""
        return min(kernels.cache_length(prompt_bucket(max(needed, MIN_READ)), self.implementation), self.max_len)


def default_max_len(config: LlamaConfig, prefill_chunk: int = PREFILL_CHUNK) -> int:
    """Cache columns per slot for any request the model's positions allow: its positions plus the most
    padding a first chunk can add."""
    return config.max_positions + max(columns(n, prefill_chunk) - n for n in range(1, prefill_chunk + 1))


class PromptTooLong(InputError):
    """Prompts that do not fit the model with max_new_tokens, found before any decoding: `index` is the first
    one's, so that a caller can name it (`named`)."""

    def __init__(self, index: int, tokens: int, max_new_tokens: int, positions: int, count: int = 1):
        self.index = index
        more = f" ({count - 1} more prompts too)" if count > 1 else ""
        self.detail = (f"{tokens} tokens plus max_new_tokens={max_new_tokens} exceed the model's {positions} "
                       f"positions{more}")
        super().__init__(f"prompt {index}: {self.detail}")

    def named(self, name: str) -> InputError:
        return InputError(f"{name}: {self.detail}")


def generate_ids(params, config: LlamaConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 repetition_penalty: float = 1.0, slots: int = 8, on_finished=None,
                 sampling: Sequence[Sampling] | None = None, **engine_options) -> list[list[int]]:
    """Continuations (EOS stripped) of tokenized prompts through an engine of `slots` slots sized for them,
    in the order given; `sampling`, one per prompt, samples those whose temperature is > 0.
    `on_finished(index, output)` is called as each sequence finishes, e.g. to write it at once."""
    too_long = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens > config.max_positions]
    if too_long:
        first = too_long[0]
        raise PromptTooLong(first, len(prompts[first]), max_new_tokens, config.max_positions, len(too_long))
    if not prompts:
        return []
    chunk = engine_options.get("prefill_chunk", PREFILL_CHUNK)
    engine_options.setdefault("max_len", max(columns(len(p), chunk) for p in prompts) + max_new_tokens)
    engine = Engine(params, config, slots=min(slots, len(prompts)), **engine_options)
    requests = []
    for i, prompt in enumerate(prompts):
        def finished(request, i=i):
            if request.finish_reason is not None and on_finished is not None:
                on_finished(i, request.output)

        requests.append(Request(prompt, max_new_tokens, repetition_penalty,
                                sampling[i] if sampling is not None else Sampling(), finished))
        engine.submit(requests[-1])
    engine.run()
    return [r.output for r in requests]


def lower_programs(params, config: LlamaConfig, slots: int, prompt_len: int, new_tokens: int, place,
                   attention: str = "auto"):
    """The engine's two programs lowered on abstract inputs for the compile-only plans (plan/decoding.py):
    "prefill", a prompt's last chunk into one slot, and "step", a decoding call of every slot, each reading
    a whole slot of a cache sized for `prompt_len` + `new_tokens`. `params` may be ShapeDtypeStructs;
    `place(shape, dtype)` gives every other input's; `attention` is the kernel setting. Returns (the lowered
    programs, the state's shapes)."""
    implementation = kernels.choose(attention, config.dtype, config.head_dim)
    max_len = kernels.cache_length(columns(prompt_len, PREFILL_CHUNK) + new_tokens, implementation)
    state = jax.tree_util.tree_map(lambda x: place(x.shape, x.dtype),
                                   jax.eval_shape(lambda: init_state(config, slots, max_len)))
    number, real = place((), jnp.int32), place((), jnp.float32)
    chunk = place((len(chunk_plan([0] * prompt_len, PREFILL_CHUNK, 0)[-1][0]),), jnp.int32)
    settings = (number, real, real, real, place((2,), jnp.uint32))
    eos = place((len(config.eos_token_ids),), jnp.int32)
    return {"prefill": _prefill.lower(params, state, number, chunk, chunk, number, number, settings, config=config,
                                      attention=implementation, lora=None, width=max_len),
            "step": _decode.lower(params, state, place((slots,), jnp.bool_), eos, config=config,
                                  attention=implementation, lora=None, steps=DECODE_STEPS, sampled=False,
                                  width=max_len, rows=slots)}, state
