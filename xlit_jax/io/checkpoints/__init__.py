"""Training checkpoints (Orbax) and loading a trained model back for inference.

A run's workdir holds:
  model/llama_config.json    the LlamaConfig (written once, at the start; in older workdirs with the LoRA
                             and attention fields it then had, read as model_info.py says)
  model/lora.json            LoRA runs only: the LoraConfig
  model/source.json          where the weights came from ({"source", "seed"}): what rebuilds a damaged frozen/
  model/frozen_sums.json     checksums of frozen/
  model/tokenizer*           the tokenizer files, when the model has a tokenizer
  frozen/                    LoRA runs only: the frozen base params, saved once (Orbax); its projections' codes
                             and scales when lora.base_quantization quantizes them (models/quantize.py)
  checkpoints/<step>/        params (trainable: all params, or the LoRA adapters), opt_state, data
                             (the batch iterator's position) and sums (checksums of params and opt_state),
                             saved every N steps and at the end, async; the last N are kept
  checkpoints/unreadable/<step>/  a checkpoint that could not be restored on resume, set aside (never deleted);
                             unreadable/frozen/ likewise, a LoRA base rebuilt from the source on resume

Damage and full disks (docs/training.md, "Recovery"): resuming takes the newest checkpoint that every
process can restore, setting newer unreadable ones aside; a save that fails at the filesystem stops the run
with one line (UserError) and leaves the earlier checkpoints as they were.
A LoRA step therefore costs the adapters' size, not the model's; `load_for_inference` merges the
adapters into the base and returns a plain model.

One module per concern: `steps` (the step checkpoints: save, restore, set aside), `sums` (checksums of
array data), `agree` (restoring on every process and agreeing on the outcome), `model_info` (model/),
`frozen` (the LoRA base), `inference` (load_for_inference). Callers import from here.
"""

from xlit_jax.io.checkpoints.frozen import FROZEN_DIR, has_frozen, replace_frozen, restore_frozen, save_frozen
from xlit_jax.io.checkpoints.inference import load_for_inference
from xlit_jax.io.checkpoints.model_info import (
                                                CONFIG_FILE,
                                                LORA_FILE,
                                                MODEL_DIR,
                                                SOURCE_FILE,
                                                read_config,
                                                read_lora,
                                                read_source,
                                                read_tokenizer,
                                                save_model_info,
)
from xlit_jax.io.checkpoints.steps import CHECKPOINTS_DIR, Checkpoints
from xlit_jax.io.checkpoints.sums import checksums

__all__ = ["CHECKPOINTS_DIR", "CONFIG_FILE", "FROZEN_DIR", "LORA_FILE", "MODEL_DIR", "SOURCE_FILE", "Checkpoints",
           "checksums", "has_frozen", "load_for_inference", "read_config", "read_lora", "read_source", "read_tokenizer",
           "replace_frozen", "restore_frozen", "save_frozen", "save_model_info"]
