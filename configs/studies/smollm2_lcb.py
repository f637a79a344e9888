"""The miniature's language confusion as LCB measures it: SmolLM2-135M-Instruct untuned and fully fine-tuned
on LIMA at 1e-4 and 1e-3 (the miniature's runs, configs/studies/smollm2_mini.py), answering LCB's prompts in
en/fr/pt/ru, monolingual and cross-lingual, with LCB's decoding (100 new tokens, nucleus sampling at top-p
0.75 and temperature 0.3: xlit-eval's defaults for LCB's sets); scored by LCB's line and word levels.

  xlit-study --config=configs/studies/smollm2_lcb.py --workdir=runs/studies/smollm2_lcb

The report's paired differences compare each tuned cell with the untuned one on the same prompts.
"""

from configs.studies import smollm2_mini


def get_config():
    # limit: rows per source and language (5 x the 7 sources with en/fr/pt/ru: 85 prompts)
    lcb = {"eval_set": "lcb", "languages": "en,fr,pt,ru", "limit": 5, "seed": 0, "batch_size": 8}
    return smollm2_mini.variant("smollm2_lcb", methods=("ft",), learning_rates=("1e-4", "1e-3"), eval=lcb)
