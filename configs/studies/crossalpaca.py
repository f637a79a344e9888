"""CrossAlpaca as one command: LLaMA-2-7B tuned on Alpaca with and without translation-following
demonstrations in the benchmarks' languages (ar/de/es/it/zh, from NTREX-128), full fine-tuning and LoRA;
each cell evaluated on the Chirkova instructions (en/fr/pt/ru) and, in a second stage, on CrossAlpaca's
benchmarks (XQuAD, MLQA, MMLU, BBH in ar/de/en/es/it/zh). The demonstrations are made by the study
(xlit-demos into WORKDIR/data/alpaca-demos) before the first cell that trains on them.

  xlit-study --config=configs/studies/crossalpaca.py --workdir=runs/studies/crossalpaca \
      --config.model_sources.llama2-7b=/models/Llama-2-7b-hf
  xlit-study ... --report     # cell x language x benchmark, and each cell minus alpaca-en's

CrossAlpaca's claim is that tuning on translated instructions is not enough and demonstrations add to it, so
the study has four arms: English Alpaca, Alpaca + demonstrations, Alpaca machine-translated into the five
languages (alpaca-mt: Alpaca and its NLLB-200-3.3B translations by xlit-translate), and the translations +
demonstrations (alpaca-mt-demos, which reuses alpaca-mt's translations). The translation needs a GPU and a
local copy of the NLLB model (--config.data_prep.alpaca-mt.steps' model flag, or the hub where reachable);
not measured here: 52k records x 5 languages, about 40M generated tokens, hours on one GPU. Without a GPU,
leave the MT arms out: --config.datasets="('alpaca-en','alpaca-demos')".
"""

from ml_collections import ConfigDict

from configs.experiments import base, crossalpaca
from xlit_jax.resources import shared_data

NTREX = str(shared_data("ntrex128"))
LANGS = ",".join(crossalpaca.LANGUAGES)
DEMOS = {"program": "demos", "ntrex_dir": NTREX, "langs": LANGS, "directions": "forward,backward", "ratio": 0.1}
MT = "{prep}/../alpaca-mt/mt"  # alpaca-mt's folder: both MT arms train on one translation
TRANSLATE = {"program": "translate", "input": crossalpaca.ALPACA, "target_langs": LANGS, "output_dir": MT}
TRANSLATED = tuple(f"chat:{MT}/alpaca.{lang}.jsonl" for lang in crossalpaca.LANGUAGES)


def get_config():
    return ConfigDict({
        "name": "crossalpaca",
        "experiment": "configs/experiments/crossalpaca.py:{model},{data},{method},{lr}",
        "models": ("llama2-7b",),
        "datasets": ("alpaca-en", "alpaca-demos", "alpaca-mt", "alpaca-mt-demos"),
        "methods": ("ft", "lora"),
        "learning_rates": ("1e-5", "1e-4"),
        "model_sources": {"llama2-7b": ""},
        "train": base.overrides(),  # of the experiment config, e.g. --config.train.train.max_steps=500
        "data_prep": {  # steps run in order; "{prep}" is WORKDIR/data/DATASET
            "alpaca-demos": {"steps": ({**DEMOS, "mix_with": crossalpaca.ALPACA,
                                        "output": "{prep}/alpaca_demos.jsonl"},),
                             "sources": ("chat:{prep}/alpaca_demos.jsonl",)},
            "alpaca-mt": {"steps": (TRANSLATE,), "sources": (crossalpaca.ALPACA, *TRANSLATED)},
            "alpaca-mt-demos": {  # the same translations (done once: xlit-translate resumes by id)
                "steps": (TRANSLATE, {**DEMOS, "output": "{prep}/alpaca_mt_demos.jsonl",
                                      "mix_with": (crossalpaca.ALPACA, *TRANSLATED)}),
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
