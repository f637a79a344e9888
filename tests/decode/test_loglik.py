"""Batched log-likelihood against transformers (fp32 on CPU), pair by pair without padding on their side.

Tolerance 1e-4 on the summed log-probability: log-softmax of fp32 logits; the two sides differ only in
summation order (SmolLM2's logits differ by up to ~2e-3, but log-probs of likely tokens much less).
"""

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import xlit_jax
from xlit_jax.decode import loglik
from xlit_jax.decode.loglik import encode_pair, loglikelihood_ids, pack, split_boundary
from xlit_jax.io.hf import save_hf_dir

TOLERANCE = 1e-4


def hf_loglikelihood(model, context, continuation):
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1).numpy()
    n = len(continuation)
    rows = logp[len(context) - 1:len(context) - 1 + n]
    return float(rows[np.arange(n), continuation].sum()), bool((rows.argmax(-1) == continuation).all())


def test_boundary_rule_moves_trailing_space_to_the_continuation():
    assert split_boundary("Answer: ", "A") == ("Answer:", " A")
    assert split_boundary("Q:\n\n", "x") == ("Q:", "\n\nx")
    assert split_boundary("Answer:", " A") == ("Answer:", " A")


def test_random_tiny_model_matches_transformers(tmp_path):
    model = xlit_jax.load("preset:tiny", seed=5)
    save_hf_dir(model.config, model.params, tmp_path / "hf")
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    context = rng.integers(3, vocab, 11).tolist()
    pairs = [(context, [5]), (context, [7]), (context, [9, 4, 3]),  # three share one input row
             (rng.integers(3, vocab, 30).tolist(), rng.integers(3, vocab, 4).tolist()),
             (rng.integers(3, vocab, 2).tolist(), rng.integers(3, vocab, 1).tolist())]
    # the greedy token after the context, so one pair is greedy for sure
    with torch.no_grad():
        best = int(reference(input_ids=torch.tensor([context])).logits[0, -1].argmax())
    pairs.append((context, [best]))
    ours = loglikelihood_ids(model.params, model.config, pairs, batch_size=2)
    for (ctx, cont), (logp, greedy) in zip(pairs, ours):
        ref_logp, ref_greedy = hf_loglikelihood(reference, ctx, cont)
        assert abs(logp - ref_logp) <= TOLERANCE and greedy == ref_greedy
    assert ours[-1][1]


@pytest.mark.slow  # see test_model_parity.py's SmolLM2 case: CI runs it; make test keeps the random tiny model's
def test_smollm2_matches_transformers_with_harness_tokenization(smollm2, hf_smollm2):
    tok = smollm2.tokenizer
    question = "The following are multiple choice questions (with answers) about anatomy.\n\nWhat is 2+2?\n" \
               "A. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    pairs = [(question, f" {letter}") for letter in "ABCD"]
    pairs += [("Context: Paris is the capital of France.\n\nQuestion: What is the capital?\n\nAnswer: ", "Paris"),
              ("Die Hauptstadt von Deutschland ist", " Berlin."), ("中国的首都是", "北京")]
    ours = smollm2.loglikelihood(pairs, batch_size=4)
    assert encode_pair(tok, pairs[4][0], pairs[4][1])[1] == tok(" Paris", add_special_tokens=False).input_ids
    for (context, continuation), (logp, greedy) in zip(pairs, ours):
        ref_logp, ref_greedy = hf_loglikelihood(hf_smollm2, *encode_pair(tok, context, continuation))
        assert abs(logp - ref_logp) <= TOLERANCE, (context, continuation, logp, ref_logp)
        assert greedy == ref_greedy


def test_inputs_of_any_length_are_packed_into_one_shape_with_the_results_of_one_by_one():
    """Rows share a packed sequence as segments of their own: nothing leaks between them, and a call
    compiles one program whatever the lengths."""
    assert pack([5, 300, 200, 100, 20], 512) == [[1, 2, 0], [3, 4]]  # first fit, longest first
    model = xlit_jax.load("preset:tiny", seed=5)
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(3, 256, n).tolist(), rng.integers(3, 256, 1 + n % 3).tolist())
             for n in (3, 40, 200, 7, 90, 1, 300, 64)]
    compiled = loglik._score._cache_size()
    packed = loglikelihood_ids(model.params, model.config, pairs, batch_size=2)
    assert loglik._score._cache_size() - compiled == 1
    alone = [loglikelihood_ids(model.params, model.config, [p])[0] for p in pairs]
    np.testing.assert_allclose([p[0] for p in packed], [p[0] for p in alone], atol=1e-5)
    assert [p[1] for p in packed] == [p[1] for p in alone]


def test_empty_continuation_is_an_error():
    model = xlit_jax.load("preset:tiny", seed=0)
    with pytest.raises(ValueError, match="pair 1: empty continuation"):
        loglikelihood_ids(model.params, model.config, [([1, 2], [3]), ([1], [])])


def test_token_logprobs_are_the_loglikelihoods_position_by_position_with_transformers_top_k(tmp_path):
    """token_logprobs_ids (the server's echo/logprobs): per-token log-probs whose sums over a continuation are
    loglikelihood_ids's values (1e-5 + 1e-6 relative: the same fp32 computation, summed in another order), HF's
    log-probs at every position (TOLERANCE), and top-k lists whose first entry is the greedy token with exactly
    its log-prob."""
    model = xlit_jax.load("preset:tiny", seed=5)
    save_hf_dir(model.config, model.params, tmp_path / "hf")
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    rng = np.random.default_rng(2)
    vocab = model.config.vocab_size
    sequences = [rng.integers(3, vocab, n).tolist() for n in (1, 2, 17, 300, 40, 500)]
    # sharing all but the last token (a multiple-choice question's choices), the empty prefix, a repeat
    sequences += [sequences[4][:-1] + [t] for t in (3, 4, 5)] + [[7], sequences[1]]
    scores = loglik.token_logprobs_ids(model.params, model.config, sequences, top_k=3, logit_bytes=1 << 20)
    for tokens, score in zip(sequences, scores):
        assert score.logprobs.shape == (len(tokens) - 1,) and score.top_ids.shape == (len(tokens), 3)
        with torch.no_grad():
            logp = torch.log_softmax(reference(input_ids=torch.tensor([tokens])).logits[0].double(), -1).numpy()
        np.testing.assert_allclose(score.logprobs, logp[np.arange(len(tokens) - 1), tokens[1:]], atol=TOLERANCE)
        np.testing.assert_allclose(score.top_logprobs, np.take_along_axis(logp, score.top_ids, -1), atol=TOLERANCE)
        assert (score.top_ids[:, 0] == logp.argmax(-1)).all() and (np.diff(score.top_logprobs, axis=1) <= 0).all()
        if len(tokens) > 1:
            context, continuation = tokens[:len(tokens) // 2 or 1], tokens[len(tokens) // 2 or 1:]
            [(total, greedy)] = loglikelihood_ids(model.params, model.config, [(context, continuation)])
            assert abs(total - score.logprobs[len(context) - 1:].astype(np.float64).sum()) <= 1e-5 + 1e-6 * abs(total)
    # a greedy continuation's token log-prob equals the top-1 log-prob bit for bit (lm-eval's is_greedy test)
    best = int(scores[2].top_ids[-1, 0])
    [again] = loglik.token_logprobs_ids(model.params, model.config, [sequences[2] + [best]], top_k=1)
    assert again.logprobs[-1] == again.top_logprobs[-2, 0]
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        loglik.token_logprobs_ids(model.params, model.config, [[1], []])


def test_token_logprobs_pass_a_shared_prefix_through_the_model_once(monkeypatch):
    """Sequences that differ only in their last token (lm-eval's local-completions sends an MMLU question's
    context once per choice) put their common prefix in the packs once, in one pack of the tokens' power of
    two (not PACK_WIDTH: a request's few prompts), and score as each does alone."""
    model = xlit_jax.load("preset:tiny", seed=5)
    rng = np.random.default_rng(3)
    context = rng.integers(3, model.config.vocab_size, 60).tolist()
    sequences = [context + [t] for t in (3, 4, 5, 6)] + [context[:20]]
    packed = []
    score = loglik._token_scores
    monkeypatch.setattr(loglik, "_token_scores",
                        lambda *a, **k: packed.append((int((a[2] > 0).sum()), a[1].shape)) or score(*a, **k))
    together = loglik.token_logprobs_ids(model.params, model.config, sequences, top_k=2)
    assert packed == [(len(context) + 19, (1, 128))]
    for tokens, shared in zip(sequences, together):
        [alone] = loglik.token_logprobs_ids(model.params, model.config, [tokens], top_k=2)
        np.testing.assert_allclose(shared.logprobs, alone.logprobs, atol=1e-5)
        np.testing.assert_allclose(shared.top_logprobs, alone.top_logprobs, atol=1e-5)
        assert (shared.top_ids == alone.top_ids).all()
