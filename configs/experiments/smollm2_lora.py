"""LoRA (rank 16) on SmolLM2-135M-Instruct on LIMA, lr 1e-4 -> 1e-5 as in the released LoRA config, or
another peak lr and data set as the config argument LR[,DATA] (configs/experiments/smollm2_lora.py:1e-3;
DATA as smollm2_ft.py's)."""

from configs.experiments import smollm2_ft
from configs.experiments.base import with_lora


def get_config(arg: str | None = None):
    lr, comma, data = (arg or "").partition(",")
    return with_lora(smollm2_ft.get_config(f"{lr or '1e-4'}{comma}{data}"))
