"""The paper's study (Chirkova & Nikoulina, 2024): 72 training runs, each evaluated on the 113
instructions in en/fr/pt/ru and the modifier prompts.

  xlit-study --config=configs/studies/chirkova2024.py --workdir=runs/studies/chirkova2024 \
      --config.model_sources.llama2-7b=/models/Llama-2-7b-hf ... --config.eval.relevance_judge=/models/chat \
      --config.eval.judge_model=gpt-3.5-turbo-0125      # and OPENAI_API_KEY in the environment

Dolly-DT needs its translations first (configs/experiments/paper.py says how). The relevance judge is
any chat model xlit-eval loads; the GPT judge any OpenAI-API model. Without them, drop the metrics:
--config.eval.metrics=language,spelling,modifiers.
"""

from ml_collections import ConfigDict

from configs.experiments import base, paper

FIG3_CELLS = ("llama2-13b.dolly-en.ft.lr1e-5", "llama2-7b.dolly-en.ft.lr1e-5", "llama2-13b.lima-en.ft.lr1e-5",
              "llama2-13b.dolly-en.lora.lr1e-4", "llama2-13b.dolly-dt.ft.lr1e-5", "tower-7b.dolly-en.ft.lr1e-5",
              "tower-7b.dolly-dt.ft.lr1e-5")


def get_config():
    return ConfigDict({
        "name": "chirkova2024",
        "experiment": "configs/experiments/paper.py:{model},{data},{method},{lr}",
        "models": tuple(paper.MODELS),
        "datasets": tuple(paper.DATASETS),
        "methods": paper.METHODS,
        "learning_rates": paper.LEARNING_RATES,
        "model_sources": {model: "" for model in paper.MODELS},  # local weights of each model
        "train": base.overrides(),  # of the experiment config, e.g. --config.train.train.max_steps=500
        "eval": {  # xlit-eval flags
            "eval_set": "chirkova,chirkova_modifiers",
            "languages": "en,fr,pt,ru",
            "metrics": "language,spelling,relevance,modifiers,judge,modifier_judge",
            "max_new_tokens": 512,
            "repetition_penalty": 1.1,
            "relevance_judge": "",
            "judge_model": "",
        },
        "baselines": {},
        # Fig. 3's bars: the paper's 7 models (its appendix B), each at the lr the paper found best (1e-5 full
        # fine-tuning, 1e-4 LoRA): the default LLaMA-2-13B / Dolly-En / FT and its one-by-one changes (7B,
        # LIMA, LoRA), then the multilingual ones (Dolly-DT, TowerBase-7B); globs on cell names.
        "report": {"fig3": FIG3_CELLS},
    })
