"""The paper's multilingual-data finding in miniature: instruction data in the target languages holds the
answers' language. SmolLM2-135M-Instruct fully fine-tuned on LIMA alone and on LIMA mixed with native French
dialogues and the fr/ru seed tasks, a language per micro-batch (lima-fr-ru, configs/experiments/smollm2_ft.py;
Portuguese is never tuned on: transfer), at 1e-4 and 1e-3, evaluated as the miniature
(configs/studies/smollm2_mini.py). The mixed cells have no held-out French loss (they train on its source).

  xlit-study --config=configs/studies/smollm2_multilingual.py --workdir=runs/studies/smollm2_multilingual
"""

from configs.studies import smollm2_mini


def get_config():
    return smollm2_mini.variant("smollm2_multilingual",
                                experiment="configs/experiments/smollm2_{method}.py:{lr},{data}",
                                datasets=("lima-en", "lima-fr-ru"), methods=("ft",), learning_rates=("1e-4", "1e-3"))
