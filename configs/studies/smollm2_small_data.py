"""The paper's small-data finding in miniature: LIMA overfits to English where Dolly does not, and the paper's
down-sampled control says it is the size, not the content. Here: SmolLM2-135M-Instruct fully fine-tuned on
LIMA and on 20 of its examples (lima-20, seen about twice in the same 20 updates), at 1e-4 and 1e-3, evaluated
as the miniature (configs/studies/smollm2_mini.py), with its drift probes.

  xlit-study --config=configs/studies/smollm2_small_data.py --workdir=runs/studies/smollm2_small_data
"""

from configs.studies import smollm2_mini


def get_config():
    return smollm2_mini.variant("smollm2_small_data", experiment="configs/experiments/smollm2_{method}.py:{lr},{data}",
                                datasets=("lima-en", "lima-20"), methods=("ft",), learning_rates=("1e-4", "1e-3"))
