"""CrossAlpaca as one command: LLaMA-2-7B tuned on Alpaca with and without translation-following
demonstrations in the benchmarks' languages (ar/de/es/it/zh, from NTREX-128), full fine-tuning and LoRA;
each cell evaluated on the Chirkova instructions (en/fr/pt/ru) and, in a second stage, on CrossAlpaca's
benchmarks (XQuAD, MLQA, MMLU, BBH in ar/de/en/es/it/zh). The demonstrations are made by the study
(xlit-demos into WORKDIR/data/alpaca-demos) before the first cell that trains on them.

  xlit-study --config=configs/studies/crossalpaca.py --workdir=runs/studies/crossalpaca \
      --config.model_sources.llama2-7b=/models/Llama-2-7b-hf
  xlit-study ... --report     # cell x language x benchmark, and each cell minus alpaca-en's

CrossAlpaca proper also translates the instructions: add "alpaca-mt-demos" to datasets (its preparation,
an NLLB translation of Alpaca with xlit-translate then the demonstrations, is declared below; it needs a GPU
and the hub).
"""

from ml_collections import ConfigDict

from configs.experiments import base, crossalpaca
from xlit_jax.resources import shared_data

NTREX = str(shared_data("ntrex128"))
LANGS = ",".join(crossalpaca.LANGUAGES)
DEMOS = {"program": "demos", "ntrex_dir": NTREX, "langs": LANGS, "directions": "forward,backward", "ratio": 0.1}


def get_config():
    return ConfigDict({
        "name": "crossalpaca",
        "experiment": "configs/experiments/crossalpaca.py:{model},{data},{method},{lr}",
        "models": ("llama2-7b",),
        "datasets": ("alpaca-en", "alpaca-demos"),
        "methods": ("ft", "lora"),
        "learning_rates": ("1e-5", "1e-4"),
        "model_sources": {"llama2-7b": ""},
        "train": base.overrides(),  # of the experiment config, e.g. --config.train.train.max_steps=500
        "data_prep": {  # steps run in order; "{prep}" is WORKDIR/data/DATASET
            "alpaca-demos": {"steps": ({**DEMOS, "mix_with": crossalpaca.ALPACA, "output": "{prep}/alpaca_demos.jsonl"},),
                             "sources": ("chat:{prep}/alpaca_demos.jsonl",)},
            "alpaca-mt-demos": {
                "steps": ({"program": "translate", "input": crossalpaca.ALPACA, "target_langs": LANGS,
                           "output_dir": "{prep}/mt"},
                          {**DEMOS, "output": "{prep}/alpaca_mt_demos.jsonl", "mix_with": (crossalpaca.ALPACA, *(
                              f"chat:{{prep}}/mt/alpaca.{lang}.jsonl" for lang in crossalpaca.LANGUAGES))}),
                "sources": ("chat:{prep}/alpaca_mt_demos.jsonl",)},
        },
        "eval": {
            "eval_set": "chirkova,chirkova_modifiers",
            "languages": "en,fr,pt,ru",
            "metrics": "language,spelling,modifiers",
            "max_new_tokens": 512,
        },
        "bench": {"eval_set": "xquad,mlqa,mmlu,bbh", "languages": "ar,de,en,es,it,zh"},
        "baselines": {},
        "report": {"reference": "llama2-7b.alpaca-en.lora.lr1e-4"},
    })
