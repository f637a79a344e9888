"""CrossAlpaca (Ranaldi et al., 2024) on the paper's recipe: instruction data with or without its
translations and translation-following demonstrations, chosen by a config argument like paper.py's:

  xlit-train --config=configs/experiments/crossalpaca.py:llama2-7b,alpaca-demos,lora,1e-4 --workdir=runs/...

The data sets other than alpaca-en are made beforehand; configs/studies/crossalpaca.py declares how, and
xlit-study runs it (into WORKDIR/data/DATASET, overriding the sources below). By hand:
  alpaca-demos: Alpaca plus 10% demonstrations from NTREX-128 in CrossAlpaca's benchmark languages,
    `xlit-demos --ntrex_dir=../shared/data/ntrex128 --langs=ar,de,es,it,zh --mix_with=alpaca:tatsu-lab/alpaca
    --ratio=0.1 --output=data/alpaca_demos.jsonl`;
  alpaca-mt, alpaca-mt-demos (CrossAlpaca: the instructions in every language, plus the demonstrations):
    `xlit-translate --input=alpaca:tatsu-lab/alpaca --target_langs=ar,de,es,it,zh --output_dir=data/alpaca`
    first (NLLB-200-3.3B), then the same xlit-demos with one --mix_with per translated file.
"""

from configs.experiments import paper

ALPACA = "alpaca:tatsu-lab/alpaca"
LANGUAGES = ("ar", "de", "es", "it", "zh")  # the benchmarks' languages besides English
TRANSLATED = tuple(f"chat:data/alpaca/alpaca.{lang}.jsonl" for lang in LANGUAGES)
DATASETS = {"alpaca-en": (ALPACA,), "alpaca-demos": ("chat:data/alpaca_demos.jsonl",),
            "alpaca-mt": (ALPACA, *TRANSLATED), "alpaca-mt-demos": ("chat:data/alpaca_mt_demos.jsonl",)}
DEFAULT = "llama2-7b,alpaca-demos,lora,1e-4"


def get_config(arg: str | None = None):
    model, data, method, lr = (arg or DEFAULT).split(",")
    if data not in DATASETS:
        raise ValueError(f"crossalpaca.py: data set {data!r} is not one of {list(DATASETS)}")
    c = paper.get_config(f"{model},lima-en,{method},{lr}")  # the paper's recipe for model, method and lr
    c.data.update(name=data, sources=DATASETS[data])
    return c
