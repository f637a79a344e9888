"""LoRA (rank 16) on SmolLM2-135M-Instruct on LIMA, lr 1e-4 -> 1e-5 as in the released LoRA config, or
another peak lr as the config argument (configs/experiments/smollm2_lora.py:1e-3)."""

from configs.experiments import smollm2_ft
from configs.experiments.base import with_lora


def get_config(lr: str | None = None):
    return with_lora(smollm2_ft.get_config(lr or "1e-4"))
