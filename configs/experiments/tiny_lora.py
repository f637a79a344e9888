"""LoRA (rank 16 on every projection) on the tiny random preset: seconds on one CPU."""

from configs.experiments import tiny_ft


def get_config():
    c = tiny_ft.get_config()
    c.lora.rank = 16
    c.train.export_peft = True
    return c
