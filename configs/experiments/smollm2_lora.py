"""LoRA (rank 16) on SmolLM2-135M-Instruct on LIMA, lr 1e-4 -> 1e-5 as in the released LoRA config, or
another peak lr as the config argument (configs/experiments/smollm2_lora.py:1e-3)."""

from configs.experiments import smollm2_ft


def get_config(lr: str | None = None):
    c = smollm2_ft.get_config(lr or "1e-4")
    c.lora.rank = 16
    c.train.export_peft = True
    return c
