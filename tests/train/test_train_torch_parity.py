"""One optimizer step in JAX against PyTorch (transformers + torch.optim.AdamW, peft for LoRA), fp32.

Both sides start from the same weights (ours exported with save_hf_dir; the adapter with
save_peft_adapter) and see the same packed batch. The PyTorch side runs every packed example as its own
sequence, so it also checks that packing (segment ids, restarting positions) isolates the examples.
"""

import pytest

from xlit_jax.models.llama import init_params
from xlit_jax.models.presets import get_preset

from support import full_ft_parity, lora_parity


def test_tiny_full_ft_step_matches_pytorch(tmp_path):
    config = get_preset("tiny")
    compared = full_ft_parity(config, init_params(config, 0), tmp_path, lr=1e-3, update_tol=1e-3)
    assert "model.embed_tokens.weight" in compared and len(compared) > 9 * config.num_layers  # every tensor


def test_tiny_lora_step_matches_peft(tmp_path):
    config = get_preset("tiny-tied")
    compared = lora_parity(config, init_params(config, 0), tmp_path, lr=1e-3, update_tol=1e-3)
    assert len(compared) == 2 * 7 * config.num_layers  # A and B of all seven projections in every layer


@pytest.mark.manual
def test_smollm2_full_ft_step_matches_pytorch(smollm2, tmp_path):
    full_ft_parity(smollm2.config, smollm2.params, tmp_path, lr=1e-5)  # the paper's full fine-tuning lr


@pytest.mark.manual
def test_smollm2_lora_step_matches_peft(smollm2, tmp_path):
    lora_parity(smollm2.config, smollm2.params, tmp_path, lr=1e-5)  # one of the paper's LoRA lrs
