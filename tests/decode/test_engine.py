"""The decoding engine (decode/engine.py): the tokens of decoding without a cache, and HF's, whatever the
slot, the order, the neighbours or the chunking; slots reused without stale reads; seeded sampling per
request; cancellation; the last requests moved to the first slots; compilations counted; the state
updated in place."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xlit_jax
from xlit_jax.decode import engine as engine_lib
from xlit_jax.decode.engine import Engine, Request, chunk_plan, columns, generate_ids, lower_programs
from xlit_jax.decode.sampling import Sampling, apply_repetition_penalty, choose_next
from xlit_jax.models.llama import Llama, init_cache, init_params

from support import NEW_TOKENS, hf_generate, in_ci_only, paper_prompts

LENGTHS = (300, 3, 41, 1, 129, 7)  # very different lengths: long prompts over several chunks, tiny ones
MAX_NEW = (5, 30, 12, 30, 3, 20)  # slots free at different times and are taken by the next prompt


@pytest.fixture(scope="module")
def tiny():
    return xlit_jax.load("preset:tiny", seed=1)


@pytest.fixture(scope="module")
def parity_prompts(smollm2, shared_data):
    return [smollm2.encode(p) for p in paper_prompts(shared_data)]


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(3, 256, n).tolist() for n in LENGTHS]


def uncached(model, prompts, max_new, sampling=None):
    """The reference: each step one forward pass over every sequence so far, without a cache (left-padded to
    one width: one compilation), HF's repetition penalty 1.1, then `choose_next` with the request's key and
    step; a sequence stops at EOS (stripped) or its max_new."""
    settings = sampling or [Sampling()] * len(prompts)
    rows = (jnp.asarray([s.temperature for s in settings], jnp.float32),
            jnp.asarray([s.top_p for s in settings], jnp.float32),
            jnp.stack([jax.random.PRNGKey(s.seed) for s in settings]))
    width = max(len(p) + n for p, n in zip(prompts, max_new))
    sequences, outputs, done = [list(p) for p in prompts], [[] for _ in prompts], [False] * len(prompts)
    for step in range(max(max_new)):
        ids, mask = np.zeros((len(prompts), width), np.int32), np.zeros((len(prompts), width), np.int32)
        seen = np.zeros((len(prompts), model.config.vocab_size), bool)
        for i, sequence in enumerate(sequences):
            ids[i, width - len(sequence):], mask[i, width - len(sequence):] = sequence, 1
            seen[i, sequence] = True
        logits = apply_repetition_penalty(jnp.asarray(model.logits(ids, mask)[:, -1]), seen, 1.1)
        for i, token in enumerate(np.asarray(choose_next(logits, rows, step)).tolist()):
            if not done[i]:
                sequences[i].append(token)
                done[i] = token in model.config.eos_token_ids or step + 1 == max_new[i]
                outputs[i] += [] if token in model.config.eos_token_ids else [token]
    return outputs


def run_engine(model, prompts, max_new, order, sampling=None, **options):
    engine = Engine(model.params, model.config, **options)
    requests = {i: Request(prompts[i], max_new[i], 1.1, sampling[i] if sampling else Sampling()) for i in order}
    for i in order:
        engine.submit(requests[i])
    engine.run()
    return [requests[i].output for i in range(len(prompts))]


def test_chunk_plan_left_pads_the_first_chunk_only():
    plan = chunk_plan(list(range(1, 71)), 32, 0)
    assert [(len(ids), start, before) for ids, _, start, before in plan] == [(32, 0, 0), (32, 32, 6), (32, 64, 38)]
    assert plan[0][1].tolist() == [0] * 26 + [1] * 6 and plan[0][0][26:].tolist() == [1, 2, 3, 4, 5, 6]
    assert columns(70, 32) == 96 and columns(5, 256) == 32 and columns(200, 256) == 256


@pytest.mark.parametrize("slots,chunk,order", [
    *in_ci_only((1, 64, "given"), (2, 32, "reversed")), (4, 256, "shuffled")])
def test_greedy_equals_decoding_without_a_cache_in_every_slot_and_order(tiny, prompts, slots, chunk, order):
    """One slot: every prompt reuses the slot a longer or shorter one left (no stale cache read). Two and
    four: neighbours of every length, admitted as slots free up, long prompts prefilled over chunks."""
    indices = {"given": list(range(6)), "reversed": list(range(6))[::-1],
               "shuffled": [3, 0, 5, 1, 4, 2]}[order]
    want = uncached(tiny, prompts, MAX_NEW)
    assert run_engine(tiny, prompts, MAX_NEW, indices, slots=slots, prefill_chunk=chunk) == want
    assert [len(w) for w in want] != list(MAX_NEW)  # some stopped at EOS, some at their limit


@pytest.mark.slow  # ~20 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_seeded_sampling_is_per_request_and_equals_decoding_without_a_cache(tiny, prompts):
    sampling = [Sampling(1.0, 0.9, seed=i) if i % 2 else Sampling() for i in range(6)]
    want = uncached(tiny, prompts, MAX_NEW, sampling)
    assert run_engine(tiny, prompts, MAX_NEW, range(6), sampling, slots=3, prefill_chunk=64) == want
    assert run_engine(tiny, prompts, MAX_NEW, [5, 3, 1, 0, 2, 4], sampling, slots=2, prefill_chunk=32) == want
    other_seed = [Sampling(1.0, 0.9, seed=100 + i) for i in range(6)]
    assert run_engine(tiny, prompts, MAX_NEW, range(6), other_seed, slots=3)[1] != want[1]


def test_cancelled_request_frees_its_slot_and_the_others_are_unchanged(tiny, prompts):
    engine = Engine(tiny.params, tiny.config, slots=1, max_len=512, steps=4)
    cancel = Request(prompts[0], 200, 1.1, on_update=lambda r: setattr(r, "cancelled", True))
    after = Request(prompts[2], MAX_NEW[2], 1.1)
    engine.submit(cancel)
    engine.submit(after)
    engine.run()
    assert len(cancel.output) == 4 and cancel.finish_reason is None
    assert after.output == uncached(tiny, prompts, MAX_NEW)[2] and after.finish_reason in ("stop", "length")


def test_compilations_are_bounded_and_the_state_is_updated_in_place(tiny, prompts):
    """One prefill per chunk shape and width read, one decoding program per rows and width read (a power of
    two and a length bucket), whatever the prompts; the same requests again compile nothing; the cache is
    donated."""
    prefills, decodes = engine_lib._prefill._cache_size(), engine_lib._decode._cache_size()
    engine = Engine(tiny.params, tiny.config, slots=5, max_len=384, prefill_chunk=64)
    for prompt, n in zip(prompts, MAX_NEW):
        engine.submit(Request(prompt, n, 1.1))
    engine.run_once()
    cache = engine.state["cache"]["k"]
    engine.run()
    assert cache.is_deleted()  # donated to the next call, not copied
    shapes = {(len(ids), engine._width(start + len(ids))) for p in prompts for ids, _, start, _ in chunk_plan(p, 64, 0)}
    assert engine_lib._prefill._cache_size() - prefills == len(shapes) == 4  # 32, 48 and 64 wide chunks
    widths = {engine._width(n) for n in range(1, engine.max_len + 1)}  # every width a call can read
    rows = {engine._rows(n) for n in range(1, 6)}  # every number of rows a call can compute
    assert (len(widths), rows) == (2, {1, 2, 4, 5})  # 256 and 384 columns
    assert 2 <= engine_lib._decode._cache_size() - decodes <= len(rows) * len(widths)
    compiled = engine_lib._prefill._cache_size(), engine_lib._decode._cache_size()
    for prompt, n in zip(prompts, MAX_NEW):
        engine.submit(Request(prompt, n, 1.1))
    engine.run()
    assert (engine_lib._prefill._cache_size(), engine_lib._decode._cache_size()) == compiled


def test_requests_left_in_the_last_slots_move_to_the_first_and_calls_compute_those_only(tiny, prompts):
    """When the requests of the first slots finish, the one left in the last slot moves to slot 0, and
    decoding calls compute one row instead of four; its tokens are those it gets alone."""
    engine = Engine(tiny.params, tiny.config, slots=4, max_len=512)
    short = [Request(prompts[i], 2, 1.1) for i in (1, 3, 5)]
    last = Request(prompts[2], 30, 1.1)
    for request in short + [last]:
        engine.submit(request)
    calls = []
    decode = engine_lib._decode

    def counted(*args, **kwargs):
        calls.append(kwargs["rows"])
        return decode(*args, **kwargs)

    engine_lib._decode = counted
    try:
        engine.run()
    finally:
        engine_lib._decode = decode
    assert calls[0] == 4 and calls[-1] == 1 and calls.count(1) > 20
    alone = Engine(tiny.params, tiny.config, slots=1, max_len=512)
    alone.submit(Request(prompts[2], 30, 1.1))
    want = alone.waiting[0]
    alone.run()
    assert last.output == want.output and len(want.output) > 20


def test_requests_that_do_not_fit_are_refused(tiny):
    engine = Engine(tiny.params, tiny.config, slots=2, max_len=128)
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        engine.submit(Request([5] * 500, 20))
    with pytest.raises(ValueError, match="does not fit a slot of 128 cache columns"):
        engine.submit(Request([5] * 100, 40))
    assert not engine.busy()
    with pytest.raises(ValueError, match="an engine needs at least 1 slot, not 0"):
        generate_ids(tiny.params, tiny.config, [[5, 6]], max_new_tokens=2, slots=0)


@pytest.mark.slow  # fast: the tiny model's reuse/chunk cases without a cache, and test_generate's HF parity
def test_smollm2_engine_equals_hf_with_reused_slots_and_chunked_prefill(smollm2, hf_smollm2, parity_prompts):
    """The parity prompts through 3 slots, in reverse, prompts over several 32-token chunks."""
    order = list(range(len(parity_prompts)))[::-1]
    got = run_engine(smollm2, parity_prompts, [NEW_TOKENS] * len(parity_prompts), order, slots=3, prefill_chunk=32)
    assert got == hf_generate(hf_smollm2, parity_prompts)


def test_a_step_reading_the_first_columns_equals_one_reading_the_whole_cache(tiny):
    """Llama(read_columns=W): a decoding step whose queries all sit before column W attends over those
    columns only, with the logits of a step over the whole cache."""
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 256, (2, 20)).astype(np.int32)
    cache = init_cache(tiny.config, 2, 256)
    _, cache = Llama(tiny.config).apply({"params": tiny.params}, ids, None, None, cache)
    cache["index"] = jnp.asarray([20, 20], jnp.int32)  # per-row indices, as the engine's slots
    token, positions = jnp.asarray([[7], [9]], jnp.int32), jnp.asarray([[20], [20]], jnp.int32)
    logits = {width: Llama(tiny.config, read_columns=width).apply(
        {"params": tiny.params}, token, positions, jnp.ones((2, 1), jnp.int32), cache)[0] for width in (None, 32)}
    np.testing.assert_allclose(logits[32], logits[None], atol=1e-6)


def test_both_programs_update_the_state_in_place_and_copy_no_cache():
    """The donated state is the programs' output (its bytes alias), and neither holds a copy of the cache: an
    extra layer adds nothing to a decoding call's temporaries, and one slot's share of its cache to a
    prefill's (the slot's columns it reads and writes)."""
    base = xlit_jax.load("preset:tiny").config
    slots = 8

    def temporaries(layers):
        config = base.replace(num_layers=layers)
        params = jax.eval_shape(functools.partial(init_params, config))
        lowered, state = lower_programs(params, config, slots, 32, 224, jax.ShapeDtypeStruct)
        memory = {name: program.compile().memory_analysis() for name, program in lowered.items()}
        assert {m.alias_size_in_bytes for m in memory.values()} == {sum(x.size * x.dtype.itemsize
                                                                       for x in jax.tree_util.tree_leaves(state))}
        cache = sum(state["cache"][name].size * state["cache"][name].dtype.itemsize for name in ("k", "v"))
        return {name: m.temp_size_in_bytes for name, m in memory.items()}, cache

    (temp_2, cache_2), (temp_6, cache_6) = temporaries(2), temporaries(6)
    assert temp_6["step"] == temp_2["step"]
    assert 0 < temp_6["prefill"] - temp_2["prefill"] <= 1.02 * (cache_6 - cache_2) / slots
