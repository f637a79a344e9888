"""The study in miniature on 2 CPU cores: SmolLM2-135M-Instruct (English-centred), full fine-tuning and
LoRA at three learning rates on LIMA, short runs, and the untuned model as the baseline, evaluated on a
fixed seeded subset of the paper's instructions in en/fr/pt/ru for language correctness and spelling.

  xlit-study --config=configs/studies/smollm2_mini.py --workdir=runs/studies/smollm2_mini

Size (docs/results.md has the measured time): 7 cells; each run 20 updates of one micro-batch of 2 x 512
tokens (20k tokens, 3% of LIMA's 0.66M; the paper's runs see 16M); 12 instructions per language, 64 new
tokens. Training logs the drift probes every 5 steps (docs/training.md), drawn by --report. The learning
rates are the paper's upper two and one above: so few steps at 1e-6 would change nothing. To see the
likeliest effects first on a busy machine, run the cells in passes (as docs/results.md did):

  for only in '*.base,*.lr1e-3' '*.lr1e-4' '*'; do xlit-study --config=... --workdir=... --only="$only"; done
"""

from ml_collections import ConfigDict

from configs.experiments import base


def get_config():
    return ConfigDict({
        "name": "smollm2_mini",
        "experiment": "configs/experiments/smollm2_{method}.py:{lr}",
        "models": ("smollm2-135m",),
        "datasets": ("lima-en",),
        "methods": ("ft", "lora"),
        "learning_rates": ("1e-5", "1e-4", "1e-3"),
        "model_sources": {},
        "train": base.overrides({
            "data": {"grad_accum": 1},
            # eval_every: the drift curves while training (held-out French loss, en/fr/ru probes; 5 rounds)
            "train": {"max_steps": 20, "save_every": 5, "log_every": 5, "export_hf": False, "export_peft": False,
                      "tensorboard": False, "eval_every": 5},
        }),
        "eval": {
            "eval_set": "chirkova",
            "languages": "en,fr,pt,ru",
            "limit": 12,
            "seed": 0,
            "metrics": "language,spelling",
            "max_new_tokens": 64,
            "batch_size": 4,  # the engine's slots; the static path's prefill at 16 x 2048 took 10 GiB (BUILD_NOTES)
        },
        "baselines": {"smollm2-135m": "smollm2-135m"},
    })


def variant(name: str, **fields) -> ConfigDict:
    """This study under another name with some fields replaced: the findings' studies (docs/results.md)."""
    config = get_config()
    for key, value in {"name": name, **fields}.items():
        config[key] = value  # replaced whole, not merged (ConfigDict.update merges sections)
    return config
