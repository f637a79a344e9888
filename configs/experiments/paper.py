"""The paper's training grid: {llama2-13b, llama2-7b, tower-7b} x {dolly-en, lima-en, dolly-lima-size,
dolly-dt} x {ft, lora} x lr {1e-6, 1e-5, 1e-4}, chosen by a config argument:

  xlit-train --config=configs/experiments/paper.py:llama2-7b,dolly-dt,lora,1e-4 --workdir=runs/...
      --config.model.source=/path/to/Llama-2-7b-hf

Recipe (the paper and its released configs, naver/pasero): 1000 updates of 4 micro-batches of ~4k tokens
(2 x 2048), Adam (0.9, 0.95), weight decay 0.1, bf16 compute, loss on responses only; LoRA rank 16
(xlit_jax/models/lora.py has the LoRA defaults and their sources).

Schedule: what the authors ran (naver/pasero's LRScheduler with the released configs' warm-up 0 and
min_lr = lr / 10: a linear decay from lr towards lr / 10 over the run). The paper's text ("Adam optimizer with
standard inverse square root LR schedule and without warm up", its Appendix) read literally, lr / sqrt(n),
is one flag away (docs/results.md shows what it changes):
  --config.optim.schedule=inverse_sqrt
"""

from configs.experiments.base import base_config, with_lora, with_model
from xlit_jax.resources import shared_data

# Presets (xlit_jax/models/presets.py). model.source must point at a local copy of the preset's hub name (e.g.
# huggingface-cli download meta-llama/Llama-2-7b-hf); preset:NAME trains the same shapes from random weights.
MODELS = ("llama2-13b", "llama2-7b", "tower-7b")
# Today's bases, on the same recipe (the paper's llama2 template too): configs/studies/bases.py runs the grid on one.
BASES = ("llama3.1-8b", "llama3.2-1b", "llama3.2-3b", "qwen2.5-0.5b", "qwen2.5-7b", "mistral-7b")
DOLLY = "dolly:databricks/databricks-dolly-15k"
# Data sets as data-pipeline sources (docs/data.md). Dolly comes from the hub; Dolly-DT adds its NLLB
# translations, made beforehand with `xlit-translate --input=dolly:databricks/databricks-dolly-15k
# --target_langs=fr,pt,ru --output_dir=data/dolly`, and draws a language uniformly per micro-batch.
DATASETS = {
    "dolly-en": (DOLLY,),
    "lima-en": (f"lima:{shared_data('lima/lima.en.jsonl')}",),
    "dolly-lima-size": (f"{DOLLY},n=1030",),  # down-sampled to LIMA's size
    "dolly-dt": (DOLLY, *(f"chat:data/dolly/databricks-dolly-15k.{lang}.jsonl" for lang in ("fr", "pt", "ru"))),
}
METHODS = ("ft", "lora")
LEARNING_RATES = ("1e-6", "1e-5", "1e-4")
DEFAULT = "llama2-7b,dolly-en,ft,1e-5"


def get_config(arg: str | None = None):
    model, data, method, lr = (arg or DEFAULT).split(",")
    for value, allowed, what in ((model, MODELS + BASES, "model"), (data, DATASETS, "data set"),
                                 (method, METHODS, "method"), (lr, LEARNING_RATES, "learning rate")):
        if value not in allowed:
            raise ValueError(f"paper.py: {what} {value!r} is not one of {list(allowed)}")
    c = with_model(base_config(), model, remat="full")  # full remat: 7B and 13B activations
    c.data.update(name=data, sources=DATASETS[data], mixing="uniform" if data == "dolly-dt" else "none")
    # The released configs: warm-up 0 and min_lr a tenth of lr (inverse_sqrt ignores min_lr).
    c.optim.update(schedule="pasero", warmup_steps=0, lr=float(lr), min_lr=float(lr) / 10)
    # clip_norm 1.0 (base config): the paper is silent; pasero's default (config.py `clip_norm`, not set in
    # the released YAMLs).
    if method == "lora":
        # Rank 16: the paper and the released LoRA config (lora_rank: 16); alpha, dropout and targets: the
        # defaults of xlit_jax/models/lora.py, with their sources (the released code's alpha is 8).
        return with_lora(c)
    c.train.export_hf = True
    return c
