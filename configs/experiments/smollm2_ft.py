"""Full fine-tuning of SmolLM2-135M-Instruct in its own chat template, with the paper's optimizer: on LIMA,
lr 1e-5 -> 1e-6; or another peak lr (decaying to a tenth of it) and data set as the config argument
LR[,DATA] (configs/experiments/smollm2_ft.py:1e-4, configs/experiments/smollm2_ft.py:1e-4,lima-20), DATA one of
DATASETS:

  lima-en     LIMA (English, 1,030 examples)
  lima-20     20 of LIMA's examples, drawn with the data seed: the paper's size control (a small set seen many
              times in the same number of updates)
  lima-fr-ru  LIMA with French and Russian instruction data (native French OpenAssistant dialogues, the
              parallel seed tasks in fr and ru), a language drawn per micro-batch (Dolly-DT's mixing);
              Portuguese left out, to test transfer to a language never tuned on
"""

from configs.experiments.base import base_config, with_model
from xlit_jax.resources import shared_data

LIMA = f"lima:{shared_data('lima/lima.en.jsonl')}"  # English, by its file name
VIGOGNE = f"chat:{shared_data('vigogne_oasst_fr/oasst_20230412_fr_1k.jsonl')},map.messages=conversation,lang=fr"
SEED_TASKS = tuple(f"alpaca:{shared_data(f'seed_tasks_parallel/seed_tasks.{lang}.jsonl')},lang={lang}"
                   for lang in ("fr", "ru"))
DATASETS = {"lima-en": {"sources": (LIMA,)},
            "lima-20": {"sources": (f"{LIMA},n=20",)},
            "lima-fr-ru": {"sources": (LIMA, VIGOGNE, *SEED_TASKS), "mixing": "uniform"}}
# eval/loss (with train.eval_every): 64 French dialogues written in French, held out; a set that trains on
# them has none (held-out data is never trained on)
HELD_OUT = (f"{VIGOGNE},n=64",)


def get_config(arg: str | None = None):
    lr, _, data = (arg or "").partition(",")
    data = data or "lima-en"
    if data not in DATASETS:
        raise ValueError(f"smollm2_ft.py: data set {data!r} is not one of {', '.join(DATASETS)}")
    c = with_model(base_config(), "smollm2-135m", source="smollm2-135m")  # the GGUF
    c.data.update(name=data, template="chat", seq_len=512, tokens_per_batch=1024, grad_accum=4,
                  eval_sources=() if VIGOGNE in DATASETS[data]["sources"] else HELD_OUT, **DATASETS[data])
    c.train.update(max_steps=100, log_every=5, save_every=50, export_hf=True)
    if lr:
        c.optim.update(lr=float(lr), min_lr=float(lr) / 10)
    return c
