"""model/ in a run's workdir: what its checkpoints need to be read back (config, LoRA, tokenizer, the weights'
source).

Workdirs written before the LoRA and the attention kernel left the LlamaConfig keep them in
llama_config.json (lora_rank, lora_alpha, lora_dropout, lora_targets; attention, splash_block): they are
read into the LoraConfig, and the kernel fields ignored (the kernel is the running machine's choice)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from xlit_jax.errors import WeightsError
from xlit_jax.io.files import atomic_write_text, read_json
from xlit_jax.io.tokenizer import load_hf_tokenizer
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.lora import LoraConfig

MODEL_DIR = "model"
CONFIG_FILE = "llama_config.json"
LORA_FILE = "lora.json"  # LoRA runs only: the LoraConfig
SOURCE_FILE = "source.json"
LEGACY_LORA = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_targets": "targets"}
LEGACY_FIELDS = (*LEGACY_LORA, "attention", "splash_block")  # in llama_config.json of older workdirs
REWRITE = "; is {} a training workdir? (xlit-train writes this file once, at the start of a run)"


def save_model_info(workdir: str | os.PathLike, config: LlamaConfig, tokenizer=None, source: dict | None = None,
                    lora: LoraConfig | None = None):
    """What a checkpoint needs to be read back: the config and `lora` (and tokenizer), and the weights'
    `source`, as {"source", "seed"}; call on process 0 only."""
    directory = Path(workdir) / MODEL_DIR
    atomic_write_text(directory / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2))
    if lora is not None:
        atomic_write_text(directory / LORA_FILE, json.dumps(dataclasses.asdict(lora), indent=2))
    if source is not None:
        atomic_write_text(directory / SOURCE_FILE, json.dumps(source))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def read_source(workdir: str | os.PathLike) -> dict | None:
    """The `source` save_model_info recorded, or None (a workdir from before it was recorded)."""
    path = Path(workdir) / MODEL_DIR / SOURCE_FILE
    return read_json(path) if path.is_file() else None


def read_config(workdir: str | os.PathLike) -> LlamaConfig:
    """The run's LlamaConfig (model/llama_config.json); a missing or damaged one is a WeightsError naming it."""
    fields = _saved(workdir, CONFIG_FILE, LlamaConfig, LEGACY_FIELDS)
    return LlamaConfig(**{k: v for k, v in fields.items() if k not in LEGACY_FIELDS})


def read_lora(workdir: str | os.PathLike) -> LoraConfig | None:
    """The run's LoraConfig (model/lora.json, or the LoRA fields of an older llama_config.json), or None:
    full fine-tuning."""
    if (Path(workdir) / MODEL_DIR / LORA_FILE).is_file():
        return LoraConfig(**_saved(workdir, LORA_FILE, LoraConfig))
    fields = _saved(workdir, CONFIG_FILE, LlamaConfig, LEGACY_FIELDS)
    legacy = {LEGACY_LORA[k]: v for k, v in fields.items() if k in LEGACY_LORA}
    return LoraConfig(**legacy) if legacy.get("rank") else None


def _saved(workdir: str | os.PathLike, name: str, kind, legacy: tuple[str, ...] = ()) -> dict:
    """The fields of model/NAME, a saved `kind` (JSON lists as tuples): a WeightsError naming the file when
    it is missing, damaged or holds other fields than `kind`'s and `legacy`."""
    path = Path(workdir) / MODEL_DIR / name
    fields = read_json(path, REWRITE.format(workdir))
    known = {f.name for f in dataclasses.fields(kind)} | set(legacy)
    if not isinstance(fields, dict) or not set(fields) <= known:
        unknown = sorted(set(fields) - known) if isinstance(fields, dict) else type(fields).__name__
        raise WeightsError(f"{path}: not a {kind.__name__} (unknown: {unknown}){REWRITE.format(workdir)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def read_tokenizer(workdir: str | os.PathLike):
    """The tokenizer save_model_info wrote, or None (a model without one); a damaged one is a WeightsError."""
    directory = Path(workdir) / MODEL_DIR
    if not (directory / "tokenizer_config.json").is_file():
        return None
    try:
        return load_hf_tokenizer(directory)
    except Exception as e:  # JSON, OS, or the tokenizers library's own errors (plain Exceptions)
        cause = e.__cause__ if isinstance(e, WeightsError) and e.__cause__ else e  # what load_hf_tokenizer met
        source, reason = (read_source(workdir) or {}).get("source", "?"), " ".join(str(cause).split())[:200]
        raise WeightsError(f"{directory}: the tokenizer cannot be read ({type(cause).__name__}: {reason}); "
                           f"write it again with xlit_jax.io.tokenizer.load_tokenizer(SRC).save_pretrained"
                           f"('{directory}'), SRC being the run's model.source ({source}) or a preset's "
                           f"data.tokenizer") from e
