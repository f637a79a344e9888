"""The paper's grid on one of today's bases, by name: does the learning-rate finding hold for Llama-3.1-8B?

  xlit-study --config=configs/studies/bases.py:llama3.1-8b,/models/Llama-3.1-8B --workdir=runs/studies/llama3.1-8b
  xlit-study --config=configs/studies/bases.py:qwen2.5-0.5b,/models/Qwen2.5-0.5B,mini --workdir=...

The argument is BASE,SOURCE[,mini]: BASE one of configs/experiments/paper.py's BASES (llama3.1-8b,
llama3.2-1b, llama3.2-3b, qwen2.5-0.5b, qwen2.5-7b, mistral-7b), SOURCE a local copy of its hub name
(xlit_jax/models/presets.py: HUB_NAMES) or preset:BASE (random weights, to try the commands). Each cell is
the paper's recipe (configs/experiments/paper.py) on that base; the untuned base is the baseline. The whole
grid is the paper's data sets x {ft, lora} x lr {1e-6, 1e-5, 1e-4} (24 cells); `mini` keeps LIMA and 50
updates per cell (6 cells), a first look on one GPU. Evaluation: the paper's instructions in en/fr/pt/ru,
language correctness and spelling (add the judges as in configs/studies/chirkova2024.py).
"""

from ml_collections import ConfigDict

from configs.experiments import base, paper


def get_config(arg: str = "llama3.2-1b,preset:llama3.2-1b,mini"):
    name, source, *mini = arg.split(",")
    if name not in paper.BASES or mini not in ([], ["mini"]):
        raise ValueError(f"bases.py: the argument is BASE,SOURCE[,mini] with BASE one of {list(paper.BASES)}, "
                         f"not {arg!r}")
    train = {"model": {"source": source}}  # as the cells' override: ConfigDict keys take no dots (llama3.1-8b)
    if mini:
        train["train"] = {"max_steps": 50, "save_every": 25, "log_every": 5}
    return ConfigDict({
        "name": f"bases_{name}{'_mini' if mini else ''}",
        "experiment": "configs/experiments/paper.py:{model},{data},{method},{lr}",
        "models": (name,),
        "datasets": ("lima-en",) if mini else tuple(paper.DATASETS),
        "methods": paper.METHODS,
        "learning_rates": paper.LEARNING_RATES,
        "model_sources": {},
        "train": base.overrides(train),
        "eval": {
            "eval_set": "chirkova",
            "languages": "en,fr,pt,ru",
            "metrics": "language,spelling",
            "max_new_tokens": 512,
            "repetition_penalty": 1.1,
        },
        "baselines": {name.replace(".", "_"): source},  # the untuned base (a cell name without the preset's dot)
    })
