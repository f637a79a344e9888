"""LoRA: fresh adapters change nothing, merging is exact, and both exports load in transformers/peft."""

import jax
import numpy as np
import peft
import pytest
import torch
import transformers

from xlit_jax.io.hf import save_hf_dir
from xlit_jax.io.peft import save_merged_hf, save_peft_adapter
from xlit_jax.models.llama import Llama, init_params
from xlit_jax.models.lora import LoraConfig, adapted, init_adapters, merge_lora, merge_params
from xlit_jax.models.presets import get_preset

BASE = get_preset("tiny")
LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
IDS = np.random.default_rng(0).integers(0, 256, (2, 12)).astype(np.int32)


def logits(params, lora=None):
    with adapted(lora):
        return np.asarray(Llama(BASE).apply({"params": params}, IDS)[0])


@pytest.fixture(scope="module")
def trained_like():
    """Base + adapters with B moved off zero, as after training."""
    rng = np.random.default_rng(1)
    adapters = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32),
                                      init_adapters(BASE, LORA, 0))
    return init_params(BASE, 0), adapters


def test_fresh_adapters_have_b_zero_and_leave_the_model_unchanged():
    base, adapters = init_params(BASE, 0), init_adapters(BASE, LORA, 0)
    for path, value in jax.tree_util.tree_leaves_with_path(adapters):
        assert path[-1].key in ("lora_a", "lora_b")
        assert (np.asarray(value) == 0).all() == (path[-1].key == "lora_b")
    np.testing.assert_array_equal(logits(merge_params(base, adapters), LORA), logits(base))


def test_merging_folds_the_adapters_into_the_kernels(trained_like):
    params = merge_params(*trained_like)
    unmerged = logits(params, LORA)
    assert np.abs(unmerged - logits(trained_like[0])).max() > 1e-3  # the adapters matter
    np.testing.assert_allclose(logits(merge_lora(params, LORA)), unmerged, atol=2e-5)


def test_peft_adapter_and_merged_export_give_our_logits_in_transformers(trained_like, tmp_path):
    base, _ = trained_like
    params = merge_params(*trained_like)
    save_hf_dir(BASE, base, tmp_path / "base")
    save_peft_adapter(BASE, LORA, params, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    save_merged_hf(BASE, LORA, params, tmp_path / "merged")
    ours = logits(params, LORA)
    with torch.no_grad():
        model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
        adapted = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
        np.testing.assert_allclose(adapted(torch.tensor(IDS, dtype=torch.long)).logits.numpy(), ours, atol=1e-4)
        merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
        np.testing.assert_allclose(merged(torch.tensor(IDS, dtype=torch.long)).logits.numpy(), ours, atol=1e-4)


def test_peft_export_refuses_a_config_without_lora(tmp_path):
    with pytest.raises(ValueError, match="no LoRA"):
        save_peft_adapter(BASE, None, init_params(BASE, 0), tmp_path / "adapter")
