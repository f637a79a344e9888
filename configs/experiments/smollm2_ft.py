"""Full fine-tuning of SmolLM2-135M-Instruct on LIMA in its own chat template, with the paper's optimizer:
lr 1e-5 -> 1e-6, or another peak lr as the config argument (configs/experiments/smollm2_ft.py:1e-4),
decaying to a tenth of it."""

from configs.experiments.base import base_config, with_model
from xlit_jax.resources import shared_data


def get_config(lr: str | None = None):
    c = with_model(base_config(), "smollm2-135m", source="smollm2-135m")  # the GGUF
    c.data.update(name="lima-en", sources=(f"lima:{shared_data('lima/lima.en.jsonl')}",), template="chat",
                  seq_len=512, tokens_per_batch=1024, grad_accum=4,
                  # eval/loss (with train.eval_every): 64 French dialogues written in French, held out
                  eval_sources=(f"chat:{shared_data('vigogne_oasst_fr/oasst_20230412_fr_1k.jsonl')},"
                                "map.messages=conversation,lang=fr,n=64",))
    c.train.update(max_steps=100, log_every=5, save_every=50, export_hf=True)
    if lr:
        c.optim.update(lr=float(lr), min_lr=float(lr) / 10)
    return c
