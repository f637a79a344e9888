"""The miniature's language confusion as LCB measures it: SmolLM2-135M-Instruct untuned and fully fine-tuned
on LIMA at 1e-4 and 1e-3 (the miniature's runs, configs/studies/smollm2_mini.py), answering LCB's prompts in
en/fr/pt/ru, monolingual and cross-lingual, with LCB's decoding (100 new tokens, nucleus sampling at top-p
0.75 and temperature 0.3: xlit-eval's defaults for LCB's sets); scored by LCB's line and word levels.

  xlit-study --config=configs/studies/smollm2_lcb.py --workdir=runs/studies/smollm2_lcb

The report's paired differences compare each tuned cell with the untuned one on the same prompts.
"""

from configs.studies import smollm2_mini


def get_config():
    config = smollm2_mini.get_config()
    config.name = "smollm2_lcb"
    config.methods = ("ft",)
    config.learning_rates = ("1e-4", "1e-3")
    config.eval = {
        "eval_set": "lcb",
        "languages": "en,fr,pt,ru",
        "limit": 5,  # rows per source and language: 5 x 7 sources (those with en/fr/pt/ru) -> about 120 prompts
        "seed": 0,
        "batch_size": 8,
    }
    return config
