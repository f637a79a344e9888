"""Greedy decoding through the engine against HF `generate(do_sample=False, repetition_penalty=1.1)`: the same
tokens; the penalty, the shape buckets and the choice of the next token on their own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

import xlit_jax
from xlit_jax.decode.buckets import bucket, prompt_bucket
from xlit_jax.decode.engine import PromptTooLong
from xlit_jax.decode.sampling import Sampling, apply_repetition_penalty, choose_next
from xlit_jax.errors import InputError

from support import NEW_TOKENS, hf_generate, paper_prompts


@pytest.fixture(scope="module")
def prompt_ids(smollm2, shared_data):
    return [smollm2.encode(p) for p in paper_prompts(shared_data)]


@pytest.mark.slow  # ~35 s: CI runs it; make test keeps the families' engine-vs-HF greedy tests
def test_batched_greedy_matches_hf_batched(smollm2, hf_smollm2, prompt_ids):
    ours = smollm2.generate_ids(prompt_ids, NEW_TOKENS, repetition_penalty=1.1, slots=8)
    assert ours == hf_generate(hf_smollm2, prompt_ids)
    assert all(len(o) > 5 for o in ours)


@pytest.mark.slow  # fast: the batched test, where every prompt has a slot (and a cache) of its own
def test_one_by_one_greedy_matches_hf_one_by_one(smollm2, hf_smollm2, prompt_ids):
    for prompt in prompt_ids:
        assert smollm2.generate_ids([prompt], NEW_TOKENS, repetition_penalty=1.1) == hf_generate(hf_smollm2, [prompt])


def test_repetition_penalty_is_hf_rule():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32) * 4
    history = rng.integers(0, 50, (3, 12))
    seen = np.zeros((3, 50), bool)
    np.put_along_axis(seen, history, True, axis=1)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(history), torch.tensor(logits)).numpy()
    np.testing.assert_allclose(np.asarray(apply_repetition_penalty(jnp.asarray(logits), seen, 1.3)), expected,
                               rtol=1e-6)


def test_shapes_are_bucketed():
    assert [bucket(n, 32) for n in (1, 32, 33, 100)] == [32, 32, 64, 128]
    assert [bucket(n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert [prompt_bucket(n) for n in (1, 32, 33, 48, 49, 96, 97, 130, 700)] == [
        32, 32, 48, 48, 64, 96, 128, 192, 768]


def test_generation_stops_at_eos_and_handles_more_prompts_than_slots():
    model = xlit_jax.load("preset:tiny", seed=1)
    prompts = [[5, 6, 7], [9], [10, 11, 12, 13, 14]]
    batched = model.generate_ids(prompts, 12, slots=2)
    single = [model.generate_ids([p], 12)[0] for p in prompts]
    assert batched == single
    eos = model.config.eos_token_ids[0]
    assert all(eos not in out and len(out) <= 12 for out in batched)


def test_prompt_longer_than_model_positions_is_refused():
    model = xlit_jax.load("preset:tiny")
    with pytest.raises(PromptTooLong, match="prompt 1: 500 tokens plus max_new_tokens=20 exceed the model's 512 "
                       r"positions \(1 more prompts too\)") as refused:
        model.generate_ids([[5] * 10, [5] * 500, [5] * 493], 20)
    assert refused.value.index == 1 and isinstance(refused.value, InputError)


def sampling_rows(settings):
    """(temperature, top_p, PRNG keys) of rows, as the engine's state holds them."""
    return (jnp.asarray([s.temperature for s in settings], jnp.float32),
            jnp.asarray([s.top_p for s in settings], jnp.float32),
            jnp.stack([jax.random.PRNGKey(s.seed) for s in settings]))


def test_choose_next_greedy_rows_nucleus_and_per_row_keys():
    logits = jnp.log(jnp.asarray([[0.1, 0.6, 0.3, 0.0001]] * 4, jnp.float32))
    rows = sampling_rows([Sampling(0.0), Sampling(1.0, top_p=0.5, seed=1), Sampling(1.0, top_p=0.8, seed=2),
                          Sampling()])
    draws = np.asarray(jax.vmap(lambda step: choose_next(logits, rows, step))(jnp.arange(2000)))
    assert (draws[:, 0] == 1).all() and (draws[:, 3] == 1).all()  # temperature 0
    assert (draws[:, 1] == 1).all()  # the top token alone holds 0.6 >= top_p
    frequencies = np.bincount(draws[:, 2], minlength=4) / len(draws)
    np.testing.assert_allclose(frequencies, [0, 2 / 3, 1 / 3, 0], atol=0.04)  # 0.6 + 0.3 renormalized
    # A row's draws depend on its own key and the step only, not on the rows beside it.
    alone = sampling_rows([Sampling(1.0, top_p=0.8, seed=2)])
    assert int(choose_next(logits[:1], alone, 5)[0]) == int(draws[5, 2])
