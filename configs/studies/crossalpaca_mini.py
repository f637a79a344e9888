"""CrossAlpaca in miniature on 2 CPU cores: SmolLM2-135M-Instruct, LoRA on LIMA with and without
translation-following demonstrations (NTREX-128, en <-> ar/de/es/it/zh, made by the study), a handful of
updates, then a few items of XQuAD and MMLU in ar/de/en/zh as the second evaluation stage; the untuned
model as the baseline. It shows that the one command runs every stage and resumes; its numbers are far
too small to show the paper's effect (docs/results.md).

  xlit-study --config=configs/studies/crossalpaca_mini.py --workdir=runs/studies/crossalpaca_mini
"""

from ml_collections import ConfigDict

from configs.experiments import base
from configs.studies.crossalpaca import DEMOS
from xlit_jax.resources import shared_data


def get_config():
    return ConfigDict({
        "name": "crossalpaca_mini",
        "experiment": "configs/experiments/smollm2_{method}.py:{lr}",
        "models": ("smollm2-135m",),
        "datasets": ("lima-en", "lima-demos"),
        "methods": ("lora",),
        "learning_rates": ("1e-3",),  # so few updates need a high rate to move the model at all
        "model_sources": {},
        "train": base.overrides({
            "data": {"seq_len": 256, "tokens_per_batch": 512, "grad_accum": 1},
            "train": {"max_steps": 8, "save_every": 4, "log_every": 2, "export_hf": False, "export_peft": False,
                      "tensorboard": False},
        }),
        "data_prep": {
            # 40 sentence pairs per language, both directions (400 demonstrations), 27% of the mix (381 with LIMA).
            "lima-demos": {"steps": ({**DEMOS, "max_pairs": 40, "ratio": 0.27,
                                      "mix_with": f"lima:{shared_data('lima/lima.en.jsonl')}",
                                      "output": "{prep}/lima_demos.jsonl"},),
                           "sources": ("chat:{prep}/lima_demos.jsonl",)},
        },
        "eval": {"eval_set": "chirkova", "languages": "en,fr", "limit": 2, "seed": 0, "metrics": "language",
                 "max_new_tokens": 16, "batch_size": 4},
        # 32 new tokens (not the harness's 256): the budget docs/results.md's miniature table ran with
        "bench": {"eval_set": "xquad,mmlu", "languages": "ar,de,en,zh", "limit": 6, "seed": 0, "batch_size": 4,
                  "bench_max_new_tokens": 32},
        "baselines": {"smollm2-135m": "smollm2-135m"},
        "report": {"reference": "smollm2-135m.lima-en.lora.lr1e-3"},
    })
