"""CrossAlpaca as a study: LLaMA-2-7B tuned on Alpaca with and without translation-following
demonstrations (configs/experiments/crossalpaca.py says how to make them), full fine-tuning and LoRA,
evaluated on the paper's instructions in en/fr/pt/ru and its modifier prompts. CrossAlpaca's own
benchmarks (xlit-eval --eval_set=xquad,mlqa,mmlu,bbh) need their own out_dir, and a study cell has one
evaluation stage so far: run them per cell with `xlit-eval --model=WORKDIR/cells/NAME/train ...`.

  xlit-study --config=configs/studies/crossalpaca.py --workdir=runs/studies/crossalpaca \
      --config.model_sources.llama2-7b=/models/Llama-2-7b-hf
"""

from ml_collections import ConfigDict

from configs.experiments import crossalpaca


def get_config():
    return ConfigDict({
        "name": "crossalpaca",
        "experiment": "configs/experiments/crossalpaca.py:{model},{data},{method},{lr}",
        "models": ("llama2-7b",),
        "datasets": tuple(crossalpaca.DATASETS),
        "methods": ("ft", "lora"),
        "learning_rates": ("1e-5", "1e-4"),
        "model_sources": {"llama2-7b": ""},
        "train": {},
        "eval": {
            "eval_set": "chirkova,chirkova_modifiers",
            "languages": "en,fr,pt,ru",
            "metrics": "language,spelling,modifiers",
            "max_new_tokens": 512,
        },
        "baselines": {},
    })
