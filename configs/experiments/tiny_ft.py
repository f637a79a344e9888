"""Full fine-tuning of the tiny random preset on LIMA (llama2 template, SmolLM2's tokenizer): seconds a
step on one CPU."""

from configs.experiments.base import base_config, with_model
from xlit_jax.resources import shared_data


def get_config():
    c = with_model(base_config(), "tiny", source="preset:tiny", vocab_size=49152)  # SmolLM2's vocabulary
    c.data.update(name="lima-en", sources=(f"lima:{shared_data('lima/lima.en.jsonl')}",), tokenizer="smollm2-135m",
                  seq_len=256, tokens_per_batch=1024, grad_accum=2)
    c.optim.update(lr=1e-3, min_lr=1e-4)
    c.train.update(max_steps=40, log_every=5, save_every=20)
    return c
