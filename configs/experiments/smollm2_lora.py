"""LoRA (rank 16) on SmolLM2-135M-Instruct on LIMA, lr 1e-4 -> 1e-5 as in the released LoRA config."""

from configs.experiments import smollm2_ft


def get_config():
    c = smollm2_ft.get_config()
    c.lora.rank = 16
    c.optim.update(lr=1e-4, min_lr=1e-5)
    c.train.export_peft = True
    return c
