"""LoRA (rank 16 on every projection) on the tiny random preset: seconds on one CPU."""

from configs.experiments import tiny_ft
from configs.experiments.base import with_lora


def get_config():
    return with_lora(tiny_ft.get_config())
