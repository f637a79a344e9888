"""CrossAlpaca (Ranaldi et al., 2024) on the paper's recipe: instruction data with or without
translation-following demonstrations, chosen by a config argument like paper.py's:

  xlit-train --config=configs/experiments/crossalpaca.py:llama2-7b,alpaca-demos,lora,1e-4 --workdir=runs/...

alpaca-demos is Alpaca plus 10% demonstrations from NTREX-128, made beforehand with
`xlit-demos --ntrex_dir=../shared/data/ntrex128 --langs=fr,pt,ru,de --directions=forward,backward
--mix_with=alpaca:tatsu-lab/alpaca --ratio=0.1 --output=data/alpaca_demos.jsonl`.
"""

from configs.experiments import paper

DATASETS = {"alpaca-en": ("alpaca:tatsu-lab/alpaca",), "alpaca-demos": ("chat:data/alpaca_demos.jsonl",)}
DEFAULT = "llama2-7b,alpaca-demos,lora,1e-4"


def get_config(arg: str | None = None):
    model, data, method, lr = (arg or DEFAULT).split(",")
    if data not in DATASETS:
        raise ValueError(f"crossalpaca.py: data set {data!r} is not one of {list(DATASETS)}")
    c = paper.get_config(f"{model},lima-en,{method},{lr}")  # the paper's recipe for model, method and lr
    c.data.update(name=data, sources=DATASETS[data])
    return c
