"""The paper's Table 1 in miniature, on real outputs: the task modifiers a rule can check (num_items_K and the
four templates) and `lang_X` ("answer in X"), prompts in en/fr/pt/ru, SmolLM2-135M-Instruct untuned and fully
fine-tuned on LIMA at 1e-4 and 1e-3: fulfilment per modifier type and language, and whether the paper's
asymmetry shows ("answer in X" fulfilled more often when the prompt is not in English).

  xlit-study --config=configs/studies/smollm2_modifiers.py --workdir=runs/studies/smollm2_modifiers
"""

from configs.studies import smollm2_mini

RULE_CHECKED = "num_items_*,cap_template,arrow_template,markdown_template,html_template,lang_*"


def get_config():
    eval_settings = {**smollm2_mini.get_config().eval, "eval_set": "chirkova_modifiers", "subset": RULE_CHECKED,
                     "limit": 40, "metrics": "language,modifiers"}
    return smollm2_mini.variant("smollm2_modifiers", methods=("ft",), learning_rates=("1e-4", "1e-3"),
                                eval=eval_settings)
