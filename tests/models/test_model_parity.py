"""Our Flax LLaMA against transformers' LlamaForCausalLM on the same ids (fp32 on CPU).

Tolerances: 1e-4 on a random tiny model (the two only differ in float32 summation order) and 2e-3 on
SmolLM2's real weights (30 layers and logits of magnitude ~30 accumulate more rounding).
"""

import jax
import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import xlit_jax
from xlit_jax.io.hf import save_hf_dir

from support import left_padded


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def max_diff_on_tokens(ours, theirs, mask):
    return max(np.abs(ours[i][mask[i] == 1] - theirs[i][mask[i] == 1]).max() for i in range(len(mask)))


def random_sequences(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, n).tolist() for n in lengths]


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_random_tiny_gqa_matches_transformers_after_export(preset, tmp_path):
    model = xlit_jax.load(f"preset:{preset}", seed=3)
    save_hf_dir(model.config, model.params, tmp_path / "hf")
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids, mask = left_padded(random_sequences(model.config.vocab_size, [17, 9, 1, 17]))
    ours = model.logits(ids, mask)
    assert ours.dtype == np.float32 and ours.shape == (4, 17, model.config.vocab_size)
    assert max_diff_on_tokens(ours, hf_logits(reference, ids, mask), mask) <= 1e-4


# With its twin in test_loglik.py ~20 s (transformers reads the GGUF): CI runs them; make test keeps every
# family's random-weight parity with transformers.
@pytest.mark.slow
def test_smollm2_logits_match_transformers_on_left_padded_batch(smollm2, hf_smollm2):
    prompts = ["The capital of France is", "Bonjour, je m'appelle",
               "Привет! Как дела?", "O Brasil é um país"]
    ids, mask = left_padded([smollm2.encode(p) for p in prompts])
    diff = max_diff_on_tokens(smollm2.logits(ids, mask), hf_logits(hf_smollm2, ids, mask), mask)
    assert diff <= 2e-3


def test_export_then_transformers_loads_same_logits(smollm2, tmp_path):
    save_hf_dir(smollm2.config, smollm2.params, tmp_path / "hf", tokenizer=smollm2.tokenizer)
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids, mask = left_padded([smollm2.encode("Olá, tudo bem?"), smollm2.encode("Hi")])
    assert max_diff_on_tokens(smollm2.logits(ids, mask), hf_logits(reference, ids, mask), mask) <= 2e-3


def test_import_export_import_is_bitwise(smollm2, tmp_path):
    save_hf_dir(smollm2.config, smollm2.params, tmp_path / "a", tokenizer=smollm2.tokenizer)
    first = xlit_jax.load(tmp_path / "a")
    save_hf_dir(first.config, first.params, tmp_path / "b", tokenizer=first.tokenizer)
    second = xlit_jax.load(tmp_path / "b")
    assert first.config == second.config == smollm2.config
    a, b, original = (dict(jax.tree_util.tree_leaves_with_path(m.params)) for m in (first, second, smollm2))
    assert a.keys() == b.keys() == original.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(original[key]))
    assert first.tokenizer("Ça va? 123").input_ids == smollm2.tokenizer("Ça va? 123").input_ids


def test_bfloat16_compute_agrees_with_float32_within_bf16_precision():
    fp32 = xlit_jax.load("preset:tiny", seed=4)
    bf16 = xlit_jax.Model(fp32.config.replace(dtype="bfloat16"), fp32.params, None, "bf16")
    ids, mask = left_padded(random_sequences(fp32.config.vocab_size, [12, 7], seed=1))
    exact, approx = fp32.logits(ids, mask), bf16.logits(ids, mask)
    scale = np.abs(exact).max()
    assert approx.dtype == np.float32
    assert 0 < np.abs(exact - approx).max() <= 0.03 * scale
